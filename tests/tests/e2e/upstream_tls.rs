//! TLS from the proxy to a backend: SNI, verification against a configured CA, and
//! a clear 502 when the backend's certificate is not trusted; `protocol = "auto"`
//! follows ALPN.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cutover_tests::{Backend, ProxyBuilder};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

const HOST: &str = "shop.test";

/// A test CA and a certificate for `name` issued by it: (ca_pem, cert_pem, key_pem).
fn issue(name: &str) -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "cutover test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// Starts a proxy on `config`, with the PEM `ca` beside it as `ca.pem`.
fn start_trusting(ca: &str, config: &str) -> cutover_tests::Proxy {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, config).unwrap();
    ProxyBuilder::new("").start_in(dir, &path).unwrap()
}

fn config(old: std::net::SocketAddr, new: std::net::SocketAddr, tls: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [backends.old]\naddrs = [\"{old}\"]\n\
         [backends.new]\naddrs = [\"{new}\"]\ntls = {tls}\n\
         [[routes]]\nhosts = [\"{HOST}\"]\nweights = {{ new = 100 }}\nattempts = 1\n"
    )
}

#[tokio::test]
async fn a_tls_backend_is_verified_against_the_configured_ca() {
    let (ca, cert, key) = issue("backend.test");
    let new = Backend::start_tls("new", &cert, &key);
    let old = Backend::start("old");
    let proxy = start_trusting(
        &ca,
        &config(
            old.addr,
            new.addr,
            "{ sni = \"backend.test\", ca_file = \"ca.pem\" }",
        ),
    );
    let r = proxy.get(HOST, "/").await;
    assert_eq!(
        (r.status.as_u16(), r.body.trim()),
        (200, "new"),
        "{}",
        proxy.logs()
    );
    assert_eq!(
        r.header("x-seen-host"),
        HOST,
        "the client's Host goes through unchanged"
    );
}

#[tokio::test]
async fn an_untrusted_backend_certificate_gives_502_and_says_why() {
    let (_, cert, key) = issue("backend.test");
    let new = Backend::start_tls("new", &cert, &key);
    let old = Backend::start("old");
    // No ca_file: the system's roots, which do not know the test CA.
    let proxy = ProxyBuilder::new(config(old.addr, new.addr, "{ sni = \"backend.test\" }"))
        .start()
        .unwrap();
    let r = proxy.get(HOST, "/").await;
    assert_eq!((r.status.as_u16(), r.backend()), (502, "new"), "{}", r.body);
    assert_eq!(new.requests(), 0);
    proxy.wait_for_log("UnknownIssuer").await;
}

#[tokio::test]
async fn a_wrong_server_name_is_refused() {
    let (ca, cert, key) = issue("backend.test");
    let new = Backend::start_tls("new", &cert, &key);
    let old = Backend::start("old");
    let proxy = start_trusting(
        &ca,
        &config(
            old.addr,
            new.addr,
            "{ sni = \"other.test\", ca_file = \"ca.pem\" }",
        ),
    );
    assert_eq!(proxy.get(HOST, "/").await.status, 502);
    proxy.wait_for_log("certificate not valid for name").await;
}

#[test]
fn a_missing_ca_file_is_a_config_error() {
    let path = std::path::Path::new("/tmp/cutover-missing-ca-test.toml");
    let text = config(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        "{ ca_file = \"/nonexistent/ca.pem\" }",
    );
    let err = cutover_config::Config::parse(&text, path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("backends.new.tls.ca_file"), "{err}");
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_auto_speaks_what_the_backend_picks_by_alpn() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (ca, cert, key) = issue("backend.test");
    // `new` offers h2 and HTTP/1.1; `old` (also over TLS here) only HTTP/1.1.
    let new = Backend::start_tls_alpn("new", &cert, &key, &[b"h2", b"http/1.1"]);
    let old = Backend::start_tls("old", &cert, &key);
    let tls = "{ sni = \"backend.test\", ca_file = \"ca.pem\" }";
    let cfg = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [backends.old]\naddrs = [\"{}\"]\ntls = {tls}\nprotocol = \"auto\"\n\
             [backends.new]\naddrs = [\"{}\"]\ntls = {tls}\nprotocol = \"auto\"\n\
             [[routes]]\nhosts = [\"{HOST}\"]\nweights = {{ new = 100 }}\n\
             [[routes]]\nhosts = [\"old.test\"]\nweights = {{ old = 100 }}\n",
        old.addr, new.addr
    );
    let proxy = start_trusting(&ca, &cfg);

    let r = proxy.get(HOST, "/").await;
    assert_eq!(
        (r.status.as_u16(), r.body.trim()),
        (200, "new"),
        "{}",
        proxy.logs()
    );
    assert_eq!(r.header("x-seen-version"), "HTTP/2.0", "ALPN picked h2");
    assert_eq!(r.header("x-seen-host"), HOST, "the host went as :authority");
    let r = proxy.get("old.test", "/").await;
    assert_eq!(
        (r.status.as_u16(), r.body.trim()),
        (200, "old"),
        "{}",
        proxy.logs()
    );
    assert_eq!(
        r.header("x-seen-version"),
        "HTTP/1.1",
        "ALPN picked http/1.1"
    );

    // A WebSocket to the h2 backend goes over an HTTP/1.1 connection of its own.
    let tcp = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{HOST}/live"), tcp)
        .await
        .expect("the WebSocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hi")).await.unwrap();
    let echo = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .expect("an echo within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "new: hi");
    // And the requests after it still share the HTTP/2 connection.
    let r = proxy.get(HOST, "/").await;
    assert_eq!(r.header("x-seen-version"), "HTTP/2.0");
}

/// A TLS backend with a health check, 50/50 with a plain one: its probes go over
/// TLS and keep it healthy; failing them takes it out and passing brings it back;
/// once it is stopped it is marked down, and `/status` and the metrics show its
/// share on the other side, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_backend_with_a_health_check_is_judged_over_tls() {
    let (ca, cert, key) = issue("backend.test");
    let mut new = Backend::start_tls("new", &cert, &key);
    let old = Backend::start("old");
    let cfg = config(
        old.addr,
        new.addr,
        "{ sni = \"backend.test\", ca_file = \"ca.pem\" }\n\
         health = { path = \"/healthz\", interval = \"100ms\", timeout = \"1s\", healthy = 1, unhealthy = 2 }",
    )
    .replace("weights = { new = 100 }", "weights = { old = 50, new = 50 }");
    let proxy = start_trusting(&ca, &cfg);
    let healthy = |s: &serde_json::Value| s["backends"][1]["addrs"][0]["healthy"].clone();
    // Several probes in (each one a request the TLS backend answered), and still up.
    cutover_tests::eventually(Duration::from_secs(10), "five probes", || async {
        let probes = new.stats.health_checks.load(Ordering::SeqCst);
        (probes >= 5).then_some(())
    })
    .await;
    let s = proxy.status().await;
    assert_eq!(s["backends"][1]["name"], "new");
    assert_eq!(healthy(&s), true, "{s}\n{}", proxy.logs());
    let route = &s["routes"][0];
    assert_eq!(route["effective_weights"]["new"], 50.0, "{route}");
    assert!(route["effective_reason"].is_null(), "{route}");
    // A new user each time: both sides answer, the TLS one included.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let r = proxy.get(HOST, "/").await;
        assert_eq!(r.status, 200, "{}", r.body);
        seen.insert(r.body.trim().to_string());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "both sides serve: {seen:?}");

    // Failing its check takes it out; passing again brings it back.
    new.health(503);
    cutover_tests::eventually(Duration::from_secs(10), "new marked down", || async {
        (healthy(&proxy.status().await) == false).then_some(())
    })
    .await;
    new.health(0);
    cutover_tests::eventually(Duration::from_secs(10), "new back up", || async {
        (healthy(&proxy.status().await) == true).then_some(())
    })
    .await;

    // Stopped: its probes fail to connect, and its share visibly moves to old.
    new.kill();
    let s = cutover_tests::eventually(
        Duration::from_secs(10),
        "stopped new marked down",
        || async {
            let s = proxy.status().await;
            (s["backends"][1]["healthy"] == false).then_some(s)
        },
    )
    .await;
    assert_eq!(healthy(&s), false, "{s}");
    let route = &s["routes"][0];
    assert_eq!(route["weights"]["new"], 50.0, "configured: {route}");
    assert_eq!(route["weights"]["old"], 50.0, "configured: {route}");
    assert_eq!(route["effective_weights"]["new"], 0.0, "{route}");
    assert_eq!(route["effective_weights"]["old"], 100.0, "{route}");
    let reasons: Vec<&str> = route["effective_reason"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r.as_str()).collect())
        .unwrap_or_default();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("new has no healthy address") && r.contains("old")),
        "the reason names new and where its share went: {route}"
    );
    let m = proxy.metrics().await;
    let effective = |b| {
        cutover_tests::metric_sum(
            &m,
            "cutover_route_effective_weight",
            &[("route", HOST), ("backend", b)],
        )
    };
    assert_eq!((effective("old"), effective("new")), (100.0, 0.0), "{m}");
    let configured = |b| {
        cutover_tests::metric_sum(
            &m,
            "cutover_route_weight",
            &[("route", HOST), ("backend", b)],
        )
    };
    assert_eq!((configured("old"), configured("new")), (50.0, 50.0), "{m}");
    assert!(
        m.contains(&format!(
            "cutover_upstream_healthy{{addr=\"{}\",backend=\"new\"}} 0",
            new.addr
        )),
        "{m}"
    );
    // Every user is served by old now.
    for _ in 0..20 {
        let r = proxy.get(HOST, "/").await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "old"), "{}", r.body);
    }
}

/// A backend that accepts TCP and never answers the TLS handshake: the handshake is
/// cut inside `connect_timeout`, answered 502 or 504 at once, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_completes_is_cut_at_connect_timeout() {
    let (ca, _, _) = issue("backend.test");
    // Accepts every connection and holds it, saying nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let holder = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        })
    };
    let old = Backend::start("old");
    let cfg = config(
        old.addr,
        silent,
        "{ sni = \"backend.test\", ca_file = \"ca.pem\" }",
    )
    .replace(
        "attempts = 1\n",
        "attempts = 1\ntimeouts = { connect = \"500ms\", response_header = \"30s\" }\n",
    );
    let proxy = start_trusting(&ca, &cfg);
    let started = Instant::now();
    let r = proxy.get(HOST, "/").await;
    let took = started.elapsed();
    let status = r.status.as_u16();
    eprintln!(
        "silent TLS backend: {status} after {took:?}: {}",
        r.body.trim()
    );
    assert!(status == 502 || status == 504, "{status}: {}", r.body);
    assert_eq!(r.backend(), "new");
    assert!(
        accepted.load(Ordering::SeqCst) >= 1,
        "the TCP connection was made; the handshake is what hung"
    );
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "cut after {took:?}, connect_timeout is 500ms"
    );
    let m = proxy.metrics().await;
    let errors = |kind| {
        cutover_tests::metric_sum(
            &m,
            "cutover_upstream_errors_total",
            &[("route", HOST), ("backend", "new"), ("kind", kind)],
        )
    };
    assert_eq!(errors("connect") + errors("timeout"), 1.0, "{m}");
    let code = status.to_string();
    assert_eq!(
        cutover_tests::metric_sum(
            &m,
            "cutover_requests_total",
            &[("route", HOST), ("backend", "new"), ("code", &code)],
        ),
        1.0,
        "{m}"
    );
    holder.abort();
}
