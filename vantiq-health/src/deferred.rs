//! Automatic mode off the caller's thread: [`Health::report_source_state`] records a source's
//! state and returns at once; a worker thread opens or closes the TCP probe (a bind, a
//! thread start or join, a loopback connect) afterwards.
//!
//! [`Health::report_source_state`]: crate::Health::report_source_state

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crate::Inner;
use crate::sync::lock;

/// Requests made and applied, counted.
#[derive(Default)]
struct Progress {
    requested: u64,
    applied: u64,
    /// No worker runs (or one was asked to stop): waiters give up.
    stop: bool,
    /// Stopped with the probes ([`Deferred::stop`]): no worker starts until
    /// [`Deferred::resume`].
    shut: bool,
    /// Which worker may run: each stop moves it on. A worker compares it with the value it
    /// was started under rather than reading `stop`, which the next `start` clears: a worker
    /// told to stop and not yet scheduled must not miss it because another started since.
    epoch: u64,
}

/// Shared between the [`Health`](crate::Health) handles and the worker.
#[derive(Default)]
pub(crate) struct Deferred {
    progress: Mutex<Progress>,
    changed: Condvar,
    worker: Mutex<Option<(ThreadId, JoinHandle<()>)>>,
}

/// Whether a worker runs after [`Deferred::start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Worker {
    /// It runs: requests are applied by it.
    Running,
    /// Automatic mode stopped with the probes: requests are not applied.
    Shut,
    /// It could not be started: the caller applies requests itself.
    Failed,
}

impl Deferred {
    /// Starts the worker if it does not run yet (and automatic mode was not stopped).
    pub(crate) fn start(self: &Arc<Self>, inner: Weak<Inner>) -> Worker {
        let mut worker = lock(&self.worker);
        if worker.is_some() {
            return Worker::Running;
        }
        let epoch = {
            let mut p = lock(&self.progress);
            if p.shut {
                return Worker::Shut;
            }
            p.stop = false;
            p.epoch
        };
        let me = self.clone();
        match std::thread::Builder::new()
            .name("vantiq-health-auto".to_owned())
            .spawn(move || me.run(&inner, epoch))
        {
            Ok(handle) => {
                *worker = Some((handle.thread().id(), handle));
                Worker::Running
            }
            Err(e) => {
                tracing::warn!(error = %e, "automatic health: could not start its thread; applied inline instead");
                Worker::Failed
            }
        }
    }

    /// Lets a worker start again after [`Deferred::stop`] (the probes are being opened again).
    pub(crate) fn resume(&self) {
        lock(&self.progress).shut = false;
    }

    /// Whether a worker runs (otherwise requests are applied by the caller).
    #[cfg(test)]
    pub(crate) fn running(&self) -> bool {
        lock(&self.worker).is_some()
    }

    /// Asks the worker to apply the current state.
    pub(crate) fn request(&self) {
        lock(&self.progress).requested += 1;
        self.changed.notify_all();
    }

    /// Waits until every request made so far is applied, at most `timeout`. True if so.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut p = lock(&self.progress);
        let target = p.requested;
        while p.applied < target && !p.stop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            p = match self.changed.wait_timeout(p, left) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        p.applied >= target
    }

    /// Stops the worker and waits for it (unless called from the worker itself); none starts
    /// again until [`Deferred::resume`].
    pub(crate) fn stop(&self) {
        {
            let mut p = lock(&self.progress);
            p.stop = true;
            p.shut = true;
            p.epoch = p.epoch.wrapping_add(1);
        }
        self.changed.notify_all();
        let worker = lock(&self.worker).take();
        if let Some((id, handle)) = worker
            && id != std::thread::current().id()
        {
            let _ = handle.join();
        }
    }

    fn run(&self, inner: &Weak<Inner>, epoch: u64) {
        loop {
            let target = {
                let mut p = lock(&self.progress);
                while p.applied >= p.requested && p.epoch == epoch {
                    p = match self.changed.wait(p) {
                        Ok(g) => g,
                        Err(poisoned) => poisoned.into_inner(),
                    };
                }
                if p.epoch != epoch {
                    return;
                }
                p.requested
            };
            let Some(inner) = inner.upgrade() else {
                return;
            };
            inner.apply_auto_now();
            drop(inner);
            lock(&self.progress).applied = target;
            self.changed.notify_all();
        }
    }
}
