//! [`SimRuntime`]: a single-threaded executor with a virtual clock, and TCP over in-memory
//! pipes.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use super::pipe::{Duplex, duplex};
use crate::runtime::{BoxFuture, Runtime, Timer};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The shared state of a simulation.
struct Sim {
    /// When virtual time started.
    start: Instant,
    /// The virtual time now.
    now: Mutex<Instant>,
    /// Virtual time never passes this.
    limit: Instant,
    /// Tasks ready to run, in the order they were woken.
    ready: Mutex<VecDeque<async_task::Runnable>>,
    /// Timers waiting, by deadline then creation order.
    timers: Mutex<BTreeMap<(Instant, u64), Waker>>,
    next_timer: AtomicU64,
    /// Server ends of the connections the runtime opened.
    accepts: Mutex<VecDeque<Duplex>>,
    accept_waiters: Mutex<Vec<Waker>>,
    refuse: AtomicBool,
    pipe_capacity: usize,
}

/// A runtime for tests: tasks run on one thread, in a deterministic order, and time is
/// virtual. When every task waits, the clock jumps to the earliest timer; so a test of what
/// happens after 30 s of silence takes no time at all, and the same test always sees the
/// same interleaving.
///
/// `connect_tcp` opens an in-memory pipe ([`Duplex`]) whose other end the test takes with
/// [`SimRuntime::accept`] and serves (for instance with `async_tungstenite::accept_async`).
///
/// ```
/// use std::time::Duration;
/// use vantiq_connector::Runtime as _;
/// use vantiq_connector::test_util::SimRuntime;
///
/// let sim = SimRuntime::new();
/// let start = sim.now();
/// let elapsed = sim.block_on({
///     let sim = sim.clone();
///     async move {
///         sim.sleep(Duration::from_secs(3600)).await;
///         sim.now() - start
///     }
/// });
/// assert_eq!(elapsed, Duration::from_secs(3600)); // at once, in real time
/// ```
#[derive(Clone)]
pub struct SimRuntime {
    sim: Arc<Sim>,
}

impl std::fmt::Debug for SimRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRuntime")
            .field("now", &*lock(&self.sim.now))
            .finish_non_exhaustive()
    }
}

impl Default for SimRuntime {
    fn default() -> Self {
        SimRuntime::new()
    }
}

impl SimRuntime {
    /// A simulation whose pipes hold 64 KiB each way and whose virtual time may run for a
    /// day.
    #[must_use]
    pub fn new() -> Self {
        SimRuntime::with_options(64 * 1024, Duration::from_secs(86_400))
    }

    /// A simulation whose pipes hold `pipe_capacity` bytes each way (a socket's buffers) and
    /// whose virtual time may run for `limit` (past it, [`SimRuntime::block_on`] panics: a
    /// test waiting for something that never happens would otherwise spin through pings
    /// forever).
    #[must_use]
    pub fn with_options(pipe_capacity: usize, limit: Duration) -> Self {
        // The one real clock read: virtual time starts here.
        #[allow(clippy::disallowed_methods)]
        let start = Instant::now();
        SimRuntime {
            sim: Arc::new(Sim {
                start,
                now: Mutex::new(start),
                limit: start + limit,
                ready: Mutex::new(VecDeque::new()),
                timers: Mutex::new(BTreeMap::new()),
                next_timer: AtomicU64::new(0),
                accepts: Mutex::new(VecDeque::new()),
                accept_waiters: Mutex::new(Vec::new()),
                refuse: AtomicBool::new(false),
                pipe_capacity,
            }),
        }
    }

    /// Runs `future` and every task spawned meanwhile until `future` completes.
    ///
    /// # Panics
    /// When every task waits and no timer is set (nothing could ever happen again), or when
    /// virtual time passes the simulation's limit: the test is stuck, and says so.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        let main = Arc::new(MainWaker(AtomicBool::new(true)));
        let waker = Waker::from(main.clone());
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            if main.0.swap(false, Ordering::AcqRel)
                && let Poll::Ready(v) = future.as_mut().poll(&mut cx)
            {
                return v;
            }
            let next = lock(&self.sim.ready).pop_front();
            if let Some(runnable) = next {
                runnable.run();
                continue;
            }
            if main.0.load(Ordering::Acquire) {
                continue;
            }
            if !self.advance() {
                #[allow(clippy::panic)]
                {
                    panic!(
                        "the simulation is stuck: every task waits and no timer is set (at {:?} of virtual time)",
                        self.elapsed()
                    );
                }
            }
        }
    }

    /// Moves the clock to the earliest timer and wakes every timer due then. False if no
    /// timer is set.
    fn advance(&self) -> bool {
        let due: Vec<Waker> = {
            let mut timers = lock(&self.sim.timers);
            let Some((&(at, _), _)) = timers.iter().next() else {
                return false;
            };
            {
                let mut now = lock(&self.sim.now);
                if at > *now {
                    *now = at;
                }
                #[allow(clippy::panic)]
                if *now > self.sim.limit {
                    panic!("the simulation ran past its time limit: something never happened");
                }
            }
            let later = timers.split_off(&(at, u64::MAX));
            std::mem::replace(&mut *timers, later)
                .into_values()
                .collect()
        };
        for w in due {
            w.wake();
        }
        true
    }

    /// Virtual time since the simulation started.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        lock(&self.sim.now).saturating_duration_since(self.sim.start)
    }

    /// Runs `future` as a task of the simulation; the handle gives its output (dropping it
    /// cancels the task).
    pub fn spawn_task<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> SimJoin<T> {
        SimJoin(self.spawn_inner(future))
    }

    fn spawn_inner<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> async_task::Task<T> {
        let sim = self.sim.clone();
        let schedule = move |runnable| lock(&sim.ready).push_back(runnable);
        let (runnable, task) = async_task::spawn(future, schedule);
        runnable.schedule();
        task
    }

    /// Waits `duration` of virtual time.
    pub fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        let mut timer = self.timer(self.now() + duration);
        std::future::poll_fn(move |cx| timer.poll_fired(cx))
    }

    /// Runs `future` for at most `duration` of virtual time: `None` if it did not complete.
    pub async fn timeout<F: Future>(&self, duration: Duration, future: F) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        let mut sleep = std::pin::pin!(self.sleep(duration));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = future.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            sleep.as_mut().poll(cx).map(|()| None)
        })
        .await
    }

    /// The server end of the next connection the runtime opens.
    pub async fn accept(&self) -> Duplex {
        std::future::poll_fn(|cx| {
            if let Some(d) = lock(&self.sim.accepts).pop_front() {
                return Poll::Ready(d);
            }
            lock(&self.sim.accept_waiters).push(cx.waker().clone());
            match lock(&self.sim.accepts).pop_front() {
                Some(d) => Poll::Ready(d),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Whether connects are refused from now on (`connect_tcp` fails with
    /// `ConnectionRefused`).
    pub fn refuse_connects(&self, refuse: bool) {
        self.sim.refuse.store(refuse, Ordering::Release);
    }
}

struct MainWaker(AtomicBool);

impl Wake for MainWaker {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// A timer on a simulation's virtual clock.
pub struct SimTimer {
    sim: Arc<Sim>,
    deadline: Instant,
    id: u64,
    registered: Option<Instant>,
}

impl std::fmt::Debug for SimTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTimer")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl SimTimer {
    fn unregister(&mut self) {
        if let Some(at) = self.registered.take() {
            lock(&self.sim.timers).remove(&(at, self.id));
        }
    }
}

impl Drop for SimTimer {
    fn drop(&mut self) {
        self.unregister();
    }
}

impl Timer for SimTimer {
    fn reset(&mut self, deadline: Instant) {
        self.unregister();
        self.deadline = deadline;
    }

    fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if *lock(&self.sim.now) >= self.deadline {
            self.unregister();
            return Poll::Ready(());
        }
        self.unregister();
        lock(&self.sim.timers).insert((self.deadline, self.id), cx.waker().clone());
        self.registered = Some(self.deadline);
        Poll::Pending
    }
}

/// A task of a simulation with its output; dropping it cancels the task.
#[derive(Debug)]
pub struct SimJoin<T>(async_task::Task<T>);

impl<T> Future for SimJoin<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// A task of a simulation; dropping it cancels the task.
#[derive(Debug)]
pub struct SimTask(async_task::Task<()>);

impl Future for SimTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl Runtime for SimRuntime {
    type Tcp = Duplex;
    type Timer = SimTimer;
    type Task = SimTask;

    fn connect_tcp(&self, _host: String, _port: u16) -> BoxFuture<'static, io::Result<Duplex>> {
        if self.sim.refuse.load(Ordering::Acquire) {
            return Box::pin(async { Err(io::ErrorKind::ConnectionRefused.into()) });
        }
        let (client, server) = duplex(self.sim.pipe_capacity);
        lock(&self.sim.accepts).push_back(server);
        for w in lock(&self.sim.accept_waiters).drain(..) {
            w.wake();
        }
        Box::pin(async move { Ok(client) })
    }

    fn now(&self) -> Instant {
        *lock(&self.sim.now)
    }

    fn timer(&self, deadline: Instant) -> SimTimer {
        SimTimer {
            sim: self.sim.clone(),
            deadline,
            id: self.sim.next_timer.fetch_add(1, Ordering::Relaxed),
            registered: None,
        }
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) -> SimTask {
        SimTask(self.spawn_inner(future))
    }
}
