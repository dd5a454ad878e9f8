//! `rediss://`: a new cache that serves TLS only to clients that check its
//! certificate against the CA the URL names, and a CA that is wrong.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use cutover_tests::{RedisServer, free_port};

use crate::common::cutover;

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

#[test]
fn a_tls_target_is_reached_only_through_its_own_ca() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = ca("cache test CA");
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let path = |f: &str| dir.path().join(f).display().to_string();
    std::fs::write(path("ca.pem"), issuer.pem()).unwrap();
    std::fs::write(path("other-ca.pem"), ca("someone else's CA").pem()).unwrap();
    std::fs::write(path("server.pem"), cert.pem()).unwrap();
    std::fs::write(path("server.key"), key.serialize_pem()).unwrap();

    let source = RedisServer::start();
    for i in 0..500 {
        source.cmd(&["SET", &format!("forecast:{i}"), "rain"]);
    }
    // The harness talks plain TCP on `port`; cutover gets the TLS port only.
    let tls_port = free_port().to_string();
    let (cert_file, key_file, ca_file) = (path("server.pem"), path("server.key"), path("ca.pem"));
    let target = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert_file,
        "--tls-key-file",
        &key_file,
        "--tls-ca-cert-file",
        &ca_file,
        "--tls-auth-clients",
        "no",
    ]);
    let rediss = |ca: &str| format!("rediss://localhost:{tls_port}?ca={}", path(ca));

    let good = rediss("ca.pem");
    let run = cutover(&[
        "cache",
        "sync",
        "--once",
        "--source",
        &source.url,
        "--target",
        &good,
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(target.cmd(&["DBSIZE"]).int(), 500);
    let run = cutover(&[
        "cache",
        "verify",
        "--source",
        &source.url,
        "--target",
        &good,
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);

    // A certificate its CA did not sign: refused, the side and the reason named.
    target.cmd(&["FLUSHALL"]);
    let wrong = rediss("other-ca.pem");
    let run = cutover(&[
        "cache",
        "sync",
        "--once",
        "--source",
        &source.url,
        "--target",
        &wrong,
    ]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("target Redis") && run.stderr.contains("TLS handshake"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.to_lowercase().contains("certificate"),
        "{}",
        run.stderr
    );
    assert_eq!(
        target.cmd(&["DBSIZE"]).int(),
        0,
        "written past a bad certificate"
    );

    // Plain text to the TLS port is not taken for a working server.
    let plain = format!("redis://localhost:{tls_port}");
    let run = cutover(&[
        "cache",
        "verify",
        "--source",
        &source.url,
        "--target",
        &plain,
    ]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("target Redis"), "{}", run.stderr);
}
