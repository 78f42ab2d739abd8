//! One WebSocket: reads frames into the [`Hub`] and writes what the hub hands back. Only
//! I/O lives here; the protocol is `vantiq_proto::server`. Runtime-neutral (futures I/O and
//! `tokio::sync` only), so the loop also runs under smol or any other executor.

use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use futures_util::io::{AsyncRead, AsyncWrite};
use futures_util::{SinkExt as _, StreamExt as _};
use vantiq_proto::server::{ConnectionId, ServerTransmit};

use crate::hub::{Hub, print_line, print_received};

/// Most queued writes handled in one go before flushing (keeps both directions moving).
const WRITE_BURST: usize = 64;

/// Longest wait for queued frames to be written before an abrupt drop.
const ABORT_FLUSH: Duration = Duration::from_secs(1);

/// Why the socket's loop ended.
type End = &'static str;

/// Serves one upgraded socket until it ends.
pub(crate) async fn serve<S>(hub: Arc<Hub>, mut ws: WebSocketStream<S>, peer: String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (id, mut rx) = hub.register();
    if hub.opts.print_frames {
        print_line(format_args!(
            "-- [conn {}] WebSocket opened from {peer}",
            id.0
        ));
    }
    let why = run(&hub, id, &mut ws, &mut rx).await;
    hub.on_closed(id);
    tracing::debug!(connection = id.0, why, "testkit socket ended");
}

async fn run<S>(
    hub: &Hub,
    id: ConnectionId,
    ws: &mut WebSocketStream<S>,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<ServerTransmit>,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut shutdown = hub.subscribe_shutdown();
    if *shutdown.borrow_and_update() {
        return "server shut down";
    }
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return "server shut down",
            t = rx.recv() => {
                let Some(t) = t else { return "server dropped the connection" };
                if let Err(end) = write(ws, t, rx).await {
                    return end;
                }
            }
            msg = ws.next() => {
                let msg = match msg {
                    None => return "socket closed",
                    Some(Err(error)) => {
                        tracing::debug!(connection = id.0, %error, "testkit socket error");
                        return "socket error";
                    }
                    Some(Ok(msg)) => msg,
                };
                match &msg {
                    Message::Text(t) => {
                        if hub.opts.print_frames {
                            print_received(id, t.as_bytes(), false);
                        }
                        hub.on_frame(id, t.as_bytes());
                    }
                    Message::Binary(b) => {
                        if hub.opts.print_frames {
                            print_received(id, b, true);
                        }
                        hub.on_frame(id, b);
                    }
                    Message::Close(frame) => {
                        let (code, reason) = frame.as_ref().map_or((None, String::new()), |f| {
                            (Some(u16::from(f.code)), f.reason.to_string())
                        });
                        if hub.opts.print_frames {
                            print_line(format_args!("<- [conn {}] close {code:?} {reason}", id.0));
                        }
                        hub.on_close_frame(id, code, &reason);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Writes `first` and whatever else is queued (up to a burst), then flushes.
async fn write<S>(
    ws: &mut WebSocketStream<S>,
    first: ServerTransmit,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<ServerTransmit>,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut next = Some(first);
    let mut n = 0;
    while let Some(t) = next.take() {
        match t {
            ServerTransmit::Text(text) => ws
                .feed(Message::text(text))
                .await
                .map_err(|_| "write failed")?,
            ServerTransmit::Binary(data) => ws
                .feed(Message::binary(data))
                .await
                .map_err(|_| "write failed")?,
            ServerTransmit::Close { code, reason } => {
                let frame = CloseFrame {
                    code: code.into(),
                    reason: reason.into(),
                };
                // The peer answers; reading goes on until the socket ends.
                ws.close(Some(frame)).await.map_err(|_| "close failed")?;
                return Ok(());
            }
            ServerTransmit::Abort => {
                // Frames queued before the drop still go out (bounded on tokio: the peer may
                // not be reading); then the socket is dropped without a close frame.
                if tokio::runtime::Handle::try_current().is_ok() {
                    let _ = tokio::time::timeout(ABORT_FLUSH, ws.flush()).await;
                } else {
                    let _ = ws.flush().await;
                }
                return Err("dropped by the server");
            }
        }
        n += 1;
        if n < WRITE_BURST {
            next = rx.try_recv().ok();
        }
    }
    ws.flush().await.map_err(|_| "write failed")
}
