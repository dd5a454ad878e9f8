//! Real Redis servers for the cache tests: `redis-server` on a free loopback port
//! with no persistence and a temporary `--dir`, stopped on drop; plus `RedisConn`,
//! a small blocking RESP client (an encoder, a reply reader and a pipeline that
//! writes a batch of commands before reading their replies), so a test can load
//! 100,000 keys in seconds or look behind `cutover`'s back. Comparing what two
//! servers hold is the tests' business, not this module's.

use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::openbao::{find_on_path, free_port};

/// How long a server may take to answer `PING`.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// Commands written before their replies are read: large enough that a batch
/// costs one round trip, small enough that the replies never pile up unread.
const PIPELINE_CHUNK: usize = 2_000;
/// A reply that takes longer than this means a wedged server, not a slow one.
const REPLY_WITHIN: Duration = Duration::from_secs(60);

/// `redis-server` from `$REDIS_SERVER` or `PATH`; panics with the install command
/// when missing.
pub fn redis_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REDIS_SERVER") {
        return PathBuf::from(p);
    }
    find_on_path("redis-server").unwrap_or_else(|| {
        panic!("`redis-server` is not on PATH; run scripts/install-deps.sh (or set REDIS_SERVER)")
    })
}

/// A running `redis-server`; killed (and reaped) on drop.
pub struct RedisServer {
    pub port: u16,
    /// `redis://127.0.0.1:PORT`, without credentials (see [`RedisServer::url_with`]).
    pub url: String,
    /// The `default` user's password when started with `--requirepass`, so that
    /// the harness's own connections can log in.
    password: Option<String>,
    dir: TempDir,
    child: Child,
}

impl RedisServer {
    /// A server with Redis's defaults (no keyspace notifications).
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server with `extra` arguments appended, e.g. `["--notify-keyspace-events",
    /// "KA"]` or `["--requirepass", PW]`; blocks until it answers `PING`.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let bin = redis_server_bin();
        let password = extra
            .iter()
            .position(|a| *a == "--requirepass")
            .and_then(|i| extra.get(i + 1))
            .map(|p| p.to_string());
        let mut last = String::new();
        // A port picked free may be taken before the server binds it: retry.
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("cutover-redis-")
                .tempdir()
                .expect("temp dir");
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("log")).expect("log file");
            let child = Command::new(&bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir.path())
                .args(extra)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            let mut server = RedisServer {
                port,
                url: format!("redis://127.0.0.1:{port}"),
                password: password.clone(),
                dir,
                child,
            };
            match server.wait_ready() {
                Ok(()) => return server,
                // Dropping `server` kills this attempt.
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// Polls `PING` until it is answered, the process exits, or the deadline passes.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "redis-server exited with {status}:\n{}",
                    self.log()
                ));
            }
            if let Ok(mut conn) = self.try_conn() {
                // Any reply, even NOAUTH or LOADING, means it is listening; only
                // `PONG` means it serves.
                let pong = conn.try_run(&Cmd::new("PING"));
                if matches!(&pong, Ok(Resp::Status(s)) if s == "PONG") {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("no PONG within {READY_WITHIN:?}:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://USER:PASSWORD@127.0.0.1:PORT`.
    pub fn url_with(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn try_conn(&self) -> io::Result<RedisConn> {
        let mut conn = RedisConn::connect(self.port)?;
        if let Some(pw) = &self.password
            && let Resp::Error(e) = conn.try_run(&Cmd::new("AUTH").arg(pw))?
        {
            return Err(io::Error::other(e));
        }
        Ok(conn)
    }

    /// A new connection, logged in as `default` when the server has a password.
    pub fn conn(&self) -> RedisConn {
        self.try_conn()
            .unwrap_or_else(|e| panic!("connect to redis on port {}: {e}", self.port))
    }

    /// One command on a new connection, e.g. `server.cmd(&["DBSIZE"])`.
    pub fn cmd(&self, args: &[&str]) -> Resp {
        self.conn().cmd(args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One command: its name and arguments, each as bytes.
#[derive(Debug, Clone)]
pub struct Cmd(Vec<Vec<u8>>);

impl Cmd {
    pub fn new(name: &str) -> Cmd {
        Cmd(vec![name.as_bytes().to_vec()])
    }

    pub fn arg(mut self, a: impl AsRef<[u8]>) -> Cmd {
        self.0.push(a.as_ref().to_vec());
        self
    }

    pub fn args<A: AsRef<[u8]>>(mut self, args: impl IntoIterator<Item = A>) -> Cmd {
        self.0.extend(args.into_iter().map(|a| a.as_ref().to_vec()));
        self
    }

    /// The RESP encoding: an array of bulk strings.
    fn encode(&self, out: &mut impl Write) -> io::Result<()> {
        write!(out, "*{}\r\n", self.0.len())?;
        for a in &self.0 {
            write!(out, "${}\r\n", a.len())?;
            out.write_all(a)?;
            out.write_all(b"\r\n")?;
        }
        Ok(())
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Status(String),
    /// `-ERR …`
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Array(Vec<Resp>),
    /// A null bulk string or a null array.
    Nil,
}

impl Resp {
    /// Panics on an error reply.
    #[track_caller]
    pub fn ok(self) -> Resp {
        if let Resp::Error(e) = &self {
            panic!("redis error: {e}");
        }
        self
    }

    #[track_caller]
    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(n) => *n,
            other => panic!("not an integer reply: {other:?}"),
        }
    }

    /// A bulk or status reply as text; `None` for `Nil`.
    #[track_caller]
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Resp::Status(s) => Some(s.clone()),
            Resp::Nil => None,
            other => panic!("not a string reply: {other:?}"),
        }
    }

    /// A bulk reply's bytes; `None` for `Nil`.
    #[track_caller]
    pub fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            Resp::Bulk(b) => Some(b.clone()),
            Resp::Nil => None,
            other => panic!("not a bulk reply: {other:?}"),
        }
    }

    /// An array reply's elements (`Nil` is empty).
    #[track_caller]
    pub fn array(self) -> Vec<Resp> {
        match self {
            Resp::Array(a) => a,
            Resp::Nil => Vec::new(),
            other => panic!("not an array reply: {other:?}"),
        }
    }
}

/// Reads one reply.
fn read_reply(r: &mut impl BufRead) -> io::Result<Resp> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed mid-reply",
        ));
    }
    let body = &line[1..line.len() - 2];
    let text = || String::from_utf8_lossy(body).into_owned();
    let number = || {
        text()
            .parse::<i64>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e}: {}", text())))
    };
    Ok(match line[0] {
        b'+' => Resp::Status(text()),
        b'-' => Resp::Error(text()),
        b':' => Resp::Int(number()?),
        b'$' => match usize::try_from(number()?) {
            Err(_) => Resp::Nil,
            Ok(len) => {
                let mut buf = vec![0; len + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(len);
                Resp::Bulk(buf)
            }
        },
        b'*' => match usize::try_from(number()?) {
            Err(_) => Resp::Nil,
            Ok(n) => Resp::Array((0..n).map(|_| read_reply(r)).collect::<io::Result<_>>()?),
        },
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown reply type {:?}", other as char),
            ));
        }
    })
}

/// A blocking connection to one server. Error replies come back as
/// [`Resp::Error`]; a broken connection panics.
pub struct RedisConn {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl RedisConn {
    pub fn connect(port: u16) -> io::Result<RedisConn> {
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_read_timeout(Some(REPLY_WITHIN))?;
        tcp.set_nodelay(true)?;
        Ok(RedisConn {
            reader: BufReader::new(tcp.try_clone()?),
            writer: BufWriter::with_capacity(1 << 16, tcp),
        })
    }

    fn try_run(&mut self, cmd: &Cmd) -> io::Result<Resp> {
        cmd.encode(&mut self.writer)?;
        self.writer.flush()?;
        read_reply(&mut self.reader)
    }

    /// Sends `cmd` and returns its reply.
    pub fn run(&mut self, cmd: &Cmd) -> Resp {
        self.try_run(cmd)
            .unwrap_or_else(|e| panic!("redis connection failed: {e}"))
    }

    /// `run` for a command of text arguments: `conn.cmd(&["GET", "k"])`.
    pub fn cmd(&mut self, args: &[&str]) -> Resp {
        let (name, rest) = args.split_first().expect("a command name");
        self.run(&Cmd::new(name).args(rest))
    }

    /// Pipelined: writes a chunk of commands, then reads that chunk's replies,
    /// until all are done. Replies in command order.
    pub fn pipeline(&mut self, cmds: &[Cmd]) -> Vec<Resp> {
        let mut replies = Vec::with_capacity(cmds.len());
        for chunk in cmds.chunks(PIPELINE_CHUNK) {
            let sent = chunk
                .iter()
                .try_for_each(|c| c.encode(&mut self.writer))
                .and_then(|()| self.writer.flush());
            if let Err(e) = sent {
                panic!("redis connection failed while writing a pipeline: {e}");
            }
            for _ in chunk {
                let reply = read_reply(&mut self.reader)
                    .unwrap_or_else(|e| panic!("redis connection failed mid-pipeline: {e}"));
                replies.push(reply);
            }
        }
        replies
    }

    /// `pipeline`, panicking on the first error reply.
    #[track_caller]
    pub fn pipeline_ok(&mut self, cmds: &[Cmd]) -> Vec<Resp> {
        let replies = self.pipeline(cmds);
        if let Some(i) = replies.iter().position(|r| matches!(r, Resp::Error(_))) {
            panic!(
                "pipelined command #{i} {:?} failed: {:?}",
                cmds[i], replies[i]
            );
        }
        replies
    }

    /// Every key, by `SCAN` (bounded: a cursor that never returns to 0 panics).
    pub fn keys(&mut self) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        let mut cursor = "0".to_string();
        for _ in 0..1_000_000 {
            let reply = self
                .run(&Cmd::new("SCAN").arg(&cursor).args(["COUNT", "1000"]))
                .ok()
                .array();
            let mut it = reply.into_iter();
            cursor = it.next().and_then(|c| c.text()).expect("a SCAN cursor");
            let batch = it.next().map(Resp::array).unwrap_or_default();
            keys.extend(batch.iter().filter_map(Resp::bytes));
            if cursor == "0" {
                keys.sort();
                keys.dedup();
                return keys;
            }
        }
        panic!("SCAN did not finish");
    }
}
