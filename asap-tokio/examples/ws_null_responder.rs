//! The WebSocket ceiling: a do-nothing `/asap/ws` responder that answers each
//! text frame with a fixed JSON-RPC result carrying the frame's id. What
//! `ws_bench` reaches against it is the loopback + client bound, measured in
//! the same run as the servers under test.
//!
//! ```sh
//! cargo run --release -p asap-tokio --example ws_null_responder -- 127.0.0.1:8002
//! ```
#![allow(missing_docs)]

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// The frame's `"id":"..."` (the benchmark puts it before `params`).
fn request_id(text: &str) -> &str {
    let Some(at) = text.find(r#""id":""#) else {
        return "";
    };
    let rest = &text[at + 6..];
    &rest[..rest.find('"').unwrap_or(0)]
}

// The same allocator as the server it is compared with (the `mimalloc` feature, on by default).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8002".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "ws null responder on ws://{}/asap/ws",
        listener.local_addr()?
    );
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(16 * 1024);
            let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await
            else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg {
                    let reply = format!(
                        r#"{{"jsonrpc":"2.0","result":{{"envelope":{{}}}},"id":"{}"}}"#,
                        request_id(t.as_str())
                    );
                    if ws.send(Message::Text(reply.into())).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}
