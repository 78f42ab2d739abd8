//! A queue from any number of handles to one driver, bounded by count and by bytes: the one
//! ordered command queue of a source (notifications, query replies, abandoned queries).
//!
//! Cheaper than a general channel where it matters: a send is a short critical section and a
//! wake-up of the one receiver, a receive wakes senders only when one waits for room, and
//! an idle queue holds no allocation (the buffer grows on first use), which counts with
//! thousands of idle sources.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use event_listener::Event;
use futures_util::task::AtomicWaker;

/// A value that knows its size in bytes.
pub(crate) trait Weigh {
    /// Bytes this value holds.
    fn weight(&self) -> usize;
}

/// Why [`Lane::try_send`] gave the value back.
#[derive(Debug)]
pub(crate) enum TrySendError<T> {
    /// The queue is at its count or byte bound.
    Full(T),
    /// The receiver closed the queue.
    Closed(T),
}

/// The bounds of a lane: a queue that is not empty takes a value only if it stays within
/// both (so it holds at most `bytes` plus one value).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) count: usize,
    pub(crate) bytes: usize,
}

pub(crate) struct Lane<T> {
    state: Mutex<State<T>>,
    /// Values queued, plus one once closed, as of the last change (written under the lock):
    /// the receiver finds an empty queue without taking the lock.
    ready: AtomicUsize,
    /// Senders waiting for room.
    room: Event,
    /// How many senders wait for room: a receive notifies `room` only when one does.
    waiting: AtomicUsize,
    /// The receiver, waiting for a value.
    receiver: AtomicWaker,
}

struct State<T> {
    items: VecDeque<T>,
    bytes: usize,
    bounds: Bounds,
    closed: bool,
}

impl<T: Weigh> Lane<T> {
    /// An empty, open queue.
    pub(crate) fn new(bounds: Bounds) -> Self {
        Lane {
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                bounds: Bounds {
                    count: bounds.count.max(1),
                    bytes: bounds.bytes,
                },
                closed: false,
            }),
            ready: AtomicUsize::new(0),
            room: Event::new(),
            waiting: AtomicUsize::new(0),
            receiver: AtomicWaker::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // The critical sections cannot panic half-way; a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes what the receiver's lock-free look sees; called under the lock after every
    /// change.
    fn publish(&self, s: &State<T>) {
        self.ready
            .store(s.items.len() + usize::from(s.closed), Ordering::Release);
    }

    /// Nothing is queued and the queue is open, as of the last change (no lock taken).
    pub(crate) fn is_empty(&self) -> bool {
        self.ready.load(Ordering::Acquire) == 0
    }

    /// Queues `value` if there is room.
    pub(crate) fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let w = value.weight();
        {
            let mut s = self.lock();
            if s.closed {
                return Err(TrySendError::Closed(value));
            }
            let full = s.items.len() >= s.bounds.count
                || (!s.items.is_empty() && s.bytes + w > s.bounds.bytes);
            if full {
                return Err(TrySendError::Full(value));
            }
            s.bytes += w;
            s.items.push_back(value);
            self.publish(&s);
        }
        self.receiver.wake();
        Ok(())
    }

    /// Queues `value` whatever the bounds: for what must never wait nor be lost (a query
    /// dropped unanswered). Gives it back if the queue is closed.
    pub(crate) fn push_unbounded(&self, value: T) -> Result<(), T> {
        {
            let mut s = self.lock();
            if s.closed {
                return Err(value);
            }
            s.bytes += value.weight();
            s.items.push_back(value);
            self.publish(&s);
        }
        self.receiver.wake();
        Ok(())
    }

    /// Queues `value`, waiting for room; gives it back if the queue is closed.
    pub(crate) async fn send(&self, mut value: T) -> Result<(), T> {
        match self.try_send(value) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(v)) => return Err(v),
            Err(TrySendError::Full(v)) => value = v,
        }
        // Counted before listening and looking again, so that a receive that makes room
        // after that look knows to notify.
        let _waiting = Waiting::new(&self.waiting);
        loop {
            // Listen, then look again: room made in between is not missed.
            let listener = self.room.listen();
            match self.try_send(value) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(v)) => return Err(v),
                Err(TrySendError::Full(v)) => value = v,
            }
            listener.await;
        }
    }

    /// The oldest value if `accept` takes it; `Ready(None)` once the queue is closed and
    /// empty. `Pending` (without registering for a wake-up) when `accept` refuses the oldest:
    /// the caller looks again once it can take more.
    pub(crate) fn poll_recv_if(
        &self,
        cx: &mut Context<'_>,
        accept: impl Fn(&T) -> bool,
    ) -> Poll<Option<T>> {
        match self.take_if(&accept) {
            Taken::Value(v) => return Poll::Ready(Some(v)),
            Taken::Closed => return Poll::Ready(None),
            Taken::Refused => return Poll::Pending,
            Taken::Empty => {}
        }
        self.receiver.register(cx.waker());
        // Look again: a value sent before the registration woke nobody.
        match self.take_if(&accept) {
            Taken::Value(v) => Poll::Ready(Some(v)),
            Taken::Closed => Poll::Ready(None),
            Taken::Refused | Taken::Empty => Poll::Pending,
        }
    }

    /// The oldest value, if there is one now.
    pub(crate) fn try_recv(&self) -> Option<T> {
        match self.take_if(&|_| true) {
            Taken::Value(v) => Some(v),
            _ => None,
        }
    }

    fn take_if(&self, accept: &impl Fn(&T) -> bool) -> Taken<T> {
        if self.ready.load(Ordering::Acquire) == 0 {
            return Taken::Empty;
        }
        let taken = {
            let mut s = self.lock();
            match s.items.front() {
                Some(v) if accept(v) => match s.items.pop_front() {
                    Some(v) => {
                        s.bytes -= v.weight();
                        self.publish(&s);
                        Taken::Value(v)
                    }
                    None => Taken::Empty,
                },
                Some(_) => Taken::Refused,
                None if s.closed => Taken::Closed,
                None => Taken::Empty,
            }
        };
        if matches!(taken, Taken::Value(_)) && self.waiting.load(Ordering::Acquire) > 0 {
            self.room.notify_additional(1);
        }
        taken
    }

    /// Refuses further values (waiting senders get theirs back); queued ones stay receivable.
    pub(crate) fn close(&self) {
        {
            let mut s = self.lock();
            s.closed = true;
            self.publish(&s);
        }
        self.room.notify(usize::MAX);
        self.receiver.wake();
    }

    /// Changes the bounds (for values sent from now on).
    pub(crate) fn set_bounds(&self, bounds: Bounds) {
        self.lock().bounds = Bounds {
            count: bounds.count.max(1),
            bytes: bounds.bytes,
        };
        self.room.notify(usize::MAX);
    }

    /// Values and bytes queued now.
    #[cfg(test)]
    pub(crate) fn len_bytes(&self) -> (usize, usize) {
        let s = self.lock();
        (s.items.len(), s.bytes)
    }
}

/// A sender waiting for room, counted while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Taken<T> {
    Value(T),
    Refused,
    Empty,
    Closed,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::sync::Arc;
    use std::task::{Context, Poll};

    use super::{Bounds, Lane, TrySendError, Weigh};

    impl Weigh for u64 {
        fn weight(&self) -> usize {
            8
        }
    }

    impl Weigh for String {
        fn weight(&self) -> usize {
            self.len()
        }
    }

    fn lane<T: Weigh>(count: usize) -> Lane<T> {
        Lane::new(Bounds {
            count,
            bytes: usize::MAX,
        })
    }

    fn recv<T: Weigh>(lane: &Lane<T>) -> Poll<Option<T>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        lane.poll_recv_if(&mut cx, |_| true)
    }

    #[test]
    fn bounded_fifo_then_closed() {
        let lane = lane::<u64>(2);
        lane.try_send(1).unwrap();
        lane.try_send(2).unwrap();
        assert!(matches!(lane.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(lane.try_recv(), Some(1));
        lane.try_send(3).unwrap();
        lane.close();
        assert!(matches!(lane.try_send(4), Err(TrySendError::Closed(4))));
        assert_eq!(recv(&lane), Poll::Ready(Some(2)));
        assert_eq!(recv(&lane), Poll::Ready(Some(3)));
        assert_eq!(recv(&lane), Poll::Ready(None));
    }

    #[test]
    fn bytes_bound_admits_one_value_into_an_empty_queue() {
        let lane = Lane::new(Bounds {
            count: 100,
            bytes: 10,
        });
        // Larger than the whole budget, but the queue is empty: taken, or nothing that size
        // could ever be sent.
        lane.try_send("x".repeat(50)).unwrap();
        assert!(matches!(
            lane.try_send("y".to_owned()),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(lane.try_recv().map(|s| s.len()), Some(50));
        lane.try_send("a".repeat(6)).unwrap();
        lane.try_send("b".repeat(4)).unwrap();
        assert_eq!(lane.len_bytes(), (2, 10));
        assert!(matches!(
            lane.try_send("c".to_owned()),
            Err(TrySendError::Full(_))
        ));
        // What must not wait goes in past the bounds, in order.
        lane.push_unbounded("d".to_owned()).unwrap();
        assert_eq!(lane.len_bytes(), (3, 11));
        let order: Vec<String> = std::iter::from_fn(|| lane.try_recv()).collect();
        assert_eq!(order, ["aaaaaa", "bbbb", "d"]);
        lane.close();
        assert_eq!(lane.push_unbounded("e".to_owned()), Err("e".to_owned()));
    }

    #[test]
    fn a_refused_head_holds_back_what_follows() {
        let lane = lane::<u64>(4);
        for v in [1, 2, 3] {
            lane.try_send(v).unwrap();
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert_eq!(lane.poll_recv_if(&mut cx, |v| *v != 1), Poll::Pending);
        assert_eq!(lane.poll_recv_if(&mut cx, |_| true), Poll::Ready(Some(1)));
        assert_eq!(
            lane.poll_recv_if(&mut cx, |v| *v == 2),
            Poll::Ready(Some(2))
        );
    }

    #[test]
    fn senders_wait_for_room_and_every_value_arrives_in_order() {
        let lane = Arc::new(lane::<u64>(3));
        let senders: Vec<_> = (0..4u64)
            .map(|t| {
                let lane = lane.clone();
                std::thread::spawn(move || {
                    block_on(async {
                        for i in 0..1_000u64 {
                            lane.send(t * 1_000_000 + i).await.unwrap();
                        }
                    });
                })
            })
            .collect();
        let mut last = [None::<u64>; 4];
        let mut got = 0;
        block_on(std::future::poll_fn(|cx| {
            while let Poll::Ready(v) = lane.poll_recv_if(cx, |_| true) {
                let v = v.unwrap();
                let t = usize::try_from(v / 1_000_000).unwrap();
                let i = v % 1_000_000;
                assert_eq!(last[t].map_or(0, |l| l + 1), i, "sender {t} out of order");
                last[t] = Some(i);
                got += 1;
                if got == 4_000 {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        }));
        for s in senders {
            s.join().unwrap();
        }
    }

    #[test]
    fn close_releases_a_waiting_sender() {
        let lane = lane::<u64>(1);
        lane.try_send(0).unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut send = std::pin::pin!(lane.send(1));
        // Full: the sender waits for room.
        assert_eq!(send.as_mut().poll(&mut cx), Poll::Pending);
        lane.close();
        assert_eq!(send.as_mut().poll(&mut cx), Poll::Ready(Err(1)));
        assert_eq!(lane.try_recv(), Some(0));
    }

    #[test]
    fn a_waiting_sender_gets_the_room_a_receive_makes() {
        let lane = lane::<u64>(1);
        lane.try_send(0).unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut send = std::pin::pin!(lane.send(1));
        assert_eq!(send.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(lane.try_recv(), Some(0));
        assert_eq!(send.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
        assert_eq!(lane.try_recv(), Some(1));
    }

    /// A minimal `block_on` on the current thread (parks until woken).
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        use std::task::{Wake, Waker};
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }
}
