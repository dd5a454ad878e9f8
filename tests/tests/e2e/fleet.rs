//! The fleet: replicas share the runtime state (weights, write sides, holds) by
//! epoch; a replacement adopts it before it serves, and a partitioned replica
//! catches up. Three real `cutover-proxy` processes per test; their admin
//! listeners share one port on 127.0.0.2-4 where the peers are found by a DNS name
//! (the harness's DNS server), as a headless Service would give them. One
//! replica's epochs and state file: `fleet_epoch.rs`, with the helpers here.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use cutover_tests::{
    Backend, Client, DnsServer, Proxy, ProxyBuilder, Relay, eventually, free_port_on,
    listeners_on_one_port,
};
use http::Method;
use serde_json::Value;

pub(crate) const HOST: &str = "shop.test";
/// The name every replica's admin address is found under.
const PEERS: &str = "replicas.test";

fn loopback(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// A replica's config: backends `old` and `new`, one route for [`HOST`] that
/// writes to `old`, and `fleet` as the body of `[fleet]` (after its name).
pub(crate) fn config(
    name: &str,
    (http, admin): (&str, &str),
    (old, new): (SocketAddr, SocketAddr),
    weights: (f64, f64),
    fleet: &str,
    dns: Option<SocketAddr>,
) -> String {
    let resolver = dns
        .map(|d| format!("[resolver]\nnameservers = [\"{d}\"]\n\n"))
        .unwrap_or_default();
    format!(
        "[listen]\nhttp = \"{http}\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [proxy]\nthreads = 2\ngrace = \"2s\"\n\n{resolver}\
         [fleet]\nname = \"{name}\"\n{fleet}\n\n\
         [backends.old]\naddrs = [\"{old}\"]\n\n[backends.new]\naddrs = [\"{new}\"]\n\n\
         [[routes]]\nhosts = [\"{HOST}\"]\nweights = {{ old = {}, new = {} }}\nwrites = \"old\"\n",
        weights.0, weights.1
    )
}

/// Starts every config at once (each replica's bootstrap waits for a peer, so
/// they must come up together), then waits until all of them serve.
async fn start_fleet(configs: Vec<String>) -> Vec<Proxy> {
    let mut fleet: Vec<Proxy> = configs
        .into_iter()
        .map(|c| {
            ProxyBuilder::new(c)
                .start_until_admin()
                .unwrap_or_else(|(s, log)| panic!("replica exited ({s:?}):\n{log}"))
        })
        .collect();
    for p in &mut fleet {
        p.wait_serving(Duration::from_secs(15)).await;
    }
    fleet
}

pub(crate) async fn state(p: &Proxy) -> Value {
    let r = p.admin_call(Method::GET, "/state", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).expect("/state is JSON")
}

/// `(old, new)` percent of [`HOST`]'s route in a `/state`.
pub(crate) fn weights(st: &Value) -> (f64, f64) {
    let w = &st["routes"][HOST]["weights"];
    (
        w["old"].as_f64().unwrap_or(f64::NAN),
        w["new"].as_f64().unwrap_or(f64::NAN),
    )
}

pub(crate) fn epoch(v: &Value) -> u64 {
    v["epoch"]
        .as_u64()
        .unwrap_or_else(|| panic!("no epoch in {v}"))
}

/// The side that serves `user` (the sticky cookie's value) at `addr`.
async fn side(client: &Client, addr: SocketAddr, user: &str) -> String {
    let cookie = format!("cutover={user}");
    let r = client
        .send(addr, Method::GET, HOST, "/", &[("cookie", &cookie)], "")
        .await
        .unwrap_or_else(|e| panic!("GET for {user} at {addr}: {e}"));
    assert_eq!(r.status, 200, "{user} at {addr}: {}", r.body);
    r.backend().to_string()
}

/// Each user's side at `p`, 50 requests in flight at a time.
async fn sides(p: &Proxy, users: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(users.len());
    for chunk in users.chunks(50) {
        let asks = chunk.iter().map(|u| side(p.client(), p.http, u));
        out.extend(futures_util::future::join_all(asks).await);
    }
    out
}

/// Each user's side, asserted to be the same on every replica.
async fn sides_everywhere(fleet: &[Proxy], users: &[String]) -> Vec<String> {
    let first = sides(&fleet[0], users).await;
    for (i, p) in fleet.iter().enumerate().skip(1) {
        let here = sides(p, users).await;
        let differ: Vec<_> = (0..users.len())
            .filter(|&u| here[u] != first[u])
            .map(|u| (&users[u], &first[u], &here[u]))
            .collect();
        assert!(
            differ.is_empty(),
            "{} of {} users land elsewhere on replica {i} than on replica 0, e.g. {:?}",
            differ.len(),
            users.len(),
            &differ[..differ.len().min(5)]
        );
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_replaced_mid_bake_adopts_the_fleets_weights_before_it_serves() {
    let dns = DnsServer::start(1);
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let ips = [loopback(2), loopback(3), loopback(4)];
    let port = free_port_on(&ips);
    dns.set(PEERS, &ips);
    let fleet_conf = |bootstrap: &str| {
        format!(
            "peers = \"{PEERS}:{port}\"\nbootstrap_timeout = \"{bootstrap}\"\n\
             sync_interval = \"200ms\"\nstate_file = \"state.json\""
        )
    };
    let backends = (old.addr, new.addr);
    let replica = |name: &str, ip: Ipv4Addr| {
        let admin = format!("{ip}:{port}");
        config(
            name,
            ("127.0.0.1:0", &admin),
            backends,
            (100.0, 0.0),
            &fleet_conf("3s"),
            Some(dns.addr),
        )
    };
    let mut fleet = start_fleet(vec![
        replica("r1", ips[0]),
        replica("r2", ips[1]),
        replica("r3", ips[2]),
    ])
    .await;

    // The controller's bake step, on every replica, at epoch 5.
    for p in &fleet {
        let r = p
            .put_weights(HOST, r#"{"weights":{"old":50,"new":50},"epoch":5}"#)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let st = state(p).await;
        assert_eq!((epoch(&st), weights(&st)), (5, (50.0, 50.0)), "{st}");
    }
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let before = sides_everywhere(&fleet, &users).await;
    let on_new = before.iter().filter(|s| *s == "new").count();
    assert!(
        (400..=600).contains(&on_new),
        "50/50 put {on_new}/1000 on new"
    );

    fleet[2].kill();
    // The replacement: a fresh directory (no state file), a file that says 100/0,
    // the same admin address. Its peers cannot be found yet (the DNS server
    // fails), so it must not serve; its data port is chosen here so that a
    // request can be sent before it logs one.
    dns.fail(true);
    let http_port = free_port_on(&[loopback(1)]);
    let replacement = config(
        "r3-new",
        (
            &format!("127.0.0.1:{http_port}"),
            &format!("{}:{port}", ips[2]),
        ),
        backends,
        (100.0, 0.0),
        &fleet_conf("10s"),
        Some(dns.addr),
    );
    let mut fresh = ProxyBuilder::new(replacement)
        .start_until_admin()
        .unwrap_or_else(|(s, log)| panic!("replacement exited ({s:?}):\n{log}"));
    let r = fresh.admin_call(Method::GET, "/readyz", "").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("starting"), "{}", r.body);
    // A user on new at 50/50 (on old under the file's 100/0) asks it now.
    let probe = users[before.iter().position(|s| s == "new").unwrap()].clone();
    let data = SocketAddr::from(([127, 0, 0, 1], http_port));
    let mut pending = tokio::spawn(async move { side(&Client::new(), data, &probe).await });
    // Not answered within half a second: a window for a negative check, not a wait
    // for anything to happen (the kernel queues the connection meanwhile).
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut pending)
            .await
            .is_err(),
        "the replacement answered a request before it asked its peers:\n{}",
        fresh.logs()
    );
    assert!(!fresh.logs().contains("listening for traffic"));
    let r = fresh.admin_call(Method::GET, "/readyz", "").await;
    assert_eq!(r.status, 503, "{}", r.body);

    dns.fail(false);
    let mended = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the replacement to be ready",
        || async {
            (fresh.admin_call(Method::GET, "/readyz", "").await.status == 200).then_some(())
        },
    )
    .await;
    let ready_after = mended.elapsed();
    let st = state(&fresh).await;
    assert_eq!(
        (epoch(&st), weights(&st)),
        (5, (50.0, 50.0)),
        "ready, so it must serve the fleet's state: {st}"
    );
    assert_eq!(st["routes"][HOST]["weights_source"], "admin", "{st}");
    for p in &fleet[..2] {
        assert_eq!(epoch(&state(p).await), 5);
    }
    assert_eq!(
        pending.await.unwrap(),
        "new",
        "the request that waited was served at 50/50"
    );
    assert_eq!(fresh.wait_serving(Duration::from_secs(5)).await, data);
    eprintln!("replacement: ready {ready_after:?} after its peers could be found");

    fleet[2] = fresh;
    let after = sides_everywhere(&fleet, &users).await;
    let moved: Vec<_> = (0..users.len())
        .filter(|&u| after[u] != before[u])
        .collect();
    assert!(
        moved.is_empty(),
        "{} users changed sides across the replacement, e.g. {:?}",
        moved.len(),
        moved
            .iter()
            .take(5)
            .map(|&u| (&users[u], &before[u], &after[u]))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_replica_converges_within_two_seconds_of_the_link_coming_back() {
    let dns = DnsServer::start(1);
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    // Every link to or from C goes through a relay, so that cutting C off is
    // pausing its relays: .2, .3 and .4 are A, B and C as A and B find them; .5
    // and .6 are A and B as C finds them.
    let ips = [2, 3, 4, 5, 6].map(loopback);
    let listeners = listeners_on_one_port(&ips);
    let port = listeners[0].local_addr().unwrap().port();
    const FROM_C: &str = "from-c.replicas.test";
    dns.set(PEERS, &ips[..3]);
    dns.set(FROM_C, &ips[3..]);
    // The default sync_interval (1s): the 2 s bound is for it.
    let replica = |name: &str, peers: &str| {
        config(
            name,
            ("127.0.0.1:0", "127.0.0.1:0"),
            (old.addr, new.addr),
            (100.0, 0.0),
            &format!("peers = \"{peers}:{port}\"\nbootstrap_timeout = \"3s\"\nstate_file = \"\""),
            Some(dns.addr),
        )
    };
    let mut fleet: Vec<Proxy> = [("a", PEERS), ("b", PEERS), ("c", FROM_C)]
        .into_iter()
        .map(|(n, p)| {
            ProxyBuilder::new(replica(n, p))
                .start_until_admin()
                .unwrap()
        })
        .collect();
    let mut l = listeners.into_iter();
    let mut relay = |to: &Proxy| Relay::start(l.next().unwrap(), to.admin);
    // A's and B's relays stay up throughout; they only need to live.
    let (_to_a, _to_b, to_c) = (relay(&fleet[0]), relay(&fleet[1]), relay(&fleet[2]));
    let (c_to_a, c_to_b) = (relay(&fleet[0]), relay(&fleet[1]));
    for p in &mut fleet {
        p.wait_serving(Duration::from_secs(15)).await;
    }
    let [a, b, c] = &fleet[..] else {
        unreachable!()
    };
    // Each replica reaches both others through the relays.
    for (p, others) in [(a, ["b", "c"]), (b, ["a", "c"]), (c, ["a", "b"])] {
        eventually(Duration::from_secs(5), "every peer answering", || async {
            let seen = p.status().await["fleet"]["seen"].clone();
            let names: Vec<&str> = seen
                .as_object()?
                .values()
                .filter_map(|s| s["replica"].as_str())
                .collect();
            others.iter().all(|o| names.contains(o)).then_some(())
        })
        .await;
    }

    let cut = [&to_c, &c_to_a, &c_to_b];
    for r in cut {
        r.pause();
    }
    let cut_at = Instant::now();
    // The controller reaches A and B only.
    for p in [a, b] {
        let r = p
            .put_weights(HOST, r#"{"weights":{"old":20,"new":80},"epoch":7}"#)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The partition lasts 5 s: this sleep is the fault's length, not a wait for
    // something to happen.
    tokio::time::sleep_until((cut_at + Duration::from_secs(5)).into()).await;
    let st = state(c).await;
    assert_eq!(
        (epoch(&st), weights(&st)),
        (0, (100.0, 0.0)),
        "C learnt the change through the partition: {st}"
    );
    for r in cut {
        assert!(r.dropped() > 0, "nobody tried the link to {}", r.target);
    }
    for p in [a, b] {
        let st = state(p).await;
        assert_eq!((epoch(&st), weights(&st)), (7, (20.0, 80.0)), "{st}");
    }

    for r in cut {
        r.resume();
    }
    let mended = Instant::now();
    // Asked directly, not through a relay.
    eventually(Duration::from_secs(2), "C to catch up", || async {
        let st = state(c).await;
        (epoch(&st) == 7 && weights(&st) == (20.0, 80.0)).then_some(())
    })
    .await;
    let took = mended.elapsed();
    assert!(took <= Duration::from_secs(2), "{took:?}");
    eprintln!("partition: C converged {took:?} after 5 s cut off");
    let r = c.admin_call(Method::GET, "/readyz", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_static_peer_list_a_change_at_one_replica_reaches_the_others_within_two_seconds() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    // Three ports free at once, for a list every replica is started with.
    let ports: Vec<u16> = {
        let held: Vec<_> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        held.iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect()
    };
    let list: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let fleet_conf = format!(
        "peers = [{}]\nbootstrap_timeout = \"3s\"\nstate_file = \"\"",
        list.join(", ")
    );
    let configs = ["a", "b", "c"]
        .iter()
        .zip(&ports)
        .map(|(name, port)| {
            config(
                name,
                ("127.0.0.1:0", &format!("127.0.0.1:{port}")),
                (old.addr, new.addr),
                (100.0, 0.0),
                &fleet_conf,
                None,
            )
        })
        .collect();
    let fleet = start_fleet(configs).await;

    // No epoch: the replica raises its own by one and names itself the origin.
    let r = fleet[0].put_weights(HOST, r#"{"old":60,"new":40}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sent = Instant::now();
    let st = state(&fleet[0]).await;
    assert_eq!((epoch(&st), st["origin"].as_str()), (1, Some("a")), "{st}");
    eventually(
        Duration::from_secs(2),
        "b and c to adopt a's change",
        || async {
            for p in &fleet[1..] {
                let st = state(p).await;
                if !(epoch(&st) == 1 && st["origin"] == "a" && weights(&st) == (60.0, 40.0)) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let took = sent.elapsed();
    assert!(took <= Duration::from_secs(2), "{took:?}");
    eprintln!("static peers: a's change reached b and c in {took:?}");
}

/// Two replicas that took different changes at the same epoch (a stray call that
/// reached one of them, or a retried step) settle on one of the two: the origin of
/// a change that names its epoch is the digest of what it serves, so both order
/// the two states alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_different_changes_at_one_epoch_converge() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let ports: Vec<u16> = {
        let held: Vec<_> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        held.iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect()
    };
    let list: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let fleet_conf = format!(
        "peers = [{}]\nbootstrap_timeout = \"3s\"\nsync_interval = \"200ms\"\nstate_file = \"\"",
        list.join(", ")
    );
    let configs = ["a", "b"]
        .iter()
        .zip(&ports)
        .map(|(name, port)| {
            config(
                name,
                ("127.0.0.1:0", &format!("127.0.0.1:{port}")),
                (old.addr, new.addr),
                (100.0, 0.0),
                &fleet_conf,
                None,
            )
        })
        .collect();
    let fleet = start_fleet(configs).await;
    for p in &fleet {
        let r = p
            .put_weights(HOST, r#"{"weights":{"old":50,"new":50},"epoch":5}"#)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = fleet[0]
        .put_weights(HOST, r#"{"weights":{"old":0,"new":100},"epoch":5}"#)
        .await;
    assert_eq!(r.status, 200, "the same epoch is not stale: {}", r.body);
    let settled = eventually(Duration::from_secs(5), "a and b to agree", || async {
        let (a, b) = (state(&fleet[0]).await, state(&fleet[1]).await);
        (epoch(&a) == 5
            && epoch(&b) == 5
            && a["origin"] == b["origin"]
            && weights(&a) == weights(&b))
        .then(|| weights(&a))
    })
    .await;
    assert!(
        settled == (50.0, 50.0) || settled == (0.0, 100.0),
        "{settled:?}"
    );
}
