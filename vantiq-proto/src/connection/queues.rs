//! The connection's two queues: what waits for the socket (the outbox), and notifications
//! waiting for a session (the offline queue). Both count their bytes.

use std::collections::VecDeque;

use crate::notification::Notification;
use crate::url::TargetUrl;

/// One action waiting for the driver. Notifications are kept in their frames: a socket
/// that ends first gives them back as they are, and one that takes them takes the frame.
#[derive(Debug)]
pub(super) enum Out {
    Connect(TargetUrl),
    /// A handshake frame (validate, authenticate, connectExtension).
    Frame(String),
    /// A query reply: it belongs to the session it answers.
    Reply(String),
    Notification(Notification),
    Ping([u8; 8]),
    Close {
        code: u16,
        reason: &'static str,
    },
    Abort,
}

impl Out {
    /// Bytes a frame holds in the outbox: its buffer and its slot, so that many small
    /// frames weigh what they take (a ping or an action on a socket weighs nothing: there
    /// are few of them).
    fn bytes(&self) -> usize {
        let held = match self {
            Out::Frame(f) | Out::Reply(f) => f.capacity(),
            Out::Notification(n) => n.held(),
            _ => return 0,
        };
        held + std::mem::size_of::<Out>()
    }

    pub(super) fn needs_write(&self) -> bool {
        matches!(
            self,
            Out::Frame(_) | Out::Reply(_) | Out::Notification(_) | Out::Ping(_)
        )
    }
}

/// What waits for the driver, in order. Invariant kept by the connection: an action that
/// opens, closes or drops a socket is never behind a frame (a socket that ends takes its
/// frames back first), so a driver whose socket cannot write still gets those actions.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    items: VecDeque<Out>,
    bytes: usize,
    writes: usize,
    notifications: usize,
}

impl Outbox {
    pub(super) fn push(&mut self, out: Out) {
        self.bytes += out.bytes();
        self.writes += usize::from(out.needs_write());
        self.notifications += usize::from(matches!(out, Out::Notification(_)));
        self.items.push_back(out);
    }

    /// Puts a ping ahead of the frames: it is small, and its deadline runs from now.
    pub(super) fn push_ping(&mut self, payload: [u8; 8]) {
        self.writes += 1;
        self.items.push_front(Out::Ping(payload));
    }

    /// The next action, unless it is a write and the socket cannot take one.
    pub(super) fn pop(&mut self, writable: bool) -> Option<Out> {
        if !writable && self.items.front().is_some_and(Out::needs_write) {
            return None;
        }
        let out = self.items.pop_front()?;
        self.bytes -= out.bytes();
        self.writes -= usize::from(out.needs_write());
        self.notifications -= usize::from(matches!(out, Out::Notification(_)));
        Some(out)
    }

    /// Bytes of frames and notifications waiting.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Notifications waiting.
    pub(super) fn notifications(&self) -> usize {
        self.notifications
    }

    /// Whether a frame, notification or ping waits.
    pub(super) fn has_writes(&self) -> bool {
        self.writes > 0
    }

    /// Takes every write out of the outbox, giving back the notifications in order; other
    /// frames are dropped (replies and handshake frames belong to the socket that ended),
    /// and the actions on sockets (connect, close, drop) stay.
    pub(super) fn take_notifications(&mut self) -> Vec<Notification> {
        self.take_writes(|_| false)
    }

    /// Takes what belongs to a session that ended on a socket that stays open (the server
    /// asked for a new `connectExtension`): the notifications, given back in order, and the
    /// session's replies, dropped. Handshake frames and pings stay: they are the socket's.
    pub(super) fn take_session_writes(&mut self) -> Vec<Notification> {
        self.take_writes(|o| matches!(o, Out::Frame(_) | Out::Ping(_)))
    }

    /// Takes the notifications back (in order) and drops every other write that `keep`
    /// refuses; actions on sockets always stay.
    fn take_writes(&mut self, keep: impl Fn(&Out) -> bool) -> Vec<Notification> {
        let mut back = Vec::new();
        self.items.retain_mut(|o| match o {
            Out::Notification(_) => {
                if let Out::Notification(n) = std::mem::replace(o, Out::Abort) {
                    back.push(n);
                }
                false
            }
            Out::Frame(_) | Out::Reply(_) | Out::Ping(_) => keep(o),
            Out::Connect(_) | Out::Close { .. } | Out::Abort => true,
        });
        self.bytes = self.items.iter().map(Out::bytes).sum();
        self.writes = self.items.iter().filter(|o| o.needs_write()).count();
        self.notifications = 0;
        back
    }
}

/// Notifications waiting for the next session.
#[derive(Debug, Default)]
pub(super) struct Offline {
    items: VecDeque<Notification>,
    bytes: usize,
}

impl Offline {
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(super) fn push_back(&mut self, n: Notification) {
        self.bytes += held(&n);
        self.items.push_back(n);
    }

    /// Puts notifications that were already accepted back at the front, in their order
    /// (past the limits: they were accepted once).
    pub(super) fn push_front_all(&mut self, ns: Vec<Notification>) {
        for n in ns.into_iter().rev() {
            self.bytes += held(&n);
            self.items.push_front(n);
        }
    }

    pub(super) fn drain(&mut self) -> impl Iterator<Item = Notification> + '_ {
        self.bytes = 0;
        self.items.drain(..)
    }
}

/// Bytes a notification holds in the offline queue: its frame's buffer and its slot.
fn held(n: &Notification) -> usize {
    n.held() + std::mem::size_of::<Notification>()
}
