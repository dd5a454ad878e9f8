//! WebSockets (HTTP/1.1 `Upgrade`) through the proxy: the `101`, then messages
//! both ways for as long as both ends keep the connection; routed like a write
//! (to the write side, held by a writes hold) because the proxy cannot see what
//! the connection carries; counted as long-lived per route and backend; and a
//! backend with an open WebSocket is not drained. The world misbehaving: a backend
//! killed under open connections, and a client that goes away without a close.

use std::time::Duration;

use cutover_tests::{Backend, Proxy, eventually, two_backends};
use futures_util::{SinkExt, StreamExt};
use http::Method;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

const HOST: &str = "shop.test";

type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `HOST` through the proxy; returns it and the backend
/// that answered the handshake.
async fn open(proxy: &Proxy) -> (Ws, String) {
    open_at(proxy.http).await
}

/// [`open`] by the proxy's address, for a task of its own.
async fn open_at(addr: std::net::SocketAddr) -> (Ws, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{HOST}/live"), tcp)
        .await
        .expect("the WebSocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    let backend = resp
        .headers()
        .get("x-cutover-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (ws, backend)
}

/// Sends `text` and returns the echo.
async fn echo(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an echo within 10 s")
        {
            Some(Ok(Message::Text(t))) => return t.as_str().to_string(),
            Some(Ok(_)) => continue,
            other => panic!("no echo: {other:?}"),
        }
    }
}

/// POSTs `body` to the admin API's `path`, which must answer 200.
async fn post(proxy: &Proxy, path: &str, body: &str) -> cutover_tests::Reply {
    let r = proxy.admin_call(Method::POST, path, body).await;
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r
}

/// A WebSocket handshake under way in a task of its own.
type HeldHandshake = tokio::task::JoinHandle<
    Result<
        (
            Ws,
            tokio_tungstenite::tungstenite::handshake::client::Response,
        ),
        tokio_tungstenite::tungstenite::Error,
    >,
>;

/// Releases the hold with writes on new: the held handshake completes there and
/// echoes from new.
async fn released_to_new(proxy: &Proxy, pending: HeldHandshake) {
    post(proxy, "/routes/shop.test/release", r#"{"writes":"new"}"#).await;
    let (mut ws, resp) = pending
        .await
        .unwrap()
        .expect("the handshake after the release");
    assert_eq!(resp.headers()["x-cutover-backend"], "new");
    assert_eq!(echo(&mut ws, "after").await, "new: after");
}

/// A WebSocket handshake sent to the proxy, once the hold holds it; it completes
/// when the hold is released.
async fn held_handshake(proxy: &Proxy) -> HeldHandshake {
    let addr = proxy.http;
    let pending = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_tungstenite::client_async(format!("ws://{HOST}/live"), tcp).await
    });
    eventually(Duration::from_secs(10), "the handshake held", || async {
        (proxy.status().await["routes"][0]["hold"]["held"] == 1).then_some(())
    })
    .await;
    pending
}

/// Backends `old` and `new` behind a proxy for `HOST` with `weights` and `extra`.
fn start(weights: (f64, f64), extra: &str) -> (Backend, Backend, Proxy) {
    two_backends(&[HOST], weights, extra)
}

/// `n` WebSockets open on old, each having echoed a message; checks the proxy
/// counts them.
async fn echoing_on_old(proxy: &Proxy, n: u64) -> Vec<Ws> {
    let mut clients = Vec::new();
    for i in 0..n {
        let (mut ws, backend) = open(proxy).await;
        assert_eq!(backend, "old");
        assert_eq!(echo(&mut ws, &format!("c{i}")).await, format!("old: c{i}"));
        clients.push(ws);
    }
    assert_eq!(long_lived(proxy, "old").await, n);
    clients
}

async fn long_lived(proxy: &Proxy, backend: &str) -> u64 {
    proxy.status().await["routes"][0]["long_lived"][backend]
        .as_u64()
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_goes_where_writes_go_and_echoes_both_ways() {
    let (_old, _new, proxy) = start((100.0, 0.0), "writes = \"new\"");
    assert_eq!(proxy.get(HOST, "/").await.backend(), "old");

    let (mut ws, backend) = open(&proxy).await;
    assert_eq!(backend, "new");
    for i in 0..50 {
        assert_eq!(echo(&mut ws, &format!("m{i}")).await, format!("new: m{i}"));
    }
    assert_eq!(long_lived(&proxy, "new").await, 1);
    assert_eq!(long_lived(&proxy, "old").await, 0);
    assert!(
        proxy
            .metrics()
            .await
            .contains(r#"cutover_upgraded_connections{backend="new",route="shop.test"} 1"#)
    );

    // Writes move to old (without a hold, which would close the WebSocket) and
    // new has no weight: new is not drained while the WebSocket is open, and is
    // once it closes.
    post(&proxy, "/routes/shop.test/release", r#"{"writes":"old"}"#).await;
    assert_eq!(proxy.status().await["routes"][0]["drained"]["new"], false);
    assert_eq!(echo(&mut ws, "still here").await, "new: still here");
    ws.close(None).await.unwrap();
    eventually(Duration::from_secs(10), "new drained", || async {
        let s = proxy.status().await;
        (s["routes"][0]["drained"]["new"] == true && s["routes"][0]["long_lived"]["new"] == 0)
            .then_some(())
    })
    .await;
    let (mut ws, backend) = open(&proxy).await;
    assert_eq!(backend, "old");
    assert_eq!(echo(&mut ws, "moved").await, "old: moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_is_held_with_the_writes_and_released_to_the_new_side() {
    let (old, _new, proxy) = start((50.0, 50.0), "writes = \"old\"");
    post(
        &proxy,
        "/routes/shop.test/hold",
        r#"{"scope":"writes","max":"30s"}"#,
    )
    .await;
    let pending = held_handshake(&proxy).await;
    assert_eq!(
        old.stats
            .websockets
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    released_to_new(&proxy, pending).await;
    assert_eq!(
        old.stats
            .websockets
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// The switchover's first step: an `upgrades` hold closes the WebSockets to the
/// write side and holds their reconnects, while every other write still goes
/// to old; a `writes` hold then widens it, and the release sends the held
/// handshake to new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrades_hold_moves_the_websockets_while_other_writes_flow() {
    let (old, _new, proxy) = start(
        (50.0, 50.0),
        "writes = \"old\"\n\n[hold]\nupgrade_grace = \"100ms\"",
    );
    let mut open = echoing_on_old(&proxy, 3).await;
    post(
        &proxy,
        "/routes/shop.test/hold",
        r#"{"scope":"upgrades","max":"30s"}"#,
    )
    .await;
    for ws in &mut open {
        assert_eq!(closed(ws, Duration::from_secs(10)).await, Some(1012));
    }
    eventually(Duration::from_secs(10), "no tunnel left to old", || async {
        (long_lived(&proxy, "old").await == 0).then_some(())
    })
    .await;
    assert_eq!(
        proxy.status().await["routes"][0]["hold"]["scope"],
        "upgrades"
    );
    // A reconnect waits in the hold...
    let pending = held_handshake(&proxy).await;
    // ...while a plain write still reaches old at once.
    let client = cutover_tests::Client::new();
    let write = client
        .send(proxy.http, Method::POST, HOST, "/orders", &[], "{}")
        .await
        .expect("a write under an upgrades hold");
    assert_eq!(write.status, 200, "{}", write.body);
    assert_eq!(write.headers["x-cutover-backend"], "old");
    // The writes hold widens it; the release sends the handshake to new.
    post(
        &proxy,
        "/routes/shop.test/hold",
        r#"{"scope":"writes","max":"30s"}"#,
    )
    .await;
    assert_eq!(proxy.status().await["routes"][0]["hold"]["scope"], "writes");
    released_to_new(&proxy, pending).await;
    assert_eq!(
        old.stats
            .websockets
            .load(std::sync::atomic::Ordering::SeqCst),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_or_a_vanished_client_leaves_nothing_open() {
    let (mut old, new, proxy) = start((100.0, 0.0), "writes = \"old\"");

    // Ten clients on old; the backend dies under them.
    let clients = echoing_on_old(&proxy, 10).await;
    old.kill();
    for mut ws in clients {
        let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the client learns of the end within 10 s");
        assert!(
            !matches!(end, Some(Ok(Message::Text(_)))),
            "no message after the backend died: {end:?}"
        );
    }
    eventually(Duration::from_secs(10), "no tunnel left to old", || async {
        (long_lived(&proxy, "old").await == 0).then_some(())
    })
    .await;

    // A client that drops its TCP connection without a close frame.
    post(
        &proxy,
        "/routes/shop.test/hold",
        r#"{"scope":"writes","max":"30s"}"#,
    )
    .await;
    post(&proxy, "/routes/shop.test/release", r#"{"writes":"new"}"#).await;
    let (mut ws, backend) = open(&proxy).await;
    assert_eq!(backend, "new");
    assert_eq!(echo(&mut ws, "bye").await, "new: bye");
    assert_eq!(
        new.stats
            .websockets_open
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    drop(ws);
    eventually(
        Duration::from_secs(10),
        "the tunnel and the backend's side closed",
        || async {
            (long_lived(&proxy, "new").await == 0
                && new
                    .stats
                    .websockets_open
                    .load(std::sync::atomic::Ordering::SeqCst)
                    == 0)
                .then_some(())
        },
    )
    .await;
}

/// Waits for the server's close; returns its code (`None`: no close frame).
async fn closed(ws: &mut Ws, within: Duration) -> Option<u16> {
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Err(_) => panic!("no close within {within:?}"),
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_closes_websockets_on_the_losing_side_and_they_follow_the_writes() {
    let (old, _new, proxy) = start(
        (50.0, 50.0),
        "writes = \"old\"\n\n[hold]\nupgrade_grace = \"500ms\"",
    );
    let mut clients = Vec::new();
    for _ in 0..50 {
        let (ws, backend) = open(&proxy).await;
        assert_eq!(backend, "old");
        clients.push(ws);
    }
    assert_eq!(long_lived(&proxy, "old").await, 50);
    post(
        &proxy,
        "/routes/shop.test/hold",
        r#"{"scope":"writes","max":"30s"}"#,
    )
    .await;
    // Each client sees a 1012 close, and reconnects at once: the reconnect is
    // held with the writes.
    let reconnects: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            let addr = proxy.http;
            tokio::spawn(async move {
                let code = closed(&mut ws, Duration::from_secs(10)).await;
                let (mut ws, backend) = open_at(addr).await;
                let reply = echo(&mut ws, "back").await;
                (code, backend, reply, ws)
            })
        })
        .collect();
    eventually(Duration::from_secs(10), "50 reconnects held", || async {
        (proxy.status().await["routes"][0]["hold"]["held"] == 50).then_some(())
    })
    .await;
    assert_eq!(long_lived(&proxy, "old").await, 0);
    post(&proxy, "/routes/shop.test/release", r#"{"writes":"new"}"#).await;
    let mut open_now = Vec::new();
    for r in reconnects {
        let (code, backend, reply, ws) = r.await.unwrap();
        assert_eq!(code, Some(1012));
        assert_eq!((backend.as_str(), reply.as_str()), ("new", "new: back"));
        open_now.push(ws);
    }
    let on_old = old
        .stats
        .websockets
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(on_old, 50, "no client reconnected to old");
    assert_eq!(long_lived(&proxy, "new").await, 50);
}

/// A herd of reconnects: the handshakes a release wakes go on at
/// `hold.upgrade_rate` a second, not in one instant, while a write held with them
/// goes at once; and those still waiting for their turn when the next hold begins
/// (a rollback right after the switchover) are held again and follow that hold's
/// write side, never the one they were woken for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_paces_the_reconnects_it_wakes_and_a_new_hold_catches_the_rest() {
    const N: usize = 30;
    let (old, new, proxy) = start(
        (50.0, 50.0),
        "writes = \"old\"\n\n[hold]\nupgrade_grace = \"100ms\"\nupgrade_rate = 10",
    );
    post(
        &proxy,
        "/routes/shop.test/hold",
        r#"{"scope":"writes","max":"60s"}"#,
    )
    .await;
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    let handshakes: Vec<_> = (0..N)
        .map(|_| {
            let (addr, done_tx) = (proxy.http, done_tx.clone());
            tokio::spawn(async move {
                let (ws, backend) = open_at(addr).await;
                let _ = done_tx.send((tokio::time::Instant::now(), backend));
                ws
            })
        })
        .collect();
    let (addr, client) = (proxy.http, cutover_tests::Client::new());
    let write = tokio::spawn(async move {
        let r = client
            .send(addr, Method::POST, HOST, "/orders", &[], "{}")
            .await
            .expect("the held write");
        (r, tokio::time::Instant::now())
    });
    eventually(
        Duration::from_secs(10),
        "the handshakes and the write held",
        || async {
            (proxy.status().await["routes"][0]["hold"]["held"] == N as u64 + 1).then_some(())
        },
    )
    .await;

    let released = tokio::time::Instant::now();
    post(&proxy, "/routes/shop.test/release", r#"{"writes":"new"}"#).await;
    let (w, answered) = write.await.unwrap();
    assert_eq!(w.status, 200, "{}", w.body);
    assert_eq!(w.headers["x-cutover-backend"], "new");
    // Not paced: it is no upgrade. (The tenth handshake's turn is 0.9 s after.)
    assert!(
        answered - released < Duration::from_millis(800),
        "{:?}",
        answered - released
    );

    // Eight handshakes went, one every 100 ms: the eighth not before 0.7 s.
    let mut before_rollback = Vec::new();
    while before_rollback.len() < 8 {
        let (at, backend) = tokio::time::timeout(Duration::from_secs(10), done.recv())
            .await
            .expect("a paced handshake within 10 s")
            .unwrap();
        assert_eq!(backend, "new");
        before_rollback.push(at - released);
    }
    assert!(
        before_rollback[7] >= Duration::from_millis(650),
        "eight handshakes within {:?} of the release: not paced at 10/s",
        before_rollback[7]
    );
    // A rollback's hold: the handshakes still waiting for their turn are held by
    // it, whatever the release that woke them said.
    post(
        &proxy,
        "/routes/shop.test/hold",
        r#"{"scope":"writes","max":"60s"}"#,
    )
    .await;
    let mut on_new = before_rollback.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let held = loop {
        while let Ok((_, backend)) = done.try_recv() {
            assert_eq!(backend, "new", "sent before the second hold began");
            on_new += 1;
        }
        let held = proxy.status().await["routes"][0]["hold"]["held"]
            .as_u64()
            .unwrap_or(0) as usize;
        if on_new + held == N {
            break held;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{on_new} sent and {held} held again of {N} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(held >= 5, "only {held} of {N} left for the second hold");
    post(&proxy, "/routes/shop.test/release", r#"{"writes":"old"}"#).await;
    for _ in 0..held {
        let (_, backend) = tokio::time::timeout(Duration::from_secs(10), done.recv())
            .await
            .expect("the rest within 10 s of the second release")
            .unwrap();
        assert_eq!(
            backend, "old",
            "woken by the first release, sent after the second"
        );
    }
    for h in handshakes {
        h.await.unwrap();
    }
    let count = |b: &Backend| b.stats.websockets.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!((count(&new), count(&old)), (on_new as u64, held as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_spreads_its_closes_over_the_window() {
    let (_old, _new, proxy) = start((100.0, 0.0), "writes = \"old\"");
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(open(&proxy).await.0);
    }
    assert_eq!(long_lived(&proxy, "old").await, 200);
    let r = post(
        &proxy,
        "/routes/shop.test/disconnect",
        r#"{"backend":"old","over":"3s"}"#,
    )
    .await;
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["closing"], 200);
    let started = tokio::time::Instant::now();
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let code = closed(&mut ws, Duration::from_secs(15)).await;
                (code, started.elapsed())
            })
        })
        .collect();
    let mut at = Vec::new();
    for c in closes {
        let (code, when) = c.await.unwrap();
        assert_eq!(code, Some(1012));
        at.push(when);
    }
    at.sort();
    // Spread over the window: the first quarter of the closes before the last
    // quarter starts, by at least a second; none long after the window.
    let (q1, q3, last) = (at[50], at[150], at[199]);
    assert!(q3 - q1 >= Duration::from_secs(1), "{q1:?} … {q3:?}");
    assert!(last <= Duration::from_secs(6), "{last:?}");
    eventually(Duration::from_secs(10), "nothing open on old", || async {
        (long_lived(&proxy, "old").await == 0).then_some(())
    })
    .await;
    // Bad orders name what is wrong.
    for (body, want) in [
        (r#"{"over":"3s"}"#, "backend"),
        (r#"{"backend":"blue"}"#, "blue"),
        (r#"{"backend":"old","over":"soon"}"#, "over"),
    ] {
        let r = proxy
            .admin_call(Method::POST, "/routes/shop.test/disconnect", body)
            .await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        assert!(r.body.contains(want), "{body}: {}", r.body);
    }
}

/// A WebSocket over HTTP/2 (extended CONNECT, RFC 8441) to the proxy; the
/// backend gets an HTTP/1.1 handshake. Returns the stream and the backend.
async fn open_h2(
    proxy: &Proxy,
) -> (
    WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
    String,
) {
    use http_body_util::Empty;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let tcp = TcpStream::connect(proxy.http).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // The server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) arrive after the
    // handshake: a CONNECT sent before them is refused, so try until accepted.
    let resp = eventually(
        Duration::from_secs(10),
        "an extended CONNECT accepted",
        || {
            let req = http::Request::builder()
                .method(Method::CONNECT)
                .uri(format!("http://{HOST}/live"))
                .header("sec-websocket-version", "13")
                .extension(hyper::ext::Protocol::from_static("websocket"))
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let sent = send.send_request(req);
            async move { sent.await.ok() }
        },
    )
    .await;
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    assert!(resp.headers().get("sec-websocket-accept").is_none());
    let backend = resp.headers()["x-cutover-backend"]
        .to_str()
        .unwrap()
        .to_string();
    let io = hyper::upgrade::on(resp)
        .await
        .expect("the HTTP/2 stream as a tunnel");
    let ws = WebSocketStream::from_raw_socket(hyper_util::rt::TokioIo::new(io), Role::Client, None)
        .await;
    (ws, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_http2_reaches_an_http1_backend() {
    let (_old, new, proxy) = start((100.0, 0.0), "writes = \"new\"");
    let (mut ws, backend) = open_h2(&proxy).await;
    assert_eq!(backend, "new");
    for i in 0..20 {
        ws.send(Message::text(format!("h{i}"))).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an echo within 10 s");
        match got {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), format!("new: h{i}")),
            other => panic!("no echo: {other:?}"),
        }
    }
    assert_eq!(long_lived(&proxy, "new").await, 1);
    assert_eq!(
        new.stats
            .websockets
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // A disconnect closes it with 1012, as over HTTP/1.1.
    post(
        &proxy,
        "/routes/shop.test/disconnect",
        r#"{"backend":"new"}"#,
    )
    .await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("closed within 10 s");
    assert_eq!(end, Some(1012));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_proxy_closes_its_websockets_with_1012_before_it_exits() {
    // As Kubernetes stops a pod: SIGTERM with WebSockets open and busy. Each
    // client must hear 1012 (reconnect elsewhere), not have its connection cut
    // when the process exits.
    // The harness's proxy has a grace of 10 s: the closes are spread over 5 s.
    let (_old, _new, mut proxy) = start((100.0, 0.0), "writes = \"old\"");
    let clients = echoing_on_old(&proxy, 20).await;
    proxy.signal("TERM");
    let ends: Vec<_> = clients
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { closed(&mut ws, Duration::from_secs(10)).await }))
        .collect();
    for end in ends {
        assert_eq!(end.await.unwrap(), Some(1012));
    }
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the proxy did not exit cleanly: {status:?}\n{}",
        proxy.logs()
    );
    assert!(
        proxy.logs().contains("upgraded_connections=20"),
        "{}",
        proxy.logs()
    );
}
