//! The end-to-end harness: real HTTP backends, real `cutover-proxy` processes, and a
//! small client, each bound to `127.0.0.1:0` and stopped on drop; a TCP relay that
//! cuts a link on demand; real PostgreSQL clusters, a real PgBouncer, and writers
//! that reach a database around the proxy.
//! Test modules live in `tests/`; this crate is the toolbox they share.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod app;
mod backend;
mod binaries;
mod client;
mod dns;
mod eventually;
mod grpc;
mod openbao;
mod pgbouncer;
mod postgres;
mod process;
mod proxy;
mod redis;
mod relay;
mod run;
mod writers;

pub use app::{APP_SCHEMA, App};
pub use backend::{Backend, BackendStats};
pub use binaries::binary;
pub use client::{Client, Reply, h2_get, h2_get_with};
pub use dns::DnsServer;
pub use eventually::eventually;
pub use grpc::{
    ECHO_SERVICE, EchoClient, EchoReply, EchoRequest, EchoServer, GrpcBackend, GrpcStats, RawReply,
    SlowRequest, WatchRequest, grpc_client, grpc_raw_call, serve_grpc,
};
pub use openbao::{OpenBao, bao_bin, find_on_path, free_port, http_json};
pub use pgbouncer::{Pgbouncer, pgbouncer_bin};
pub use postgres::{APP_PASSWORD, Pair, Postgres, SUPERUSER_PASSWORD, pg_bin};
pub use process::BackendProcess;
pub use proxy::{Proxy, ProxyBuilder, metric_sum, two_backend_config, two_backends};
pub use redis::{Cmd, RedisConn, RedisServer, Resp, redis_server_bin};
pub use relay::{Relay, free_port_on, listeners_on_one_port};
pub use run::Run;
pub use writers::{
    Ack, COLUMN_ROLE, Conn, DEFINER_ROLE, MEMBER_ROLE, Prepared, WRITER_PASSWORD, WRITERS_GROUP,
    WriteError, Writer, WriterKind, WriterOptions, assert_all_in, assert_all_on, create_roles,
};
