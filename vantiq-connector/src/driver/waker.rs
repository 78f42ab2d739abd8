//! The waker a driver polls its parts with when [`Runtime::ABSORB_SELF_WAKES`] is set.
//!
//! A handler runs inside its source's task, so when it sends a reply or a notification the
//! command queue wakes that very task; on a multi-threaded executor (tokio's, or the smol
//! crate's) a task woken while it runs is queued again and a parked worker is woken for it:
//! a futex call, a cross-CPU wake-up and a spurious poll per message. While the driver polls, wakes are only noted (the
//! driver runs another round instead of returning `Pending`); otherwise they go to the task's
//! waker.
//!
//! [`Runtime::ABSORB_SELF_WAKES`]: crate::Runtime::ABSORB_SELF_WAKES

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Rounds one poll may run when woken during its own poll, before it yields.
const ROUNDS: usize = 4;

#[derive(Default)]
struct Inner {
    polling: AtomicBool,
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Inner {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// Absorbs the wakes a task causes itself while it polls.
pub(super) struct SelfWake {
    inner: Arc<Inner>,
    waker: Waker,
}

impl SelfWake {
    pub(super) fn new() -> Self {
        let inner = Arc::new(Inner::default());
        let waker = Waker::from(inner.clone());
        SelfWake { inner, waker }
    }

    /// Polls `f` with the absorbing waker, again while it woke itself (up to a few rounds).
    pub(super) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut f: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.inner.task.register(cx.waker());
        let mut own = Context::from_waker(&self.waker);
        for _ in 0..ROUNDS {
            self.inner.polling.store(true, Ordering::SeqCst);
            self.inner.woken.store(false, Ordering::SeqCst);
            let r = f(&mut own);
            self.inner.polling.store(false, Ordering::SeqCst);
            match r {
                Poll::Pending if self.inner.woken.swap(false, Ordering::SeqCst) => {}
                r => return r,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
