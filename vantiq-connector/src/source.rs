//! [`Source`]: a cheap, cloneable handle on one source, usable from any task.

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_channel::{Receiver, Sender};
use event_listener::Event as Signal;
use serde::Serialize;

use crate::lane::{Lane, TrySendError};
use vantiq_proto::{ConnectionState, Json, QueryId, Reply};

/// Capacity of a source's notification channel. Small on purpose: each slot is allocated up
/// front for every source, and the driver drains the channel on every turn.
pub(crate) const NOTIFY_CHANNEL: usize = 64;
/// Capacity of a source's reply channel.
pub(crate) const REPLY_CHANNEL: usize = 32;

/// A reply on its way to the driver.
#[derive(Debug)]
pub(crate) struct ReplyCmd {
    pub(crate) id: QueryId,
    pub(crate) reply: Reply,
}

/// A query handle dropped unfinished after sending `parts` replies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Abandon {
    pub(crate) id: QueryId,
    pub(crate) parts: u64,
}

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
    state: AtomicU8,
    session: AtomicU64,
    config: Mutex<Option<Json>>,
    changed: Signal,
    pub(crate) notifications: Lane<Json>,
    pub(crate) replies: Lane<ReplyCmd>,
    pub(crate) abandon_tx: Sender<Abandon>,
    pub(crate) chunk_bytes: usize,
}

/// The receiving ends, taken by the driver when the set runs.
pub(crate) struct SourceChannels {
    pub(crate) abandon_rx: Receiver<Abandon>,
}

fn state_code(s: ConnectionState) -> u8 {
    match s {
        ConnectionState::WaitingToReconnect => 0,
        ConnectionState::Connecting => 1,
        ConnectionState::Authenticating => 2,
        ConnectionState::Attaching => 3,
        ConnectionState::Configured => 4,
        ConnectionState::Closed => 5,
    }
}

fn code_state(c: u8) -> ConnectionState {
    match c {
        0 => ConnectionState::WaitingToReconnect,
        1 => ConnectionState::Connecting,
        2 => ConnectionState::Authenticating,
        3 => ConnectionState::Attaching,
        4 => ConnectionState::Configured,
        _ => ConnectionState::Closed,
    }
}

/// A handle on one source of a connector set: its name and state, and the way to send it
/// notifications. Cheap to clone; usable from any task or thread, before or while the set
/// runs.
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
    pub(crate) fn new(name: String, chunk_bytes: usize) -> (Source, SourceChannels) {
        let (abandon_tx, abandon_rx) = async_channel::unbounded();
        let shared = SourceShared {
            name,
            state: AtomicU8::new(state_code(ConnectionState::Connecting)),
            session: AtomicU64::new(0),
            config: Mutex::new(None),
            changed: Signal::new(),
            notifications: Lane::new(NOTIFY_CHANNEL),
            replies: Lane::new(REPLY_CHANNEL),
            abandon_tx,
            chunk_bytes,
        };
        (Source(Arc::new(shared)), SourceChannels { abandon_rx })
    }

    /// The source name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The connection state.
    #[must_use]
    pub fn state(&self) -> ConnectionState {
        code_state(self.0.state.load(Ordering::Acquire))
    }

    /// True while the source is configured (notifications go straight out).
    #[must_use]
    pub fn is_configured(&self) -> bool {
        self.state() == ConnectionState::Configured
    }

    /// The configuration document of the current (or last) session.
    #[must_use]
    pub fn config(&self) -> Option<Json> {
        match self.0.config.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The current session number (0 when not configured).
    pub(crate) fn session(&self) -> u64 {
        self.0.session.load(Ordering::Acquire)
    }

    pub(crate) fn set_state(&self, state: ConnectionState, session: u64, config: Option<Json>) {
        if let Some(config) = config {
            match self.0.config.lock() {
                Ok(mut g) => *g = Some(config),
                Err(poisoned) => *poisoned.into_inner() = Some(config),
            }
        }
        self.0.session.store(session, Ordering::Release);
        self.0.state.store(state_code(state), Ordering::Release);
        self.0.changed.notify(usize::MAX);
    }

    /// Sends a notification: any value that serializes to a JSON object. While the source is
    /// disconnected, notifications wait in a bounded queue and go out in order after the next
    /// configuration; when that queue is full this waits.
    ///
    /// # Errors
    /// The value is not an object or cannot be serialized, or the connector has stopped.
    pub async fn notify<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), NotifyError> {
        let json = Json::from_serialize(value)?;
        self.notify_json(json).await
    }

    /// Like [`Source::notify`] for JSON text you already have.
    ///
    /// # Errors
    /// As [`Source::notify`].
    pub async fn notify_json(&self, json: Json) -> Result<(), NotifyError> {
        if !json.is_object() {
            return Err(NotifyError::NotAnObject);
        }
        self.0
            .notifications
            .send(json)
            .await
            .map_err(|_| NotifyError::Closed)
    }

    /// Sends a notification if that can be done without waiting.
    ///
    /// # Errors
    /// [`TryNotifyError::Full`] when it would have to wait; otherwise as [`Source::notify`].
    pub fn try_notify<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), TryNotifyError> {
        let json = Json::from_serialize(value).map_err(NotifyError::from)?;
        if !json.is_object() {
            return Err(NotifyError::NotAnObject.into());
        }
        self.0.notifications.try_send(json).map_err(|e| match e {
            TrySendError::Full(j) => TryNotifyError::Full(j),
            TrySendError::Closed(_) => NotifyError::Closed.into(),
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
        let _ = self.wait_for(|s| s == ConnectionState::Closed).await;
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
            if state == ConnectionState::Closed {
                return Err(Stopped(self.0.name.clone()));
            }
            listener.await;
        }
    }
}
