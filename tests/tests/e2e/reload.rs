//! Hot reload: rename-over and ConfigMap-style symlink swaps under traffic, invalid
//! files, SIGHUP, and how file weights and admin weights combine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cutover_tests::{Backend, Client, Proxy, ProxyBuilder, eventually, two_backend_config};

const HOST: &str = "shop.test";

#[derive(Clone, Copy, Debug)]
enum Write {
    /// Write a temp file, rename it over the config (what editors do).
    RenameOver,
    /// Kubernetes ConfigMap layout: `cutover.toml -> ..data/cutover.toml`, and
    /// `..data` is a symlink swapped atomically to a new versioned directory.
    SymlinkSwap,
}

fn write_config(dir: &Path, how: Write, version: usize, text: &str) -> PathBuf {
    let path = dir.join("cutover.toml");
    match how {
        Write::RenameOver => {
            let tmp = dir.join(".cutover.toml.tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        Write::SymlinkSwap => {
            let versioned = dir.join(format!("..v{version}"));
            std::fs::create_dir(&versioned).unwrap();
            std::fs::write(versioned.join("cutover.toml"), text).unwrap();
            let tmp = dir.join("..data_tmp");
            std::os::unix::fs::symlink(format!("..v{version}"), &tmp).unwrap();
            std::fs::rename(&tmp, dir.join("..data")).unwrap();
            if !path.exists() {
                std::os::unix::fs::symlink("..data/cutover.toml", &path).unwrap();
            }
        }
    }
    path
}

fn config(old: &Backend, new: &Backend, i: usize) -> String {
    let w = if i.is_multiple_of(2) {
        (100.0, 0.0)
    } else {
        (0.0, 100.0)
    };
    two_backend_config(old.addr, new.addr, &[HOST], w, &format!("# rewrite {i}"))
}

/// Clients that send GETs until stopped and count what failed.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Traffic {
    fn start(proxy: &Proxy, clients: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed, addr) =
                    (stop.clone(), ok.clone(), failed.clone(), proxy.http);
                tokio::spawn(async move {
                    let c = Client::new();
                    let mut errors = Vec::new();
                    // Bounded: stops when told, and after 20 000 requests at most.
                    for _ in 0..20_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match c.get(addr, HOST, "/").await {
                            Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            Ok(r) => {
                                errors.push(format!("{} {}", r.status, r.body));
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                            Err(e) => {
                                errors.push(e);
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                    errors
                })
            })
            .collect();
        Traffic {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.unwrap());
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

async fn rewrites_under_traffic(how: Write) {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), how, 0, &config(&old, &new, 0));
    let proxy = ProxyBuilder::new("").start_in(dir, &path).unwrap();
    let traffic = Traffic::start(&proxy, 4);
    let probe = Client::new();
    let mut applied = Vec::new();
    for i in 1..=50 {
        write_config(proxy.dir.path(), how, i, &config(&old, &new, i));
        let written = Instant::now();
        let want = if i % 2 == 0 { "old" } else { "new" };
        let took = eventually(
            Duration::from_secs(1),
            &format!("rewrite {i} ({how:?}) to apply"),
            || {
                let probe = probe.clone();
                let addr = proxy.http;
                async move {
                    let r = probe.get(addr, HOST, "/").await.ok()?;
                    (r.backend() == want).then(|| written.elapsed())
                }
            },
        )
        .await;
        applied.push(took);
    }
    let (ok, failed, errors) = traffic.finish().await;
    assert_eq!(failed, 0, "requests failed during reloads: {errors:?}");
    assert!(ok > 100, "traffic kept flowing: {ok}");
    let status = proxy.status().await;
    assert_eq!(status["generation"], 51, "one reload per rewrite");
    assert!(status["last_reload_error"].is_null());
    applied.sort();
    eprintln!(
        "{how:?}: 50 rewrites, {ok} requests, 0 failed; apply time median {:?}, max {:?}",
        applied[applied.len() / 2],
        applied[applied.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rename_over_rewrites_under_traffic_fail_nothing() {
    rewrites_under_traffic(Write::RenameOver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_configmap_symlink_swaps_under_traffic_fail_nothing() {
    rewrites_under_traffic(Write::SymlinkSwap).await;
}

#[tokio::test]
async fn an_invalid_file_never_replaces_a_valid_one() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let proxy = ProxyBuilder::new(config(&old, &new, 0)).start().unwrap();
    let dir = proxy.dir.path().to_path_buf();
    let broken = config(&old, &new, 0)
        .replace("new = 0", "blue = 0")
        .replace("old = 100", "old = 90");
    write_config(&dir, Write::RenameOver, 1, &broken);
    let status = eventually(
        Duration::from_secs(5),
        "the reload error in /status",
        || async {
            let s = proxy.status().await;
            (!s["last_reload_error"].is_null()).then_some(s)
        },
    )
    .await;
    let errors = status["last_reload_error"]["errors"].to_string();
    assert!(errors.contains("cutover.toml:"), "{errors}");
    assert!(
        errors.contains("routes[0].weights.blue: unknown backend"),
        "{errors}"
    );
    assert_eq!(status["generation"], 1);
    assert_eq!(
        proxy.get(HOST, "/").await.backend(),
        "old",
        "still serving the last good config"
    );
    assert!(
        proxy
            .metrics()
            .await
            .contains("cutover_config_reload_errors_total 1")
    );
    proxy.wait_for_log("reload refused").await;

    write_config(&dir, Write::RenameOver, 2, "[[routes]\nthis is not toml");
    eventually(Duration::from_secs(5), "a second counted error", || async {
        proxy
            .metrics()
            .await
            .contains("cutover_config_reload_errors_total 2")
            .then_some(())
    })
    .await;
    assert_eq!(proxy.get(HOST, "/").await.backend(), "old");

    write_config(&dir, Write::RenameOver, 3, &config(&old, &new, 1));
    eventually(Duration::from_secs(5), "the good file to apply", || async {
        let s = proxy.status().await;
        (s["last_reload_error"].is_null() && s["generation"] == 2).then_some(())
    })
    .await;
    assert_eq!(proxy.get(HOST, "/").await.backend(), "new");
}

#[tokio::test]
async fn sighup_forces_a_reload() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let proxy = ProxyBuilder::new(config(&old, &new, 0)).start().unwrap();
    assert_eq!(proxy.status().await["generation"], 1);
    proxy.signal("HUP");
    eventually(
        Duration::from_secs(5),
        "generation 2 after SIGHUP",
        || async { (proxy.status().await["generation"] == 2).then_some(()) },
    )
    .await;
    proxy.wait_for_log("SIGHUP").await;
}

#[tokio::test]
async fn admin_weights_survive_a_reload_that_does_not_touch_them() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let proxy = ProxyBuilder::new(config(&old, &new, 0)).start().unwrap();
    let r = proxy.put_weights(HOST, r#"{"old":0,"new":100}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(proxy.get(HOST, "/").await.backend(), "new");
    // Same weights in the file (100/0), only a comment changed: the admin's stand.
    let dir = proxy.dir.path().to_path_buf();
    let same = config(&old, &new, 0).replace("# rewrite 0", "# edited");
    write_config(&dir, Write::RenameOver, 1, &same);
    let s = eventually(Duration::from_secs(5), "the reload", || async {
        let s = proxy.status().await;
        (s["generation"] == 3).then_some(s)
    })
    .await;
    assert_eq!(s["routes"][0]["weights_source"], "admin");
    assert_eq!(proxy.get(HOST, "/").await.backend(), "new");
    // The file now writes new weights for the route: last write wins.
    let moved = two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (100.0, 0.0),
        "writes = \"old\"",
    );
    let moved = moved.replace("old = 100, new = 0", "old = 99.99, new = 0.01");
    write_config(&dir, Write::RenameOver, 2, &moved);
    let s = eventually(Duration::from_secs(5), "the file's weights", || async {
        let s = proxy.status().await;
        (s["generation"] == 4).then_some(s)
    })
    .await;
    assert_eq!(s["routes"][0]["weights_source"], "file");
    assert_eq!(s["routes"][0]["weights"]["old"], 99.99);
}
