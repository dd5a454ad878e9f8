//! TLS from the proxy to a backend: SNI, verification against a configured CA, and
//! a clear 502 when the backend's certificate is not trusted.

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
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(
        &path,
        config(
            old.addr,
            new.addr,
            "{ sni = \"backend.test\", ca_file = \"ca.pem\" }",
        ),
    )
    .unwrap();
    let proxy = ProxyBuilder::new("").start_in(dir, &path).unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(
        &path,
        config(
            old.addr,
            new.addr,
            "{ sni = \"other.test\", ca_file = \"ca.pem\" }",
        ),
    )
    .unwrap();
    let proxy = ProxyBuilder::new("").start_in(dir, &path).unwrap();
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
