//! What the machine did while the plan ran: CPU per component, sampled once a
//! second from `/proc`, the cores the hypervisor took (steal), and each cluster's
//! commit rate. When the users' view fails
//! the verdict because the load could not be held (requests never sent, a rate not
//! achieved, a corrected p99 over the SLO), this names the component that ran out
//! first, with the figure, instead of leaving a bare "FAILED".
//!
//! Components are found by process, every second, so that replicas restarted or
//! added mid-run are counted: `cutover` (this process: the rehearsal, the demo
//! apps, the DNS and the balancer), `cutover-proxy` (every `proxy-process`),
//! `cutover-load` (the `load-process`), and `postgres old` / `postgres new` (each
//! postmaster and its children).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::cluster::Cluster;

/// The component names, in report order.
pub const CUTOVER: &str = "cutover (rehearse, apps)";
pub const PROXY: &str = "cutover-proxy";
pub const LOAD: &str = "cutover-load";
pub const PG_OLD: &str = "postgres old";
pub const PG_NEW: &str = "postgres new";

/// Cores used per component, one entry per second.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CpuSeries {
    /// Cores available to this machine.
    pub cores: usize,
    pub per_second: BTreeMap<&'static str, Vec<f64>>,
    /// The whole machine (every process, from `/proc/stat`), without steal.
    pub machine: Vec<f64>,
    /// Cores the hypervisor took from this virtual machine (`/proc/stat`'s steal:
    /// time it was ready to run and was given no CPU), which no process here used.
    pub stolen: Vec<f64>,
    /// When each entry's second ended, in Unix seconds.
    pub at: Vec<f64>,
}

/// A component's use: its mean over the run and its busiest 3 s.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Use {
    pub component: &'static str,
    pub mean_cores: f64,
    pub peak_cores: f64,
}

impl CpuSeries {
    /// Each component's mean and peak (highest 3-second average), busiest first.
    pub fn uses(&self) -> Vec<Use> {
        let mut out: Vec<Use> = self
            .per_second
            .iter()
            .map(|(c, v)| Use {
                component: c,
                mean_cores: mean(v),
                peak_cores: peak(v, 3),
            })
            .collect();
        out.sort_by(|a, b| b.peak_cores.total_cmp(&a.peak_cores));
        out
    }

    /// Each second's steal: (Unix time it ended, cores).
    pub fn stolen_by_second(&self) -> Vec<(f64, f64)> {
        self.at
            .iter()
            .copied()
            .zip(self.stolen.iter().copied())
            .collect()
    }

    /// The machine's busiest 3 s, in cores.
    pub fn machine_peak(&self) -> f64 {
        peak(&self.machine, 3)
    }

    /// The whole machine's use and what the hypervisor took, for the report.
    pub fn machine_use(&self) -> MachineUse {
        MachineUse {
            cores: self.cores,
            mean_cores: mean(&self.machine),
            peak_cores: self.machine_peak(),
            stolen_mean_cores: mean(&self.stolen),
            stolen_peak_cores: peak(&self.stolen, 3),
        }
    }
}

/// The whole machine over the run: cores its processes used, and cores the
/// hypervisor took (steal), each as a mean and the busiest 3 s.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MachineUse {
    pub cores: usize,
    pub mean_cores: f64,
    pub peak_cores: f64,
    pub stolen_mean_cores: f64,
    pub stolen_peak_cores: f64,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The highest average over `n` consecutive entries (all of them when fewer).
fn peak(v: &[f64], n: usize) -> f64 {
    if v.len() <= n {
        return mean(v);
    }
    v.windows(n).map(mean).fold(0.0, f64::max)
}

/// The sampler, running until [`Sampler::stop`].
pub struct Sampler {
    stop: watch::Sender<bool>,
    task: JoinHandle<CpuSeries>,
}

impl Sampler {
    /// Starts sampling once a second. `clusters` are (name, data directory).
    pub fn start(clusters: [(&'static str, &Path); 2]) -> Sampler {
        let postmasters: Vec<(&'static str, std::path::PathBuf)> = clusters
            .iter()
            .map(|(name, dir)| (*name, dir.join("postmaster.pid")))
            .collect();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            let tick = clock_ticks();
            let me = std::process::id();
            let mut series = CpuSeries {
                cores,
                ..CpuSeries::default()
            };
            let mut last = Snapshot::take(me, &postmasters);
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stopped.changed() => break,
                }
                let now = Snapshot::take(me, &postmasters);
                let secs = now.at.duration_since(last.at).as_secs_f64().max(1e-3);
                for name in [CUTOVER, PROXY, LOAD, PG_OLD, PG_NEW] {
                    let used = now.ticks_of(name, &last) as f64 / tick / secs;
                    series.per_second.entry(name).or_default().push(used);
                }
                let machine = now.machine.saturating_sub(last.machine) as f64 / tick / secs;
                series.machine.push(machine);
                let stolen = now.stolen.saturating_sub(last.stolen) as f64 / tick / secs;
                series.stolen.push(stolen);
                series.at.push(unix_now());
                last = now;
            }
            series
        });
        Sampler { stop, task }
    }

    /// Stops and returns what was sampled.
    pub async fn stop(self) -> CpuSeries {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// Clock ticks per second of `/proc`'s CPU times (`getconf CLK_TCK`; 100 on every
/// Linux this runs on, which is the fallback).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Every process's CPU ticks at one moment, keyed by pid, with its component.
struct Snapshot {
    at: std::time::Instant,
    procs: HashMap<u32, (&'static str, u64)>,
    /// Busy ticks of the whole machine (`/proc/stat`'s first line: user, nice,
    /// system, irq, softirq).
    machine: u64,
    /// Steal ticks of the whole machine.
    stolen: u64,
}

impl Snapshot {
    fn take(me: u32, postmasters: &[(&'static str, std::path::PathBuf)]) -> Snapshot {
        let masters: Vec<(&'static str, u32)> = postmasters
            .iter()
            .filter_map(|(name, file)| {
                let text = std::fs::read_to_string(file).ok()?;
                let pid = text.lines().next()?.trim().parse().ok()?;
                Some((if *name == "old" { PG_OLD } else { PG_NEW }, pid))
            })
            .collect();
        let mut procs = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let Some((ppid, ticks)) = stat(pid) else {
                    continue;
                };
                let component = if pid == me {
                    Some(CUTOVER)
                } else if let Some((name, _)) =
                    masters.iter().find(|(_, m)| *m == pid || *m == ppid)
                {
                    Some(*name)
                } else if ppid == me {
                    role_of(pid)
                } else {
                    None
                };
                if let Some(c) = component {
                    procs.insert(pid, (c, ticks));
                }
            }
        }
        let (machine, stolen) = machine_ticks().unwrap_or((0, 0));
        Snapshot {
            at: std::time::Instant::now(),
            procs,
            machine,
            stolen,
        }
    }

    /// Ticks the component's processes used since `before`; a process new since
    /// then counts from zero (it started within the second).
    fn ticks_of(&self, component: &str, before: &Snapshot) -> u64 {
        self.procs
            .iter()
            .filter(|(_, (c, _))| *c == component)
            .map(|(pid, (_, t))| {
                let was = before.procs.get(pid).map_or(0, |(_, t)| *t);
                t.saturating_sub(was)
            })
            .sum()
    }
}

/// A child of this process: which program it runs, from its command line.
fn role_of(pid: u32) -> Option<&'static str> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    match args.get(1).copied() {
        Some(b"proxy-process") => Some(PROXY),
        Some(b"load-process") => Some(LOAD),
        _ => None,
    }
}

/// `(ppid, utime + stime)` of a process.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after it.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The machine's busy and steal ticks so far.
fn machine_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    cpu_line_ticks(text.lines().next()?)
}

/// Busy (user, nice, system, irq, softirq) and steal ticks of `/proc/stat`'s
/// `cpu` line; idle and iowait count as neither, and guest time is inside user.
fn cpu_line_ticks(line: &str) -> Option<(u64, u64)> {
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    if v.len() < 4 {
        return None;
    }
    Some((at(0) + at(1) + at(2) + at(5) + at(6), at(7)))
}

/// Commits so far on a cluster (every database), for its commit rate.
pub async fn commits(cluster: &Cluster) -> Option<i64> {
    let client = cluster.connect("postgres").await.ok()?;
    let row = client
        .query_one("SELECT sum(xact_commit)::bigint FROM pg_stat_database", &[])
        .await
        .ok()?;
    row.get::<_, Option<i64>>(0)
}

/// What ran out first, when the users' view failed: the busiest component against
/// its limit (one core for the single-threaded load generator, the machine's cores
/// for everything together), in words.
pub fn diagnose(cpu: &CpuSeries, commit_rates: &[(&str, f64)], max_behind: u64) -> String {
    let uses = cpu.uses();
    let mut s = String::new();
    let machine = cpu.machine_peak();
    let stolen = peak(&cpu.stolen, 3);
    // What the machine could not give its processes: theirs, and the hypervisor's
    // (none where no steal was sampled).
    let taken: Vec<f64> = cpu
        .machine
        .iter()
        .zip(cpu.stolen.iter().chain(std::iter::repeat(&0.0)))
        .map(|(m, st)| m + st)
        .collect();
    let cores = cpu.cores as f64;
    let load = uses.iter().find(|u| u.component == LOAD);
    if let Some(l) = load.filter(|l| l.peak_cores >= 0.9) {
        let _ = write!(
            s,
            "cutover-load ran out of CPU first: {:.2} cores at its busiest (it drives its \
             connections from one thread); ",
            l.peak_cores
        );
    } else if peak(&taken, 3) >= 0.9 * cores {
        let top = uses.first().map_or("-", |u| u.component);
        let _ = write!(
            s,
            "the machine ran out of CPU: {machine:.2} of {cores:.0} cores at its busiest, \
             most of it {top}; "
        );
        if stolen >= 0.05 {
            let _ = write!(
                s,
                "the hypervisor took {stolen:.2} more (steal: this virtual machine was \
                 ready to run and given no CPU); "
            );
        }
    } else {
        let _ = write!(
            s,
            "no component was out of CPU ({machine:.2} of {cores:.0} cores at the busiest); "
        );
    }
    let parts: Vec<String> = uses
        .iter()
        .map(|u| {
            format!(
                "{} {:.2} (mean {:.2})",
                u.component, u.peak_cores, u.mean_cores
            )
        })
        .collect();
    let _ = write!(s, "peak cores: {}", parts.join(", "));
    for (name, rate) in commit_rates {
        let _ = write!(s, "; {name} {rate:.0} commits/s");
    }
    if max_behind > 0 {
        let _ = write!(
            s,
            "; at worst {max_behind} requests were due and not yet answered (every \
             connection busy)"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_is_the_busiest_three_seconds() {
        assert_eq!(peak(&[0.1, 0.2], 3), (0.1 + 0.2) / 2.0);
        let p = peak(&[0.1, 0.9, 1.0, 0.8, 0.1], 3);
        assert!((p - 0.9).abs() < 1e-9, "{p}");
    }

    #[test]
    fn this_process_is_sampled_and_its_stat_parses() {
        let me = std::process::id();
        let (ppid, _) = stat(me).unwrap();
        assert!(ppid > 0);
        let snap = Snapshot::take(me, &[]);
        assert_eq!(snap.procs.get(&me).map(|(c, _)| *c), Some(CUTOVER));
        assert!(machine_ticks().unwrap().0 > 0);
        // user nice system idle iowait irq softirq steal guest guest_nice
        assert_eq!(
            cpu_line_ticks("cpu  100 5 20 900 7 3 2 40 0 0"),
            Some((130, 40))
        );
        assert_eq!(cpu_line_ticks("cpu  100 5 20 900"), Some((125, 0)));
        assert_eq!(cpu_line_ticks("cpu"), None);
    }

    #[test]
    fn the_diagnosis_names_a_saturated_load_generator() {
        let mut cpu = CpuSeries {
            cores: 2,
            ..CpuSeries::default()
        };
        cpu.per_second.insert(LOAD, vec![0.99; 5]);
        cpu.per_second.insert(PROXY, vec![0.6; 5]);
        cpu.machine = vec![1.7; 5];
        let text = diagnose(&cpu, &[("old", 900.0)], 1200);
        assert!(
            text.starts_with("cutover-load ran out of CPU first: 0.99"),
            "{text}"
        );
        assert!(text.contains("old 900 commits/s"), "{text}");
        assert!(text.contains("1200 requests were due"), "{text}");
        cpu.per_second.insert(LOAD, vec![0.5; 5]);
        cpu.machine = vec![1.95; 5];
        let text = diagnose(&cpu, &[], 0);
        assert!(
            text.starts_with("the machine ran out of CPU: 1.95 of 2"),
            "{text}"
        );
        assert!(!text.contains("hypervisor"), "{text}");
        // Short of the cores only because the hypervisor took the rest.
        cpu.machine = vec![1.5; 5];
        cpu.stolen = vec![0.4; 5];
        let text = diagnose(&cpu, &[], 0);
        assert!(
            text.starts_with("the machine ran out of CPU: 1.50 of 2")
                && text.contains("the hypervisor took 0.40 more (steal"),
            "{text}"
        );
        cpu.stolen = vec![0.0; 5];
        let text = diagnose(&cpu, &[], 0);
        assert!(text.starts_with("no component was out of CPU"), "{text}");
    }
}
