//! [`ServerConnection`]: the server's side of one connector's WebSocket.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::FrameError;
use crate::Status;
use crate::frame::{ClientFrame, QueryReply, ServerFrame, StatusFrame};
use crate::json::Json;

use super::{
    AnomalyKind, ConnectOutcome, ConnectionId, RawFrame, Registry, ServerError, ServerEvent,
    ServerTransmit, codes,
};

/// Longest frame text kept in an [`AnomalyKind::BadFrame`].
const BAD_FRAME_KEEP: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A close frame was sent or received; the socket has not ended yet.
    Closing,
    Closed,
}

/// The server's side of one connector's WebSocket, sans-IO.
///
/// Made by [`Registry::accept`]; see the [module documentation](super) for the calling
/// contract.
#[derive(Debug)]
pub struct ServerConnection {
    id: ConnectionId,
    state: State,
    /// The user name the socket authenticated as.
    user: Option<String>,
    /// The source this socket last attached to (it may have lost it since).
    attached: Option<String>,
    /// The source it held when this side sent its close frame.
    released: Option<String>,
    transmits: VecDeque<ServerTransmit>,
    events: VecDeque<ServerEvent>,
}

impl ServerConnection {
    pub(super) fn new(id: ConnectionId) -> Self {
        ServerConnection {
            id,
            state: State::Open,
            user: None,
            attached: None,
            released: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    // ---- accessors --------------------------------------------------------------------------

    /// The registry's number for this socket.
    #[must_use]
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// Whether a `validate` or `authenticate` succeeded on this socket.
    #[must_use]
    pub fn is_authenticated(&self) -> bool {
        self.user.is_some()
    }

    /// The source this socket holds right now, if any.
    #[must_use]
    pub fn source(&self, reg: &Registry) -> Option<String> {
        self.held(reg)
    }

    /// Whether the connection is open: not closing (a close frame sent or received) nor
    /// finished.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the connection is finished (aborted, or its socket ended).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    // ---- outputs ----------------------------------------------------------------------------

    /// The next thing to do with the socket, in order.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<ServerTransmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    // ---- inputs -----------------------------------------------------------------------------

    /// A text or binary frame arrived. A frame the server cannot use is reported as a
    /// [`ServerEvent::Anomaly`] (and answered where the real server answers); the connection
    /// goes on. Frames arriving while the socket closes are ignored.
    ///
    /// # Errors
    /// The frame could not be decoded (also reported as [`AnomalyKind::BadFrame`]).
    pub fn handle_frame(
        &mut self,
        now: Instant,
        reg: &mut Registry,
        data: &[u8],
    ) -> Result<(), FrameError> {
        let _ = now;
        if self.state == State::Closed {
            return Ok(());
        }
        if self.state == State::Closing {
            // After this side's close frame only notifications still count: the peer wrote
            // them before it read the close. Anything else is ignored.
            if let Ok(ClientFrame::Notification { source, object }) = ClientFrame::decode(data)
                && self.sender(reg).as_deref() == Some(source.as_str())
            {
                self.events
                    .push_back(ServerEvent::Notification { source, object });
            }
            return Ok(());
        }
        let frame = match ClientFrame::decode(data) {
            Ok(frame) => frame,
            Err(error) => {
                let kept = data.get(..BAD_FRAME_KEEP).unwrap_or(data);
                self.anomaly(AnomalyKind::BadFrame {
                    error: error.clone(),
                    text: String::from_utf8_lossy(kept).into_owned(),
                });
                return Err(error);
            }
        };
        if reg.options().report_frames {
            let source = match &frame {
                ClientFrame::ConnectExtension { source, .. } => Some(source.clone()),
                _ => self.source(reg),
            };
            self.events.push_back(ServerEvent::Frame {
                frame: frame.clone(),
                source,
            });
        }
        self.on_frame(reg, frame);
        Ok(())
    }

    /// The connector sent a close frame: the source is released at once (so a connector
    /// that reconnects as soon as its close completes finds it free). The host's WebSocket
    /// layer answers the close; report the socket's end with
    /// [`ServerConnection::handle_closed`].
    pub fn handle_close_frame(
        &mut self,
        now: Instant,
        reg: &mut Registry,
        code: Option<u16>,
        reason: &str,
    ) {
        let _ = now;
        if self.state == State::Closed {
            return;
        }
        let source = self.source(reg);
        self.events.push_back(ServerEvent::PeerClosed {
            code,
            reason: reason.to_owned(),
            source,
        });
        self.detach(reg);
        self.state = State::Closing;
    }

    /// The socket ended (closed, failed, or the peer went away). Not to be called after a
    /// [`ServerTransmit::Abort`].
    pub fn handle_closed(&mut self, now: Instant, reg: &mut Registry) {
        let _ = now;
        if self.state == State::Closed {
            return;
        }
        self.finish(reg);
    }

    // ---- commands ---------------------------------------------------------------------------

    /// Sends `publish` with `object` (as VAIL `PUBLISH … TO SOURCE` does) to the source this
    /// socket holds.
    ///
    /// # Errors
    /// The socket holds no configured source, or is closed.
    pub fn publish(&mut self, reg: &mut Registry, object: Json) -> Result<(), ServerError> {
        let source = self.configured_source(reg)?;
        let frame = ServerFrame::Publish {
            resource_id: Some(source),
            object,
        };
        self.send_service(reg, &frame);
        Ok(())
    }

    /// Sends a `query` with `params` (the `WITH` clause) to the source this socket holds;
    /// returns the fresh reply address. Replies are matched by address only, on whatever
    /// socket they arrive, until the terminal one ([`RegistryEvent::QueryFinished`]) or
    /// `now + timeout` ([`RegistryEvent::QueryTimedOut`]).
    ///
    /// [`RegistryEvent::QueryFinished`]: super::RegistryEvent::QueryFinished
    /// [`RegistryEvent::QueryTimedOut`]: super::RegistryEvent::QueryTimedOut
    ///
    /// # Errors
    /// The socket holds no configured source, or is closed.
    pub fn query(
        &mut self,
        now: Instant,
        reg: &mut Registry,
        params: Json,
        timeout: Duration,
    ) -> Result<String, ServerError> {
        let source = self.configured_source(reg)?;
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(1 << 32));
        let reply_address = reg.start_query(&source, deadline);
        let frame = ServerFrame::Query {
            resource_id: Some(source),
            reply_address: reply_address.clone(),
            object: params,
        };
        self.send_service(reg, &frame);
        Ok(reply_address)
    }

    /// Sends `reconnectRequired` and marks the source unconfigured: the next
    /// `connectExtension` (on this socket or another) gets `new_config` when given, else
    /// the current configuration.
    ///
    /// # Errors
    /// The socket holds no source, or is closed.
    pub fn reconnect_required(
        &mut self,
        reg: &mut Registry,
        new_config: Option<Json>,
    ) -> Result<(), ServerError> {
        self.check_open()?;
        let source = self.held(reg).ok_or(ServerError::NotAttached {
            connection: self.id,
        })?;
        reg.unconfigure(&source, new_config);
        let frame = ServerFrame::ReconnectRequired {
            resource_id: Some(source),
        };
        self.send_service(reg, &frame);
        Ok(())
    }

    /// Sends `frame` exactly as given, whatever the connection's state (short of closed).
    ///
    /// # Errors
    /// The connection is closing or closed.
    pub fn send_raw(&mut self, frame: RawFrame) -> Result<(), ServerError> {
        self.check_open()?;
        self.transmits.push_back(match frame {
            RawFrame::Text(t) => ServerTransmit::Text(t),
            RawFrame::Binary(b) => ServerTransmit::Binary(b),
        });
        Ok(())
    }

    /// Closes the socket cleanly with `code` and `reason` (1000 normal, 1001 a server going
    /// away). The source is released at once.
    pub fn close(&mut self, reg: &mut Registry, code: u16, reason: &str) {
        if self.state != State::Open {
            return;
        }
        self.transmits.push_back(ServerTransmit::Close {
            code,
            reason: reason.to_owned(),
        });
        self.released = self.attached.clone();
        self.detach(reg);
        self.state = State::Closing;
    }

    /// Drops the socket without a close frame, as a crashed server or a broken network
    /// would. The connection is finished.
    pub fn abort(&mut self, reg: &mut Registry) {
        if self.state == State::Closed {
            return;
        }
        self.transmits.push_back(ServerTransmit::Abort);
        self.finish(reg);
    }

    // ---- internals --------------------------------------------------------------------------

    fn check_open(&self) -> Result<(), ServerError> {
        if self.state == State::Open {
            Ok(())
        } else {
            Err(ServerError::Closed {
                connection: self.id,
            })
        }
    }

    /// The source a notification on this socket counts for: the one it holds or, once this
    /// side has sent its close frame, the one it held then. The peer may have written
    /// notifications before it read that close frame; they are read to the end and kept,
    /// as a server that closes gracefully does.
    fn sender(&self, reg: &Registry) -> Option<String> {
        self.held(reg).or_else(|| {
            if self.state == State::Closing {
                self.released.clone()
            } else {
                None
            }
        })
    }

    fn held(&self, reg: &Registry) -> Option<String> {
        let name = self.attached.as_deref()?;
        reg.holds(self.id, name).then(|| name.to_owned())
    }

    fn configured_source(&self, reg: &Registry) -> Result<String, ServerError> {
        self.check_open()?;
        self.attached
            .as_deref()
            .filter(|s| {
                reg.holder(s)
                    .is_some_and(|h| h.connection == self.id && h.configured)
            })
            .map(str::to_owned)
            .ok_or(ServerError::NotAttached {
                connection: self.id,
            })
    }

    fn finish(&mut self, reg: &mut Registry) {
        self.detach(reg);
        self.state = State::Closed;
        self.events.push_back(ServerEvent::Closed);
    }

    /// Lets go of the source this socket holds, if it still does.
    fn detach(&mut self, reg: &mut Registry) {
        if let Some(source) = self.attached.take()
            && reg.release(self.id, &source)
        {
            self.events.push_back(ServerEvent::Detached { source });
        }
    }

    fn anomaly(&mut self, kind: AnomalyKind) {
        self.events.push_back(ServerEvent::Anomaly(kind));
    }

    fn on_frame(&mut self, reg: &mut Registry, frame: ClientFrame) {
        match frame {
            ClientFrame::Validate { token } => {
                let ok = match &reg.options().token {
                    None => true,
                    Some(expected) => token.as_deref() == Some(expected.as_str()),
                };
                self.auth_reply(reg, ok, None);
            }
            ClientFrame::Authenticate { username, password } => {
                let ok = reg
                    .options()
                    .credentials
                    .as_ref()
                    .is_some_and(|(u, p)| *u == username && *p == password);
                self.auth_reply(reg, ok, Some(username));
            }
            frame if self.user.is_none() => {
                self.anomaly(AnomalyKind::NotAuthenticated { frame });
                self.send_error(
                    reg,
                    Status::UNAUTHORIZED,
                    codes::NOT_AUTHENTICATED,
                    "The connection has not been authenticated; send validate first.",
                );
            }
            ClientFrame::ConnectExtension {
                source,
                reconnect_secret,
            } => self.on_connect(reg, source, reconnect_secret),
            ClientFrame::Notification { source, object } => match self.sender(reg) {
                Some(held) if held == source => {
                    self.events
                        .push_back(ServerEvent::Notification { source, object });
                    if reg.options().ack_notifications {
                        self.send_ack(reg);
                    }
                }
                Some(held) => {
                    let message = format!("This connection serves source {held}, not {source}.");
                    self.anomaly(AnomalyKind::WrongSource {
                        attached: held,
                        named: source,
                    });
                    self.send_error(reg, Status::BAD_REQUEST, codes::WRONG_SOURCE, &message);
                }
                None => {
                    self.anomaly(AnomalyKind::NotAttached {
                        frame: ClientFrame::Notification { source, object },
                    });
                    self.send_error(
                        reg,
                        Status::BAD_REQUEST,
                        codes::NOT_ATTACHED,
                        "This connection is not attached to a source; send connectExtension \
                             first.",
                    );
                }
            },
            ClientFrame::QueryReply(reply) => self.on_reply(reg, reply),
            ClientFrame::Unknown { op } => self.anomaly(AnomalyKind::UnknownOp { op }),
        }
    }

    fn auth_reply(&mut self, reg: &mut Registry, ok: bool, username: Option<String>) {
        self.events.push_back(ServerEvent::Auth {
            accepted: ok,
            username: username.clone(),
        });
        if ok {
            let user = username.unwrap_or_else(|| "testkit".to_owned());
            let ns = reg.options().namespace.clone();
            let body = Json::from(serde_json::json!({
                "anonymous": false,
                "userInfo": {
                    "username": user,
                    "preferredUsername": user,
                    "namespace": ns,
                    "homeNamespace": ns,
                    "createdBy": "system",
                    "userType": "node",
                    "profiles": ["system.user"],
                }
            }));
            self.user = Some(user);
            self.send_status(reg, Status::OK, Some(body));
        } else {
            // The real server leaves the socket open; the client decides what to do.
            self.send_error(
                reg,
                Status::UNAUTHORIZED,
                codes::AUTH_FAILED,
                "Authentication failed: the credentials are invalid or have expired.",
            );
        }
    }

    fn on_connect(&mut self, reg: &mut Registry, name: String, secret: Option<String>) {
        if self.attached.as_deref().is_some_and(|a| a != name) {
            self.detach(reg);
        }
        let (outcome, accepted) = reg.attach(self.id, &name, secret.as_deref());
        self.events.push_back(ServerEvent::ConnectAttempt {
            source: name.clone(),
            reconnect_secret: secret,
            outcome,
        });
        let Some((config, flapping)) = accepted else {
            let (status, code, message) = match outcome {
                ConnectOutcome::UnknownSource => (
                    Status(404),
                    codes::SOURCE_NOT_FOUND,
                    format!("The source {name} does not exist or is not an extension source."),
                ),
                ConnectOutcome::RefusedNoStream => (
                    Status::BAD_REQUEST,
                    codes::NO_ASSOCIATED_STREAM,
                    format!("The source {name} does not have an associated stream."),
                ),
                _ => (
                    Status::BAD_REQUEST,
                    codes::CONNECTION_EXISTS,
                    format!(
                        "A connection already exists for source {name}; the reconnectSecret \
                         does not match."
                    ),
                ),
            };
            self.send_error(reg, status, code, &message);
            return;
        };
        self.attached = Some(name.clone());
        if reg.options().status_before_configure {
            self.send_ack(reg);
        }
        let frame = ServerFrame::ConfigureExtension {
            resource_id: Some(name),
            config,
        };
        self.send_service(reg, &frame);
        if flapping {
            self.abort(reg);
        }
    }

    fn on_reply(&mut self, reg: &mut Registry, reply: QueryReply) {
        if self.held(reg).is_none() {
            // A reply on a socket that lost its source still answers the query (replies
            // are matched by address), but the real server would not expect it.
            self.anomaly(AnomalyKind::NotAttached {
                frame: ClientFrame::QueryReply(reply.clone()),
            });
        }
        if let Err(reply) = reg.route_reply(reply) {
            self.anomaly(AnomalyKind::UnknownReplyAddress { reply });
        }
        if reg.options().ack_query_replies {
            self.send_ack(reg);
        }
    }

    // ---- encoding ---------------------------------------------------------------------------

    fn send_text(&mut self, reg: &Registry, text: String) {
        self.transmits.push_back(if reg.options().binary_frames {
            ServerTransmit::Binary(text.into_bytes())
        } else {
            ServerTransmit::Text(text)
        });
    }

    /// A service frame, with the real server's bookkeeping fields when they are on.
    fn send_service(&mut self, reg: &mut Registry, frame: &ServerFrame) {
        let mut text = frame.encode();
        if reg.options().bookkeeping {
            let with_headers = match frame {
                ServerFrame::ConfigureExtension { .. } | ServerFrame::Publish { .. } => Some(true),
                ServerFrame::Query { .. } => Some(false),
                _ => None,
            };
            if let Some(with_headers) = with_headers {
                let mut fields = String::with_capacity(192);
                fields.push_str(
                    ",\"isSystemResource\":true,\"parameters\":{},\
                     \"contentType\":\"application/json\",\"skipMonitoring\":false,\
                     \"isExternal\":false,\"address\":\"",
                );
                fields.push_str(&reg.new_id());
                fields.push('"');
                if with_headers {
                    fields.push_str(",\"messageHeaders\":{}");
                }
                splice(&mut text, &fields);
            }
        }
        self.send_text(reg, text);
    }

    /// `{"status":200}`: the acknowledgement.
    fn send_ack(&mut self, reg: &Registry) {
        self.send_status(reg, Status::OK, None);
    }

    /// An op-less status frame; with a body it carries `contentType` as the real server's do.
    fn send_status(&mut self, reg: &Registry, status: Status, body: Option<Json>) {
        let with_body = body.is_some();
        let mut text = ServerFrame::Status(StatusFrame { status, body }).encode();
        if with_body {
            splice(&mut text, ",\"contentType\":\"application/json\"");
        }
        self.send_text(reg, text);
    }

    /// A status frame whose body is a Vantiq error list with one error.
    fn send_error(&mut self, reg: &Registry, status: Status, code: &str, message: &str) {
        let body = Json::from(serde_json::json!([
            {"code": code, "message": message, "params": []}
        ]));
        self.send_status(reg, status, Some(body));
    }
}

/// Inserts `fields` (starting with a comma) before the closing brace of a JSON object text.
fn splice(text: &mut String, fields: &str) {
    if text.ends_with('}') {
        text.pop();
        text.push_str(fields);
        text.push('}');
    }
}
