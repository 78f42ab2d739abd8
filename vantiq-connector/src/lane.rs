//! A bounded queue from any number of handles to one driver, for notifications and query
//! replies.
//!
//! Cheaper than a general channel where it matters: a send is a short critical section and a
//! wake-up of the one receiver, a receive wakes senders only when one waits for room, and
//! an idle queue holds no allocation (the buffer grows on first use), which counts with
//! thousands of idle sources.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use event_listener::Event;
use futures_util::task::AtomicWaker;

/// Why [`Lane::try_send`] gave the value back.
#[derive(Debug)]
pub(crate) enum TrySendError<T> {
    /// The queue holds `capacity` values.
    Full(T),
    /// The receiver closed the queue.
    Closed(T),
}

pub(crate) struct Lane<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Senders waiting for room.
    room: Event,
    /// The receiver, waiting for a value.
    receiver: AtomicWaker,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> Lane<T> {
    /// An empty, open queue of at most `capacity` values (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        Lane {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            capacity: capacity.max(1),
            room: Event::new(),
            receiver: AtomicWaker::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // The critical sections cannot panic half-way; a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `value` if there is room.
    pub(crate) fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        {
            let mut s = self.lock();
            if s.closed {
                return Err(TrySendError::Closed(value));
            }
            if s.items.len() >= self.capacity {
                return Err(TrySendError::Full(value));
            }
            s.items.push_back(value);
        }
        self.receiver.wake();
        Ok(())
    }

    /// Queues `value`, waiting for room; gives it back if the queue is closed.
    pub(crate) async fn send(&self, mut value: T) -> Result<(), T> {
        loop {
            match self.try_send(value) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(v)) => return Err(v),
                Err(TrySendError::Full(v)) => value = v,
            }
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

    /// The oldest value; `Ready(None)` once the queue is closed and empty.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(next) = self.take() {
            return Poll::Ready(next);
        }
        self.receiver.register(cx.waker());
        // Look again: a value sent before the registration woke nobody.
        match self.take() {
            Some(next) => Poll::Ready(next),
            None => Poll::Pending,
        }
    }

    /// The oldest value, if there is one now.
    pub(crate) fn try_recv(&self) -> Option<T> {
        self.take().flatten()
    }

    /// `Some(Some(v))`: a value; `Some(None)`: closed and empty; `None`: empty and open.
    fn take(&self) -> Option<Option<T>> {
        let next = {
            let mut s = self.lock();
            match s.items.pop_front() {
                Some(v) => Some(Some(v)),
                None if s.closed => Some(None),
                None => None,
            }
        };
        if matches!(next, Some(Some(_))) {
            // Cheap when no sender waits.
            self.room.notify_additional(1);
        }
        next
    }

    /// Refuses further values (waiting senders get theirs back); queued ones stay receivable.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.room.notify(usize::MAX);
        self.receiver.wake();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::sync::Arc;
    use std::task::{Context, Poll};

    use super::{Lane, TrySendError};

    #[test]
    fn bounded_fifo_then_closed() {
        let lane = Lane::new(2);
        lane.try_send(1).unwrap();
        lane.try_send(2).unwrap();
        assert!(matches!(lane.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(lane.try_recv(), Some(1));
        lane.try_send(3).unwrap();
        lane.close();
        assert!(matches!(lane.try_send(4), Err(TrySendError::Closed(4))));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert_eq!(lane.poll_recv(&mut cx), Poll::Ready(Some(2)));
        assert_eq!(lane.poll_recv(&mut cx), Poll::Ready(Some(3)));
        assert_eq!(lane.poll_recv(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn senders_wait_for_room_and_every_value_arrives_in_order() {
        let lane = Arc::new(Lane::new(3));
        let senders: Vec<_> = (0..4u64)
            .map(|t| {
                let lane = lane.clone();
                std::thread::spawn(move || {
                    futures_executor_block_on(async {
                        for i in 0..1_000u64 {
                            lane.send(t * 1_000_000 + i).await.unwrap();
                        }
                    });
                })
            })
            .collect();
        let mut last = [None::<u64>; 4];
        let mut got = 0;
        futures_executor_block_on(std::future::poll_fn(|cx| {
            while let Poll::Ready(v) = lane.poll_recv(cx) {
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
        let lane = Lane::new(1);
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
        let lane = Lane::new(1);
        lane.try_send(0).unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut send = std::pin::pin!(lane.send(1));
        assert_eq!(send.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(lane.try_recv(), Some(0));
        assert_eq!(send.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
        assert_eq!(lane.try_recv(), Some(1));
    }

    /// A minimal `block_on` on the current thread (parks until woken).
    fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
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
