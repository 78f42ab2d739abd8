//! One WebSocket connection: the server side of the protocol, frame by frame.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Instant;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::Message;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use vantiq_proto::Status;
use vantiq_proto::frame::{ClientFrame, QueryReply, ServerFrame};

use crate::query::Routed;
use crate::records::{Anomaly, AnomalyKind, ConnectAttempt, ConnectOutcome, FrameRecord};
use crate::server::{Shared, codes};
use crate::source::{Live, SourceShared};
use crate::util::lock;

/// The WebSocket type the server runs on.
pub(crate) type Ws = WebSocketStream<TokioAdapter<TcpStream>>;

/// What a handle asks a socket's task to do.
pub(crate) enum Command {
    /// Put this frame on the wire.
    Send(Message),
    /// Drop the socket at once, without a close frame.
    Abort,
}

/// Most commands handled in one go after an incoming frame (keeps both directions moving
/// when both are busy).
const COMMAND_BURST: usize = 64;

/// Longest wait for queued frames to be written before an abrupt drop.
const ABORT_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest frame text kept in a [`AnomalyKind::BadFrame`].
const BAD_FRAME_KEEP: usize = 4096;

/// Serves one upgraded socket until it ends.
pub(crate) async fn serve(shared: Arc<Shared>, ws: Ws, peer: std::net::SocketAddr) {
    let id = shared.next_conn_id();
    shared.socket_opened();
    if shared.opts.print_frames {
        print_line(format_args!("-- [conn {id}] WebSocket opened from {peer}"));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let mut conn = Conn {
        shared,
        ws,
        id,
        tx,
        rx,
        authed: false,
        attached: None,
        dirty: false,
    };
    let why = conn.run().await;
    conn.detach();
    tracing::debug!(connection = id, why, "testkit socket ended");
    if conn.shared.opts.print_frames {
        print_line(format_args!("-- [conn {id}] ended: {why}"));
    }
}

struct Conn {
    shared: Arc<Shared>,
    ws: Ws,
    id: u64,
    /// Kept so the channel never closes while the socket lives; cloned into [`Live`].
    tx: mpsc::UnboundedSender<Command>,
    rx: mpsc::UnboundedReceiver<Command>,
    authed: bool,
    /// The source this socket last attached to (it may have lost it since; see
    /// [`Conn::holding`]).
    attached: Option<Arc<SourceShared>>,
    /// Frames were written but not flushed.
    dirty: bool,
}

/// Why the socket's loop ended.
type End = &'static str;

impl Conn {
    async fn run(&mut self) -> End {
        let mut shutdown = self.shared.subscribe_shutdown();
        if *shutdown.borrow_and_update() {
            return "server shut down";
        }
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return "server shut down",
                msg = self.ws.next() => {
                    let msg = match msg {
                        None => return "socket closed",
                        Some(Err(error)) => {
                            tracing::debug!(connection = self.id, %error, "testkit socket error");
                            return "socket error";
                        }
                        Some(Ok(msg)) => msg,
                    };
                    if let Err(end) = self.on_message(msg).await {
                        return end;
                    }
                    for _ in 0..COMMAND_BURST {
                        match self.rx.try_recv() {
                            Ok(cmd) => {
                                if let Err(end) = self.on_command(cmd).await {
                                    return end;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Some(cmd) = self.rx.recv() => {
                    if let Err(end) = self.on_command(cmd).await {
                        return end;
                    }
                }
                () = std::future::ready(()), if self.dirty => {
                    if self.ws.flush().await.is_err() {
                        return "write failed";
                    }
                    self.dirty = false;
                }
            }
        }
    }

    async fn on_command(&mut self, cmd: Command) -> Result<(), End> {
        match cmd {
            Command::Send(msg) => self.write(msg).await,
            Command::Abort => {
                // Frames queued before the drop still go out (bounded: the peer may not be
                // reading); then the socket is dropped without a close frame.
                let _ = tokio::time::timeout(ABORT_FLUSH, self.ws.flush()).await;
                Err("dropped by the test")
            }
        }
    }

    /// Queues a frame (flushed once nothing else is ready).
    async fn write(&mut self, msg: Message) -> Result<(), End> {
        if self.shared.opts.print_frames {
            print_message(self.id, "->", &msg);
        }
        self.dirty = true;
        self.ws.feed(msg).await.map_err(|_| "write failed")
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), End> {
        let frame = match &msg {
            Message::Text(t) => ClientFrame::decode(t.as_bytes()),
            Message::Binary(b) => ClientFrame::decode(b),
            Message::Close(frame) => {
                if let Some(src) = &self.attached {
                    let entry = frame.as_ref().map_or((None, String::new()), |f| {
                        (Some(u16::from(f.code)), f.reason.to_string())
                    });
                    lock(&src.state).close_frames.push(entry);
                }
                // Release the source before the close reply goes out, so a connector that
                // reconnects as soon as its close completes finds the source free.
                self.detach();
                return Ok(());
            }
            _ => return Ok(()),
        };
        let print = self.shared.opts.print_frames;
        match frame {
            Ok(frame) => {
                if print {
                    match &frame {
                        ClientFrame::Validate { .. } | ClientFrame::Authenticate { .. } => {
                            print_line(format_args!("<- [conn {}] {frame:?}", self.id));
                        }
                        _ => print_message(self.id, "<-", &msg),
                    }
                }
                drop(msg);
                self.on_frame(frame).await
            }
            Err(error) => {
                if print {
                    print_message(self.id, "<-", &msg);
                }
                let bytes: &[u8] = match &msg {
                    Message::Text(t) => t.as_bytes(),
                    Message::Binary(b) => b,
                    _ => &[],
                };
                let kept = bytes.get(..BAD_FRAME_KEEP).unwrap_or(bytes);
                let text = String::from_utf8_lossy(kept).into_owned();
                self.anomaly(AnomalyKind::BadFrame { error, text });
                Ok(())
            }
        }
    }

    async fn on_frame(&mut self, frame: ClientFrame) -> Result<(), End> {
        let record = self.shared.opts.record.then(|| {
            Arc::new(FrameRecord {
                connection: self.id,
                at: Instant::now(),
                frame: frame.clone(),
            })
        });
        if let Some(r) = &record {
            self.shared.log_frame(Arc::clone(r));
        }
        match frame {
            ClientFrame::Validate { token } => {
                self.count_auth();
                let ok = match &self.shared.opts.token {
                    None => true,
                    Some(expected) => token.as_deref() == Some(expected.as_str()),
                };
                self.auth_reply(ok, "testkit").await
            }
            ClientFrame::Authenticate { username, password } => {
                self.count_auth();
                let ok = self
                    .shared
                    .opts
                    .credentials
                    .as_ref()
                    .is_some_and(|(u, p)| *u == username && *p == password);
                self.auth_reply(ok, &username).await
            }
            frame if !self.authed => {
                self.anomaly(AnomalyKind::NotAuthenticated { frame });
                let msg = self.shared.error_frame(
                    Status::UNAUTHORIZED,
                    codes::NOT_AUTHENTICATED,
                    "The connection has not been authenticated; send validate first.",
                );
                self.write(msg).await
            }
            ClientFrame::ConnectExtension {
                source,
                reconnect_secret,
            } => self.on_connect(source, reconnect_secret, record).await,
            ClientFrame::Notification { source, object } => {
                let Some(src) = self.attached.clone() else {
                    return self
                        .not_attached(ClientFrame::Notification { source, object })
                        .await;
                };
                let held = {
                    let mut st = lock(&src.state);
                    if st.held_by(self.id) && src.name == source {
                        st.notification_count += 1;
                        if let Some(r) = record {
                            st.notifications.push(object.clone());
                            st.frames.push(r);
                        }
                        Some(true)
                    } else if st.held_by(self.id) {
                        Some(false)
                    } else {
                        None
                    }
                };
                match held {
                    Some(true) => {
                        src.changed.notify_waiters();
                        if self.shared.opts.ack_notifications {
                            let ack = self.shared.ack();
                            self.write(ack).await?;
                        }
                        Ok(())
                    }
                    Some(false) => {
                        self.anomaly(AnomalyKind::WrongSource {
                            attached: src.name.clone(),
                            named: source.clone(),
                        });
                        let msg = self.shared.error_frame(
                            Status::BAD_REQUEST,
                            codes::WRONG_SOURCE,
                            &format!("This connection serves source {}, not {source}.", src.name),
                        );
                        self.write(msg).await
                    }
                    None => {
                        self.not_attached(ClientFrame::Notification { source, object })
                            .await
                    }
                }
            }
            ClientFrame::QueryReply(reply) => self.on_reply(reply, record).await,
            ClientFrame::Unknown { op } => {
                self.record_for_source(record);
                self.anomaly(AnomalyKind::UnknownOp { op });
                Ok(())
            }
            other => {
                // A frame kind added to vantiq-proto after this server was written.
                self.anomaly(AnomalyKind::UnknownOp {
                    op: format!("{other:?}"),
                });
                Ok(())
            }
        }
    }

    fn count_auth(&self) {
        self.shared
            .auth_attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.log_changed.notify_waiters();
    }

    async fn auth_reply(&mut self, ok: bool, username: &str) -> Result<(), End> {
        let msg = if ok {
            self.authed = true;
            self.shared.auth_ok(username)
        } else {
            // The real server leaves the socket open; the client decides what to do.
            self.shared.error_frame(
                Status::UNAUTHORIZED,
                codes::AUTH_FAILED,
                "Authentication failed: the credentials are invalid or have expired.",
            )
        };
        self.write(msg).await
    }

    async fn on_connect(
        &mut self,
        name: String,
        secret: Option<String>,
        record: Option<Arc<FrameRecord>>,
    ) -> Result<(), End> {
        let Some(src) = self.shared.source(&name) else {
            let msg = self.shared.error_frame(
                Status(404),
                codes::SOURCE_NOT_FOUND,
                &format!("The source {name} does not exist or is not an extension source."),
            );
            return self.write(msg).await;
        };
        if let Some(prev) = &self.attached
            && !Arc::ptr_eq(prev, &src)
        {
            self.detach();
        }
        let mut to_abort = None;
        let (outcome, config, flapping) = {
            let mut st = lock(&src.state);
            st.connect_attempts += 1;
            if let Some(r) = record {
                st.frames.push(r);
            }
            let outcome = if st.refuse_remaining > 0 {
                st.refuse_remaining -= 1;
                ConnectOutcome::RefusedNoStream
            } else {
                match &st.live {
                    None => ConnectOutcome::Accepted,
                    Some(live) if live.conn == self.id => ConnectOutcome::Accepted,
                    Some(live) if secret.is_some() && live.secret == secret => {
                        ConnectOutcome::TookOver
                    }
                    Some(_) => ConnectOutcome::RefusedAlreadyConnected,
                }
            };
            st.connect_log.push(ConnectAttempt {
                at: Instant::now(),
                connection: self.id,
                reconnect_secret: secret.clone(),
                outcome,
            });
            let accepted = matches!(outcome, ConnectOutcome::Accepted | ConnectOutcome::TookOver);
            if accepted {
                let old = st.live.replace(Live {
                    conn: self.id,
                    tx: self.tx.clone(),
                    secret: secret.clone(),
                });
                if let Some(old) = old
                    && old.conn != self.id
                {
                    st.disconnects += 1;
                    to_abort = Some(old);
                }
                st.reconnect_secret = secret;
                st.configured = true;
                st.connections += 1;
            }
            (outcome, accepted.then(|| st.config.clone()), st.flapping)
        };
        if let Some(old) = to_abort {
            let _ = old.tx.send(Command::Abort);
        }
        src.changed.notify_waiters();
        let Some(config) = config else {
            let msg = match outcome {
                ConnectOutcome::RefusedNoStream => self.shared.error_frame(
                    Status::BAD_REQUEST,
                    codes::NO_ASSOCIATED_STREAM,
                    &format!("The source {name} does not have an associated stream."),
                ),
                _ => self.shared.error_frame(
                    Status::BAD_REQUEST,
                    codes::CONNECTION_EXISTS,
                    &format!(
                        "A connection already exists for source {name}; the reconnectSecret \
                         does not match."
                    ),
                ),
            };
            return self.write(msg).await;
        };
        self.attached = Some(Arc::clone(&src));
        if self.shared.opts.status_before_configure {
            let ack = self.shared.ack();
            self.write(ack).await?;
        }
        let msg = self.shared.server_frame(&ServerFrame::ConfigureExtension {
            resource_id: Some(name),
            config,
        });
        self.write(msg).await?;
        if flapping {
            let _ = tokio::time::timeout(ABORT_FLUSH, self.ws.flush()).await;
            return Err("flapping: dropped after configureExtension");
        }
        Ok(())
    }

    async fn on_reply(
        &mut self,
        reply: QueryReply,
        record: Option<Arc<FrameRecord>>,
    ) -> Result<(), End> {
        if !self.record_for_source(record) {
            // A reply on a socket that lost its source still answers the query (replies are
            // matched by address), but the real server would not expect it.
            self.anomaly(AnomalyKind::NotAttached {
                frame: ClientFrame::QueryReply(reply.clone()),
            });
        }
        let routed = lock(&self.shared.pending).route(reply);
        if let Routed::Unknown(reply) = routed {
            self.anomaly(AnomalyKind::UnknownReplyAddress { reply });
        }
        if self.shared.opts.ack_query_replies {
            let ack = self.shared.ack();
            self.write(ack).await?;
        }
        Ok(())
    }

    async fn not_attached(&mut self, frame: ClientFrame) -> Result<(), End> {
        self.anomaly(AnomalyKind::NotAttached { frame });
        let msg = self.shared.error_frame(
            Status::BAD_REQUEST,
            codes::NOT_ATTACHED,
            "This connection is not attached to a source; send connectExtension first.",
        );
        self.write(msg).await
    }

    /// Adds a frame to the log of the source this socket holds. Returns whether it holds one.
    fn record_for_source(&self, record: Option<Arc<FrameRecord>>) -> bool {
        let Some(src) = &self.attached else {
            return false;
        };
        let mut st = lock(&src.state);
        if !st.held_by(self.id) {
            return false;
        }
        if let Some(r) = record {
            st.frames.push(r);
        }
        true
    }

    /// The source this socket holds right now, if any.
    fn holding(&self) -> Option<String> {
        let src = self.attached.as_ref()?;
        lock(&src.state).held_by(self.id).then(|| src.name.clone())
    }

    fn anomaly(&self, kind: AnomalyKind) {
        self.shared.add_anomaly(Anomaly {
            connection: self.id,
            source: self.holding(),
            kind,
        });
    }

    /// Lets go of the source this socket holds, if it still does.
    fn detach(&mut self) {
        if let Some(src) = self.attached.take() {
            src.release(self.id);
        }
    }
}

fn print_message(id: u64, dir: &str, msg: &Message) {
    match msg {
        Message::Text(t) => print_line(format_args!("{dir} [conn {id}] {}", t.as_str())),
        Message::Binary(b) => print_line(format_args!(
            "{dir} [conn {id}] (binary) {}",
            String::from_utf8_lossy(b)
        )),
        other => print_line(format_args!("{dir} [conn {id}] {other:?}")),
    }
}

pub(crate) fn print_line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}
