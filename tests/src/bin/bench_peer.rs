//! `cutover-bench-peer`: the far ends of `bench/proxy.sh`'s WebSocket and gRPC
//! cases. Two servers (a WebSocket echo and the harness's gRPC `Echo` service)
//! and two bounded load generators that talk to them through a proxy and report
//! throughput and latency as a line and as JSON; and a bounded slowloris client
//! (connections that never finish their request head) for its slowloris phase.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use cutover_tests::{EchoClient, EchoServer, GrpcStats, serve_grpc};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Benchmark peers for a proxy under test: WebSocket and gRPC servers to stand
/// behind it, and load generators to drive it. Traffic is meant for loopback;
/// every load run stops at its deadline.
#[derive(Parser, Debug)]
#[command(name = "cutover-bench-peer", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A WebSocket server that sends every text or binary message back as is.
    /// Prints `listening on ADDR` and serves until killed.
    WsEcho {
        /// The address to listen on, e.g. 127.0.0.1:9001 (port 0 picks one).
        #[arg(long)]
        listen: SocketAddr,
        /// Runtime worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Opens `--conns` WebSocket connections, then for `--secs` seconds each one
    /// sends a message and waits for its echo, over and over. Prints a summary
    /// line; `--json` also writes `conns_open`, `connect_errors`, `messages`,
    /// `msgs_per_s`, `p50_ms`, `p99_ms` and `errors`.
    WsLoad {
        /// Where to connect, e.g. ws://127.0.0.1:8080/ (an IP address and port).
        #[arg(long)]
        url: String,
        /// The `Host` header of the handshakes (what a proxy routes by).
        #[arg(long, default_value = "shop.test")]
        host: String,
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// Seconds of messages once every connection is open.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Connections opened at once (a batch finishes before the next starts,
        /// so the listen backlog is not overrun).
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Bytes per message.
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Runtime worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Also write the results to this file as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// A gRPC server of the `cutover.test.Echo` service over cleartext HTTP/2.
    /// Prints `listening on ADDR` and serves until killed.
    GrpcServer {
        /// The address to listen on, e.g. 127.0.0.1:9002 (port 0 picks one).
        #[arg(long)]
        listen: SocketAddr,
        /// The name every reply carries.
        #[arg(long, default_value = "grpc")]
        name: String,
        /// Runtime worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Unary `Get` calls for `--secs` seconds over `--conns` HTTP/2 connections
    /// with `--concurrency` calls in flight in all. Prints a summary line;
    /// `--json` also writes `calls`, `calls_per_s`, `p50_ms`, `p99_ms` and
    /// `errors`.
    GrpcLoad {
        /// Where to connect, e.g. 127.0.0.1:8080.
        #[arg(long)]
        target: SocketAddr,
        /// The `:authority` of the calls (what a proxy routes by).
        #[arg(long, default_value = "shop.test")]
        host: String,
        /// HTTP/2 connections.
        #[arg(long, default_value_t = 8)]
        conns: usize,
        /// Calls in flight, spread over the connections.
        #[arg(long, default_value_t = 512)]
        concurrency: usize,
        /// Seconds of calls.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Runtime worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Also write the results to this file as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Slowloris: opens `--conns` connections to `--target` (a loopback address
    /// only), sends each a request line and a `Host` header, then one more byte of
    /// header every `--every` seconds, never ending the head. Holds them at most
    /// `--secs` seconds from the start, and stops sooner once the server has
    /// closed them all. Prints `slowloris: N of M connections open` once the
    /// connections are open, then a summary; `--json` also writes `conns`,
    /// `opened`, `connect_errors`, `closed_by_server`, `answered` (closed after
    /// the server sent something, such as a 408), `still_open` (at the end),
    /// `closed_after_s` (`min`, `p50`, `max`: from each connection's connect to
    /// its close), `first_close_s` (from the start) and `held_s`.
    Slowloris {
        /// Where to connect, e.g. 127.0.0.1:8080 (a loopback address).
        #[arg(long)]
        target: SocketAddr,
        /// The `Host` header sent before the trickle.
        #[arg(long, default_value = "shop.test")]
        host: String,
        /// Connections to open.
        #[arg(long, default_value_t = 2000)]
        conns: usize,
        /// Seconds at most, from the start (opening included).
        #[arg(long, default_value_t = 15)]
        secs: u64,
        /// Seconds between two bytes on one connection (the connections' bytes
        /// are spread over this interval).
        #[arg(long, default_value_t = 3)]
        every: u64,
        /// Connections opened at once (a batch finishes before the next starts).
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Runtime worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Also write the results to this file as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

impl Command {
    /// The runtime's worker threads (at least one).
    fn threads(&self) -> usize {
        match self {
            Command::WsEcho { threads, .. }
            | Command::WsLoad { threads, .. }
            | Command::GrpcServer { threads, .. }
            | Command::GrpcLoad { threads, .. }
            | Command::Slowloris { threads, .. } => (*threads).max(1),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.command.threads())
        .enable_all()
        .build()
        .context("start the runtime")?;
    let result = rt.block_on(run(cli.command));
    // Load runs end at their deadline; do not wait for stragglers.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Runs one subcommand to its end (a server's end is its process's).
async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::WsEcho { listen, .. } => ws_echo(listen).await,
        Command::WsLoad {
            url,
            host,
            conns,
            secs,
            batch,
            size,
            json,
            ..
        } => {
            let opts = WsLoad {
                host,
                conns,
                secs,
                batch,
                size,
            };
            ws_load(&url, opts, json).await
        }
        Command::GrpcServer { listen, name, .. } => {
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("listen on {listen}"))?;
            println!("listening on {}", listener.local_addr()?);
            let server = EchoServer::new(&name, Arc::new(GrpcStats::default()));
            serve_grpc(listener, server).await;
            Ok(())
        }
        Command::GrpcLoad {
            target,
            host,
            conns,
            concurrency,
            secs,
            json,
            ..
        } => grpc_load(target, &host, conns, concurrency, secs, json).await,
        Command::Slowloris {
            target,
            host,
            conns,
            secs,
            every,
            batch,
            json,
            ..
        } => {
            let opts = Slowloris {
                target,
                host,
                conns,
                secs,
                every,
                batch,
            };
            slowloris(opts, json).await
        }
    }
}

/// Serves the WebSocket echo on `listen` until killed.
async fn ws_echo(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break;
                }
                // Pings are answered by the library as it reads.
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// What a `ws-load` run does.
struct WsLoad {
    host: String,
    conns: usize,
    secs: u64,
    batch: usize,
    size: usize,
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// How long one connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closing handshake, or a call under way at the deadline, may take.
const GRACE: Duration = Duration::from_secs(1);

/// Opens the connections, runs the echo loops until the deadline, and reports.
async fn ws_load(url: &str, opts: WsLoad, json: Option<PathBuf>) -> anyhow::Result<()> {
    let uri: http::Uri = url.parse().with_context(|| format!("the URL {url}"))?;
    let addr: SocketAddr = uri
        .authority()
        .map(|a| a.as_str())
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("{url} needs an IP address and port"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let request = format!("ws://{}{path}", opts.host);

    let mut open: Vec<Ws> = Vec::with_capacity(opts.conns);
    let mut connect_errors = 0u64;
    let mut first_error = None;
    let mut left = opts.conns;
    while left > 0 {
        let n = left.min(opts.batch.max(1));
        left -= n;
        let batch = (0..n).map(|_| {
            let request = request.clone();
            async move {
                tokio::time::timeout(CONNECT_TIMEOUT, async {
                    let tcp = TcpStream::connect(addr).await?;
                    let _ = tcp.set_nodelay(true);
                    let (ws, _) = tokio_tungstenite::client_async(request, tcp).await?;
                    anyhow::Ok(ws)
                })
                .await
                .unwrap_or_else(|_| Err(anyhow!("no handshake within {CONNECT_TIMEOUT:?}")))
            }
        });
        for result in futures_util::future::join_all(batch).await {
            match result {
                Ok(ws) => open.push(ws),
                Err(e) => {
                    connect_errors += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
    if let Some(e) = &first_error {
        eprintln!("ws-load: {connect_errors} connection(s) failed, the first: {e}");
    }
    let conns_open = open.len();

    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + Duration::from_secs(opts.secs));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(open.len());
    for (i, ws) in open.into_iter().enumerate() {
        let hist = new_histogram()?;
        let task = ws_loop(ws, i, opts.size, deadline, hist, errors.clone());
        tasks.push(tokio::spawn(task));
    }
    let mut hist = new_histogram()?;
    for task in tasks {
        // A task that outlives the deadline by far is abandoned, not awaited.
        match tokio::time::timeout_at(deadline + 2 * GRACE, task).await {
            Ok(Ok(h)) => hist.add(&h).context("merge histograms")?,
            _ => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let elapsed = start
        .elapsed()
        .min(Duration::from_secs(opts.secs))
        .as_secs_f64();
    let errors = errors.load(Ordering::Relaxed) + connect_errors;
    let messages = hist.len();
    let rate = messages as f64 / elapsed.max(1e-9);
    let (p50, p99) = (quantile_ms(&hist, 0.5), quantile_ms(&hist, 0.99));
    println!(
        "ws-load: {conns_open} of {} connections open, {messages} messages in {elapsed:.1} s \
         ({rate:.0}/s), p50 {p50:.3} ms, p99 {p99:.3} ms, {errors} errors",
        opts.conns
    );
    let report = serde_json::json!({
        "conns_open": conns_open,
        "connect_errors": connect_errors,
        "messages": messages,
        "msgs_per_s": rate,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": errors,
    });
    write_json(json, &report)
}

/// One connection's loop: a message, its echo, again, until `deadline`; then a
/// clean close. Records the round-trip times in `hist` and returns it; failures
/// count in `errors`.
async fn ws_loop(
    mut ws: Ws,
    index: usize,
    size: usize,
    deadline: tokio::time::Instant,
    mut hist: Histogram<u64>,
    errors: Arc<AtomicU64>,
) -> Histogram<u64> {
    let mut seq = 0u64;
    let result = tokio::time::timeout_at(deadline, async {
        loop {
            seq += 1;
            let text = format!("{index}:{seq}:");
            let text = format!("{text:x<size$}");
            let sent = Instant::now();
            ws.send(Message::text(text.clone())).await?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str() == text => break,
                    Some(Ok(Message::Text(_) | Message::Binary(_))) => bail!("a wrong echo"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("closed by the peer"),
                }
            }
            let _ = hist.record(micros(sent.elapsed()));
        }
    })
    .await;
    match result {
        // The deadline: the one way out of the loop that is not a failure.
        Err(_) => {
            // A closing handshake: send the close, read to the peer's.
            let _ = tokio::time::timeout(GRACE, async {
                ws.close(None).await?;
                while let Some(msg) = ws.next().await {
                    msg?;
                }
                anyhow::Ok(())
            })
            .await;
        }
        Ok(Err(_)) => {
            errors.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Ok(())) => {}
    }
    hist
}

/// Runs unary `Get` calls until the deadline and reports.
async fn grpc_load(
    target: SocketAddr,
    host: &str,
    conns: usize,
    concurrency: usize,
    secs: u64,
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut clients = Vec::with_capacity(conns.max(1));
    for _ in 0..conns.max(1) {
        let client = tokio::time::timeout(CONNECT_TIMEOUT, EchoClient::connect(target, host))
            .await
            .with_context(|| format!("no connection to {target} within {CONNECT_TIMEOUT:?}"))?
            .with_context(|| format!("connect to {target}"))?;
        clients.push(client);
    }
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + Duration::from_secs(secs));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let (errors, first_error) = (errors.clone(), first_error.clone());
            tokio::spawn(async move {
                let mut hist = new_histogram().ok()?;
                // No call starts after the deadline; one under way may finish
                // within the grace (cancelling hundreds at once would look like
                // an attack to an HTTP/2 server), but counts only if it finished
                // in time.
                while tokio::time::Instant::now() < deadline {
                    let sent = Instant::now();
                    let call = client.get("bench");
                    let result = tokio::time::timeout_at(deadline + GRACE, call).await;
                    let in_time = tokio::time::Instant::now() <= deadline;
                    match result {
                        Ok(Ok(_)) if in_time => {
                            let _ = hist.record(micros(sent.elapsed()));
                        }
                        Ok(Err(status)) if in_time => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut first) = first_error.lock() {
                                first.get_or_insert_with(|| status.to_string());
                            }
                            // A failing target is not hammered in a tight loop.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut first) = first_error.lock() {
                                first.get_or_insert_with(|| "no answer by the deadline".into());
                            }
                        }
                    }
                }
                Some(hist)
            })
        })
        .collect();
    let mut hist = new_histogram()?;
    for task in tasks {
        match tokio::time::timeout_at(deadline + 2 * GRACE, task).await {
            Ok(Ok(Some(h))) => hist.add(&h).context("merge histograms")?,
            _ => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let elapsed = start.elapsed().min(Duration::from_secs(secs)).as_secs_f64();
    let errors = errors.load(Ordering::Relaxed);
    if let Ok(Some(e)) = first_error.lock().map(|f| f.clone()) {
        eprintln!("grpc-load: {errors} call(s) failed, the first: {e}");
    }
    let calls = hist.len();
    let rate = calls as f64 / elapsed.max(1e-9);
    let (p50, p99) = (quantile_ms(&hist, 0.5), quantile_ms(&hist, 0.99));
    println!(
        "grpc-load: {calls} calls in {elapsed:.1} s over {} connections, {} in flight \
         ({rate:.0}/s), p50 {p50:.3} ms, p99 {p99:.3} ms, {errors} errors",
        clients.len(),
        concurrency.max(1)
    );
    let report = serde_json::json!({
        "calls": calls,
        "calls_per_s": rate,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": errors,
    });
    write_json(json, &report)
}

/// What a `slowloris` run does.
struct Slowloris {
    target: SocketAddr,
    host: String,
    conns: usize,
    secs: u64,
    every: u64,
    batch: usize,
}

/// How one slowloris connection ended.
enum SlowEnd {
    /// Still open at the deadline.
    Open,
    /// Closed (or reset) by the server this long after the connect, at `at`;
    /// `answered` when the server sent something first.
    Closed {
        after: Duration,
        at: Instant,
        answered: bool,
    },
}

/// Opens the connections, trickles their heads until the deadline or until the
/// server has closed them all, and reports.
async fn slowloris(opts: Slowloris, json: Option<PathBuf>) -> anyhow::Result<()> {
    if !opts.target.ip().is_loopback() {
        bail!(
            "slowloris only targets loopback addresses, not {}",
            opts.target
        );
    }
    let every = Duration::from_secs(opts.every.max(1));
    let prefix: Arc<[u8]> = format!("GET / HTTP/1.1\r\nHost: {}\r\n", opts.host)
        .into_bytes()
        .into();
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + Duration::from_secs(opts.secs));

    let mut tasks = Vec::with_capacity(opts.conns);
    let mut connect_errors = 0u64;
    let mut first_error = None;
    let mut left = opts.conns;
    while left > 0 && tokio::time::Instant::now() < deadline {
        let n = left.min(opts.batch.max(1));
        left -= n;
        let batch = (0..n).map(|_| async {
            let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(opts.target));
            match tokio::time::timeout_at(deadline, connect).await {
                Ok(Ok(result)) => Ok((result?, Instant::now())),
                _ => Err(anyhow!("no connection within {CONNECT_TIMEOUT:?}")),
            }
        });
        for result in futures_util::future::join_all(batch).await {
            match result {
                Ok((tcp, connected)) => {
                    let index = tasks.len();
                    // Each connection's bytes at its own point of the interval.
                    let offset = every.mul_f64((index % 100) as f64 / 100.0);
                    let task = slow_conn(tcp, connected, prefix.clone(), offset, every, deadline);
                    tasks.push(tokio::spawn(task));
                }
                Err(e) => {
                    connect_errors += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
    connect_errors += left as u64;
    if let Some(e) = &first_error {
        eprintln!("slowloris: {connect_errors} connection(s) failed, the first: {e}");
    }
    let opened = tasks.len();
    println!(
        "slowloris: {opened} of {} connections open after {:.1} s",
        opts.conns,
        start.elapsed().as_secs_f64()
    );

    let (mut still_open, mut answered) = (0u64, 0u64);
    let mut ages = Vec::with_capacity(opened);
    let mut first_close: Option<Instant> = None;
    for task in tasks {
        // Every task ends by the deadline; one that does not is abandoned.
        match tokio::time::timeout_at(deadline + GRACE, task).await {
            Ok(Ok(SlowEnd::Closed {
                after,
                at,
                answered: a,
            })) => {
                ages.push(after);
                answered += u64::from(a);
                first_close = Some(first_close.map_or(at, |f| f.min(at)));
            }
            _ => still_open += 1,
        }
    }
    let held = start.elapsed().as_secs_f64();
    ages.sort();
    let age = |q: f64| -> Option<f64> {
        let i = ((ages.len() as f64 - 1.0) * q).round() as usize;
        ages.get(i).map(Duration::as_secs_f64)
    };
    let (min, p50, max) = (age(0.0), age(0.5), age(1.0));
    let first_close_s = first_close.map(|f| (f - start).as_secs_f64());
    let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!(
        "slowloris: {opened} opened, {} closed by the server ({answered} after an answer; \
         {} to {} s after their connect, median {}), {still_open} still open after {held:.1} s, \
         {connect_errors} failed to connect",
        ages.len(),
        show(min),
        show(max),
        show(p50),
    );
    let report = serde_json::json!({
        "conns": opts.conns,
        "opened": opened,
        "connect_errors": connect_errors,
        "closed_by_server": ages.len(),
        "answered": answered,
        "still_open": still_open,
        "closed_after_s": { "min": min, "p50": p50, "max": max },
        "first_close_s": first_close_s,
        "held_s": held,
    });
    write_json(json, &report)
}

/// One slowloris connection, open since `connected`: the request line and
/// `Host`, then a byte of a never-ending run of headers every `every` (the first
/// after `offset`), until the server closes the connection or the deadline.
async fn slow_conn(
    mut tcp: TcpStream,
    connected: Instant,
    prefix: Arc<[u8]>,
    offset: Duration,
    every: Duration,
    deadline: tokio::time::Instant,
) -> SlowEnd {
    const TRICKLE: &[u8] = b"X-a: b\r\n";
    let _ = tcp.set_nodelay(true);
    let (mut rd, mut wr) = tcp.split();
    let closed = |answered| SlowEnd::Closed {
        after: connected.elapsed(),
        at: Instant::now(),
        answered,
    };
    match tokio::time::timeout_at(deadline, wr.write_all(&prefix)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return closed(false),
        Err(_) => return SlowEnd::Open,
    }
    let mut next = tokio::time::Instant::now() + offset;
    let mut sent = 0usize;
    let mut answered = false;
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            biased;
            read = rd.read(&mut buf) => match read {
                Ok(0) | Err(_) => return closed(answered),
                // A 408, say: the close follows.
                Ok(_) => answered = true,
            },
            () = tokio::time::sleep_until(deadline) => return SlowEnd::Open,
            () = tokio::time::sleep_until(next) => {
                let byte = &TRICKLE[sent % TRICKLE.len()..][..1];
                match tokio::time::timeout_at(deadline, wr.write_all(byte)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return closed(answered),
                    Err(_) => return SlowEnd::Open,
                }
                sent += 1;
                next += every;
            }
        }
    }
}

/// A histogram of microseconds, from 1 µs to 60 s at 3 significant figures.
fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("a latency histogram")
}

/// A duration in whole microseconds, at least one (the histogram's floor).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// A quantile in milliseconds; NaN when nothing was recorded.
fn quantile_ms(hist: &Histogram<u64>, q: f64) -> f64 {
    if hist.is_empty() {
        f64::NAN
    } else {
        hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Writes `report` to `path`, if there is one. NaN becomes `null`.
fn write_json(path: Option<PathBuf>, report: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(report).context("encode the results")?;
        std::fs::write(&path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
