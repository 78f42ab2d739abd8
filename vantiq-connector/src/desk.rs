//! The short way in: what a handler sends while its own driver polls it goes straight to
//! the connection, with its verdict at once.
//!
//! A handler runs inside its source's task, so most replies and many notifications are
//! sent while the driver is in the middle of polling the very handler that sends them.
//! Through the command queue each of those costs a lock on the way in and out, a wake-up,
//! and (for a reply, which waits for its verdict) a second poll of the handler. Instead, the
//! driver sets its desk (the connection and this turn's budget) for the span of polling its
//! handlers, and a send made there is applied on the spot when that keeps every promise of
//! the queue:
//!
//! * **order:** only when nothing of this source waits in its command queue (a notification
//!   sent earlier from elsewhere, or by the same handler when the connection had no room, is
//!   ahead and stays ahead);
//! * **bounds:** only when the connection would take it from the queue now
//!   ([`Connection::can_notify`], [`Connection::can_reply`]); otherwise the send waits for
//!   room where it is, and the driver, which polls its handlers every turn, lets it try
//!   again after each write (without a wake-up: the driver already runs when the socket
//!   takes bytes, the only thing that makes room);
//! * **fairness:** at most [`BUDGET_BYTES`] per poll of the handlers; past it a send yields,
//!   so that the driver writes what was sent before the handler goes on.
//!
//! Anywhere else (another task, another source's driver, no driver at all) the desk is not
//! set and the queue is used.

use std::cell::{Cell, RefCell};
use std::task::{Context, Poll};

use vantiq_proto::Connection;

use crate::source::Source;

/// Bytes applied straight from the handlers in one poll of them, before a send yields so
/// that the driver writes.
pub(crate) const BUDGET_BYTES: usize = 256 << 10;

/// A driver's connection and what its handlers may still hand it directly in this poll.
pub(crate) struct Desk {
    /// The source whose driver this is (the address of its shared state).
    source: usize,
    conn: RefCell<Connection>,
    /// Bytes that may still be applied directly in this poll of the handlers.
    budget: Cell<usize>,
    /// Something was applied directly since the driver last looked.
    used: Cell<bool>,
    /// A send yielded for the budget since the driver last looked.
    yielded: Cell<bool>,
}

scoped_tls::scoped_thread_local!(static DESK: Desk);

/// What became of an attempt to hand something over directly.
enum Attempt<T, R> {
    /// Applied; the connection's verdict.
    Done(R),
    /// This poll's budget is spent: yield, then try again.
    Spent(T),
    /// The connection has no room: try again in the next poll of the handlers.
    Full(T),
    /// Not here (no desk, another source, something queued ahead, no room): use the queue.
    Queue(T),
}

impl Desk {
    pub(crate) fn new(source: &Source, conn: Connection) -> Self {
        Desk {
            source: source.addr(),
            conn: RefCell::new(conn),
            budget: Cell::new(0),
            used: Cell::new(false),
            yielded: Cell::new(false),
        }
    }

    /// The connection, for its driver (which holds the desk, so no borrow is checked).
    pub(crate) fn conn(&mut self) -> &mut Connection {
        self.conn.get_mut()
    }

    /// Runs `f` (the handlers' poll) with this desk set and a fresh budget; true if anything
    /// was applied directly or a send yielded meanwhile (the driver has work either way).
    pub(crate) fn open<R>(&self, f: impl FnOnce() -> R) -> (R, bool) {
        self.budget.set(BUDGET_BYTES);
        let r = DESK.set(self, f);
        let busy = self.used.replace(false) | self.yielded.replace(false);
        (r, busy)
    }

    /// Applies `op` to the connection if this is `source`'s desk, set now, with nothing of
    /// the source queued and room for `value`.
    fn attempt<T, R>(
        source: &Source,
        value: T,
        bytes: usize,
        room: impl FnOnce(&Connection) -> bool,
        op: impl FnOnce(&mut Connection, T) -> R,
    ) -> Attempt<T, R> {
        if !DESK.is_set() {
            return Attempt::Queue(value);
        }
        DESK.with(|desk| {
            if desk.source != source.addr() || !source.0.commands.is_empty() {
                return Attempt::Queue(value);
            }
            let Ok(mut conn) = desk.conn.try_borrow_mut() else {
                return Attempt::Queue(value);
            };
            // An ended connection has no room ever, and refuses with its own words.
            if !room(&conn) && !conn.state().is_ended() {
                return Attempt::Full(value);
            }
            let budget = desk.budget.get();
            if budget == 0 {
                desk.yielded.set(true);
                return Attempt::Spent(value);
            }
            desk.budget.set(budget.saturating_sub(bytes));
            desk.used.set(true);
            Attempt::Done(op(&mut conn, value))
        })
    }
}

/// Hands `value` to `source`'s connection directly if it may (see the module docs),
/// waiting for the budget or for room as needed; gives `value` back for the queue when it
/// may not.
pub(crate) fn hand<T, R, Room, Op>(
    source: &Source,
    value: T,
    bytes: usize,
    room: Room,
    op: Op,
) -> Hand<'_, T, Room, Op>
where
    Room: Fn(&Connection) -> bool,
    Op: Fn(&mut Connection, T) -> R,
{
    Hand {
        source,
        value: Some(value),
        bytes,
        room,
        op,
    }
}

/// The future of [`hand`]: a plain struct, so that the value is held once (an `async fn`
/// would hold it in its arguments and again in its body, and every handler's future with
/// it).
pub(crate) struct Hand<'a, T, Room, Op> {
    source: &'a Source,
    value: Option<T>,
    bytes: usize,
    room: Room,
    op: Op,
}

impl<T, R, Room, Op> std::future::Future for Hand<'_, T, Room, Op>
where
    T: Unpin,
    Room: Fn(&Connection) -> bool + Unpin,
    Op: Fn(&mut Connection, T) -> R + Unpin,
{
    type Output = Result<R, T>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R, T>> {
        let this = &mut *self;
        let Some(v) = this.value.take() else {
            return Poll::Pending; // not polled again once ready
        };
        match Desk::attempt(this.source, v, this.bytes, &this.room, &this.op) {
            Attempt::Done(r) => Poll::Ready(Ok(r)),
            Attempt::Queue(v) => Poll::Ready(Err(v)),
            Attempt::Spent(v) => {
                this.value = Some(v);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Attempt::Full(v) => {
                this.value = Some(v);
                Poll::Pending
            }
        }
    }
}

/// Like [`hand`] for a caller that cannot wait: a spent budget sends it to the queue.
pub(crate) fn try_hand<T, R>(
    source: &Source,
    value: T,
    bytes: usize,
    room: impl FnOnce(&Connection) -> bool,
    op: impl FnOnce(&mut Connection, T) -> R,
) -> Result<R, T> {
    match Desk::attempt(source, value, bytes, room, op) {
        Attempt::Done(r) => Ok(r),
        Attempt::Queue(v) | Attempt::Spent(v) | Attempt::Full(v) => Err(v),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::pin::pin;
    use std::task::{Context, Poll};
    use std::time::Instant;

    use vantiq_proto::{Connection, ConnectionConfig, Credentials, Secret, TargetUrl};

    use super::{BUDGET_BYTES, Desk, hand, try_hand};
    use crate::lane::Bounds;
    use crate::source::Source;

    fn source(name: &str) -> Source {
        let bounds = Bounds {
            count: 64,
            bytes: 1 << 20,
        };
        Source::new(name.to_owned(), 1 << 10, bounds)
    }

    /// A desk for `source`: its connection is not connected yet, so what it takes waits in
    /// its offline queue, which has room for all the tests send.
    fn desk(source: &Source) -> Desk {
        let url = TargetUrl::parse("ws://localhost:1/api/v1/wsock/websocket").unwrap();
        let config =
            ConnectionConfig::new(source.name(), url, Credentials::Token(Secret::new("t")), 7);
        Desk::new(source, Connection::new(config, Instant::now()))
    }

    /// A send: a number handed to the connection as a notification's worth of bytes.
    fn op(conn: &mut Connection, n: u32) -> (u32, usize) {
        (n, conn.queued_notifications())
    }

    #[test]
    fn only_the_desk_of_the_source_itself_is_used() {
        let (a, b) = (source("a"), source("b"));
        let desk = desk(&a);
        // No desk set: the queue.
        assert_eq!(try_hand(&a, 1, 8, |_| true, op), Err(1));
        let ((mine, theirs), busy) = desk.open(|| {
            (
                try_hand(&a, 2, 8, |_| true, op),
                try_hand(&b, 3, 8, |_| true, op),
            )
        });
        assert_eq!(mine, Ok((2, 0)));
        assert_eq!(theirs, Err(3));
        assert!(busy);
        // Nothing applied: the driver is not told it has work.
        let (_, busy) = desk.open(|| try_hand(&b, 4, 8, |_| true, op));
        assert!(!busy);
    }

    #[test]
    fn what_is_queued_stays_ahead_and_no_room_means_the_queue() {
        let a = source("a");
        let desk = desk(&a);
        let queued = a.try_notify(&serde_json::json!({ "n": 0 }));
        assert!(queued.is_ok(), "{queued:?}");
        let (r, _) = desk.open(|| try_hand(&a, 1, 8, |_| true, op));
        assert_eq!(r, Err(1), "went past a notification queued before it");
        assert!(a.0.commands.try_recv().is_some());
        let (r, busy) = desk.open(|| try_hand(&a, 2, 8, |_| false, op));
        assert_eq!(r, Err(2), "applied although the connection had no room");
        assert!(!busy);
    }

    #[test]
    fn a_spent_budget_yields_once_then_goes_on() {
        let a = source("a");
        let desk = desk(&a);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let step = BUDGET_BYTES / 4;
        // Four sends spend the budget; the fifth yields, and is applied in the next poll of
        // the handlers, with a fresh budget.
        let mut sends = pin!(async {
            let mut got = Vec::new();
            for n in 0..6 {
                got.push(hand(&a, n, step, |_| true, op).await.unwrap().0);
            }
            got
        });
        let (first, busy) = desk.open(|| sends.as_mut().poll(&mut cx));
        assert_eq!(first, Poll::Pending);
        assert!(busy);
        let (second, _) = desk.open(|| sends.as_mut().poll(&mut cx));
        assert_eq!(second, Poll::Ready(vec![0, 1, 2, 3, 4, 5]));
        // Outside any poll of the handlers a send is not applied, and not held up either.
        let mut outside = pin!(hand(&a, 9, step, |_| true, op));
        assert_eq!(outside.as_mut().poll(&mut cx), Poll::Ready(Err(9)));
    }

    #[test]
    fn without_room_a_send_waits_quietly_until_a_later_poll_finds_some() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::task::{Wake, Waker};

        /// Counts wake-ups: waiting for room must not cause any (the driver would spin).
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let a = source("a");
        let desk = desk(&a);
        let room = AtomicBool::new(false);
        let mut send = pin!(hand(&a, 5, 8, |_| room.load(Ordering::SeqCst), op));
        for _ in 0..3 {
            let (r, busy) = desk.open(|| send.as_mut().poll(&mut cx));
            assert_eq!(r, Poll::Pending);
            assert!(
                !busy,
                "a send waiting for room made the driver think it has work"
            );
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        room.store(true, Ordering::SeqCst);
        let (r, busy) = desk.open(|| send.as_mut().poll(&mut cx));
        assert_eq!(r, Poll::Ready(Ok((5, 0))));
        assert!(busy);
    }
}
