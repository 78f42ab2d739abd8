//! Small synchronisation helpers that never panic.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Locks `m`, recovering the guard if another thread panicked while holding it (the state
/// behind every mutex of this crate stays consistent across a panic).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A stop flag that a thread can also wait on (for pauses that must end at once on stop).
#[derive(Debug, Default)]
pub(crate) struct StopSignal {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl StopSignal {
    /// Raises the flag and wakes every waiter.
    pub(crate) fn stop(&self) {
        *lock(&self.stopped) = true;
        self.cv.notify_all();
    }

    /// Whether the flag is raised.
    pub(crate) fn is_stopped(&self) -> bool {
        *lock(&self.stopped)
    }

    /// Waits until the flag is raised or `timeout` has passed; returns whether it is raised.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let guard = lock(&self.stopped);
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, timeout, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner);
        *guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn wait_ends_on_stop() {
        let signal = Arc::new(StopSignal::default());
        assert!(!signal.is_stopped());
        assert!(!signal.wait(Duration::from_millis(1)));
        let s2 = Arc::clone(&signal);
        let start = Instant::now();
        let t = std::thread::spawn(move || s2.wait(Duration::from_secs(60)));
        signal.stop();
        assert!(t.join().unwrap());
        assert!(start.elapsed() < Duration::from_secs(30));
        assert!(signal.is_stopped());
    }

    #[test]
    fn lock_recovers_from_poison() {
        let m = Arc::new(Mutex::new(1));
        let m2 = Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
