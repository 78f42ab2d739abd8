//! Where work runs: a [`Lane`] admits operations and runs them on tasks of their own, so a
//! long query never holds up the connector's message handling.
//!
//! * Synchronous processing (the default): one operation at a time, in arrival order;
//!   queries and publishes share one lane, so an `INSERT` published before a `SELECT` is
//!   seen by it. Admission waits for the previous operation to finish, which holds back the
//!   source's message queue and, beyond it, the socket (back-pressure), as the Java
//!   connector's single thread does.
//! * Asynchronous processing: up to `maxActiveTasks` operations at once and `maxQueuedTasks`
//!   waiting (one lane for queries, one for publishes, as the Java connector's two thread
//!   pools). Admission never waits: when every slot is taken it is refused at once.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Admission was refused: every active and queued slot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the queue of tasks is full")]
pub struct Full;

/// A lane of work.
#[derive(Debug)]
pub struct Lane {
    active: Arc<Semaphore>,
    /// Operations admitted and not finished (asynchronous lanes).
    admitted: Arc<AtomicUsize>,
    /// `maxActiveTasks + maxQueuedTasks`; `None` for a synchronous lane.
    capacity: Option<usize>,
}

/// An admitted operation, not started yet.
#[derive(Debug)]
#[must_use = "an admitted operation holds its slot until it is run"]
pub struct Ticket {
    kind: TicketKind,
}

#[derive(Debug)]
enum TicketKind {
    /// Synchronous: the lane's only permit, already held.
    Turn(OwnedSemaphorePermit),
    /// Asynchronous: a slot, and the semaphore to wait on for a turn.
    Slot(SlotGuard, Arc<Semaphore>),
}

/// Gives the slot back however the operation ends.
#[derive(Debug)]
struct SlotGuard(Arc<AtomicUsize>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Lane {
    /// One operation at a time, in order.
    #[must_use]
    pub fn synchronous() -> Self {
        Lane {
            active: Arc::new(Semaphore::new(1)),
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: None,
        }
    }

    /// `max_active` at once, `max_queued` waiting, the rest refused.
    #[must_use]
    pub fn asynchronous(max_active: usize, max_queued: usize) -> Self {
        let max_active = max_active.clamp(1, Semaphore::MAX_PERMITS);
        Lane {
            active: Arc::new(Semaphore::new(max_active)),
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: Some(max_active.saturating_add(max_queued)),
        }
    }

    /// Admits one operation: waits for its turn on a synchronous lane, takes a slot or is
    /// refused on an asynchronous one.
    ///
    /// # Errors
    /// [`Full`] on an asynchronous lane with every slot taken.
    pub async fn admit(&self) -> Result<Ticket, Full> {
        match self.capacity {
            None => {
                let permit = self
                    .active
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Full)?;
                Ok(Ticket {
                    kind: TicketKind::Turn(permit),
                })
            }
            Some(cap) => {
                let taken = self.admitted.fetch_add(1, Ordering::AcqRel);
                let guard = SlotGuard(self.admitted.clone());
                if taken >= cap {
                    return Err(Full);
                }
                Ok(Ticket {
                    kind: TicketKind::Slot(guard, self.active.clone()),
                })
            }
        }
    }
}

impl Ticket {
    /// Runs `work` on a task of its own, holding the slot until it ends.
    pub fn spawn<F>(self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(async move {
            match self.kind {
                TicketKind::Turn(permit) => {
                    work.await;
                    drop(permit);
                }
                TicketKind::Slot(slot, active) => {
                    // FIFO: operations start in the order they were admitted.
                    let permit = active.acquire_owned().await;
                    work.await;
                    drop(permit);
                    drop(slot);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn async_lane_refuses_beyond_active_plus_queued() {
        let lane = Lane::asynchronous(1, 1);
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        lane.admit().await.unwrap().spawn(async move {
            let _ = release_rx.await;
        });
        lane.admit().await.unwrap().spawn(async move {
            let _ = done_tx.send(());
        });
        assert_eq!(lane.admit().await.unwrap_err(), Full);
        release_tx.send(()).unwrap();
        done_rx.await.unwrap();
        // Both slots come back once the operations end.
        lane.admit().await.unwrap().spawn(async {});
    }

    #[tokio::test]
    async fn sync_lane_runs_in_order() {
        let lane = Lane::synchronous();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..5 {
            let tx = tx.clone();
            lane.admit().await.unwrap().spawn(async move {
                tokio::task::yield_now().await;
                let _ = tx.send(i);
            });
        }
        drop(tx);
        let mut got = Vec::new();
        while let Some(i) = rx.recv().await {
            got.push(i);
        }
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }
}
