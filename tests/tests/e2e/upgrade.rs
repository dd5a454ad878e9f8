//! Hitless restart: `cutover-proxy --upgrade` takes the listening sockets over from
//! the running process under continuous traffic, and not one request fails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cutover_tests::{Backend, Client, Proxy, ProxyBuilder, eventually, two_backend_config};
use http::Method;

const HOST: &str = "shop.test";

/// Clients that alternate GET and POST until stopped, each on its own keep-alive
/// connection, and keep every failure.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Traffic {
    fn start(addr: SocketAddr, clients: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|i| {
                let (stop, ok) = (stop.clone(), ok.clone());
                tokio::spawn(async move {
                    let c = Client::new();
                    let mut errors = Vec::new();
                    // Bounded: stops when told, and after 20 000 requests at most.
                    for n in 0..20_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let method = if (i + n) % 2 == 0 {
                            Method::GET
                        } else {
                            Method::POST
                        };
                        match c.send(addr, method.clone(), HOST, "/", &[], "x").await {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => errors.push(format!("{method} {} {}", r.status, r.body)),
                            Err(e) => errors.push(format!("{method}: {e}")),
                        }
                    }
                    errors
                })
            })
            .collect();
        Traffic { stop, ok, tasks }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` requests have succeeded since the call.
    async fn advance(&self, more: u64, what: &str) {
        let target = self.ok() + more;
        eventually(Duration::from_secs(20), what, || async {
            (self.ok() >= target).then_some(())
        })
        .await;
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.unwrap());
        }
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

fn start(old: &Backend, new: &Backend) -> Proxy {
    ProxyBuilder::new(two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (50.0, 50.0),
        "",
    ))
    .start()
    .unwrap_or_else(|(status, logs)| panic!("proxy did not start ({status:?}):\n{logs}"))
}

/// Starts the successor without stalling the traffic tasks: the harness waits
/// for the new process's log on this thread.
fn upgrade(proxy: &Proxy) -> Proxy {
    tokio::task::block_in_place(|| proxy.upgrade())
        .unwrap_or_else(|(status, logs)| panic!("upgrade failed ({status:?}):\n{logs}"))
}

async fn pid_of(proxy: &Proxy) -> u64 {
    proxy.status().await["pid"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_traffic_fails_no_request() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let mut first = start(&old, &new);
    assert_eq!(pid_of(&first).await, u64::from(first.pid()));
    // A step taken over the admin API must survive the upgrade.
    let r = first.put_weights(HOST, r#"{"old":30,"new":70}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let traffic = Traffic::start(first.http, 6);
    traffic.advance(300, "traffic before the upgrade").await;

    let mut second = upgrade(&first);
    assert_eq!((second.http, second.admin), (first.http, first.admin));
    let status = first
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("the old process did not exit:\n{}", first.logs()));
    assert_eq!(status.code(), Some(0), "{}", first.logs());
    assert!(first.logs().contains("handed over to a new process"));
    traffic
        .advance(300, "traffic after the old process exited")
        .await;

    // The new process answers, with the admin weights carried over.
    assert_eq!(pid_of(&second).await, u64::from(second.pid()));
    let route = &second.status().await["routes"][0];
    assert_eq!(route["weights_source"], "admin", "{route}");
    assert_eq!(route["weights"]["new"].as_f64(), Some(70.0), "{route}");

    // It took the control socket over too: a second upgrade works the same way.
    let third = upgrade(&second);
    let status = second
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("the second process did not exit:\n{}", second.logs()));
    assert_eq!(status.code(), Some(0), "{}", second.logs());
    traffic
        .advance(300, "traffic after the second upgrade")
        .await;
    assert_eq!(pid_of(&third).await, u64::from(third.pid()));

    let (ok, errors) = traffic.finish().await;
    assert!(
        errors.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        errors.len(),
        ok + errors.len() as u64,
        &errors[..errors.len().min(5)]
    );
    assert!(old.requests() > 0 && new.requests() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_refused_while_a_hold_is_in_force() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let first = start(&old, &new);
    let r = first
        .admin_call(
            Method::POST,
            &format!("/routes/{HOST}/hold"),
            r#"{"scope":"writes"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let (status, logs) = match tokio::task::block_in_place(|| first.upgrade()) {
        Err(e) => e,
        Ok(p) => panic!("the upgrade went ahead during a hold:\n{}", p.logs()),
    };
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{logs}");
    assert!(logs.contains("hold"), "{logs}");
    // The running process is untouched and still the one answering.
    assert_eq!(pid_of(&first).await, u64::from(first.pid()));
    assert_eq!(first.get(HOST, "/").await.status, 200);

    let r = first
        .admin_call(Method::POST, &format!("/routes/{HOST}/release"), "")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let second = upgrade(&first);
    eventually(
        Duration::from_secs(10),
        "the new process on the admin API",
        || async { (pid_of(&second).await == u64::from(second.pid())).then_some(()) },
    )
    .await;
}

#[test]
fn upgrade_without_a_running_proxy_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    let config = two_backend_config(
        "127.0.0.1:9".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        &[HOST],
        (100.0, 0.0),
        "",
    );
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(cutover_tests::binary("cutover-proxy"))
        .arg("--config")
        .arg(&path)
        .arg("--upgrade")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no running cutover-proxy") && stderr.contains("cutover.toml.sock"),
        "{stderr}"
    );
}
