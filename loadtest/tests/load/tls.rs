//! HTTPS with rustls (a private CA, --insecure, an untrusted CA) and HTTP/2 (ALPN and
//! prior knowledge). The server names the protocol it saw in x-cutover-backend, so the
//! report's backend counts prove which one was spoken.

use cutover_load::{LoadSpec, RunError, parse_header, run};

use super::server::{TestServer, fixture, reply};

fn version_server(tls: bool) -> TestServer {
    let handler = |req: hyper::Request<hyper::body::Incoming>, _conn| {
        let version = format!("{:?}", req.version());
        async move { reply(200, "ok", &[("x-cutover-backend", version)]) }
    };
    if tls {
        TestServer::start_tls(handler)
    } else {
        TestServer::start(handler)
    }
}

fn spec(url: &str) -> LoadSpec {
    let mut spec = LoadSpec::new(url).unwrap();
    spec.requests = Some(50);
    spec.connections = 2;
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_by_ip_and_by_host_name() {
    let server = version_server(true);
    let url = format!("https://{}/", server.addr);
    let mut by_ip = spec(&url);
    by_ip.cacert = Some(fixture("ca.pem"));
    let report = run(by_ip).await.unwrap();
    assert_eq!(
        (report.responses, report.errors),
        (50, 0),
        "{:?}",
        report.error_kinds
    );
    assert_eq!(report.backends["HTTP/1.1"], 50);

    // Host sets the TLS server name too: the certificate is valid for "localhost".
    let mut by_name = spec(&url);
    by_name.cacert = Some(fixture("ca.pem"));
    let (name, value) = parse_header("Host: localhost").unwrap();
    by_name.headers.insert(name, value);
    let report = run(by_name).await.unwrap();
    assert_eq!((report.responses, report.errors), (50, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_tls_error_unless_insecure() {
    let server = version_server(true);
    let url = format!("https://{}/", server.addr);
    let mut untrusted = spec(&url);
    untrusted.requests = Some(4);
    untrusted.cacert = Some(fixture("other-ca.pem"));
    let report = run(untrusted).await.unwrap();
    assert_eq!(report.responses, 0);
    assert_eq!(report.error_kinds["tls"], 4, "{:?}", report.error_kinds);

    let mut insecure = spec(&url);
    insecure.insecure = true;
    let report = run(insecure).await.unwrap();
    assert_eq!((report.responses, report.errors), (50, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_and_in_cleartext() {
    let tls = version_server(true);
    let mut over_tls = spec(&format!("https://{}/", tls.addr));
    over_tls.cacert = Some(fixture("ca.pem"));
    over_tls.http2 = true;
    let report = run(over_tls).await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.error_kinds);
    assert_eq!(report.backends["HTTP/2.0"], 50);

    let plain = version_server(false);
    let mut cleartext = spec(&plain.url("/"));
    cleartext.http2 = true;
    let report = run(cleartext).await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.error_kinds);
    assert_eq!(report.backends["HTTP/2.0"], 50);
}

#[tokio::test]
async fn a_missing_ca_file_fails_before_any_traffic() {
    let mut spec = spec("https://127.0.0.1:9/");
    spec.cacert = Some("/nonexistent/ca.pem".into());
    let err = run(spec).await.unwrap_err();
    assert!(matches!(err, RunError::Tls(_)), "{err}");
    assert!(err.to_string().starts_with("--cacert /nonexistent/ca.pem"));
}
