//! The switchover's steps in order. Everything up to the point of no return (one
//! transaction on the new writer that drops the subscription, opens its tables and
//! records the fence as applied) is undone on failure by `undo.rs`.

use std::time::Duration;

use cutover_api::Scope;
use tokio::time::Instant;

use super::fence::{self, Fence, Witness};
use super::fleet::{self, Held};
use super::{PhaseTiming, SwitchoverOptions, SwitchoverReport, block, sequences};
use crate::catalog::{self, ident, literal};
use crate::db::Db;
use crate::error::Error;
use crate::failpoint::{crash_point, fail_point};
use crate::heartbeat::Heartbeat;
use crate::link::Link;
use crate::observe::{Observer, Phase};
use crate::proxy::Proxies;
use crate::status::bytes;
use crate::verify::{FenceOptions, close_fence_snapshot, compare_at_fence, open_fence_snapshot};

/// One direction of the protocol: writes move `from` → `to`; `link` replicates
/// `from` → `to` and is retired; `back` is the reverse link `--reverse` starts.
pub(super) struct Plan<'a> {
    pub operation: &'static str,
    pub from: &'a Db,
    pub to: &'a Db,
    pub link: Link,
    pub back: Link,
    pub name: &'a str,
    pub from_backend: &'a str,
    pub to_backend: &'a str,
    /// How the `from` server reaches `to`, for the reverse subscription.
    pub back_conninfo: &'a str,
}

/// What has been done and must be undone on failure.
#[derive(Default)]
pub(super) struct Undo {
    pub held: Vec<Held>,
    /// `from` may carry this run's write block.
    pub blocked: bool,
    pub back_subscription: bool,
    pub back_publication: bool,
    pub back_slot: bool,
    /// The point of no return's outcome could not be read: nothing may be
    /// undone (the old writer may have no subscriber any more), nothing released.
    pub unknown: bool,
}

/// Phase timings as they happen, echoed to the observer.
pub(super) struct Timeline<'o> {
    obs: &'o dyn Observer,
    phases: Vec<PhaseTiming>,
    current: Option<(Phase, Instant)>,
}

impl Timeline<'_> {
    fn begin(&mut self, phase: Phase) {
        self.obs.phase_started(phase);
        self.current = Some((phase, Instant::now()));
    }

    fn end(&mut self, detail: String) {
        if let Some((phase, t)) = self.current.take() {
            let took = t.elapsed();
            self.obs.phase_done(phase, took, &detail);
            self.phases.push(PhaseTiming {
                phase,
                step: phase.number(),
                took_ms: took.as_secs_f64() * 1000.0,
                detail,
            });
        }
    }

    /// The phase a failure happened in.
    fn failed_in(&self) -> String {
        self.current
            .map(|(p, _)| format!("step {} ({})", p.number(), p.describe()))
            .unwrap_or_else(|| "preparation".into())
    }
}

/// The part of the pause budget kept for undoing the work.
fn reserve(max_pause: Duration) -> Duration {
    (max_pause / 4).min(Duration::from_secs(1))
}

fn budget_left(deadline: Instant) -> Result<Duration, Error> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::Precondition(
            "the pause budget (--max-pause) ran out".into(),
        ));
    }
    Ok(left)
}

/// How long the witness slot may wait for open transactions before the hold.
const ARM_WITHIN: Duration = Duration::from_secs(30);

/// How long the session of a point of no return whose answer was lost may take
/// to leave its transaction once the server is told to end it.
const SETTLE_WITHIN: Duration = Duration::from_secs(5);

/// What phase 1 prepares outside the pause for the steps under the hold.
struct Armed {
    witness: Witness,
    /// Idle connections to `from` and `to` for the verification's snapshots.
    snapshots: Option<(Db, Db)>,
    /// The server process of the session on `to` that runs the point of no
    /// return, to find out how it ended if its answer is lost.
    to_pid: i32,
}

/// What the steps under the hold hand back.
struct Passed {
    fence: Fence,
    sequences: usize,
    blocked: block::Blocked,
    reopened: usize,
    /// The point of no return's answer was lost and its commit read off `to`.
    lost_answer: Option<String>,
}

impl Plan<'_> {
    pub async fn run(
        &self,
        proxies: &Proxies,
        opts: &SwitchoverOptions,
        obs: &dyn Observer,
    ) -> Result<SwitchoverReport, Error> {
        let start = Instant::now();
        let mut warnings = self.preconditions(proxies, opts, obs).await?;
        // This run's own view of the replicas: found again while writes are held,
        // so that one that appears is held, drained and released too.
        let proxies = &mut proxies.clone();
        let mut tl = Timeline {
            obs,
            phases: Vec::new(),
            current: None,
        };

        // 1. The lag must be under --max-lag before anything is held; what can
        // be prepared outside the pause is prepared now.
        tl.begin(Phase::Lag);
        let lag = Heartbeat::new(self.name)
            .measure(self.from, self.to, opts.max_lag)
            .await?;
        if lag.at_least {
            return Err(Error::Precondition(format!(
                "replication lag is {lag}, over --max-lag {}; nothing was held; \
                 wait until `cutover db status` shows less",
                humantime::format_duration(opts.max_lag)
            )));
        }
        let unflushed = self
            .link
            .slot(self.from)
            .await?
            .and_then(|s| s.lag_bytes)
            .map(bytes)
            .unwrap_or_else(|| "?".into());
        let armed = Armed {
            witness: Witness::open(self.from, &self.link.name, ARM_WITHIN).await?,
            snapshots: if opts.verify {
                let (a, b) = tokio::join!(Db::connect(self.from.dsn()), Db::connect(self.to.dsn()));
                Some((a?, b?))
            } else {
                None
            },
            to_pid: self
                .to
                .query_one(
                    "read the session's server process",
                    "SELECT pg_backend_pid()",
                    &[],
                )
                .await?
                .get(0),
        };
        let mut undo = Undo::default();
        if opts.reverse
            && let Err(e) = self.prepare_reverse(&mut undo).await
        {
            let phase = tl.failed_in();
            let until = Instant::now() + ARM_WITHIN;
            return Err(self
                .abort(proxies, &undo, until, phase, e, String::new)
                .await);
        }
        tl.end(format!(
            "{lag} by heartbeat, {unflushed} unflushed; fence witness armed{}",
            if opts.reverse {
                format!("; reverse slot {} ready", self.back.name)
            } else {
                String::new()
            }
        ));

        // A lookup that fails holds the replicas known.
        let _ = proxies.refresh().await;

        // 1b. Upgraded connections that follow the writes (WebSockets: their
        // messages may be writes) move first, while every other write still
        // flows: their handshakes are held, and the open ones to the old side
        // closed (after `hold.upgrade_grace`), so the write pause below does not
        // wait for them. Their clients reconnect into the hold.
        let tunnels = fleet::write_tunnels(proxies, &opts.routes, self.from_backend).await?;
        if tunnels > 0 {
            tl.begin(Phase::Tunnels);
            let started = Instant::now();
            let budget = started + opts.max_pause - reserve(opts.max_pause);
            let moved =
                match fleet::hold_all(proxies, &opts.routes, opts.max_pause, Scope::Upgrades).await
                {
                    Ok(h) => {
                        undo.held = h;
                        fleet::drain(
                            proxies,
                            &mut undo.held,
                            self.from_backend,
                            budget,
                            started + opts.max_pause,
                            Scope::Upgrades,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
            if let Err(e) = moved {
                let (phase, until) = (tl.failed_in(), started + opts.max_pause);
                let said = || {
                    "; the upgrade handshakes held were released; writes did not move".to_string()
                };
                return Err(self.abort(proxies, &undo, until, phase, e, said).await);
            }
            tl.end(format!(
                "{tunnels} upgraded connection(s) to {:?} closed; their reconnects wait",
                self.from_backend
            ));
        }

        // 2. Hold writes on every proxy; each must acknowledge.
        tl.begin(Phase::Hold);
        let hold_start = Instant::now();
        let deadline = hold_start + opts.max_pause - reserve(opts.max_pause);
        match fleet::hold_all(proxies, &opts.routes, opts.max_pause, Scope::Writes).await {
            Ok(h) => {
                // A replica held in step 1b that a lookup no longer lists stays
                // on the list, so that it is released with the others.
                let earlier = std::mem::replace(&mut undo.held, h);
                for e in earlier {
                    if !undo.held.contains(&e) {
                        undo.held.push(e);
                    }
                }
            }
            Err(e) => {
                let (phase, until) = (tl.failed_in(), hold_start + opts.max_pause);
                let said = || "; the holds taken were released; writes did not move".to_string();
                return Err(self.abort(proxies, &undo, until, phase, e, said).await);
            }
        }
        tl.end(format!(
            "{} hold(s) on {} proxy(ies)",
            undo.held.len(),
            proxies.urls().len()
        ));
        crate::failpoint::pause_point("after-hold").await;

        // Every database call under the hold ends by the deadline.
        self.from.set_deadline(Some(deadline));
        self.to.set_deadline(Some(deadline));
        let passed = self
            .before_no_return(proxies, opts, deadline, &mut tl, &mut undo, &armed)
            .await;
        let mut passed = match passed {
            Ok(p) => p,
            Err(e) if undo.unknown => {
                // Neither undone nor released: writes stay held (503 past the
                // pause budget) and the old writer blocked until someone looks.
                self.from.set_deadline(None);
                self.to.set_deadline(None);
                return Err(e);
            }
            Err(e) => {
                let phase = tl.failed_in();
                // The undo is not cut short by the pause budget: restoring write
                // access matters more than the hold's own deadline.
                self.from.set_deadline(None);
                self.to.set_deadline(None);
                // Measured once the undo has released the hold.
                let held = || {
                    format!(
                        "; writes were held {:.0} ms (--max-pause {})",
                        hold_start.elapsed().as_secs_f64() * 1000.0,
                        humantime::format_duration(opts.max_pause)
                    )
                };
                let until = hold_start + opts.max_pause;
                return Err(self.abort(proxies, &undo, until, phase, e, held).await);
            }
        };
        self.from.set_deadline(None);
        self.to.set_deadline(None);
        warnings.extend(passed.lost_answer.take());
        tl.end(format!(
            "subscription {} dropped; the {} takes writes ({} table(s) opened)",
            self.link.name,
            self.to.side(),
            passed.reopened
        ));
        crash_point("after-drop");

        // 9. Release with writes on the new side.
        tl.begin(Phase::Release);
        let released = fleet::release_all(
            proxies,
            &undo.held,
            Some(self.to_backend),
            hold_start + opts.max_pause,
        )
        .await
        .map_err(|e| {
            Error::Precondition(format!(
                "{e}; the data is on the {} now and its subscription is gone: release the remaining \
                 proxies with POST /routes/{{host}}/release {{\"writes\":\"{}\"}}",
                self.to.side(),
                self.to_backend
            ))
        })?;
        let pause = hold_start.elapsed();
        tl.end(format!(
            "writes on {:?}; {released} held request(s) released",
            self.to_backend
        ));

        // After the pause: who could lift the block (for the report), the old
        // slot, and a last look through the witness for a write that bypassed the
        // block after the proof.
        match block::can_lift(self.from).await {
            Ok(roles) => passed.blocked.can_lift = roles,
            Err(e) => warnings.push(format!(
                "the roles that could lift the block on the {} could not be listed: {e}",
                self.from.side()
            )),
        }
        if let Err(e) = self.link.drop_slot(self.from, Duration::from_secs(5)).await {
            warnings.push(format!(
                "slot {} on the {} was not dropped ({e}); it retains WAL until `cutover db cleanup` drops it",
                self.link.name, self.link.publisher
            ));
        }
        match armed
            .witness
            .late_writes(&passed.fence.lsn, Duration::from_secs(10))
            .await
        {
            Ok(late) if !late.is_empty() => warnings.push(format!(
                "after the point of no return, {} transaction(s) wrote to the {} past its block \
                 (a superuser with session_replication_role = replica, or a disabled trigger): {}; \
                 those rows are not on the {}",
                late.len(),
                self.from.side(),
                describe_late(&late),
                self.to.side()
            )),
            Ok(_) => {}
            Err(e) => warnings.push(format!("the fence witness could not be read again: {e}")),
        }

        let verify = match &armed.snapshots {
            None => None,
            Some((a, b)) => {
                let checked = compare_at_fence(a, b, &FenceOptions::default()).await;
                tokio::join!(close_fence_snapshot(a), close_fence_snapshot(b));
                match checked {
                    Ok(c) => Some(c),
                    Err(e) => {
                        warnings.push(format!("the verification at the fence failed: {e}"));
                        None
                    }
                }
            }
        };

        Ok(SwitchoverReport {
            operation: self.operation,
            from: self.from.side(),
            to: self.to.side(),
            writes: self.to_backend.to_string(),
            phases: tl.phases,
            write_pause_ms: pause.as_secs_f64() * 1000.0,
            hold_started_ms: (hold_start - start).as_secs_f64() * 1000.0,
            released_ms: start.elapsed().as_secs_f64() * 1000.0,
            released_requests: released,
            lsn: passed.fence.lsn,
            sequences: passed.sequences,
            blocked: passed.blocked,
            reopened: passed.reopened,
            reverse: opts.reverse.then(|| self.back.clone()),
            verify,
            warnings,
        })
    }

    /// Steps 3 to 8: every failure here is undone. Returns with the point of no
    /// return passed.
    async fn before_no_return(
        &self,
        proxies: &mut Proxies,
        opts: &SwitchoverOptions,
        deadline: Instant,
        tl: &mut Timeline<'_>,
        undo: &mut Undo,
        armed: &Armed,
    ) -> Result<Passed, Error> {
        // 3. No write may still be on its way to the old side.
        tl.begin(Phase::Drain);
        // The proxies end the hold by themselves at the end of the pause budget.
        let hold_ends = deadline + reserve(opts.max_pause);
        let before = undo.held.len();
        fleet::drain(
            proxies,
            &mut undo.held,
            self.from_backend,
            deadline,
            hold_ends,
            Scope::Writes,
        )
        .await?;
        let joined = undo.held.len() - before;
        tl.end(format!(
            "no write in flight to {:?}{}",
            self.from_backend,
            if joined > 0 {
                format!("; {joined} hold(s) on replicas that appeared meanwhile")
            } else {
                String::new()
            }
        ));

        // 4. Block every write on the old writer, whoever sends it.
        tl.begin(Phase::Block);
        undo.blocked = true;
        let blocked = block::block(self.from, deadline).await?;
        let mut detail = format!("{} table(s) refuse writes", blocked.tables);
        if !blocked.sessions_ended.is_empty() {
            detail.push_str(&format!(
                "; {} session(s) with a write in flight ended",
                blocked.sessions_ended.len()
            ));
        }
        tl.end(detail);
        crash_point("before-fence");

        // 5. The fence, and the new writer applying through it.
        tl.begin(Phase::Fence);
        self.refuse_unreplicated().await?;
        let run = format!("{}-{}", std::process::id(), now_ms());
        let fence = fence::record(self.from, self.name, self.operation, &run).await?;
        fence::wait_applied(self.to, self.name, &fence, budget_left(deadline)?).await?;
        if let Some((a, b)) = &armed.snapshots {
            // Both sides are still: the old writer is blocked, the new one has
            // applied through the fence and takes no other write yet.
            let (a, b) = tokio::join!(open_fence_snapshot(a), open_fence_snapshot(b));
            a?;
            b?;
        }
        tl.end(format!(
            "applied through {} (beat {})",
            fence.lsn, fence.beat
        ));
        crash_point("after-fence");

        // 6. Sequences forward, materialized views refreshed.
        tl.begin(Phase::Sequences);
        let (moved, compared) = sequences::bring_forward(self.from, self.to).await?;
        let views = catalog::materialized_views(self.to).await?;
        for (v, _) in &views {
            self.to
                .batch(
                    &format!("refresh materialized view {v}"),
                    &format!("REFRESH MATERIALIZED VIEW {}", v.sql()),
                )
                .await?;
        }
        tl.end(format!(
            "{moved} of {compared} sequence(s) moved forward; {} materialized view(s) refreshed",
            views.len()
        ));

        // 6b. Reverse replication from where the new writer is now.
        if opts.reverse {
            tl.begin(Phase::Reverse);
            self.start_reverse(undo).await?;
            tl.end(format!(
                "subscription {} on the {} from the {} (copy_data = false)",
                self.back.name, self.back.subscriber, self.back.publisher
            ));
        }

        // 7. Nothing got past the block.
        tl.begin(Phase::Prove);
        let late = armed
            .witness
            .late_writes(&fence.lsn, budget_left(deadline)?)
            .await?;
        if !late.is_empty() {
            return Err(Error::Precondition(format!(
                "{} transaction(s) committed on the {} after the fence despite the block: {}; a session \
                 got past the triggers (a superuser with session_replication_role = replica, or a \
                 table owner who disabled {}); sessions connected now that could: {}; stop that \
                 job, then run this again",
                late.len(),
                self.from.side(),
                describe_late(&late),
                block::TRIGGER,
                block::lifters_connected(self.from).await
            )));
        }
        tl.end(format!("no application write committed past {}", fence.lsn));

        // 8. The point of no return, in one transaction on the new writer.
        tl.begin(Phase::Drop);
        budget_left(deadline)?;
        let n = ident(&self.link.name);
        let opened = block::blocked_tables(self.to).await?;
        let sql = format!(
            "ALTER SUBSCRIPTION {n} DISABLE;\nALTER SUBSCRIPTION {n} SET (slot_name = NONE);\n\
             DROP SUBSCRIPTION {n};\n{}{}",
            block::disable_sql(&opened),
            fence::record_applied_sql(self.name, self.operation, &fence)
        );
        let mut locked = block::with_table_locks(
            self.to,
            &opened,
            &sql,
            "drop the subscription and open the tables",
            deadline,
        )
        .await
        .map(drop);
        if locked.is_ok() && fail_point("commit-answer-lost") {
            locked = Err(Error::Precondition(
                "the answer to COMMIT was lost (CUTOVER_FAIL_AT=commit-answer-lost)".into(),
            ));
        }
        let mut lost_answer = None;
        if let Err(e) = locked {
            // The transaction may have committed though its answer was lost with
            // the connection: undoing then would open the old writer beside a new
            // one that no longer replicates from it.
            match self.committed(armed.to_pid, &fence).await {
                Ok(false) => return Err(e),
                Ok(true) => {
                    lost_answer = Some(format!(
                        "{e}; read on the {} afterwards, the transaction had committed \
                         (subscription {} gone, this run's fence recorded as applied)",
                        self.to.side(),
                        self.link.name
                    ));
                }
                Err(why) => {
                    undo.unknown = true;
                    return Err(Error::Precondition(format!(
                        "{e}; whether that transaction committed could not be read ({why}): \
                         nothing was undone, writes stay held and the {} refuses writes. Once the {} \
                         answers: if subscription {} is gone from it, it took writes (release with \
                         POST /routes/{{host}}/release {{\"writes\":\"{}\"}}); if it is still there, \
                         run this command again (it restores write access on the {} first)",
                        self.from.side(),
                        self.to.side(),
                        self.link.name,
                        self.to_backend,
                        self.from.side()
                    )));
                }
            }
        }
        Ok(Passed {
            fence,
            sequences: moved,
            blocked,
            reopened: opened.len(),
            lost_answer,
        })
    }

    /// Whether step 8's transaction committed, read on a connection of its own
    /// after the session that ran it (server process `pid`) has left it: ended by
    /// the server if it is still in a transaction, so that what is read is final.
    /// Committed means the subscription is gone and this run's fence is recorded as
    /// applied; still there means it did not commit; anything else is an error.
    async fn committed(&self, pid: i32, fence: &Fence) -> Result<bool, Error> {
        let db = Db::connect(self.to.dsn()).await?;
        let until = Instant::now() + SETTLE_WITHIN;
        loop {
            let state: Option<Option<String>> = db
                .query_opt(
                    "look at the session of the point of no return",
                    "SELECT state FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await?
                .map(|r| r.get(0));
            match state.flatten().as_deref() {
                None | Some("idle") => break,
                Some(other) if Instant::now() >= until => {
                    return Err(Error::Precondition(format!(
                        "its session (pid {pid}) is still {other:?} after {SETTLE_WITHIN:?}"
                    )));
                }
                Some(_) => {
                    db.query_one(
                        "end the session of the point of no return",
                        "SELECT pg_terminate_backend($1)",
                        &[&pid],
                    )
                    .await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        let gone = self.link.subscription(&db).await?.is_none();
        let recorded = fence::applied(&db, self.name, self.operation)
            .await?
            .is_some_and(|f| f.run == fence.run);
        match (gone, recorded) {
            (false, _) => Ok(false),
            (true, true) => Ok(true),
            (true, false) => Err(Error::Precondition(format!(
                "subscription {} is gone from the {} but this run's fence is not recorded there",
                self.link.name,
                self.to.side()
            ))),
        }
    }

    /// Undoes `undo` and says so in the error for a failure in `phase`, with
    /// `more()` (asked after the undo) appended to what the undo reports.
    async fn abort(
        &self,
        proxies: &mut Proxies,
        undo: &Undo,
        until: Instant,
        phase: String,
        cause: Error,
        more: impl FnOnce() -> String,
    ) -> Error {
        let mut undone = self.undo(proxies, undo, until).await;
        undone.push_str(&more());
        Error::Aborted {
            operation: self.operation,
            phase,
            cause: Box::new(cause),
            undo: undone,
        }
    }

    /// Before the hold: the reverse publication and its slot on `to`, so that no
    /// slot is created (which waits for open transactions) inside the pause.
    async fn prepare_reverse(&self, undo: &mut Undo) -> Result<(), Error> {
        let tables = catalog::published_tables(self.to).await?;
        undo.back_publication = !self.back.publication_exists(self.to).await?;
        self.back.ensure_publication(self.to, &tables).await?;
        undo.back_slot = true;
        self.to
            .batch(
                "create the reverse replication slot",
                &format!(
                    "SET statement_timeout = {}; \
                     SELECT pg_create_logical_replication_slot({}, 'pgoutput')",
                    ARM_WITHIN.as_millis(),
                    literal(&self.back.name)
                ),
            )
            .await?;
        self.to
            .batch("reset the statement timeout", "SET statement_timeout = 0")
            .await
    }

    /// Under the hold, once `to` has applied through the fence: the reverse slot
    /// skips what `to` received from `from` (it would echo back), and the reverse
    /// subscription starts from there.
    async fn start_reverse(&self, undo: &mut Undo) -> Result<(), Error> {
        self.to
            .execute(
                "move the reverse slot past the forward changes",
                "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())",
                &[&self.back.name],
            )
            .await?;
        let options = self.back.options(self.to, self.from).await?;
        undo.back_subscription = true;
        self.back
            .create_subscription(self.from, self.back_conninfo, false, false, options)
            .await
    }
}

fn describe_late(late: &[fence::LateWrite]) -> String {
    late.iter()
        .take(10)
        .map(|l| format!("xid {} changed {} ({} row(s))", l.xid, l.table, l.changes))
        .collect::<Vec<_>>()
        .join("; ")
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
