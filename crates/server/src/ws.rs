//! `GET /v1/ws`: WebSocket streaming. Each text message is a request (the JSON of
//! `/v1/chat/completions` when it has `messages`, else of `/v1/completions`); the answer is one
//! message per chunk, then `[DONE]`. Errors come as `{"error": {...}}` messages. Closing the
//! socket cancels the generation in progress.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures::{SinkExt, StreamExt};

use crate::error::ApiError;
use crate::routes::{prepare_chat, prepare_completion};
use crate::state::{parse_json, AppState};
use crate::stream::Prepared;

pub(crate) async fn upgrade(State(state): State<Arc<AppState>>, ws: WebSocketUpgrade) -> Response {
    let limit = state.config.body_limit;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| session(state, socket))
}

async fn prepare(state: &Arc<AppState>, text: &str) -> Result<Prepared, ApiError> {
    let value: serde_json::Value = parse_json(text.as_bytes())?;
    if value.get("messages").is_some() {
        let mut p = prepare_chat(state, parse_json(text.as_bytes())?).await?;
        p.stream = true;
        Ok(p)
    } else {
        let mut p = prepare_completion(state, parse_json(text.as_bytes())?).await?;
        p.stream = true;
        Ok(p)
    }
}

async fn session(state: Arc<AppState>, socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
    while let Some(Ok(msg)) = rx.next().await {
        let text = match msg {
            Message::Text(t) => t.to_string(),
            Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
            Message::Close(_) => return,
            _ => continue,
        };
        let prepared = match prepare(&state, &text).await {
            Ok(p) => p,
            Err(e) => {
                state.http.record("/v1/ws (message)", e.status.as_u16());
                if tx.send(Message::Text(e.to_json().into())).await.is_err() {
                    return;
                }
                continue;
            }
        };
        state.http.record("/v1/ws (message)", 200);
        let mut messages = prepared.into_messages();
        loop {
            tokio::select! {
                m = messages.next() => match m {
                    Some(m) => {
                        // `[DONE]` ends the request: the client may send the next one at once,
                        // before this stream reports its end.
                        let done = m == "[DONE]";
                        if tx.send(Message::Text(m.into())).await.is_err() {
                            return;
                        }
                        if done {
                            break;
                        }
                    }
                    None => break,
                },
                incoming = rx.next() => match incoming {
                    // Closed or failed: dropping `messages` cancels the generation.
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {
                        let e = ApiError::bad_request(
                            "one request at a time: wait for [DONE] before sending the next",
                        );
                        if tx.send(Message::Text(e.to_json().into())).await.is_err() {
                            return;
                        }
                    }
                },
            }
        }
    }
}
