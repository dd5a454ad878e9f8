//! A proxy replica that the autoscaler adds in the middle of a switchover. Three
//! replicas are discovered by DNS (the harness's server standing in for a headless
//! Service); the controller stalls for 3 s once every replica holds
//! (`CUTOVER_PAUSE_AT=after-hold:3s`, a slow controller), and a fourth replica
//! starts then. It must start held (adopted from its peers before it serves), its
//! writes must wait, and after the release every write any replica acknowledged is
//! on the new database.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use cutover_tests::{App, DnsServer, Proxy, ProxyBuilder, eventually, two_backend_config};
use serde_json::Value;

use crate::common::{DATABASES, Pair, PlanDir, Traffic, binaries, item_ids, route};

const HOST: &str = "shop.test";
const NAME: &str = "proxies.fleet.test";

/// One port free on 127.0.0.2 to 127.0.0.(1+n): every replica's admin listener
/// uses it, on its own address, as pods behind a headless Service do.
fn shared_port(n: u8) -> u16 {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = first.local_addr().unwrap().port();
        let others: Vec<_> = (3..2 + n)
            .map(|i| TcpListener::bind((Ipv4Addr::new(127, 0, 0, i), port)))
            .collect();
        if others.iter().all(Result::is_ok) {
            return port;
        }
    }
    panic!("no port free on 127.0.0.2-{} after 50 tries", 1 + n);
}

fn replica(i: u8, port: u16, dns: SocketAddr, cfg: &str) -> Proxy {
    let cfg = cfg.replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"127.0.0.{}:{port}\"", 1 + i),
    );
    let cfg = format!(
        "{cfg}\n[fleet]\nname = \"replica-{i}\"\npeers = \"{NAME}:{port}\"\n\
         bootstrap_timeout = \"5s\"\nsync_interval = \"1s\"\n\n\
         [resolver]\nnameservers = [\"{dns}\"]\n"
    );
    ProxyBuilder::new(cfg)
        .start()
        .unwrap_or_else(|(code, log)| panic!("replica {i} did not start ({code:?}):\n{log}"))
}

fn ips(n: u8) -> Vec<Ipv4Addr> {
    (0..n).map(|i| Ipv4Addr::new(127, 0, 0, 2 + i)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_added_during_the_hold_starts_held_and_loses_no_write() {
    binaries().await;
    let _db = DATABASES.acquire().await.unwrap();
    let pair = Pair::start_seeded(200).await;
    let old_app = App::start("old", &Pair::app_dsn(&pair.old));
    let new_app = App::start("new", &Pair::app_dsn(&pair.new));
    let cfg = two_backend_config(
        old_app.addr,
        new_app.addr,
        &[HOST],
        (100.0, 0.0),
        "writes = \"old\"",
    );
    let dns = DnsServer::start(1);
    let port = shared_port(4);
    dns.set(NAME, &ips(3));
    let mut replicas: Vec<Proxy> = (1..=3).map(|i| replica(i, port, dns.addr, &cfg)).collect();

    let mut pd = PlanDir::new(&format!(
        r#"name = "fleet"

[proxies]
discover = "{NAME}:{port}"
nameservers = ["{}"]

[[apps]]
name = "shop"
route = "{HOST}"
[apps.database]
source_env = "SHOP_SOURCE"
target_env = "SHOP_TARGET"

[[steps]]
weights = {{ old = 50, new = 50 }}
bake = "2s"

[switchover]
max_lag = "5s"
max_pause = "20s"
"#,
        dns.addr
    ));
    pd.env = pair.env_prefixed("SHOP");
    pd.env
        .push(("CUTOVER_PAUSE_AT".into(), "after-hold:3s".into()));
    let limit = Duration::from_secs(120);
    let mut traffic: Vec<Traffic> = replicas
        .iter()
        .map(|r| Traffic::start(r.http, HOST, true, 2, Duration::from_millis(25), limit))
        .collect();
    traffic[0].until_sent(10).await;
    let run = pd.spawn_run(&[]);

    // The hold is on every replica: the fourth one starts now.
    let held = |s: &Value| route(s, HOST)["hold"] != Value::Null;
    eventually(Duration::from_secs(90), "the switchover's hold", || async {
        let s = replicas[0].status().await;
        held(&s).then_some(())
    })
    .await;
    dns.set(NAME, &ips(4));
    let fourth = replica(4, port, dns.addr, &cfg);
    // It serves nothing before it has its peers' state, so its first status
    // already shows the hold and the writes still on old.
    let s = fourth.status().await;
    let r = route(&s, HOST);
    assert!(held(&s), "the new replica is not held: {r:#}");
    assert_eq!(r["writes"], "old", "{r:#}");
    let deadline_then = r["hold"]["deadline"].as_f64().unwrap();
    let peer = route(&replicas[0].status().await, HOST)["hold"]["deadline"]
        .as_f64()
        .unwrap();
    assert!(
        (deadline_then - peer).abs() < 0.01,
        "the adopted hold keeps its deadline: {deadline_then} vs {peer}"
    );
    traffic.push(Traffic::start(
        fourth.http,
        HOST,
        true,
        2,
        Duration::from_millis(25),
        limit,
    ));
    replicas.push(fourth);

    let out = run.wait(Duration::from_secs(120)).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    traffic[3].until_sent(10).await;
    let mut acked = Vec::new();
    for t in traffic {
        let seen = t.stop().await;
        assert!(seen.errors.is_empty(), "{:?}", seen.errors);
        assert_eq!(
            seen.codes.keys().copied().collect::<Vec<_>>(),
            vec![201],
            "{:?}",
            seen.codes
        );
        acked.extend(seen.acked);
    }
    let on_new = item_ids(&pair.new).await;
    let missing: Vec<&i64> = acked.iter().filter(|id| !on_new.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes are not on the new database: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    for (i, r) in replicas.iter().enumerate() {
        let s = r.status().await;
        let rt = route(&s, HOST);
        assert_eq!(rt["hold"], Value::Null, "replica {}: {rt:#}", i + 1);
        assert_eq!(rt["writes"], "new", "replica {}: {rt:#}", i + 1);
    }
    // Every replica serves the same epoch.
    let epochs: Vec<u64> = {
        let mut e = Vec::new();
        for r in &replicas {
            e.push(r.status().await["epoch"].as_u64().unwrap());
        }
        e
    };
    assert!(epochs.windows(2).all(|w| w[0] == w[1]), "{epochs:?}");
    // The run's report names the replica that appeared.
    let report = pd.report();
    let text = report.to_string();
    assert!(
        text.contains(&format!("127.0.0.5:{port}")),
        "the report does not name the fourth replica: {:#}",
        report["replicas"]
    );
}
