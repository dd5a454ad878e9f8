//! The demo application of the database tests: the controller's demo app
//! ([`cutover_rehearse::app`]) in its single-app form, answering any
//! Host. `POST /items` inserts the body into `items` and answers `201` with the id;
//! `GET /items/{id}` answers the body, or 404. Every answer carries `x-app: {name}`.
//! It reconnects when the database ends its sessions, as the switchover does on
//! purpose.

use std::net::SocketAddr;

pub use cutover_rehearse::app::APP_SCHEMA;

/// A running demo app; stopped on drop.
pub struct App {
    pub name: String,
    pub addr: SocketAddr,
    _inner: cutover_rehearse::app::App,
}

impl App {
    /// Starts app `name` on `127.0.0.1:0`, using the database at `dsn`.
    pub fn start(name: &str, dsn: &str) -> App {
        let inner = cutover_rehearse::app::App::start(name, dsn)
            .unwrap_or_else(|e| panic!("start app {name}: {e}"));
        App {
            name: inner.name.clone(),
            addr: inner.addr,
            _inner: inner,
        }
    }
}
