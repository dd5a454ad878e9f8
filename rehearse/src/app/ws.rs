//! `GET /ws` on an app with a database: a WebSocket on which each text message is
//! a write. The app inserts the message into its table and answers `ok {id}` once
//! the insert is committed (the client's acknowledgement), or `error {reason}`.
//! A close from the client is answered and the connection ends.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::AppState;

/// Whether `req` asks for a WebSocket.
pub fn requested<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && req.headers().contains_key(SEC_WEBSOCKET_KEY)
}

/// Answers the handshake with `101` and serves the connection in the background.
pub fn accept(mut req: Request<Incoming>, app: Arc<AppState>) -> Response<Full<Bytes>> {
    let accept = req
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
        .and_then(|k| HeaderValue::from_str(&k).ok());
    let Some(accept) = accept else {
        let mut resp = Response::new(Full::new(Bytes::from("a WebSocket key is needed")));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        serve(ws, &app).await;
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

async fn serve<S>(mut ws: WebSocketStream<S>, app: &AppState)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(db) = &app.db else {
        return;
    };
    // Reading on after a close sends the close's answer, then ends the stream.
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else {
            continue;
        };
        let reply = match db.pool.query(&db.insert, &[text.as_str()]).await {
            Ok(rows) => match rows.first() {
                Some(row) => format!("ok {}", row.get::<_, String>(0)),
                None => "error no id returned".into(),
            },
            Err(e) => format!("error {}", e.lines().next().unwrap_or("")),
        };
        if ws.send(Message::text(reply)).await.is_err() {
            return;
        }
    }
}
