//! The HTTPS listener: a certificate per SNI name, ALPN (h2 and http/1.1), the
//! scheme passed to the backend and the cookie, and certificates that follow the
//! config's reloads (and refuse a broken file). Certificates come from a CA made
//! for each test; the client trusts only that CA.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cutover_tests::{Backend, Proxy, ProxyBuilder, eventually, two_backend_config};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A certificate authority for one test.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate: its DER (to recognise it from the client side) and PEM.
struct Leaf {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "cutover test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    fn issue(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client that trusts only this CA and offers `alpn`.
    fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

impl Leaf {
    fn write(&self, dir: &Path, stem: &str) {
        std::fs::write(dir.join(format!("{stem}.crt")), &self.cert_pem).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), &self.key_pem).unwrap();
    }
}

/// Connects with SNI `sni`; the handshake verifies the certificate against the CA
/// and the name, as a browser would.
async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// The leaf certificate the proxy presents for `sni`, or the handshake error.
async fn presented(ca: &TestCa, addr: SocketAddr, sni: &str) -> Result<Vec<u8>, String> {
    let tls = connect(&ca.connector(&[b"http/1.1"]), addr, sni)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    Ok(conn.peer_certificates().unwrap()[0].as_ref().to_vec())
}

/// What a response over TLS carried.
struct Answer {
    alpn: Vec<u8>,
    status: StatusCode,
    backend: String,
    seen_proto: String,
    cookie: String,
}

/// One GET over TLS with ALPN `alpn` (h2 or http/1.1), as that protocol's client.
async fn get(ca: &TestCa, addr: SocketAddr, host: &str, alpn: &[u8]) -> Answer {
    let tls = connect(&ca.connector(&[alpn]), addr, host).await.unwrap();
    let negotiated = tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec();
    let io = TokioIo::new(tls);
    let resp = if alpn == b"h2" {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{host}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get("/")
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        send.send_request(req).await.unwrap()
    };
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let answer = Answer {
        alpn: negotiated,
        status: resp.status(),
        backend: header("x-cutover-backend"),
        seen_proto: header("x-seen-proto"),
        cookie: header("set-cookie"),
    };
    resp.into_body().collect().await.unwrap();
    answer
}

/// The config for a proxy with an HTTPS listener in front of `old` and `new`,
/// plus `certificates` sections.
fn config(old: &Backend, new: &Backend, certificates: &str) -> String {
    two_backend_config(old.addr, new.addr, &["*"], (100.0, 0.0), certificates)
        .replace("[listen]\n", "[listen]\nhttps = \"127.0.0.1:0\"\n")
}

fn certificate(hosts: &str, stem: &str) -> String {
    format!("\n[[certificates]]\nhosts = {hosts}\ncert = \"{stem}.crt\"\nkey = \"{stem}.key\"\n")
}

fn start(dir: tempfile::TempDir, text: &str) -> Proxy {
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, text).unwrap();
    ProxyBuilder::new("")
        .start_in(dir, &path)
        .unwrap_or_else(|(status, logs)| panic!("proxy did not start ({status:?}):\n{logs}"))
}

/// Replaces the config file the way an editor does, so the watcher sees one change.
fn rewrite(proxy: &Proxy, text: &str) {
    let tmp = proxy.dir.path().join(".cutover.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, proxy.config_path()).unwrap();
}

#[tokio::test]
async fn sni_picks_the_certificate_and_reloads_follow_the_config() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let shop = ca.issue(&["shop.example.com", "*.shop.example.com"]);
    let api = ca.issue(&["api.example.com"]);
    let fallback = ca.issue(&["*.example.net"]);
    shop.write(dir.path(), "shop");
    api.write(dir.path(), "api");
    fallback.write(dir.path(), "fallback");
    let shop_and_api = format!(
        "{}{}",
        certificate(r#"["shop.example.com", "*.shop.example.com"]"#, "shop"),
        certificate(r#"["api.example.com"]"#, "api"),
    );
    let with_default = format!("{shop_and_api}{}", certificate(r#"["*"]"#, "fallback"));
    let proxy = start(dir, &config(&old, &new, &with_default));
    let addr = proxy.https.expect("the proxy logs its HTTPS address");

    // Exact name, wildcard, another certificate, and the default for the rest.
    let der = |l: &Leaf| Ok(l.der.as_ref().to_vec());
    assert_eq!(presented(&ca, addr, "shop.example.com").await, der(&shop));
    assert_eq!(
        presented(&ca, addr, "www.shop.example.com").await,
        der(&shop)
    );
    assert_eq!(presented(&ca, addr, "api.example.com").await, der(&api));
    assert_eq!(
        presented(&ca, addr, "www.example.net").await,
        der(&fallback)
    );

    // Renewed files are picked up by a reload (SIGHUP: the config's bytes did
    // not change) and served to the next handshake.
    let renewed = ca.issue(&["shop.example.com", "*.shop.example.com"]);
    renewed.write(proxy.dir.path(), "shop");
    proxy.signal("HUP");
    eventually(
        Duration::from_secs(5),
        "the renewed certificate",
        || async {
            (presented(&ca, addr, "shop.example.com").await == der(&renewed)).then_some(())
        },
    )
    .await;

    // Without a default, a name no certificate serves fails the handshake.
    rewrite(&proxy, &config(&old, &new, &shop_and_api));
    eventually(
        Duration::from_secs(5),
        "the default certificate to go",
        || async { presented(&ca, addr, "www.example.net").await.err() },
    )
    .await;
    assert_eq!(presented(&ca, addr, "api.example.com").await, der(&api));

    // A broken certificate file is refused like any invalid config: the error is in
    // /status and the certificates in force keep serving.
    std::fs::write(proxy.dir.path().join("broken.crt"), "not a certificate\n").unwrap();
    std::fs::copy(
        proxy.dir.path().join("shop.key"),
        proxy.dir.path().join("broken.key"),
    )
    .unwrap();
    let broken = format!(
        "{}{}",
        certificate(r#"["shop.example.com", "*.shop.example.com"]"#, "broken"),
        certificate(r#"["api.example.com"]"#, "api"),
    );
    rewrite(&proxy, &config(&old, &new, &broken));
    let errors = eventually(
        Duration::from_secs(5),
        "the reload error in /status",
        || async {
            let status = proxy.status().await;
            let errors = status["last_reload_error"]["errors"].as_array()?.clone();
            Some(errors)
        },
    )
    .await;
    let text = serde_json::to_string(&errors).unwrap();
    assert!(
        text.contains("certificates[0].cert") && text.contains("broken.crt"),
        "{text}"
    );
    assert_eq!(
        presented(&ca, addr, "shop.example.com").await,
        der(&renewed)
    );
    let answer = get(&ca, addr, "shop.example.com", b"http/1.1").await;
    assert_eq!(answer.status, 200);
    assert!(!proxy.logs().contains("PRIVATE KEY"));
}

#[tokio::test]
async fn http2_and_http1_over_tls_reach_the_backend_as_https() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["shop.example.com"]).write(dir.path(), "shop");
    let certs = certificate(r#"["shop.example.com"]"#, "shop");
    let proxy = start(dir, &config(&old, &new, &certs));
    let addr = proxy.https.unwrap();

    for alpn in [&b"h2"[..], b"http/1.1"] {
        let a = get(&ca, addr, "shop.example.com", alpn).await;
        let proto = String::from_utf8_lossy(alpn);
        assert_eq!(a.alpn, alpn, "ALPN {proto}");
        assert_eq!(a.status, 200, "{proto}");
        assert_eq!(a.backend, "old", "{proto}");
        assert_eq!(a.seen_proto, "https", "{proto}");
        assert!(a.cookie.starts_with("cutover="), "{proto}: {}", a.cookie);
        assert!(a.cookie.ends_with("; Secure"), "{proto}: {}", a.cookie);
    }
    assert_eq!(old.requests(), 2);

    // The plain listener keeps saying http and sets no Secure cookie.
    let plain = proxy.get("shop.example.com", "/").await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("x-seen-proto"), "http");
    assert!(!plain.header("set-cookie").contains("Secure"), "{plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_hands_the_https_listener_over() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let shop = ca.issue(&["shop.example.com"]);
    shop.write(dir.path(), "shop");
    let certs = certificate(r#"["shop.example.com"]"#, "shop");
    let mut first = start(dir, &config(&old, &new, &certs));
    let addr = first.https.unwrap();
    // An HTTP/2 connection opened before the upgrade stays with the old process,
    // which keeps serving it while it drains.
    let before = connect(&ca.connector(&[b"h2"]), addr, "shop.example.com")
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(before))
            .await
            .unwrap();
    tokio::spawn(conn);

    let second = tokio::task::block_in_place(|| first.upgrade())
        .unwrap_or_else(|(status, logs)| panic!("upgrade failed ({status:?}):\n{logs}"));
    assert_eq!(second.https, Some(addr));
    let req = Request::get("https://shop.example.com/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(send);
    let status = first
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("the old process did not exit:\n{}", first.logs()));
    assert_eq!(status.code(), Some(0), "{}", first.logs());

    // Only the new process is left to answer on the same address.
    assert_eq!(
        presented(&ca, addr, "shop.example.com").await,
        Ok(shop.der.as_ref().to_vec())
    );
    let a = get(&ca, addr, "shop.example.com", b"h2").await;
    assert_eq!((a.status, a.seen_proto.as_str()), (StatusCode::OK, "https"));
}
