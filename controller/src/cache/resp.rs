//! A small Redis client: RESP2 over TCP or TLS, with pipelining. Commands are
//! arrays of binary-safe arguments; replies are [`Value`]s. One [`Conn`] is one
//! connection, used by one task at a time; a pipeline writes every command of a
//! batch in one buffer, then reads the replies in order.
//!
//! `redis-rs` would do; this is the part of it the copy needs, with the control
//! the copy wants over batching and over errors, each of which names the side.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::CacheError;
use super::url::RedisUrl;
use crate::dsn::Side;

/// How long a connect (TCP, TLS and AUTH) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one pipeline's replies may take to arrive.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// A reply. Errors are values too: in a pipeline one command's error does not
/// fail the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Nil,
    Status(String),
    Int(i64),
    Bulk(Vec<u8>),
    Array(Vec<Value>),
    Error(String),
}

impl Value {
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) => Some(b),
            Value::Status(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    pub fn text(&self) -> String {
        match self {
            Value::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            Value::Status(s) | Value::Error(s) => s.clone(),
            Value::Int(n) => n.to_string(),
            Value::Nil => "(nil)".into(),
            Value::Array(a) => format!("({} elements)", a.len()),
        }
    }

    pub fn array(self) -> Vec<Value> {
        match self {
            Value::Array(a) => a,
            _ => Vec::new(),
        }
    }
}

/// One command: its arguments, binary-safe.
#[derive(Debug, Clone, Default)]
pub struct Cmd(Vec<Vec<u8>>);

impl Cmd {
    pub fn new(name: &str) -> Cmd {
        Cmd(vec![name.as_bytes().to_vec()])
    }

    pub fn arg(mut self, a: impl AsRef<[u8]>) -> Cmd {
        self.0.push(a.as_ref().to_vec());
        self
    }

    pub fn num(self, n: impl fmt::Display) -> Cmd {
        self.arg(n.to_string())
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("*{}\r\n", self.0.len()).as_bytes());
        for a in &self.0 {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Its name, for messages (never its arguments, which may be values).
    fn name(&self) -> String {
        String::from_utf8_lossy(self.0.first().map_or(&[][..], |n| n)).into_owned()
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Stream for T {}

/// One connection to one side.
pub struct Conn {
    io: BufReader<Box<dyn Stream>>,
    side: Side,
    /// `host:port`, for messages.
    addr: String,
    out: Vec<u8>,
}

impl Conn {
    /// Connects, authenticates (`AUTH [user] password`) and selects the database.
    pub async fn connect(url: &RedisUrl, side: Side) -> Result<Conn, CacheError> {
        let addr = url.addr();
        let fail = |what: String| CacheError::Connect {
            side,
            url: url.to_string(),
            reason: what,
        };
        let work = async {
            let tcp = TcpStream::connect((url.host.as_str(), url.port))
                .await
                .map_err(|e| fail(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let stream: Box<dyn Stream> = if url.tls {
                let connector = tls_connector(url).map_err(&fail)?;
                let name = ServerName::try_from(url.host.clone())
                    .map_err(|_| fail(format!("{:?} is not a valid TLS server name", url.host)))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| fail(format!("TLS handshake: {e}")))?;
                Box::new(tls)
            } else {
                Box::new(tcp)
            };
            let mut conn = Conn {
                io: BufReader::with_capacity(64 * 1024, stream),
                side,
                addr: addr.clone(),
                out: Vec::new(),
            };
            if let Some(password) = &url.password {
                let mut auth = Cmd::new("AUTH");
                if let Some(user) = &url.user {
                    auth = auth.arg(user);
                }
                if let Value::Error(e) = conn.call(auth.arg(password)).await? {
                    return Err(fail(format!("AUTH refused: {}", bounded(&e))));
                }
            }
            if url.db != 0
                && let Value::Error(e) = conn.call(Cmd::new("SELECT").num(url.db)).await?
            {
                return Err(fail(format!("SELECT {}: {e}", url.db)));
            }
            match conn.call(Cmd::new("PING")).await? {
                Value::Error(e) => Err(fail(format!("PING: {e}"))),
                _ => Ok(conn),
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| Err(fail(format!("no answer within {CONNECT_TIMEOUT:?}"))))
    }

    /// One command, one reply.
    pub async fn call(&mut self, cmd: Cmd) -> Result<Value, CacheError> {
        let mut replies = self.pipeline(std::slice::from_ref(&cmd)).await?;
        Ok(replies.pop().unwrap_or(Value::Nil))
    }

    /// One command whose error reply is an error of the call.
    pub async fn ok(&mut self, cmd: Cmd) -> Result<Value, CacheError> {
        let name = cmd.name();
        match self.call(cmd).await? {
            Value::Error(e) => Err(CacheError::Command {
                side: self.side,
                command: name,
                reason: e,
            }),
            v => Ok(v),
        }
    }

    /// Sends every command, then reads their replies in order.
    pub async fn pipeline(&mut self, cmds: &[Cmd]) -> Result<Vec<Value>, CacheError> {
        self.send(cmds).await?;
        let mut replies = Vec::with_capacity(cmds.len());
        let read = async {
            for _ in cmds {
                replies.push(self.read().await?);
            }
            Ok::<(), CacheError>(())
        };
        match tokio::time::timeout(REPLY_TIMEOUT, read).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(self.io_error(format!("no reply within {}s", REPLY_TIMEOUT.as_secs())));
            }
        }
        Ok(replies)
    }

    /// Writes commands without reading (for SUBSCRIBE, whose replies are a stream).
    pub async fn send(&mut self, cmds: &[Cmd]) -> Result<(), CacheError> {
        self.out.clear();
        for c in cmds {
            c.encode(&mut self.out);
        }
        let out = std::mem::take(&mut self.out);
        let r = self.io.get_mut().write_all(&out).await;
        self.out = out;
        r.map_err(|e| self.io_error(e.to_string()))?;
        self.io
            .get_mut()
            .flush()
            .await
            .map_err(|e| self.io_error(e.to_string()))
    }

    /// Reads one reply (or push message).
    pub async fn read(&mut self) -> Result<Value, CacheError> {
        // Arrays nest; an explicit stack keeps this a loop.
        let mut stack: Vec<(usize, Vec<Value>)> = Vec::new();
        loop {
            let v = self.read_one().await?;
            let mut v = match v {
                Head::Value(v) => v,
                Head::Array(0) => Value::Array(Vec::new()),
                Head::Array(n) => {
                    stack.push((n, Vec::with_capacity(n.min(4096))));
                    continue;
                }
            };
            loop {
                let Some((want, items)) = stack.last_mut() else {
                    return Ok(v);
                };
                items.push(v);
                if items.len() < *want {
                    break;
                }
                let (_, items) = stack.pop().unwrap_or_default();
                v = Value::Array(items);
            }
        }
    }

    async fn read_one(&mut self) -> Result<Head, CacheError> {
        let mut line = Vec::with_capacity(32);
        let n = self
            .io
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| self.io_error(e.to_string()))?;
        if n == 0 {
            return Err(self.io_error("the server closed the connection".into()));
        }
        if !line.ends_with(b"\r\n") || line.len() < 3 {
            return Err(self.io_error("a reply that is not RESP".into()));
        }
        let body = &line[1..line.len() - 2];
        let text = || String::from_utf8_lossy(body).into_owned();
        let number = || -> Result<i64, CacheError> {
            std::str::from_utf8(body)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| self.io_error(format!("a bad length in a reply: {:?}", text())))
        };
        Ok(match line[0] {
            b'+' => Head::Value(Value::Status(text())),
            b'-' => Head::Value(Value::Error(text())),
            b':' => Head::Value(Value::Int(number()?)),
            b'$' => {
                let len = number()?;
                if len < 0 {
                    return Ok(Head::Value(Value::Nil));
                }
                let mut buf = vec![0u8; len as usize + 2];
                self.io
                    .read_exact(&mut buf)
                    .await
                    .map_err(|e| self.io_error(e.to_string()))?;
                buf.truncate(len as usize);
                Head::Value(Value::Bulk(buf))
            }
            b'*' => {
                let len = number()?;
                if len < 0 {
                    Head::Value(Value::Nil)
                } else {
                    Head::Array(len as usize)
                }
            }
            other => {
                return Err(self.io_error(format!(
                    "a reply that is not RESP (starts with {:?})",
                    other as char
                )));
            }
        })
    }

    fn io_error(&self, reason: String) -> CacheError {
        CacheError::Io {
            side: self.side,
            addr: self.addr.clone(),
            reason,
        }
    }
}

enum Head {
    Value(Value),
    Array(usize),
}

/// An AUTH refusal as the server worded it, bounded in length.
fn bounded(e: &str) -> String {
    // Redis answers "WRONGPASS invalid username-password pair or user is
    // disabled." and never echoes the password; keep the text but bound it.
    e.chars().take(200).collect()
}

/// TLS with the system's roots, or the CA file the URL names (`?ca=PATH`).
fn tls_connector(url: &RedisUrl) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &url.ca {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect())
                .map_err(|e| format!("ca={}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("ca={}: no certificate in the file", path.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("ca={}: {e}", path.display()))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
