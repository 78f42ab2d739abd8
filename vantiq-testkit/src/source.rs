//! [`SourceHandle`], the test's grip on one source.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::sync::Notify;
use vantiq_proto::Json;

use crate::error::{Result, TestkitError};
use crate::hub::{Hub, QueryOutcome, SourceView};
use crate::records::{ConnectAttempt, FrameRecord, QueryResult, RawFrame, SourceInfo};
use crate::util::deadline_after;

/// A handle on one source of a [`TestServer`](crate::TestServer): drive it (publish, query,
/// `reconnectRequired`, drop the connection, refuse connects, send raw frames) and observe it
/// (connection state, notifications, frames, counters).
///
/// Cheap to clone and `Send`; every clone sees the same source. Every `wait_*` is woken by
/// the event it waits for (no polling) and gives up after its timeout with a
/// [`TestkitError::Timeout`] that names what it was waiting for.
#[derive(Clone)]
pub struct SourceHandle {
    hub: Arc<Hub>,
    name: Arc<str>,
    changed: Arc<Notify>,
}

impl std::fmt::Debug for SourceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceHandle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SourceHandle {
    /// A handle on `name`, if the server defines it.
    pub(crate) fn new(hub: Arc<Hub>, name: &str) -> Option<Self> {
        let changed = hub.changed(name)?;
        Some(SourceHandle {
            hub,
            name: Arc::from(name),
            changed,
        })
    }

    /// The source name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    // -----------------------------------------------------------------------------------------
    // Driving the connector
    // -----------------------------------------------------------------------------------------

    /// Sends `publish` with `object` to the connector (as VAIL `PUBLISH … TO SOURCE` would).
    ///
    /// # Errors
    /// [`TestkitError::NotConnected`] when no configured connection holds the source.
    pub async fn publish(&self, object: impl Into<Json>) -> Result<()> {
        self.hub.publish(&self.name, object.into())
    }

    /// Sends a `query` with `params` (the `WITH` clause) and waits, up to the server's default
    /// query timeout ([`TestServerBuilder::query_timeout`](crate::TestServerBuilder::query_timeout),
    /// 10 s unless set), for its terminal reply.
    ///
    /// # Errors
    /// See [`SourceHandle::query_with_timeout`].
    pub async fn query(&self, params: impl Into<Json>) -> Result<QueryResult> {
        self.query_with_timeout(params, self.hub.opts.query_timeout)
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
        let start = Instant::now();
        let (address, mut done) =
            self.hub
                .start_query(&self.name, params.into(), start, timeout)?;
        let deadline = tokio::time::Instant::from_std(start) + timeout.min(MAX_TIMEOUT);
        let outcome = match tokio::time::timeout_at(deadline, &mut done).await {
            Ok(outcome) => outcome,
            Err(_) => {
                // The deadline passed: the server's registry ends the query, handing over
                // what came so far.
                self.hub.expire_queries(Instant::now());
                match done.try_recv() {
                    Ok(outcome) => Ok(outcome),
                    Err(_) => {
                        let partials = self.hub.cancel_query(&address).map_or(0, |r| r.parts.len());
                        return Err(self.query_timeout(&address, partials, timeout));
                    }
                }
            }
        };
        match outcome {
            Ok(QueryOutcome::Finished(result)) if result.status.is_error() => {
                Err(TestkitError::QueryFailed {
                    source_name: self.name.to_string(),
                    result: Box::new(result),
                })
            }
            Ok(QueryOutcome::Finished(result)) => Ok(result),
            Ok(QueryOutcome::TimedOut(result)) => {
                Err(self.query_timeout(&address, result.parts.len(), timeout))
            }
            Err(_) => Err(TestkitError::ServerGone),
        }
    }

    fn query_timeout(&self, address: &str, partials: usize, timeout: Duration) -> TestkitError {
        TestkitError::Timeout {
            what: format!(
                "the terminal reply to query {address} on source `{}` ({partials} partial \
                 replies received)",
                self.name
            ),
            after: timeout,
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
        self.hub.reconnect_required(&self.name, new_config)
    }

    /// Replaces the configuration sent by the next `configureExtension`, without telling the
    /// connector.
    pub fn set_config(&self, config: impl Into<Json>) {
        self.hub.define_source(&self.name, config.into());
    }

    /// The configuration the next `configureExtension` will carry.
    #[must_use]
    pub fn config(&self) -> Json {
        self.view(|v| v.config.cloned())
            .flatten()
            .unwrap_or_else(Json::empty_object)
    }

    /// Drops the live connection abruptly: the socket is closed without a WebSocket close
    /// frame, as a crashed server or a broken network would. The source is free at once.
    ///
    /// # Errors
    /// [`TestkitError::NotConnected`] when no connection holds the source.
    pub async fn drop_connection(&self) -> Result<()> {
        self.hub.drop_connection(&self.name)
    }

    /// Closes the live connection cleanly: a WebSocket close frame with `code` and `reason`
    /// (1000 normal closure, 1001 the server is going away, 1011 a server error, …). The
    /// source is free at once; the connector's close reply ends the socket.
    ///
    /// # Errors
    /// [`TestkitError::NotConnected`] when no connection holds the source.
    pub async fn close(&self, code: u16, reason: &str) -> Result<()> {
        self.hub.close_source(&self.name, code, reason)
    }

    /// Answers the next `n` `connectExtension`s for this source with the error the real
    /// server gives while a source restarts: status 400, "… does not have an associated
    /// stream". Replaces any refusals still pending.
    pub fn refuse_connects(&self, n: u32) {
        self.hub.set_refusals(&self.name, n);
    }

    /// When on, every accepted connection is dropped abruptly right after its
    /// `configureExtension` was sent: a flapping server, for back-off tests.
    pub fn set_flapping(&self, on: bool) {
        self.hub.set_flapping(&self.name, on);
    }

    /// Sends `frame` on the live connection exactly as given (text or binary), whether or not
    /// it is configured.
    ///
    /// # Errors
    /// [`TestkitError::NotConnected`] when no connection holds the source.
    pub async fn send_raw(&self, frame: impl Into<RawFrame>) -> Result<()> {
        self.hub.send_raw(&self.name, frame.into())
    }

    // -----------------------------------------------------------------------------------------
    // Observing
    // -----------------------------------------------------------------------------------------

    /// Whether a connection holds the source.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.view(|v| v.connected).unwrap_or(false)
    }

    /// Whether a connection holds the source and was sent the current configuration.
    #[must_use]
    pub fn is_configured(&self) -> bool {
        self.view(|v| v.configured).unwrap_or(false)
    }

    /// `connectExtension`s received for this source, accepted or refused.
    #[must_use]
    pub fn connect_attempts(&self) -> u64 {
        self.view(|v| v.rec.connect_attempts).unwrap_or(0)
    }

    /// `connectExtension`s accepted (sessions started) for this source.
    #[must_use]
    pub fn connections(&self) -> u64 {
        self.view(|v| v.rec.connections).unwrap_or(0)
    }

    /// Times a connection holding the source ended (closed by the connector, dropped, taken
    /// over, or the server shut down).
    #[must_use]
    pub fn disconnects(&self) -> u64 {
        self.view(|v| v.rec.disconnects).unwrap_or(0)
    }

    /// The `reconnectSecret` of the last accepted `connectExtension`.
    #[must_use]
    pub fn reconnect_secret(&self) -> Option<String> {
        self.view(|v| v.rec.reconnect_secret.clone()).flatten()
    }

    /// Every `connectExtension` received for this source and how it was answered, in order.
    #[must_use]
    pub fn connect_log(&self) -> Vec<ConnectAttempt> {
        self.view(|v| v.rec.connect_log.clone()).unwrap_or_default()
    }

    /// Close frames received from connections that held the source, in order: the code
    /// (`None` for a close frame without one) and the reason. An abrupt end (no close frame)
    /// adds nothing.
    #[must_use]
    pub fn close_frames(&self) -> Vec<(Option<u16>, String)> {
        self.view(|v| v.rec.close_frames.clone())
            .unwrap_or_default()
    }

    /// Every frame received for this source: its `connectExtension`s and everything that
    /// arrived on a socket while that socket held the source. Empty when recording is off
    /// ([`TestServerBuilder::record`](crate::TestServerBuilder::record)).
    #[must_use]
    pub fn frames(&self) -> Vec<FrameRecord> {
        self.view(|v| v.rec.frames.to_vec())
            .unwrap_or_default()
            .iter()
            .map(|f| FrameRecord::clone(f))
            .collect()
    }

    /// A summary of the source.
    #[must_use]
    pub fn info(&self) -> SourceInfo {
        self.hub.info(&self.name).unwrap_or_else(|| SourceInfo {
            name: self.name.to_string(),
            connected: false,
            configured: false,
            reconnect_secret: None,
            connections: 0,
            connect_attempts: 0,
            notifications: 0,
        })
    }

    /// Notifications received so far (counted even when recording is off).
    #[must_use]
    pub fn notification_count(&self) -> u64 {
        self.view(|v| v.rec.notification_count).unwrap_or(0)
    }

    /// Every notification's `object` received so far, in order.
    #[must_use]
    pub fn notifications_snapshot(&self) -> Vec<Json> {
        self.view(|v| v.rec.notifications.to_vec())
            .unwrap_or_default()
    }

    /// The notifications after the first `after` ones, and the index to ask for next.
    ///
    /// `after` beyond the end gives nothing and the current end.
    #[must_use]
    pub fn notifications_after(&self, after: usize) -> (usize, Vec<Json>) {
        self.view(|v| v.rec.notifications.after(after))
            .unwrap_or_default()
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
                |v| {
                    (v.rec.notifications.total() != after).then(|| v.rec.notifications.after(after))
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
        let name = self.name.clone();
        self.wait_for(
            timeout,
            |v| {
                format!(
                    "notification #{} on source `{name}` ({} received so far)",
                    v.rec.cursor + 1,
                    v.rec.notifications.total()
                )
            },
            |v| {
                let item = v.rec.notifications.get(v.rec.cursor).cloned();
                if item.is_some() {
                    v.rec.cursor += 1;
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
                    |v| v.rec.notifications.get(index).cloned(),
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
        let name = self.name.clone();
        self.wait_for(
            timeout,
            |v| {
                format!(
                    "{n} notifications on source `{name}` ({} received)",
                    v.rec.notifications.total()
                )
            },
            |v| (v.rec.notifications.total() >= n).then(|| v.rec.notifications.to_vec()),
        )
        .await
    }

    /// Waits up to `timeout` until at least `n` notifications were counted (works with
    /// recording off). Returns the count.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] naming how many arrived.
    pub async fn wait_notification_count(&self, n: u64, timeout: Duration) -> Result<u64> {
        let name = self.name.clone();
        self.wait_for(
            timeout,
            |v| {
                format!(
                    "{n} notifications on source `{name}` ({} received)",
                    v.rec.notification_count
                )
            },
            |v| (v.rec.notification_count >= n).then_some(v.rec.notification_count),
        )
        .await
    }

    /// Waits up to `timeout` until a connection holds the source (its `connectExtension` was
    /// accepted).
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] naming the source and the attempts seen.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let name = self.name.clone();
        self.wait_for(
            timeout,
            |v| {
                format!(
                    "a connection to source `{name}` ({} connectExtension attempts so far)",
                    v.rec.connect_attempts
                )
            },
            |v| v.connected.then_some(()),
        )
        .await
    }

    /// Waits up to `timeout` until a connection holds the source and was sent the current
    /// configuration. Returns that configuration.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] naming the source and the attempts seen.
    pub async fn wait_configured(&self, timeout: Duration) -> Result<Json> {
        let name = self.name.clone();
        self.wait_for(
            timeout,
            |v| {
                format!(
                    "source `{name}` to be configured (connected: {}, {} connectExtension \
                     attempts so far)",
                    v.connected, v.rec.connect_attempts
                )
            },
            |v| v.configured.then(|| v.config.cloned()).flatten(),
        )
        .await
    }

    /// Waits up to `timeout` until no connection holds the source.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`].
    pub async fn wait_disconnected(&self, timeout: Duration) -> Result<()> {
        let name = self.name.clone();
        self.wait_for(
            timeout,
            |_| format!("the connection to source `{name}` to end"),
            |v| (!v.connected).then_some(()),
        )
        .await
    }

    /// Waits up to `timeout` until at least `n` sessions were accepted in total. Returns the
    /// count.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] naming how many there were.
    pub async fn wait_connections(&self, n: u64, timeout: Duration) -> Result<u64> {
        let name = self.name.clone();
        self.wait_for(
            timeout,
            |v| {
                format!(
                    "{n} accepted connections to source `{name}` ({} so far, {} attempts)",
                    v.rec.connections, v.rec.connect_attempts
                )
            },
            |v| (v.rec.connections >= n).then_some(v.rec.connections),
        )
        .await
    }

    /// Waits up to `timeout` until at least `n` `connectExtension`s were received in total.
    /// Returns the count.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] naming how many there were.
    pub async fn wait_connect_attempts(&self, n: u64, timeout: Duration) -> Result<u64> {
        let name = self.name.clone();
        self.wait_for(
            timeout,
            |v| {
                format!(
                    "{n} connectExtension attempts for source `{name}` ({} so far)",
                    v.rec.connect_attempts
                )
            },
            |v| (v.rec.connect_attempts >= n).then_some(v.rec.connect_attempts),
        )
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Internals
    // -----------------------------------------------------------------------------------------

    /// Runs `f` on this source's view.
    fn view<T>(&self, f: impl FnOnce(SourceView<'_>) -> T) -> Option<T> {
        self.hub.view(&self.name, f)
    }

    /// Waits until `check` gives a value, re-checking whenever the source changes.
    async fn wait_for<T>(
        &self,
        timeout: Duration,
        what: impl FnOnce(SourceView<'_>) -> String,
        mut check: impl FnMut(SourceView<'_>) -> Option<T>,
    ) -> Result<T> {
        let deadline = deadline_after(timeout);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = self.view(&mut check).flatten() {
                return Ok(v);
            }
            if self.hub.is_shut_down() {
                return Err(TestkitError::ServerGone);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                if let Some(v) = self.view(&mut check).flatten() {
                    return Ok(v);
                }
                return Err(TestkitError::Timeout {
                    what: self.view(what).unwrap_or_default(),
                    after: timeout,
                });
            }
        }
    }
}

/// Longest query timeout honoured (a `Duration::MAX` must not overflow the deadline).
const MAX_TIMEOUT: Duration = Duration::from_secs(60 * 60 * 24 * 365);
