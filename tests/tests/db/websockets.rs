//! WebSockets that carry writes, through a switchover: 10 clients send a message
//! every 50 ms over a WebSocket through the real `cutover-proxy` to the demo app,
//! which inserts each one and answers `ok {id}` once committed. A WebSocket's
//! messages are writes the proxy cannot see, so the switchover first holds their
//! handshakes and closes them (1012, after `hold.upgrade_grace`) while the other
//! writes still flow, and its drain waits for them too before it blocks writes on
//! old: no message may meet the write block (an `error` answer), the clients
//! reconnect and are released to new, and every acknowledged message is in new's
//! database.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Behind, HEAVY, items};

const HOST: &str = "chat.test";
const CLIENTS: usize = 10;

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    /// (id, body) of each acknowledged message.
    acked: Vec<(i64, String)>,
    /// Answers other than `ok {id}`.
    errors: Vec<String>,
    /// Close codes the server sent (0: none given; -1: no close frame).
    closes: Vec<i32>,
    connects: u32,
}

async fn chat(proxy: std::net::SocketAddr, client: usize, mut stop: watch::Receiver<bool>) -> Seen {
    let mut seen = Seen::default();
    let mut n = 0;
    'connect: while !*stop.borrow() {
        let tcp = TcpStream::connect(proxy).await.unwrap();
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(20),
            tokio_tungstenite::client_async(format!("ws://{HOST}/ws"), tcp),
        )
        .await
        .expect("a handshake within 20 s (held at most for the pause)")
        .expect("the handshake");
        seen.connects += 1;
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    let _ = ws.close(None).await;
                    return seen;
                }
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            n += 1;
            let body = format!("client {client} message {n}");
            if ws.send(Message::text(body.clone())).await.is_err() {
                seen.closes.push(-1);
                continue 'connect;
            }
            loop {
                match tokio::time::timeout(Duration::from_secs(20), ws.next())
                    .await
                    .expect("an answer or a close within 20 s")
                {
                    Some(Ok(Message::Text(t))) => {
                        match t
                            .as_str()
                            .strip_prefix("ok ")
                            .and_then(|id| id.parse().ok())
                        {
                            Some(id) => seen.acked.push((id, body)),
                            None => seen.errors.push(t.as_str().to_string()),
                        }
                        break;
                    }
                    Some(Ok(Message::Close(f))) => {
                        seen.closes
                            .push(f.map_or(0, |f| i32::from(u16::from(f.code))));
                        continue 'connect;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => {
                        seen.closes.push(-1);
                        continue 'connect;
                    }
                }
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_writes_never_meet_the_write_block_and_all_land_on_new() {
    let _heavy = HEAVY.acquire().await.unwrap();
    let behind = Behind::start(HOST, "\n[hold]\nupgrade_grace = \"500ms\"").await;
    let proxy = &behind.proxy;
    let (stop, stopped) = watch::channel(false);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(chat(proxy.http, i, stopped.clone())))
        .collect();
    cutover_tests::eventually(
        Duration::from_secs(10),
        "every client connected",
        || async {
            (proxy.status().await["routes"][0]["long_lived"]["old"] == CLIENTS).then_some(())
        },
    )
    .await;

    let v = behind.switchover(HOST, "10s").await;
    assert_eq!(v["writes"], "new", "{v:#}");
    // The WebSockets moved first, before the writes were held: the write pause
    // does not include their closing.
    let phases: Vec<&str> = v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(&phases[..3], ["lag", "tunnels", "hold"], "{v:#}");
    assert!(
        v["phases"][1]["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{CLIENTS} upgraded connection(s)")),
        "{v:#}"
    );
    // The clients talk to new for a while, then stop.
    cutover_tests::eventually(
        Duration::from_secs(10),
        "every client back, on new",
        || async {
            (proxy.status().await["routes"][0]["long_lived"]["new"] == CLIENTS).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    let mut all = Vec::new();
    for c in clients {
        all.push(c.await.unwrap());
    }

    let rows = items(&behind.pair.new).await;
    for (i, s) in all.iter().enumerate() {
        assert!(s.errors.is_empty(), "client {i} met errors: {:?}", s.errors);
        assert_eq!(s.closes, [1012], "client {i}: closed once, with 1012");
        assert_eq!(s.connects, 2, "client {i}");
        assert!(
            s.acked.len() > 10,
            "client {i}: {} acknowledged",
            s.acked.len()
        );
        for (id, body) in &s.acked {
            assert_eq!(rows.get(id), Some(body), "client {i}: message {id} on new");
        }
    }
    eprintln!(
        "write pause {} ms; {} messages acknowledged, all on new",
        v["write_pause_ms"],
        all.iter().map(|s| s.acked.len()).sum::<usize>()
    );
}
