//! What handles send their source's driver, in one ordered queue, and how a query's handle
//! learns the connection's verdict on each reply.
//!
//! Order is what makes this simple: a query's replies and its abandonment travel the same
//! queue, so an abandonment is processed after every reply sent before it, and the
//! connection itself decides whether the query still needs an answer.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use vantiq_proto::{Json, Notification, QueryError, QueryId, Reply, ReplyError};

use crate::lane::Weigh;

/// One command for the driver.
pub(crate) enum Command {
    /// A notification in its frame (already known to be an object).
    Notify(Notification),
    /// A reply; the verdict goes back through `link`, tagged with `seq`.
    Reply {
        id: QueryId,
        reply: Reply,
        link: std::sync::Arc<QueryLink>,
        seq: u32,
    },
    /// A query that will get no more replies from the application: answer it with `error`
    /// unless it is finished.
    Abandon { id: QueryId, error: QueryError },
}

impl Command {
    /// Bytes a reply holds, for the queue's bounds.
    pub(crate) fn reply_weight(reply: &Reply) -> usize {
        match reply {
            Reply::Partial(rows) | Reply::Complete(rows) => rows.len(),
            Reply::Empty | Reply::Error(_) => 64,
        }
    }
}

impl Weigh for Command {
    fn weight(&self) -> usize {
        match self {
            Command::Notify(n) => n.held(),
            Command::Reply { reply, .. } => Command::reply_weight(reply),
            Command::Abandon { .. } => 64,
        }
    }
}

/// The query handler that received the query still runs (its `Query` may be inside it).
const HANDLER_RUNNING: u8 = 0;
/// The `Query` was dropped unfinished while its handler ran: the driver answers it when the
/// handler ends, with the handler's error if it failed.
const DROPPED_IN_HANDLER: u8 = 1;
/// The handler has ended; a `Query` dropped from now on answers for itself.
const HANDLER_DONE: u8 = 2;

/// Shared between a [`Query`](crate::Query) and the driver: who answers an abandoned query,
/// and the verdict on the latest reply.
pub(crate) struct QueryLink {
    /// The query's identity within its connection.
    pub(crate) id: QueryId,
    /// Its WITH parameters.
    pub(crate) params: Json,
    /// The server's reply address.
    pub(crate) reply_address: String,
    owner: AtomicU8,
    verdict: Mutex<Option<(u32, Result<(), ReplyError>)>>,
    /// The `seq` of the verdict in `verdict` (0: none yet; replies count from 1), so that
    /// looking for a verdict not given yet takes no lock.
    given: AtomicU32,
    waker: AtomicWaker,
}

impl QueryLink {
    pub(crate) fn new(id: QueryId, params: Json, reply_address: String) -> Self {
        QueryLink {
            id,
            params,
            reply_address,
            owner: AtomicU8::new(HANDLER_RUNNING),
            verdict: Mutex::new(None),
            given: AtomicU32::new(0),
            waker: AtomicWaker::new(),
        }
    }

    /// The `Query` is dropped unfinished. True when the handler still runs and will have the
    /// query answered when it ends; false when the caller must send the abandonment.
    pub(crate) fn dropped_in_handler(&self) -> bool {
        self.owner
            .compare_exchange(
                HANDLER_RUNNING,
                DROPPED_IN_HANDLER,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// The handler ended. True when the `Query` was dropped unfinished inside it, so the
    /// driver must send the abandonment.
    pub(crate) fn handler_done(&self) -> bool {
        self.owner.swap(HANDLER_DONE, Ordering::AcqRel) == DROPPED_IN_HANDLER
    }

    /// The driver's verdict on reply `seq`.
    pub(crate) fn set_verdict(&self, seq: u32, verdict: Result<(), ReplyError>) {
        *self
            .verdict
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((seq, verdict));
        self.given.store(seq, Ordering::Release);
        self.waker.wake();
    }

    /// Ready with the verdict on reply `seq` once the driver has given it.
    pub(crate) fn poll_verdict(
        &self,
        seq: u32,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ReplyError>> {
        if let Some(v) = self.take_verdict(seq) {
            return Poll::Ready(v);
        }
        self.waker.register(cx.waker());
        match self.take_verdict(seq) {
            Some(v) => Poll::Ready(v),
            None => Poll::Pending,
        }
    }

    fn take_verdict(&self, seq: u32) -> Option<Result<(), ReplyError>> {
        if self.given.load(Ordering::Acquire) != seq {
            return None;
        }
        let mut slot = self
            .verdict
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match slot.as_ref() {
            Some((s, _)) if *s == seq => slot.take().map(|(_, v)| v),
            _ => None,
        }
    }
}
