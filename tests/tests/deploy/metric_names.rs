//! Every metric named in the Grafana dashboard's and the alert rules' PromQL must
//! exist, with the label names the queries match on: the proxy's in the `/metrics`
//! of a real running proxy that has served traffic (so labelled series exist), the
//! controller's in the `/metrics` of a real `cutover run --metrics-listen` baking a
//! plan step over a real PostgreSQL pair (so the replication lag has been read).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use cutover_tests::{
    Backend, Client, Postgres, ProxyBuilder, RedisServer, binary, eventually, two_backend_config,
};
use http::Method;
use serde_json::Value;

const HOST: &str = "shop.test";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Sample name → every label name seen on it.
fn exposition(text: &str) -> HashMap<String, HashSet<String>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            let body = &line[end + 1..line.rfind('}').unwrap_or(line.len())];
            let mut rest = body;
            while let Some(eq) = rest.find("=\"") {
                labels.insert(rest[..eq].trim_start_matches(',').to_string());
                // Skip the quoted value (escapes included).
                let mut chars = rest[eq + 2..].char_indices();
                let mut close = rest.len() - eq - 2;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => {
                            close = i;
                            break;
                        }
                        _ => {}
                    }
                }
                rest = &rest[eq + 2 + close + 1..];
            }
        }
    }
    out
}

/// Every `cutover_*` metric a PromQL expression names, with the label names its
/// selectors match on.
fn referenced(expr: &str) -> Vec<(String, Vec<String>)> {
    let b: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut i = 0;
    let skip_quoted = |i: &mut usize| {
        let q = b[*i];
        *i += 1;
        while *i < b.len() && b[*i] != q {
            if b[*i] == '\\' {
                *i += 1;
            }
            *i += 1;
        }
        *i += 1;
    };
    while i < b.len() {
        let c = b[i];
        if c == '"' || c == '\'' {
            skip_quoted(&mut i);
        } else if ident(c) && (i == 0 || !(ident(b[i - 1]) || b[i - 1] == '$')) {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let name: String = b[start..i].iter().collect();
            if !name.starts_with("cutover_") {
                continue;
            }
            let mut labels = Vec::new();
            let mut j = i;
            while j < b.len() && b[j] == ' ' {
                j += 1;
            }
            if j < b.len() && b[j] == '{' {
                j += 1;
                while j < b.len() && b[j] != '}' {
                    if b[j] == '"' {
                        skip_quoted(&mut j);
                    } else if ident(b[j]) {
                        let s = j;
                        while j < b.len() && ident(b[j]) {
                            j += 1;
                        }
                        labels.push(b[s..j].iter().collect());
                    } else {
                        j += 1;
                    }
                }
                i = j;
            }
            out.push((name, labels));
        } else {
            i += 1;
        }
    }
    out
}

/// The PromQL of every dashboard target and template query.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = repo().join("deploy/grafana/cutover.json");
    let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("panel {:?}", p["title"]),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            out.push((format!("variable {:?}", v["name"]), q.to_string()));
        }
    }
    out
}

/// The `expr` of every alert rule, by alert name.
fn alert_queries() -> Vec<(String, String)> {
    use yaml_rust2::YamlLoader;
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap();
    let mut out = Vec::new();
    for g in docs[0]["spec"]["groups"].as_vec().unwrap() {
        for r in g["rules"].as_vec().unwrap() {
            out.push((
                format!("alert {}", r["alert"].as_str().unwrap()),
                r["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

#[test]
fn the_promql_scanner_finds_names_and_matchers() {
    let got = referenced(
        r#"sum by (route) (rate(cutover_requests_total{route="$route",code=~"5.."}[$__rate_interval])) / cutover_inflight > 0 and time() - cutover_x {a="cutover_y"}"#,
    );
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["cutover_requests_total", "cutover_inflight", "cutover_x"]
    );
    assert_eq!(got[0].1, ["route", "code"]);
    assert_eq!(got[2].1, ["a"]);
    let exp = exposition("# HELP x\nm_total{a=\"x\\\"}\",b=\"y\"} 1\nplain 2\n");
    assert_eq!(
        exp["m_total"],
        HashSet::from(["a".to_string(), "b".to_string()])
    );
    assert!(exp["plain"].is_empty());
}

#[tokio::test]
async fn every_metric_in_the_dashboard_and_alerts_exists_in_a_running_proxy_or_controller() {
    // `new` points at a closed port: requests sent there are retried on `old`,
    // so the retry and upstream-error series exist too.
    let old = Backend::start("old");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let cfg = two_backend_config(old.addr, dead_addr, &[HOST], (50.0, 50.0), "");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    for _ in 0..40 {
        assert_eq!(proxy.get(HOST, "/").await.status, 200);
    }
    let r = proxy
        .admin_call(
            Method::POST,
            &format!("/routes/{HOST}/hold"),
            r#"{"scope":"writes","max":"60s"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let text = eventually(Duration::from_secs(5), "retries and a hold", || async {
        let m = proxy.metrics().await;
        (m.contains("cutover_retries_total{") && m.contains("cutover_upstream_errors_total{"))
            .then_some(m)
    })
    .await;

    // The routing gauges read the live state at scrape time.
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{prefix} missing:\n{text}"))
    };
    assert_eq!(
        line(r#"cutover_route_weight{backend="new",route="shop.test"}"#),
        50.0
    );
    assert_eq!(
        line(r#"cutover_backend_drained{backend="old",route="shop.test"}"#),
        0.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let since = line(r#"cutover_hold_started_seconds{route="shop.test"}"#);
    assert!(
        (now - since).abs() < 30.0,
        "hold started at {since}, now {now}"
    );

    let controller = controller_exposition().await;
    let mut known = exposition(&text);
    for (name, labels) in exposition(&controller) {
        known.entry(name).or_default().extend(labels);
    }
    for name in [
        "cutover_replication_lag_seconds",
        "cutover_replication_lag_bytes",
        "cutover_replication_slot_retained_bytes",
    ] {
        assert!(
            known.get(name).is_some_and(|l| l.contains("database")),
            "{name}{{database}} missing from the controller's /metrics:\n{controller}"
        );
    }
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    let dashboard = dashboard_queries();
    let alerts = alert_queries();
    for (file, queries) in [("cutover.json", &dashboard), ("alerts.yaml", &alerts)] {
        for (where_, expr) in queries.iter() {
            let refs = referenced(expr);
            if refs.is_empty() {
                problems.push(format!("{file} {where_}: names no cutover metric: {expr}"));
            }
            for (name, labels) in refs {
                used.insert((file, name.clone()));
                let Some(have) = known.get(&name) else {
                    problems.push(format!("{file} {where_}: {name} is not exported"));
                    continue;
                };
                for l in labels {
                    if !have.contains(&l) {
                        problems.push(format!("{file} {where_}: {name} has no label {l:?}"));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // What the issue asks each of them to show.
    for (file, needed) in [
        (
            "cutover.json",
            &[
                "cutover_route_weight",
                "cutover_requests_total",
                "cutover_request_duration_seconds_bucket",
                "cutover_retries_total",
                "cutover_held_requests",
                "cutover_inflight",
                "cutover_backend_drained",
                "cutover_replication_lag_seconds",
            ][..],
        ),
        (
            "alerts.yaml",
            &[
                "cutover_requests_total",
                "cutover_request_duration_seconds_bucket",
                "cutover_config_reload_errors_total",
                "cutover_upstream_healthy",
                "cutover_hold_started_seconds",
                "cutover_replication_lag_seconds",
            ][..],
        ),
    ] {
        for n in needed {
            assert!(
                used.contains(&(file, n.to_string())),
                "{file} does not use {n}"
            );
        }
    }
}

/// Scrapes a running controller: `cutover run --metrics-listen 127.0.0.1:0` on a
/// plan with one database (two real clusters, replication set up by the plan's
/// sync) and one step whose bake is long enough to be scraped in, once the
/// replication lag has been read.
async fn controller_exposition() -> String {
    let (old, new) = tokio::task::spawn_blocking(Postgres::start_pair)
        .await
        .unwrap();
    for pg in [&old, &new] {
        pg.sql("postgres", "CREATE DATABASE app").await;
    }
    old.sql(
        "app",
        "CREATE TABLE items (id serial PRIMARY KEY, body text NOT NULL);
         INSERT INTO items (body) VALUES ('one'), ('two');",
    )
    .await;
    // The shop's cache, copied and followed by the run: the cache families.
    let cache_old = RedisServer::start_with(&["--notify-keyspace-events", "KA"]);
    let cache_new = RedisServer::start();
    cache_old.cmd(&["SET", "basket:1", "two apples"]);
    let (a, b) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(a.addr, b.addr, &[HOST], (100.0, 0.0), "writes = \"old\"");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "[proxies]\nadmin = [\"http://{}\"]\n\n\
             [[apps]]\nname = \"shop\"\nroute = \"{HOST}\"\n\
             [apps.database]\nsource_env = \"SHOP_SOURCE\"\ntarget_env = \"SHOP_TARGET\"\n\
             [apps.cache]\nsource = \"{}\"\ntarget = \"{}\"\n\n\
             [[steps]]\nweights = {{ new = 10 }}\nbake = \"30s\"\n",
            proxy.admin, cache_old.url, cache_new.url
        ),
    )
    .unwrap();
    let stderr = dir.path().join("run.stderr");
    let mut run = Command::new(binary("cutover"))
        .arg("run")
        .arg(&plan)
        .arg("--out")
        .arg(dir.path().join("report"))
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("SHOP_SOURCE", old.dsn("app"))
        .env("SHOP_TARGET", new.dsn("app"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = until(&stderr, "the controller's metrics address", || async {
        let text = std::fs::read_to_string(&stderr).unwrap_or_default();
        text.split("controller metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split("/metrics").next())
            .and_then(|a| a.parse().ok())
    })
    .await;
    let client = Client::new();
    let text = until(&stderr, "the replication lag in /metrics", || async {
        // A lookup on the new cache, so that its hit ratio has something to show.
        cache_new.cmd(&["GET", "basket:1"]);
        let r = client
            .send(addr, Method::GET, "controller", "/metrics", &[], "")
            .await
            .ok()?;
        (r.status == 200
            && r.body.contains("cutover_replication_lag_seconds{")
            && r.body.contains("cutover_replication_slot_retained_bytes{")
            && r.body.contains("cutover_plan_step{")
            && r.body.contains("cutover_cache_verify_differences{")
            && r.body.contains("cutover_cache_hit_ratio{"))
        .then_some(r.body)
    })
    .await;
    let _ = run.kill();
    let _ = run.wait();
    text
}

/// Polls `check` for up to a minute; on timeout the panic shows what the run
/// printed to `stderr`.
async fn until<T, F, Fut>(stderr: &std::path::Path, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; cutover run printed:\n{}",
            std::fs::read_to_string(stderr).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
