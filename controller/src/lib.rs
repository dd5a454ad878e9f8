//! `cutover`'s controller: the PostgreSQL migration behind `cutover db …`. It owns
//! the preflight (`check`), logical replication set-up and its progress (`sync`),
//! lag measurement (`status`), the coordinated switchover through the proxies'
//! admin API and its rollback, verification and cleanup. The proxies' data plane is
//! `cutover-proxy`'s; this crate only talks to their admin API. Each operation is a
//! function over two connected [`Db`]s, so the plan runner can call them directly.
//! [`lock`] keeps a second controller off a database another one is working on.
//! [`secrets`] moves Kubernetes Secrets into a secrets store (`cutover secrets …`).

pub mod cache;
mod catalog;
mod check;
mod cleanup;
pub mod cli;
mod db;
mod dsn;
mod error;
mod failpoint;
mod heartbeat;
mod link;
pub mod lock;
mod observe;
mod pgtls;
pub mod plan;
mod proxy;
pub mod secrets;
mod status;
pub mod switchover;
mod sync;
mod verify;

pub use catalog::{Name, Table};
pub use check::{CheckOptions, CheckReport, Finding, Level, check};
pub use cleanup::{CleanupAction, CleanupReport, Done, cleanup};
pub use db::{Connector, Db};
pub use dsn::{Dsn, Side, TlsMode, TlsOptions};
pub use error::Error;
pub use heartbeat::{Heartbeat, LagSeconds};
pub use link::{Link, Slot, Subscription};
pub use observe::{Observer, Phase, Quiet, TableProgress};
pub use proxy::{CatchUp, Caught, Note, Proxies, Seen, StatePut};
pub use status::{Status, status};
pub use switchover::{
    Blocked, PhaseTiming, Recovery, SwitchoverOptions, SwitchoverReport, recover, rollback,
    switchover,
};
pub use sync::{Outcome, SyncOptions, SyncReport, SyncStep, sync, use_programs_from};
pub use verify::{
    FenceCheck, FenceMethod, FenceOptions, FenceTable, TableVerdict, VerifyReport,
    close_fence_snapshot, compare_at_fence, open_fence_snapshot, verify, verify_contains,
};
