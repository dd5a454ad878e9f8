//! Everything a rehearsal starts, owned in one place so that every way out (the
//! verdict, an error, Ctrl-C) stops it in the same order: the load, the proxy, the
//! apps, the databases, the run directory. With `--keep` the proxy, the apps and
//! the databases stay up for inspection until Ctrl-C, and the databases (with
//! their directories and the run directory) after it too.
//!
//! It also copies the logs into the report directory, every password replaced by
//! `********`, so a failed rehearsal can be understood after its clusters are gone.

use std::fmt::Write as _;
use std::path::Path;

use super::Progress;
use super::app::Site;
use super::cluster::Cluster;
use super::fleet::Fleet;
use super::platform::{self, PLATFORM};
use super::procs::{Proc, ProxyProc};
use super::redis::Redis;

/// What is running. Fields drop in declaration order, which is the stopping order.
pub(super) struct Rig {
    pub load: Option<Proc>,
    pub proxy: Option<ProxyProc>,
    /// With `--replicas` above 1, instead of `proxy`.
    pub fleet: Option<Fleet>,
    pub sites: Option<(Site, Site)>,
    /// The weather app's cache on each side.
    pub redis: Option<(Redis, Redis)>,
    pub clusters: Option<(Cluster, Cluster)>,
    pub dir: Option<tempfile::TempDir>,
    /// Every password in play, for redaction.
    pub secrets: Vec<String>,
    keep: bool,
}

impl Rig {
    pub fn new(keep: bool) -> Rig {
        Rig {
            load: None,
            proxy: None,
            fleet: None,
            sites: None,
            redis: None,
            clusters: None,
            dir: None,
            secrets: Vec::new(),
            keep,
        }
    }

    /// The proxy and the apps are up (there is something to inspect).
    pub fn serving(&self) -> bool {
        (self.proxy.is_some() || self.fleet.is_some()) && self.sites.is_some()
    }

    /// Replaces every password in `text`.
    pub fn redact(&self, text: &str) -> String {
        redact(text, &self.secrets)
    }

    /// Copies the logs (proxy, load, both servers) into `out/logs`, redacted.
    /// Best effort: a log that cannot be copied is skipped with a note.
    pub fn collect_logs(&self, out: &Path) {
        let mut logs: Vec<(String, String)> = Vec::new();
        if let Some(dir) = &self.dir {
            let replicas = self
                .fleet
                .as_ref()
                .map(Fleet::log_names)
                .unwrap_or_default();
            let names = ["proxy.log", "load.log", "redis-old.log", "redis-new.log"]
                .into_iter()
                .map(str::to_string)
                .chain(replicas);
            for name in names {
                if let Ok(text) = std::fs::read_to_string(dir.path().join(&name)) {
                    logs.push((name, text));
                }
            }
        }
        if let Some(fleet) = &self.fleet {
            let mut lines = fleet.balancer.stats().log;
            lines.push(String::new());
            logs.push(("balancer.log".into(), lines.join("\n")));
        }
        if let Some((old, new)) = &self.clusters {
            for c in [old, new] {
                logs.push((format!("postgres-{}.log", c.name()), c.log()));
            }
        }
        if logs.is_empty() {
            return;
        }
        let dir = out.join("logs");
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!(
                "cutover rehearse: cannot keep the logs in {}: {e}",
                dir.display()
            );
            return;
        }
        for (name, text) in logs {
            let path = dir.join(&name);
            if let Err(e) = std::fs::write(&path, self.redact(&text)) {
                eprintln!("cutover rehearse: cannot write {}: {e}", path.display());
            }
        }
    }

    /// What is kept running and how to reach it, for `--keep`.
    pub fn show(&self) {
        let (Some((old_site, new_site)), Some((old, new))) = (&self.sites, &self.clusters) else {
            return;
        };
        let front = match (&self.proxy, &self.fleet) {
            (Some(proxy), _) => proxy.http,
            (None, Some(fleet)) => fleet.balancer.addr,
            (None, None) => return,
        };
        let mut s =
            String::from("\nkept running for inspection; Ctrl-C stops the proxy and the apps:\n");
        let _ = writeln!(s, "  proxy        http://{front}/ (routes by Host):");
        for app in &PLATFORM {
            let path = if app.table.is_some() {
                "/items"
            } else {
                "/forecast/lisbon"
            };
            let _ = writeln!(
                s,
                "               curl -si -H 'Host: {}' http://{front}{path}",
                app.host(),
            );
        }
        if let Some(proxy) = &self.proxy {
            let admin = proxy.admin;
            let _ = writeln!(s, "  status page  http://{admin}/");
            let _ = writeln!(
                s,
                "  admin API    http://{admin}/status  http://{admin}/metrics"
            );
        } else if let Some(fleet) = &self.fleet {
            s.push_str(&fleet.show());
        }
        let _ = writeln!(
            s,
            "  sites        old http://{}  new http://{}",
            old_site.addr, new_site.addr
        );
        if let Some((old, new)) = &self.redis {
            let _ = writeln!(
                s,
                "  caches       old redis://127.0.0.1:{}  new redis://127.0.0.1:{} \
                 (passwords in the passwords file)",
                old.port, new.port
            );
        }
        let _ = writeln!(s, "  old database {}", old.dsn_shown("DB"));
        let _ = writeln!(s, "  new database {}", new.dsn_shown("DB"));
        let dbs: Vec<&str> = platform::stateful().map(|a| a.database()).collect();
        let _ = writeln!(s, "               DB is one of: {}", dbs.join(", "));
        if let Some(dir) = &self.dir {
            let _ = writeln!(
                s,
                "  passwords    {} (superusers, app and writer roles, caches; mode 0600)",
                dir.path().join("passwords").display()
            );
            let _ = writeln!(
                s,
                "  files        {} (plan, configs, scenario, logs, ledger)",
                dir.path().display()
            );
        }
        eprint!("{s}");
    }

    /// Stops everything (or, with `--keep`, everything but the databases and the
    /// files), in order.
    pub async fn shutdown(mut self, progress: &Progress) {
        if let Some(mut load) = self.load.take() {
            load.kill();
        }
        if let Some(mut proxy) = self.proxy.take() {
            proxy.proc.kill();
        }
        if let Some(mut fleet) = self.fleet.take() {
            fleet.kill();
        }
        drop(self.sites.take());
        drop(self.redis.take());
        let clusters = self.clusters.take();
        if self.keep {
            let dir = self.dir.take().map(tempfile::TempDir::keep);
            if let Some((old, new)) = &clusters {
                eprintln!(
                    "stopped the proxy and the apps; the databases keep running. \
                     Stop them and remove the files with:"
                );
                for c in [old, new] {
                    eprintln!("  {}", c.stop_command());
                }
                let mut dirs = format!("{} {}", old.dir().display(), new.dir().display());
                if let Some(d) = &dir {
                    let _ = write!(dirs, " {}", d.display());
                }
                eprintln!("  rm -rf {dirs}");
            }
            // A kept cluster is left running when dropped.
            drop(clusters);
            return;
        }
        if let Some((old, new)) = clusters {
            let stopped = tokio::task::spawn_blocking(move || {
                old.stop();
                new.stop();
            })
            .await;
            if stopped.is_err() {
                progress.line("stopping the databases failed; see `ps -u postgres`");
            }
        }
        drop(self.dir.take());
        progress.line("stopped the load, the proxy, the apps, the caches and the databases");
    }
}

/// `text` with every non-empty secret replaced by `********`.
pub(super) fn redact(text: &str, secrets: &[String]) -> String {
    let mut clean = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        if clean.contains(s.as_str()) {
            clean = clean.replace(s.as_str(), "********");
        }
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_replaced() {
        let secrets = vec!["Secret123".to_string(), String::new()];
        assert_eq!(
            redact("dsn password=Secret123 x Secret123", &secrets),
            "dsn password=******** x ********"
        );
        assert_eq!(redact("nothing", &secrets), "nothing");
    }
}
