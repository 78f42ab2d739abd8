//! [`Source`]: a cheap, cloneable handle on one source, usable from any task.

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::sync::{MutexGuard, PoisonError};

use event_listener::Event as Signal;
use serde::Serialize;

use crate::command::Command;
use crate::desk;
use crate::lane::{Bounds, Lane, TrySendError};
use vantiq_proto::{
    Connection, ConnectionState, Json, Notification, NotificationEncoder, NotifyRefused,
};

/// Why a notification was not sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// Notifications must be JSON objects (Vantiq delivers them as VAIL objects).
    #[error("a notification must serialize to a JSON object")]
    NotAnObject,
    /// The value could not be serialized.
    #[error("the notification could not be serialized: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The connector has stopped; nothing more can be sent for this source.
    #[error("the connector for this source has stopped")]
    Closed,
}

/// Why [`Source::try_notify`] did not take a notification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryNotifyError {
    /// The queue is full (the source is disconnected and its offline queue is full, or the
    /// socket cannot keep up). The notification is given back.
    #[error("the notification queue is full")]
    Full(Json),
    /// As for [`Source::notify`].
    #[error(transparent)]
    Failed(#[from] NotifyError),
}

/// The connector stopped before the awaited state was reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the connector for source `{0}` stopped")]
pub struct Stopped(pub String);

pub(crate) struct SourceShared {
    pub(crate) name: String,
    /// Frames this source's notifications where they are sent: the text serialized is the
    /// frame that goes out.
    encoder: NotificationEncoder,
    /// The state, and the configuration of the current (or last) session.
    snapshot: Mutex<(ConnectionState, Option<Json>)>,
    /// The state's code in [`STATES`], written under the snapshot's lock: reading the state
    /// takes no lock (a handler may ask every source of a large set, for every source).
    state: AtomicU8,
    changed: Signal,
    /// The one ordered queue of commands to the driver.
    pub(crate) commands: Lane<Command>,
    /// Notifications accepted and never handed to a socket (counted when the connector
    /// stops).
    undelivered: AtomicU64,
    pub(crate) chunk_bytes: usize,
}

/// A handle on one source of a connector set: its name and state, and the way to send it
/// notifications. Cheap to clone; usable from any task or thread, before or while the set
/// runs.
///
/// Handlers receive it with every call; other tasks take it from
/// [`ConnectorSet::source`](crate::ConnectorSet::source) or
/// [`ConnectorSet::sources`](crate::ConnectorSet::sources) before the set runs.
///
/// # Example
///
/// A task that forwards readings as notifications until the connector stops:
///
/// ```
/// use vantiq_connector::{NotifyError, Source};
///
/// async fn forward(source: Source, readings: async_channel::Receiver<f64>) {
///     while let Ok(value) = readings.recv().await {
///         match source.notify(&serde_json::json!({ "value": value })).await {
///             Ok(()) => {}
///             Err(NotifyError::Closed) => return, // the connector has stopped
///             Err(e) => tracing::warn!(source = source.name(), error = %e, "not sent"),
///         }
///     }
/// }
/// ```
#[derive(Clone)]
pub struct Source(pub(crate) Arc<SourceShared>);

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.0.name)
            .field("state", &self.state())
            .finish()
    }
}

impl Source {
    pub(crate) fn new(name: String, chunk_bytes: usize, queue: Bounds) -> Source {
        Source(Arc::new(SourceShared {
            encoder: NotificationEncoder::new(&name),
            name,
            snapshot: Mutex::new((ConnectionState::Connecting, None)),
            state: AtomicU8::new(state_code(ConnectionState::Connecting)),
            changed: Signal::new(),
            commands: Lane::new(queue),
            undelivered: AtomicU64::new(0),
            chunk_bytes,
        }))
    }

    /// Identifies this source's shared state (the same for every clone of the handle).
    pub(crate) fn addr(&self) -> usize {
        Arc::as_ptr(&self.0).addr()
    }

    /// The source name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.0.name
    }

    fn snapshot(&self) -> MutexGuard<'_, (ConnectionState, Option<Json>)> {
        self.0
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection state.
    #[must_use]
    pub fn state(&self) -> ConnectionState {
        match STATES.get(usize::from(self.0.state.load(Ordering::Acquire))) {
            Some(state) => *state,
            None => self.snapshot().0, // a state this crate does not know by code
        }
    }

    /// True while the source is configured (notifications go straight out).
    #[must_use]
    pub fn is_configured(&self) -> bool {
        self.state() == ConnectionState::Configured
    }

    /// The configuration document of the current (or last) session.
    #[must_use]
    pub fn config(&self) -> Option<Json> {
        self.snapshot().1.clone()
    }

    /// Notifications this source accepted that were never handed to a socket: the close
    /// timeout passed while the link could not take them, or the connector stopped for a
    /// fatal error. Each such loss is also logged as a warning with its count.
    #[must_use]
    pub fn undelivered_notifications(&self) -> u64 {
        self.0.undelivered.load(Ordering::Acquire)
    }

    pub(crate) fn add_undelivered(&self, n: u64) {
        self.0.undelivered.fetch_add(n, Ordering::AcqRel);
    }

    pub(crate) fn set_state(&self, state: ConnectionState, config: Option<Json>) {
        {
            let mut snap = self.snapshot();
            snap.0 = state;
            self.0.state.store(state_code(state), Ordering::Release);
            if let Some(config) = config {
                snap.1 = Some(config);
            }
        }
        self.0.changed.notify(usize::MAX);
    }

    /// Sends a notification: any value that serializes to a JSON object.
    ///
    /// Notifications go out in the order they are sent. While the source is disconnected
    /// they wait for the next session in a queue bounded by count and bytes
    /// ([`Limits`](crate::Limits)); while the socket is slower than the application they wait
    /// in the source's queues, bounded the same way. When those are full this waits for room
    /// ([`Source::try_notify`] does not wait). `Ok` means accepted: it will be delivered in
    /// order, or, if the connector stops before a socket could take it (the close timeout,
    /// a fatal error), counted in [`Source::undelivered_notifications`] and logged.
    ///
    /// # Errors
    /// The value is not an object or cannot be serialized, or the connector has stopped.
    pub async fn notify<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), NotifyError> {
        let n = self.0.encoder.encode(value)?;
        self.send_notification(n).await
    }

    /// Like [`Source::notify`] for JSON text you already have.
    ///
    /// # Errors
    /// As [`Source::notify`].
    pub async fn notify_json(&self, json: Json) -> Result<(), NotifyError> {
        self.send_notification(self.0.encoder.encode_json(&json))
            .await
    }

    async fn send_notification(&self, n: Notification) -> Result<(), NotifyError> {
        check_notification(&n)?;
        let bytes = n.held();
        let n = match desk::hand(self, n, bytes, Connection::can_notify, notify_now).await {
            Ok(verdict) => return verdict,
            Err(n) => n,
        };
        // Boxed: as for a reply, the way through the queue is the rare one from a handler.
        Box::pin(self.0.commands.send(Command::Notify(n)))
            .await
            .map_err(|_| NotifyError::Closed)
    }

    /// Sends a notification if that can be done without waiting.
    ///
    /// # Errors
    /// [`TryNotifyError::Full`] when it would have to wait; otherwise as [`Source::notify`].
    pub fn try_notify<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), TryNotifyError> {
        let n = self.0.encoder.encode(value).map_err(NotifyError::from)?;
        check_notification(&n)?;
        let bytes = n.held();
        let n = match desk::try_hand(self, n, bytes, Connection::can_notify, notify_now) {
            Ok(verdict) => return verdict.map_err(TryNotifyError::from),
            Err(n) => n,
        };
        self.0
            .commands
            .try_send(Command::Notify(n))
            .map_err(|e| match e {
                TrySendError::Full(Command::Notify(n)) => TryNotifyError::Full(n.to_json()),
                TrySendError::Full(_) | TrySendError::Closed(_) => NotifyError::Closed.into(),
            })
    }

    /// Waits until the source is configured. Combine with your runtime's timeout
    /// (`tokio::time::timeout`, `futures_lite::future::or` with a smol timer) as needed.
    ///
    /// # Errors
    /// [`Stopped`] when the connector has stopped.
    pub async fn wait_configured(&self) -> Result<(), Stopped> {
        self.wait_for(|s| s == ConnectionState::Configured).await
    }

    /// Waits until the source's connection has ended for good.
    pub async fn wait_closed(&self) {
        let _ = self.wait_for(ConnectionState::is_ended).await;
    }

    /// Waits until the state is not `state` any more, returning the new state.
    pub async fn wait_change(&self, state: ConnectionState) -> ConnectionState {
        loop {
            let listener = self.0.changed.listen();
            let now = self.state();
            if now != state {
                return now;
            }
            listener.await;
        }
    }

    async fn wait_for(&self, pred: impl Fn(ConnectionState) -> bool) -> Result<(), Stopped> {
        loop {
            let listener = self.0.changed.listen();
            let state = self.state();
            if pred(state) {
                return Ok(());
            }
            if state.is_ended() {
                return Err(Stopped(self.0.name.clone()));
            }
            listener.await;
        }
    }
}

/// Every state, by its code in `SourceShared::state`.
const STATES: [ConnectionState; 8] = [
    ConnectionState::WaitingToReconnect,
    ConnectionState::Refused,
    ConnectionState::Connecting,
    ConnectionState::Authenticating,
    ConnectionState::Attaching,
    ConnectionState::Configured,
    ConnectionState::Closed,
    ConnectionState::Failed,
];

/// The code of `state` in [`STATES`] (one past the table for a state added to the core
/// later: it is then read under the lock).
fn state_code(state: ConnectionState) -> u8 {
    STATES
        .iter()
        .position(|s| *s == state)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(u8::MAX)
}

/// Hands a notification to the connection itself (the desk's way in): the connection's
/// verdict, as the caller sees it.
fn notify_now(conn: &mut Connection, n: Notification) -> Result<(), NotifyError> {
    match conn.notify_encoded(n) {
        Ok(()) => Ok(()),
        Err(NotifyRefused::NotAnObject(_)) => Err(NotifyError::NotAnObject),
        // Room was looked at first, so a refusal means the connection takes no more.
        Err(_) => Err(NotifyError::Closed),
    }
}

/// The connection's own rule for what a notification may be (`Connection::notify_encoded`
/// applies the same), checked where the caller can still be told.
fn check_notification(n: &Notification) -> Result<(), NotifyError> {
    if n.is_object() {
        Ok(())
    } else {
        Err(NotifyError::NotAnObject)
    }
}

#[cfg(test)]
mod tests {
    use super::{STATES, Source, state_code};
    use crate::lane::Bounds;
    use vantiq_proto::ConnectionState;

    #[test]
    fn every_state_reads_back_as_set_without_the_lock() {
        let bounds = Bounds { count: 1, bytes: 1 };
        let source = Source::new("s".to_owned(), 1024, bounds);
        assert_eq!(source.state(), ConnectionState::Connecting);
        for (i, state) in STATES.iter().enumerate() {
            assert_eq!(usize::from(state_code(*state)), i);
            source.set_state(*state, None);
            assert_eq!(source.state(), *state);
            assert_eq!(
                source.is_configured(),
                *state == ConnectionState::Configured
            );
        }
    }
}
