//! The pool against a real keep-alive HTTP/1.1 server on loopback that counts the
//! connections it accepts and can close them after each answer.

use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// A backend answering `ok` to every request. With `close_after_answer` it closes
/// each connection once it has answered, as a backend with a short keep-alive
/// timeout would while the connection sits idle in the pool.
async fn backend(close_after_answer: bool) -> (Authority, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                        if close_after_answer {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr.to_string().parse().unwrap(), accepted)
}

fn client() -> UpClient {
    Upstream::default()
        .client(
            Duration::from_secs(2),
            cutover_config::Protocol::Http1,
            None,
        )
        .unwrap()
}

fn get(authority: &Authority) -> http::Request<UpBody> {
    http::Request::get("/")
        .header(http::header::HOST, authority.as_str())
        .body(UpBody::Empty)
        .unwrap()
}

/// Sends a GET and reads the body to the end, returning the connection as the
/// response path does.
async fn roundtrip(client: &UpClient, authority: &Authority) -> Result<String, Failure> {
    let (resp, lease) = send(
        client,
        authority,
        get(authority),
        Duration::from_secs(5),
        false,
    )
    .await?;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    lease.release();
    Ok(String::from_utf8(body.to_vec()).unwrap())
}

/// `n` round trips one after the other, each answered `ok`.
async fn roundtrips(client: &UpClient, authority: &Authority, n: usize) {
    for _ in 0..n {
        assert_eq!(roundtrip(client, authority).await.unwrap(), "ok");
    }
}

/// An address nobody listens on: bound, then closed.
fn refused() -> Authority {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string().parse().unwrap()
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let (authority, accepted) = backend(false).await;
    let client = client();
    roundtrips(&client, &authority, 20).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(client.idle_count(), 1);
}

#[tokio::test]
async fn an_abandoned_response_closes_its_connection() {
    let (authority, accepted) = backend(false).await;
    let client = client();
    let (_resp, lease) = send(
        &client,
        &authority,
        get(&authority),
        Duration::from_secs(5),
        false,
    )
    .await
    .unwrap();
    drop(lease);
    assert_eq!(client.idle_count(), 0);
    assert_eq!(roundtrip(&client, &authority).await.unwrap(), "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn concurrent_requests_open_only_what_they_need() {
    let (authority, accepted) = backend(false).await;
    let client = client();
    let (a, b) = tokio::join!(
        roundtrip(&client, &authority),
        roundtrip(&client, &authority)
    );
    assert_eq!((a.unwrap(), b.unwrap()), ("ok".into(), "ok".into()));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // Both come back; the next ten reuse them.
    roundtrips(&client, &authority, 10).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(client.idle_count(), 2);
}

#[tokio::test]
async fn a_connection_the_backend_closed_while_idle_is_not_a_failure() {
    let (authority, accepted) = backend(true).await;
    let client = client();
    roundtrips(&client, &authority, 5).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
    client.sweep();
    // Every connection was closed by the backend: the sweep keeps none of them,
    // once hyper has seen the close (poll, with a deadline).
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.idle_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        client.sweep();
    }
    assert_eq!(client.idle_count(), 0);
}

#[tokio::test]
async fn a_refused_connect_is_a_connect_failure() {
    let err = roundtrip(&client(), &refused()).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Connect, "{}", err.detail);
    assert!(!err.shared);
}

#[tokio::test]
async fn a_burst_beyond_the_connect_limit_is_served_by_queueing() {
    let (authority, accepted) = backend(false).await;
    let client = client();
    let burst = 4 * MAX_CONNECTING;
    let answers =
        futures_util::future::join_all((0..burst).map(|_| roundtrip(&client, &authority))).await;
    for a in answers {
        assert_eq!(a.unwrap(), "ok");
    }
    let opened = accepted.load(Ordering::SeqCst);
    assert!(opened <= burst, "{opened} connections for {burst} requests");
    // Every connection came back, none was lost in the hand-overs.
    assert_eq!(client.idle_count(), opened);
}

#[tokio::test]
async fn a_failed_connect_fails_the_requests_waiting_on_it() {
    let authority = refused();
    let client = client();
    let burst = 4 * MAX_CONNECTING;
    let answers =
        futures_util::future::join_all((0..burst).map(|_| roundtrip(&client, &authority))).await;
    // A waiter left waiting would end in the head timeout, a different kind. Only
    // the requests that connected themselves count against the address.
    let errors: Vec<Failure> = answers.into_iter().map(Result::unwrap_err).collect();
    assert!(errors.iter().all(|e| e.kind == FailureKind::Connect));
    let own = errors.iter().filter(|e| !e.shared).count();
    assert!(
        (1..=MAX_CONNECTING).contains(&own),
        "{own} own connect failures"
    );
    // And the slots all came back: a later request may connect again.
    assert_eq!(client.lock()[authority.as_str()].connecting, 0);
}
