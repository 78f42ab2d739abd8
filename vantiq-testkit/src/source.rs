//! Per-source state and [`SourceHandle`], the test's grip on one source.

use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use futures_util::Stream;
use tokio::sync::{Notify, mpsc, oneshot};
use vantiq_proto::frame::ServerFrame;
use vantiq_proto::{Json, Status};

use crate::conn::Command;
use crate::error::{Result, TestkitError};
use crate::query::{Pending, QueryResult};
use crate::records::{ConnectAttempt, FrameRecord, RawFrame, SourceInfo};
use crate::server::Shared;
use crate::util::{deadline_after, lock};

/// The connection that currently holds a source.
pub(crate) struct Live {
    /// The server's number for the socket.
    pub(crate) conn: u64,
    /// Commands to that socket's task.
    pub(crate) tx: mpsc::UnboundedSender<Command>,
    /// The `reconnectSecret` it attached with.
    pub(crate) secret: Option<String>,
}

/// Everything the server knows about one source.
pub(crate) struct SourceState {
    pub(crate) config: Json,
    pub(crate) live: Option<Live>,
    pub(crate) configured: bool,
    pub(crate) refuse_remaining: u32,
    pub(crate) flapping: bool,
    pub(crate) connect_attempts: u64,
    pub(crate) connections: u64,
    pub(crate) disconnects: u64,
    pub(crate) reconnect_secret: Option<String>,
    pub(crate) notifications: Vec<Json>,
    pub(crate) notification_count: u64,
    pub(crate) cursor: usize,
    pub(crate) frames: Vec<Arc<FrameRecord>>,
    pub(crate) connect_log: Vec<ConnectAttempt>,
    pub(crate) close_frames: Vec<(Option<u16>, String)>,
}

impl SourceState {
    /// Whether socket `conn` holds the source.
    pub(crate) fn held_by(&self, conn: u64) -> bool {
        self.live.as_ref().is_some_and(|l| l.conn == conn)
    }
}

/// A source: its name, its state, and a wake-up for waiters.
pub(crate) struct SourceShared {
    pub(crate) name: String,
    pub(crate) state: std::sync::Mutex<SourceState>,
    pub(crate) changed: Notify,
}

impl SourceShared {
    pub(crate) fn new(name: String, config: Json) -> Self {
        SourceShared {
            name,
            state: std::sync::Mutex::new(SourceState {
                config,
                live: None,
                configured: false,
                refuse_remaining: 0,
                flapping: false,
                connect_attempts: 0,
                connections: 0,
                disconnects: 0,
                reconnect_secret: None,
                notifications: Vec::new(),
                notification_count: 0,
                cursor: 0,
                frames: Vec::new(),
                connect_log: Vec::new(),
                close_frames: Vec::new(),
            }),
            changed: Notify::new(),
        }
    }

    /// Lets go of the source if socket `conn` holds it. Returns whether it did.
    pub(crate) fn release(&self, conn: u64) -> bool {
        let released = {
            let mut st = lock(&self.state);
            if st.held_by(conn) {
                st.live = None;
                st.configured = false;
                st.disconnects += 1;
                true
            } else {
                false
            }
        };
        if released {
            self.changed.notify_waiters();
        }
        released
    }

    pub(crate) fn info(&self) -> SourceInfo {
        let st = lock(&self.state);
        SourceInfo {
            name: self.name.clone(),
            connected: st.live.is_some(),
            configured: st.configured,
            reconnect_secret: st.reconnect_secret.clone(),
            connections: st.connections,
            connect_attempts: st.connect_attempts,
            notifications: st.notification_count,
        }
    }
}

/// A handle on one source of a [`TestServer`](crate::TestServer): drive it (publish, query,
/// `reconnectRequired`, drop the connection, refuse connects, send raw frames) and observe it
/// (connection state, notifications, frames, counters).
///
/// Cheap to clone and `Send`; every clone sees the same source. Every `wait_*` is woken by
/// the event it waits for (no polling) and gives up after its timeout with a
/// [`TestkitError::Timeout`] that names what it was waiting for.
#[derive(Clone)]
pub struct SourceHandle {
    shared: Arc<Shared>,
    source: Arc<SourceShared>,
}

impl std::fmt::Debug for SourceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceHandle")
            .field("name", &self.source.name)
            .finish_non_exhaustive()
    }
}

impl SourceHandle {
    pub(crate) fn new(shared: Arc<Shared>, source: Arc<SourceShared>) -> Self {
        SourceHandle { shared, source }
    }

    /// The source name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.source.name
    }

    // -----------------------------------------------------------------------------------------
    // Driving the connector
    // -----------------------------------------------------------------------------------------

    /// Sends `publish` with `object` to the connector (as VAIL `PUBLISH … TO SOURCE` would).
    ///
    /// # Errors
    /// [`TestkitError::NotConnected`] when no configured connection holds the source.
    pub async fn publish(&self, object: impl Into<Json>) -> Result<()> {
        let frame = ServerFrame::Publish {
            resource_id: Some(self.source.name.clone()),
            object: object.into(),
        };
        let msg = self.shared.server_frame(&frame);
        self.send(Command::Send(msg), true)
    }

    /// Sends a `query` with `params` (the `WITH` clause) and waits, up to the server's default
    /// query timeout ([`TestServerBuilder::query_timeout`](crate::TestServerBuilder::query_timeout),
    /// 10 s unless set), for its terminal reply.
    ///
    /// # Errors
    /// See [`SourceHandle::query_with_timeout`].
    pub async fn query(&self, params: impl Into<Json>) -> Result<QueryResult> {
        self.query_with_timeout(params, self.shared.opts.query_timeout)
            .await
    }

    /// Sends a `query` with `params` and waits up to `timeout` for its terminal reply.
    ///
    /// Each query gets a fresh UUID reply address; replies are matched by `X-Reply-Address`
    /// only, so any number of queries may be in flight at once. Partial (1xx) replies are
    /// collected; the first reply with another status ends the query.
    ///
    /// # Errors
    /// * [`TestkitError::QueryFailed`] when the terminal reply is an error (status ≥ 300); it
    ///   carries every reply received;
    /// * [`TestkitError::NotConnected`] when no configured connection holds the source;
    /// * [`TestkitError::Timeout`] when no terminal reply came in time (later replies for it
    ///   are recorded as [`AnomalyKind::UnknownReplyAddress`](crate::AnomalyKind));
    /// * [`TestkitError::ServerGone`] when the server shut down meanwhile.
    ///
    /// Like Vantiq, the server does not give up on a query when the connection it was sent on
    /// ends: a reply arriving later, on any socket, still completes it until the timeout.
    pub async fn query_with_timeout(
        &self,
        params: impl Into<Json>,
        timeout: Duration,
    ) -> Result<QueryResult> {
        let address = self.shared.new_id();
        let (done_tx, done_rx) = oneshot::channel();
        let frame = ServerFrame::Query {
            resource_id: Some(self.source.name.clone()),
            reply_address: address.clone(),
            object: params.into(),
        };
        let msg = self.shared.server_frame(&frame);
        lock(&self.shared.pending).insert(
            address.clone(),
            Pending {
                result: QueryResult {
                    reply_address: address.clone(),
                    status: Status(0),
                    rows: Vec::new(),
                    parts: Vec::new(),
                },
                done: done_tx,
            },
        );
        if let Err(e) = self.send(Command::Send(msg), true) {
            lock(&self.shared.pending).remove(&address);
            return Err(e);
        }
        let outcome = tokio::time::timeout_at(deadline_after(timeout), done_rx).await;
        match outcome {
            Ok(Ok(result)) if result.status.is_error() => Err(TestkitError::QueryFailed {
                source_name: self.source.name.clone(),
                result: Box::new(result),
            }),
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(TestkitError::ServerGone),
            Err(_) => {
                let partials = lock(&self.shared.pending)
                    .remove(&address)
                    .map_or(0, |p| p.result.parts.len());
                Err(TestkitError::Timeout {
                    what: format!(
                        "the terminal reply to query {address} on source `{}` \
                         ({partials} partial replies received)",
                        self.source.name
                    ),
                    after: timeout,
                })
            }
        }
    }

    /// Sends `reconnectRequired` on the live connection and marks the source unconfigured;
    /// the next `connectExtension` (on the same socket or a new one) gets `new_config` when
    /// given, else the current configuration.
    ///
    /// # Errors
    /// [`TestkitError::NotConnected`] when no connection holds the source (the new
    /// configuration is stored all the same).
    pub async fn reconnect_required(&self, new_config: Option<Json>) -> Result<()> {
        let frame = ServerFrame::ReconnectRequired {
            resource_id: Some(self.source.name.clone()),
        };
        let msg = self.shared.server_frame(&frame);
        let sent = {
            let mut st = lock(&self.source.state);
            if let Some(config) = new_config {
                st.config = config;
            }
            match &st.live {
                Some(live) => {
                    let ok = live.tx.send(Command::Send(msg)).is_ok();
                    st.configured = false;
                    ok
                }
                None => false,
            }
        };
        self.source.changed.notify_waiters();
        if sent {
            Ok(())
        } else {
            Err(self.not_connected())
        }
    }

    /// Replaces the configuration sent by the next `configureExtension`, without telling the
    /// connector.
    pub fn set_config(&self, config: impl Into<Json>) {
        lock(&self.source.state).config = config.into();
    }

    /// The configuration the next `configureExtension` will carry.
    #[must_use]
    pub fn config(&self) -> Json {
        lock(&self.source.state).config.clone()
    }

    /// Drops the live connection abruptly: the socket is closed without a WebSocket close
    /// frame, as a crashed server or a broken network would. The source is free at once.
    ///
    /// # Errors
    /// [`TestkitError::NotConnected`] when no connection holds the source.
    pub async fn drop_connection(&self) -> Result<()> {
        let live = {
            let mut st = lock(&self.source.state);
            let live = st.live.take();
            if live.is_some() {
                st.configured = false;
                st.disconnects += 1;
            }
            live
        };
        match live {
            Some(live) => {
                let _ = live.tx.send(Command::Abort);
                self.source.changed.notify_waiters();
                Ok(())
            }
            None => Err(self.not_connected()),
        }
    }

    /// Answers the next `n` `connectExtension`s for this source with the error the real
    /// server gives while a source restarts: status 400, "… does not have an associated
    /// stream". Replaces any refusals still pending.
    pub fn refuse_connects(&self, n: u32) {
        lock(&self.source.state).refuse_remaining = n;
    }

    /// When on, every accepted connection is dropped abruptly right after its
    /// `configureExtension` was sent: a flapping server, for back-off tests.
    pub fn set_flapping(&self, on: bool) {
        lock(&self.source.state).flapping = on;
    }

    /// Sends `frame` on the live connection exactly as given (text or binary), whether or not
    /// it is configured.
    ///
    /// # Errors
    /// [`TestkitError::NotConnected`] when no connection holds the source.
    pub async fn send_raw(&self, frame: impl Into<RawFrame>) -> Result<()> {
        let msg = match frame.into() {
            RawFrame::Text(t) => Message::text(t),
            RawFrame::Binary(b) => Message::binary(b),
        };
        self.send(Command::Send(msg), false)
    }

    // -----------------------------------------------------------------------------------------
    // Observing
    // -----------------------------------------------------------------------------------------

    /// Whether a connection holds the source.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        lock(&self.source.state).live.is_some()
    }

    /// Whether a connection holds the source and was sent the current configuration.
    #[must_use]
    pub fn is_configured(&self) -> bool {
        lock(&self.source.state).configured
    }

    /// `connectExtension`s received for this source, accepted or refused.
    #[must_use]
    pub fn connect_attempts(&self) -> u64 {
        lock(&self.source.state).connect_attempts
    }

    /// `connectExtension`s accepted (sessions started) for this source.
    #[must_use]
    pub fn connections(&self) -> u64 {
        lock(&self.source.state).connections
    }

    /// Times a connection holding the source ended (closed by the connector, dropped, taken
    /// over, or the server shut down).
    #[must_use]
    pub fn disconnects(&self) -> u64 {
        lock(&self.source.state).disconnects
    }

    /// The `reconnectSecret` of the last accepted `connectExtension`.
    #[must_use]
    pub fn reconnect_secret(&self) -> Option<String> {
        lock(&self.source.state).reconnect_secret.clone()
    }

    /// Every `connectExtension` received for this source and how it was answered, in order.
    #[must_use]
    pub fn connect_log(&self) -> Vec<ConnectAttempt> {
        lock(&self.source.state).connect_log.clone()
    }

    /// Close frames received from connections that held the source, in order: the code
    /// (`None` for a close frame without one) and the reason. An abrupt end (no close frame)
    /// adds nothing.
    #[must_use]
    pub fn close_frames(&self) -> Vec<(Option<u16>, String)> {
        lock(&self.source.state).close_frames.clone()
    }

    /// Every frame received for this source: its `connectExtension`s and everything that
    /// arrived on a socket while that socket held the source. Empty when recording is off
    /// ([`TestServerBuilder::record`](crate::TestServerBuilder::record)).
    #[must_use]
    pub fn frames(&self) -> Vec<FrameRecord> {
        lock(&self.source.state)
            .frames
            .iter()
            .map(|f| FrameRecord::clone(f))
            .collect()
    }

    /// A summary of the source.
    #[must_use]
    pub fn info(&self) -> SourceInfo {
        self.source.info()
    }

    /// Notifications received so far (counted even when recording is off).
    #[must_use]
    pub fn notification_count(&self) -> u64 {
        lock(&self.source.state).notification_count
    }

    /// Every notification's `object` received so far, in order.
    #[must_use]
    pub fn notifications_snapshot(&self) -> Vec<Json> {
        lock(&self.source.state).notifications.clone()
    }

    /// The notifications after the first `after` ones, and the index to ask for next.
    ///
    /// `after` beyond the end gives nothing and the current end.
    #[must_use]
    pub fn notifications_after(&self, after: usize) -> (usize, Vec<Json>) {
        let st = lock(&self.source.state);
        slice_after(&st.notifications, after)
    }

    /// Like [`SourceHandle::notifications_after`], but waits up to `wait` for at least one
    /// notification after `after` (a long poll). Returns as soon as there is one; gives
    /// nothing (and no error) when none came.
    pub async fn wait_notifications_after(
        &self,
        after: usize,
        wait: Duration,
    ) -> (usize, Vec<Json>) {
        let got = self
            .wait_for(
                wait,
                |_| String::new(),
                |st| {
                    (st.notifications.len() != after).then(|| slice_after(&st.notifications, after))
                },
            )
            .await;
        got.unwrap_or_else(|_| self.notifications_after(after))
    }

    /// The next notification not yet taken by `next_notification` (one cursor per source,
    /// shared by every clone of the handle), waiting up to `timeout` for it.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] when none came.
    pub async fn next_notification(&self, timeout: Duration) -> Result<Json> {
        let name = self.source.name.clone();
        self.wait_for(
            timeout,
            |st| {
                format!(
                    "notification #{} on source `{name}` ({} received so far)",
                    st.cursor + 1,
                    st.notifications.len()
                )
            },
            |st| {
                let item = st.notifications.get(st.cursor).cloned();
                if item.is_some() {
                    st.cursor += 1;
                }
                item
            },
        )
        .await
    }

    /// A stream of every notification of this source, from the first one ever received, then
    /// each new one as it arrives. It ends when the server shuts down. Independent of
    /// [`SourceHandle::next_notification`]'s cursor.
    pub fn notification_stream(&self) -> impl Stream<Item = Json> + Send + 'static {
        let handle = self.clone();
        futures_util::stream::unfold((handle, 0usize), |(handle, index)| async move {
            let item = handle
                .wait_for(
                    Duration::MAX,
                    |_| String::new(),
                    |st| st.notifications.get(index).cloned(),
                )
                .await
                .ok()?;
            Some((item, (handle, index + 1)))
        })
    }

    /// Waits up to `timeout` until at least `n` notifications arrived; returns all of them.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] naming how many of the `n` arrived.
    pub async fn wait_notifications(&self, n: usize, timeout: Duration) -> Result<Vec<Json>> {
        let name = self.source.name.clone();
        self.wait_for(
            timeout,
            |st| {
                format!(
                    "{n} notifications on source `{name}` ({} received)",
                    st.notifications.len()
                )
            },
            |st| (st.notifications.len() >= n).then(|| st.notifications.clone()),
        )
        .await
    }

    /// Waits up to `timeout` until at least `n` notifications were counted (works with
    /// recording off). Returns the count.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] naming how many arrived.
    pub async fn wait_notification_count(&self, n: u64, timeout: Duration) -> Result<u64> {
        let name = self.source.name.clone();
        self.wait_for(
            timeout,
            |st| {
                format!(
                    "{n} notifications on source `{name}` ({} received)",
                    st.notification_count
                )
            },
            |st| (st.notification_count >= n).then_some(st.notification_count),
        )
        .await
    }

    /// Waits up to `timeout` until a connection holds the source (its `connectExtension` was
    /// accepted).
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] naming the source and the attempts seen.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let name = self.source.name.clone();
        self.wait_for(
            timeout,
            |st| {
                format!(
                    "a connection to source `{name}` ({} connectExtension attempts so far)",
                    st.connect_attempts
                )
            },
            |st| st.live.is_some().then_some(()),
        )
        .await
    }

    /// Waits up to `timeout` until a connection holds the source and was sent the current
    /// configuration. Returns that configuration.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] naming the source and the attempts seen.
    pub async fn wait_configured(&self, timeout: Duration) -> Result<Json> {
        let name = self.source.name.clone();
        self.wait_for(
            timeout,
            |st| {
                format!(
                    "source `{name}` to be configured (connected: {}, {} connectExtension \
                     attempts so far)",
                    st.live.is_some(),
                    st.connect_attempts
                )
            },
            |st| st.configured.then(|| st.config.clone()),
        )
        .await
    }

    /// Waits up to `timeout` until no connection holds the source.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`].
    pub async fn wait_disconnected(&self, timeout: Duration) -> Result<()> {
        let name = self.source.name.clone();
        self.wait_for(
            timeout,
            |_| format!("the connection to source `{name}` to end"),
            |st| st.live.is_none().then_some(()),
        )
        .await
    }

    /// Waits up to `timeout` until at least `n` sessions were accepted in total. Returns the
    /// count.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] naming how many there were.
    pub async fn wait_connections(&self, n: u64, timeout: Duration) -> Result<u64> {
        let name = self.source.name.clone();
        self.wait_for(
            timeout,
            |st| {
                format!(
                    "{n} accepted connections to source `{name}` ({} so far, {} attempts)",
                    st.connections, st.connect_attempts
                )
            },
            |st| (st.connections >= n).then_some(st.connections),
        )
        .await
    }

    /// Waits up to `timeout` until at least `n` `connectExtension`s were received in total.
    /// Returns the count.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] naming how many there were.
    pub async fn wait_connect_attempts(&self, n: u64, timeout: Duration) -> Result<u64> {
        let name = self.source.name.clone();
        self.wait_for(
            timeout,
            |st| {
                format!(
                    "{n} connectExtension attempts for source `{name}` ({} so far)",
                    st.connect_attempts
                )
            },
            |st| (st.connect_attempts >= n).then_some(st.connect_attempts),
        )
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Internals
    // -----------------------------------------------------------------------------------------

    fn not_connected(&self) -> TestkitError {
        TestkitError::NotConnected {
            source_name: self.source.name.clone(),
        }
    }

    /// Hands a command to the socket holding the source.
    fn send(&self, cmd: Command, require_configured: bool) -> Result<()> {
        let st = lock(&self.source.state);
        match &st.live {
            Some(live) if st.configured || !require_configured => {
                live.tx.send(cmd).map_err(|_| self.not_connected())
            }
            _ => Err(self.not_connected()),
        }
    }

    /// Waits until `check` gives a value, re-checking whenever the source changes.
    async fn wait_for<T>(
        &self,
        timeout: Duration,
        what: impl FnOnce(&SourceState) -> String,
        mut check: impl FnMut(&mut SourceState) -> Option<T>,
    ) -> Result<T> {
        let deadline = deadline_after(timeout);
        loop {
            let notified = self.source.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = check(&mut lock(&self.source.state)) {
                return Ok(v);
            }
            if self.shared.is_shut_down() {
                return Err(TestkitError::ServerGone);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let mut st = lock(&self.source.state);
                if let Some(v) = check(&mut st) {
                    return Ok(v);
                }
                return Err(TestkitError::Timeout {
                    what: what(&st),
                    after: timeout,
                });
            }
        }
    }
}

fn slice_after(items: &[Json], after: usize) -> (usize, Vec<Json>) {
    match items.get(after..) {
        Some(rest) => (items.len(), rest.to_vec()),
        None => (items.len(), Vec::new()),
    }
}
