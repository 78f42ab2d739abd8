//! Socket I/O of one source: the connect in progress, the open WebSocket, and an old socket
//! finishing its close handshake. Nothing here knows the protocol; the driver loop tells it
//! what to do and feeds the connection what it reads.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::protocol::frame::CloseFrame;
use futures_util::{Sink, Stream};
use rustls::ClientConfig;
use vantiq_proto::TargetUrl;

use crate::runtime::{BoxFuture, Runtime};
use crate::transport::{self, Ws};

/// What reading the socket gave.
pub(super) enum Incoming {
    /// A text or binary frame's payload.
    Frame(Message),
    /// A pong, with its payload.
    Pong(Vec<u8>),
    /// The peer's close frame (the socket now finishes its close handshake on its own).
    Closed { code: Option<u16>, reason: String },
    /// The stream ended without a close frame.
    Ended,
    /// A transport error; the socket is gone.
    Failed(String),
}

/// How the socket is set up.
pub(crate) struct LinkSettings {
    pub(crate) tls: Arc<ClientConfig>,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) close_grace: Duration,
}

/// The open socket and what the write side reported last.
struct Open<R: Runtime> {
    ws: Ws<R>,
    /// Frames were handed to the transport and not flushed yet.
    unflushed: bool,
    /// Bytes the socket had taken at the last write report.
    reported: u64,
}

/// A socket that is closing: its close frame goes out (ours, or the reply to the peer's),
/// then it waits for the end of the stream, until its deadline.
struct Closing<R: Runtime> {
    ws: Ws<R>,
    frame: Option<CloseFrame>,
    deadline: Instant,
}

impl<R: Runtime> Closing<R> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let ws = Pin::new(&mut self.ws);
        if self.frame.is_some() {
            match Sink::<Message>::poll_ready(ws, cx) {
                Poll::Ready(Ok(())) => {
                    let frame = self.frame.take();
                    if Pin::new(&mut self.ws)
                        .start_send(Message::Close(frame))
                        .is_err()
                    {
                        return Poll::Ready(());
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
        match Sink::<Message>::poll_flush(Pin::new(&mut self.ws), cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
        loop {
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// One source's sockets.
pub(super) struct Link<R: Runtime> {
    settings: LinkSettings,
    connecting: Option<BoxFuture<'static, Result<Ws<R>, String>>>,
    open: Option<Open<R>>,
    closing: Option<Closing<R>>,
}

impl<R: Runtime> Link<R> {
    pub(super) fn new(settings: LinkSettings) -> Self {
        Link {
            settings,
            connecting: None,
            open: None,
            closing: None,
        }
    }

    pub(super) fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Whether nothing is left: no connect, no socket, no socket closing.
    pub(super) fn is_idle(&self) -> bool {
        self.connecting.is_none() && self.open.is_none() && self.closing.is_none()
    }

    pub(super) fn start_connect(&mut self, runtime: R, url: TargetUrl) {
        let fut = transport::connect(
            runtime,
            url,
            self.settings.tls.clone(),
            self.settings.ws_config,
        );
        self.connecting = Some(Box::pin(fut));
    }

    /// The connect in progress, if it finished.
    pub(super) fn poll_connected(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        let Some(fut) = self.connecting.as_mut() else {
            return Poll::Pending;
        };
        let result = std::task::ready!(fut.as_mut().poll(cx));
        self.connecting = None;
        Poll::Ready(result.map(|ws| {
            let reported = ws.get_ref().written();
            self.open = Some(Open {
                ws,
                unflushed: false,
                reported,
            });
        }))
    }

    /// Drops the socket and the connect in progress at once.
    pub(super) fn abort(&mut self) {
        self.connecting = None;
        self.open = None;
    }

    /// Closes the socket with our close frame; it lingers until the handshake ends or its
    /// deadline passes.
    pub(super) fn close(&mut self, now: Instant, code: u16, reason: &'static str) {
        self.connecting = None;
        if let Some(open) = self.open.take() {
            let frame = CloseFrame {
                code: code.into(),
                reason: reason.into(),
            };
            self.linger(open.ws, Some(frame), now);
        }
    }

    /// The peer sent its close frame: the transport queued the reply; the socket lingers
    /// until the handshake ends or its deadline passes.
    pub(super) fn peer_closed(&mut self, now: Instant) {
        if let Some(open) = self.open.take() {
            self.linger(open.ws, None, now);
        }
    }

    fn linger(&mut self, ws: Ws<R>, frame: Option<CloseFrame>, now: Instant) {
        // An older socket still closing has had its chance.
        self.closing = Some(Closing {
            ws,
            frame,
            deadline: now + self.settings.close_grace,
        });
    }

    /// Whether the open socket takes a frame now (`Err`: the socket failed).
    pub(super) fn poll_writable(&mut self, cx: &mut Context<'_>) -> Result<bool, String> {
        let Some(open) = self.open.as_mut() else {
            return Ok(false);
        };
        match Sink::<Message>::poll_ready(Pin::new(&mut open.ws), cx) {
            Poll::Ready(Ok(())) => Ok(true),
            Poll::Ready(Err(e)) => Err(e.to_string()),
            Poll::Pending => Ok(false),
        }
    }

    /// Hands a frame to the transport (`Err`: the socket failed).
    pub(super) fn send(&mut self, message: Message) -> Result<(), String> {
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        open.unflushed = true;
        Pin::new(&mut open.ws)
            .start_send(message)
            .map_err(|e| e.to_string())
    }

    /// Flushes what the transport holds (`Err`: the socket failed).
    pub(super) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Result<(), String> {
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        if !open.unflushed {
            return Ok(());
        }
        match Sink::<Message>::poll_flush(Pin::new(&mut open.ws), cx) {
            Poll::Ready(Ok(())) => {
                open.unflushed = false;
                Ok(())
            }
            Poll::Ready(Err(e)) => Err(e.to_string()),
            Poll::Pending => Ok(()),
        }
    }

    /// Whether the transport holds bytes the socket has not taken, and whether the socket
    /// took bytes since the last call.
    pub(super) fn write_report(&mut self) -> (bool, bool) {
        let Some(open) = self.open.as_mut() else {
            return (false, false);
        };
        let written = open.ws.get_ref().written();
        let progressed = written != open.reported;
        open.reported = written;
        (open.unflushed, progressed)
    }

    /// The next thing the open socket read.
    pub(super) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Incoming> {
        let Some(open) = self.open.as_mut() else {
            return Poll::Pending;
        };
        loop {
            let msg = match std::task::ready!(Pin::new(&mut open.ws).poll_next(cx)) {
                None => return Poll::Ready(Incoming::Ended),
                Some(Err(e)) => return Poll::Ready(Incoming::Failed(e.to_string())),
                Some(Ok(msg)) => msg,
            };
            return Poll::Ready(match msg {
                Message::Text(_) | Message::Binary(_) => Incoming::Frame(msg),
                Message::Pong(p) => Incoming::Pong(p.to_vec()),
                Message::Ping(_) => {
                    // The transport queued the pong; it goes out with the next flush.
                    open.unflushed = true;
                    continue;
                }
                Message::Close(frame) => {
                    let (code, reason) = match frame {
                        Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                        None => (None, String::new()),
                    };
                    Incoming::Closed { code, reason }
                }
                Message::Frame(_) => continue,
            });
        }
    }

    /// Drives the socket that is closing; true when it finished (or was given up).
    pub(super) fn poll_closing(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let Some(closing) = self.closing.as_mut() else {
            return false;
        };
        if now >= closing.deadline || closing.poll(cx).is_ready() {
            self.closing = None;
            return true;
        }
        false
    }

    /// When the socket that is closing is given up.
    pub(super) fn closing_deadline(&self) -> Option<Instant> {
        self.closing.as_ref().map(|c| c.deadline)
    }
}
