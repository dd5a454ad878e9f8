//! `rehearse --replicas N`: N `cutover-proxy` replicas in fleet mode, run the way a
//! Kubernetes Deployment behind a Service runs them, on this machine.
//!
//! - Replica `i` ("pod" `proxy-i`) has its own loopback address 127.0.0.(2+i):
//!   its admin API listens there at port P, which every replica shares (as pods
//!   share a container port), and its data listener at a port of its own. Its
//!   config, control socket and state file are in its own directory.
//! - [`Dns`] resolves `proxies.rehearse` to every running replica's address (a
//!   headless Service publishing not-ready addresses); the replicas find their
//!   peers there (`[fleet] peers`) and so does the plan (`[proxies] discover`).
//! - [`Balancer`] is the one address the users connect to; a replica is in it only
//!   while its `/readyz` answers 200.
//!
//! This module owns the replicas' lifecycle (start, restart, add, stop) and their
//! files and logs; *when* a replica is restarted or added during the migration is
//! [`exercise`]'s, how the report tells it is [`report`]'s, and what the migration
//! does is the plan runner's.

mod consistency;
mod exercise;
mod report;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(super) use exercise::{FleetEvent, exercise};
pub(super) use report::{moments, section};

use super::balancer::Balancer;
use super::binaries::Program;
use super::dns::Dns;
use super::platform::{self, PlanProxies, ReplicaConf};
use super::procs::{self, Proc};
use super::{RehearseError, io};

/// The name the replicas' addresses are published under.
pub const SERVICE: &str = "proxies.rehearse";

/// The most replicas `--replicas` takes: one more is added during the run, and
/// each needs its own loopback address and a share of this machine.
pub const MAX_REPLICAS: usize = 8;

/// How long a replica may take from its start to `/readyz` 200: its bootstrap
/// timeout (5 s) with room to spare.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// How long a replica may drain after SIGTERM: its `[proxy] grace` (5 s) plus
/// slack; then it is killed, and the event says so.
const EXIT_WITHIN: Duration = Duration::from_secs(10);

/// One replica.
pub(super) struct Replica {
    pub name: String,
    pub ip: Ipv4Addr,
    pub admin: SocketAddr,
    /// Its data listener while it runs.
    pub http: Option<SocketAddr>,
    config: PathBuf,
    /// Its current process.
    proc: Option<Proc>,
    /// Processes started so far (a restart starts another).
    starts: u32,
}

impl Replica {
    /// The log of its `n`-th process (from 1).
    fn log_name(&self, n: u32) -> String {
        if n <= 1 {
            format!("{}.log", self.name)
        } else {
            format!("{}.start{n}.log", self.name)
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    pub fn running(&self) -> bool {
        self.proc.is_some()
    }
}

/// The fleet and what stands around it.
pub(super) struct Fleet {
    pub dns: Dns,
    pub balancer: Balancer,
    /// The admin port every replica listens on.
    pub port: u16,
    pub replicas: Vec<Replica>,
    /// Restarts and additions, in order.
    pub events: Vec<FleetEvent>,
    /// What the looks at the replicas' states found.
    consistency: consistency::Consistency,
    bin: Program,
    dir: PathBuf,
    sites: platform::Backends,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("dns", &self.dns.addr)
            .field("balancer", &self.balancer.addr)
            .field("port", &self.port)
            .field("replicas", &self.replicas.len())
            .finish()
    }
}

/// The loopback address of replica `i`.
fn replica_ip(i: usize) -> Ipv4Addr {
    // i < MAX_REPLICAS + 1, far below 253.
    Ipv4Addr::new(127, 0, 0, 2 + i as u8)
}

/// A port free on every address of `ips`, found by binding it on each.
fn shared_port(ips: &[Ipv4Addr]) -> Result<u16, RehearseError> {
    let Some(&first) = ips.first() else {
        return Err(RehearseError::Step("no replica address".into()));
    };
    for _ in 0..50 {
        let probe = std::net::TcpListener::bind((first, 0)).map_err(|e| {
            RehearseError::Step(format!(
                "cannot listen on {first}: {e}; --replicas needs the loopback addresses \
                 127.0.0.2 and up (Linux routes all of 127.0.0.0/8 to lo)"
            ))
        })?;
        let port = probe
            .local_addr()
            .map_err(io("read a probe's port"))?
            .port();
        let held: Vec<std::net::TcpListener> = ips[1..]
            .iter()
            .map_while(|ip| std::net::TcpListener::bind((*ip, port)).ok())
            .collect();
        if held.len() == ips.len() - 1 {
            return Ok(port);
        }
    }
    Err(RehearseError::Step(format!(
        "found no port free on all of {}",
        ips.iter()
            .map(Ipv4Addr::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// `GET /readyz` until it answers 200; how long that took from `since`.
async fn wait_ready(
    name: &str,
    admin: SocketAddr,
    proc: &mut Proc,
    since: Instant,
) -> Result<Duration, String> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Ok((200, _)) = procs::http_get(admin, "/readyz", Duration::from_secs(2)).await {
            return Ok(since.elapsed());
        }
        if let Some(status) = proc.exited() {
            return Err(format!(
                "{name} exited ({status}) before it was ready:\n{}",
                procs::last_lines(&proc.output(), 15)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{name}: GET /readyz did not answer 200 within {}s:\n{}",
                READY_WITHIN.as_secs(),
                procs::last_lines(&proc.output(), 15)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a replica's process ended after SIGTERM, from its exit and its log.
#[derive(Debug, Clone)]
pub(super) struct Stopped {
    pub took: Duration,
    /// Its exit status, or that it had to be killed.
    pub exit: String,
    /// "stopped accepting; letting in-flight requests finish": the connections open.
    pub open_connections: Option<u64>,
    /// Whether every connection finished within the grace period.
    pub drained: bool,
}

impl Fleet {
    /// The DNS responder, the balancer and a shared admin port for `n` replicas
    /// and the one added later; nothing started yet. The balancer's times count
    /// from `epoch`, the rehearsal's start.
    pub fn new(
        n: usize,
        bin: &Program,
        dir: &Path,
        sites: platform::Backends,
        epoch: Instant,
    ) -> Result<Fleet, RehearseError> {
        let ips: Vec<Ipv4Addr> = (0..=n).map(replica_ip).collect();
        let port = shared_port(&ips)?;
        let dns = Dns::start(SERVICE).map_err(io("start the DNS responder"))?;
        let balancer = Balancer::start(epoch).map_err(io("start the balancer"))?;
        Ok(Fleet {
            dns,
            balancer,
            port,
            replicas: Vec::new(),
            events: Vec::new(),
            consistency: consistency::Consistency::default(),
            bin: bin.clone(),
            dir: dir.to_path_buf(),
            sites,
        })
    }

    /// What the plan's `[proxies]` says.
    pub fn plan_proxies(&self) -> PlanProxies {
        PlanProxies::Discover {
            name: SERVICE.into(),
            port: self.port,
            nameserver: self.dns.addr,
        }
    }

    /// The admin addresses of the replicas running now.
    pub fn admins(&self) -> Vec<SocketAddr> {
        self.replicas
            .iter()
            .filter(|r| r.running())
            .map(|r| r.admin)
            .collect()
    }

    /// Replica `i`'s config, written once; every process of it reads the same.
    fn create(&mut self, i: usize) -> Result<(), RehearseError> {
        let ip = replica_ip(i);
        let name = format!("proxy-{i}");
        let home = self.dir.join(&name);
        std::fs::create_dir_all(&home).map_err(io(format!("create {}", home.display())))?;
        let admin = SocketAddr::new(IpAddr::V4(ip), self.port);
        let peers = format!("{SERVICE}:{}", self.port);
        let state_file = home.join("state.json");
        let text = platform::replica_config(
            &self.sites,
            &ReplicaConf {
                name: &name,
                http: SocketAddr::new(IpAddr::V4(ip), 0),
                admin,
                peers: &peers,
                nameserver: self.dns.addr,
                state_file: &state_file,
            },
        );
        let config = home.join("cutover-proxy.toml");
        std::fs::write(&config, text).map_err(io(format!("write {}", config.display())))?;
        self.replicas.push(Replica {
            name,
            ip,
            admin,
            http: None,
            config,
            proc: None,
            starts: 0,
        });
        Ok(())
    }

    /// Starts a process for replica `i` and lists it in DNS at once, as a pod is
    /// listed as soon as it has an address; it is not in the balancer yet.
    fn spawn(&mut self, i: usize) -> Result<u32, RehearseError> {
        let r = &mut self.replicas[i];
        r.starts += 1;
        let log = self.dir.join(r.log_name(r.starts));
        let proc = procs::spawn_proxy(&self.bin, &r.config, &log).map_err(RehearseError::Step)?;
        let pid = proc.pid();
        r.proc = Some(proc);
        self.dns.add(r.ip);
        Ok(pid)
    }

    /// Waits until replica `i` serves (its data listener logged) and answers
    /// `/readyz` 200; how long since `since`.
    async fn until_ready(&mut self, i: usize, since: Instant) -> Result<Duration, RehearseError> {
        let r = &mut self.replicas[i];
        let Some(proc) = r.proc.take() else {
            return Err(RehearseError::Step(format!("{} is not running", r.name)));
        };
        let serving = procs::wait_listening(proc)
            .await
            .map_err(|e| RehearseError::Step(format!("{}: {e}", r.name)))?;
        r.http = Some(serving.http);
        let mut proc = serving.proc;
        let ready = wait_ready(&r.name, r.admin, &mut proc, since).await;
        r.proc = Some(proc);
        ready.map_err(RehearseError::Step)
    }

    /// Starts the first `n` replicas together (each finds the others through
    /// DNS) and puts each in the balancer once ready.
    pub async fn start(&mut self, n: usize) -> Result<(), RehearseError> {
        let since = Instant::now();
        for i in 0..n {
            self.create(i)?;
            self.spawn(i)?;
        }
        for i in 0..n {
            self.until_ready(i, since).await?;
            self.admit(i);
        }
        Ok(())
    }

    /// Puts replica `i` in the balancer.
    fn admit(&self, i: usize) {
        let r = &self.replicas[i];
        if let Some(http) = r.http {
            self.balancer.add(&r.name, http);
        }
    }

    /// Stops replica `i` as Kubernetes stops a pod: out of the balancer, SIGTERM,
    /// and a wait for it to exit (it drains what is in flight); then out of DNS,
    /// since it no longer runs.
    async fn terminate(&mut self, i: usize) -> Result<Stopped, RehearseError> {
        let r = &mut self.replicas[i];
        self.balancer.remove(&r.name);
        let Some(mut proc) = r.proc.take() else {
            return Err(RehearseError::Step(format!("{} is not running", r.name)));
        };
        let since = Instant::now();
        proc.signal("TERM")
            .map_err(io(format!("send SIGTERM to {}", r.name)))?;
        let exit = match proc.wait(EXIT_WITHIN).await {
            Some(status) => status.to_string(),
            None => {
                proc.kill();
                format!(
                    "still running {}s after SIGTERM: killed",
                    EXIT_WITHIN.as_secs()
                )
            }
        };
        let took = since.elapsed();
        let log = proc.output();
        r.http = None;
        self.dns.remove(r.ip);
        Ok(Stopped {
            took,
            exit,
            open_connections: drain_figure(&log),
            drained: log.contains("all connections finished"),
        })
    }

    /// Adds replica number `self.replicas.len()` at its own address and starts it
    /// (in DNS at once); returns its index and pid. [`Fleet::until_ready`] and
    /// [`Fleet::admit`] follow.
    fn add(&mut self) -> Result<(usize, u32), RehearseError> {
        let i = self.replicas.len();
        self.create(i)?;
        let pid = self.spawn(i)?;
        Ok((i, pid))
    }

    /// Kills every replica (SIGKILL) and stops the balancer and the DNS
    /// responder, for the rig's shutdown.
    pub fn kill(&mut self) {
        for r in &mut self.replicas {
            if let Some(mut p) = r.proc.take() {
                p.kill();
            }
        }
    }

    /// Every replica log file in the run directory, by file name.
    pub fn log_names(&self) -> Vec<String> {
        self.replicas
            .iter()
            .flat_map(|r| (1..=r.starts).map(|n| r.log_name(n)))
            .collect()
    }

    /// What `--keep` prints about the fleet.
    pub fn show(&self) -> String {
        let mut s = format!(
            "  balancer     http://{}/ (L4, round-robin per connection over the ready replicas)\n",
            self.balancer.addr
        );
        for r in self.replicas.iter().filter(|r| r.running()) {
            s.push_str(&format!(
                "  {:<12} admin http://{}/  data {}\n",
                r.name,
                r.admin,
                r.http.map_or_else(|| "-".into(), |h| h.to_string())
            ));
        }
        s.push_str(&format!(
            "  DNS          {SERVICE} at {} (dig @{} -p {} {SERVICE})\n",
            self.dns.addr,
            self.dns.addr.ip(),
            self.dns.addr.port()
        ));
        s
    }
}

/// `open_connections=N` from the proxy's "stopped accepting" log line.
fn drain_figure(log: &str) -> Option<u64> {
    log.lines()
        .map(procs::strip_ansi)
        .find(|l| l.contains("stopped accepting"))
        .and_then(|l| {
            l.split("open_connections=").nth(1).map(|rest| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
        })
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_get_consecutive_loopback_addresses() {
        assert_eq!(replica_ip(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(replica_ip(MAX_REPLICAS), Ipv4Addr::new(127, 0, 0, 10));
    }

    #[test]
    fn a_shared_port_is_free_on_every_address() {
        let ips: Vec<Ipv4Addr> = (0..3).map(replica_ip).collect();
        let port = shared_port(&ips).unwrap();
        for ip in ips {
            std::net::TcpListener::bind((ip, port)).unwrap();
        }
    }

    #[test]
    fn the_drain_figure_comes_from_the_log_with_or_without_colours() {
        let plain = "x INFO stopped accepting; letting in-flight requests finish reason=\"SIGTERM\" open_connections=17 grace=5s\n";
        assert_eq!(drain_figure(plain), Some(17));
        let coloured = "x \u{1b}[32m INFO\u{1b}[0m stopped accepting; letting in-flight requests finish \u{1b}[3mopen_connections\u{1b}[0m\u{1b}[2m=\u{1b}[0m4\n";
        assert_eq!(drain_figure(coloured), Some(4));
        assert_eq!(drain_figure("nothing"), None);
    }
}
