use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

pub type Task<T> = glommio::Task<T>;

/// Runs `future` to completion on a fresh single-threaded executor on this thread.
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    raise_memlock_limit(1);
    let executor = match glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make() {
        Ok(executor) => executor,
        Err(err) => panic!("cannot start an io_uring executor: {err}"),
    };
    executor.run(future)
}

/// glommio registers its DMA buffers with io_uring, which counts against RLIMIT_MEMLOCK.
/// Raise the limit to the hard maximum (and, when privileged, beyond the usual 8 MiB default)
/// so registration does not silently fall back to slower unregistered buffers. Each core's
/// pool (`IO_MEMORY_BYTES`) is registered with its three rings, and each registration counts.
pub fn raise_memlock_limit(cores: usize) {
    let wanted = memlock_wanted_bytes(cores);
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) != 0 || limit.rlim_cur >= wanted {
            return;
        }
        let raised = libc::rlimit { rlim_cur: wanted, rlim_max: limit.rlim_max.max(wanted) };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) != 0 {
            let within_hard = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &within_hard);
        }
    }
}

/// The locked memory a broker on `cores` cores wants: each core's buffer pool registered with
/// its three rings, and room for the rings themselves.
pub fn memlock_wanted_bytes(cores: usize) -> u64 {
    const RINGS_PER_CORE: u64 = 3;
    (512 << 20).max(cores as u64 * RINGS_PER_CORE * IO_MEMORY_BYTES as u64 + (64 << 20))
}

/// Threads of each core's blocking pool, which runs the cold O_DIRECT reads (and file
/// housekeeping). With glommio's default of one, every partition's cold read of a fetch waited
/// for the one before it: reading 1.5 GB of 8 partitions back after a restart went from 282
/// and 300 MB/s to 384 and 392 MB/s with 4 threads (alternating runs, broker on core 0,
/// `ringmq bench consume` on core 1); 8 threads measured the same as 4.
const BLOCKING_THREADS: usize = 4;

/// Each core's pool of io_uring registered buffers, which segment writes are made in. A hot
/// partition holds two at a time (the write in flight and the next, filled as batches come:
/// `log::write_queue`), each up to 1 MiB and a power of two; buffers past the pool come from
/// the heap, page faults and all. With glommio's 10 MiB, 8 partitions at max produce ran out:
/// 1149-1180 MB/s (three runs) against 1244-1355 MB/s with 64 MiB (six runs; broker on core 0,
/// `ringmq bench produce --partitions 8` on core 1, 2-vCPU Intel VM).
const IO_MEMORY_BYTES: usize = 64 << 20;

/// Longest an executor runs tasks before it returns to its io_uring rings: submits the
/// operations queued since, takes the completions and the wake-ups from helper threads.
/// glommio's default is 100 ms, and connection tasks can keep the run queue busy that long:
/// they receive request bodies with plain `recv` calls, which never need the rings. At a fixed
/// 620 000 records/s, traced (`block:block_rq_*`, `io_uring:*`, `raw_syscalls:sys_enter`), the
/// broker fell into a convoy. Its core spent 10-11 ms receiving a window of produce requests
/// while the flushers' segment writes waited unsubmitted. Then all 8 partitions' 1 MiB
/// writes went out at once, and the disk took ~5 ms for them while the network waited for their
/// acknowledgements. The disk was busy 17% of the time and took 544 MB/s against 620 asked.
/// `ringmq bench e2e --rate 620000` (8 partitions, 8 connections, 5 in flight, 1 KiB records,
/// broker on core 0, generator on core 1), alternating runs:
/// - with the 100 ms default, 3 of 6 runs fell behind the rate (e2e p50 83-114 ms);
/// - with 500 µs, none of 9 did (e2e p50 1.5-2.7 ms, p99 4.0-169 ms).
///
/// 200 µs measured the same as 500 µs, and max produce did not move
/// (1457 / 1287 -> 1362 / 1362 MB/s).
///
/// A timer this short needs the glommio patch in `run_task_queues` (`vendor/README.md`):
/// without it, executors parked with runnable tasks and slept for good
/// (`io::mesh::tests::ping_pong_never_parks_a_shard_with_work` hung in 6 of 6 runs).
const PREEMPT_TIMER: Duration = Duration::from_micros(500);

/// Runs `shard_main(shard)` on `cores` executors, each pinned to its own CPU, with shard
/// numbers 0..cores; returns when all of them have returned. An idle executor polls for
/// `spin_before_park` before sleeping in the kernel (shorter cross-core wake-ups, more CPU).
pub fn run_sharded<G, F>(cores: usize, spin_before_park: Duration, shard_main: G) -> std::io::Result<()>
where
    G: FnOnce(usize) -> F + Send + Clone + 'static,
    F: Future<Output = ()> + 'static,
{
    raise_memlock_limit(cores);
    let next_shard = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let placement = glommio::PoolPlacement::MaxSpread(cores, None);
    let mut builder = glommio::LocalExecutorPoolBuilder::new(placement)
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(BLOCKING_THREADS))
        .io_memory(IO_MEMORY_BYTES)
        .preempt_timer(PREEMPT_TIMER);
    if !spin_before_park.is_zero() {
        builder = builder.spin_before_park(spin_before_park);
    }
    let handles = builder
        .on_all_shards(move || {
            let shard = next_shard.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            shard_main(shard)
        })
        .map_err(std::io::Error::from)?;
    for result in handles.join_all() {
        result.map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// Spawns a task that runs on its own until it finishes (a connection, an accept loop).
pub fn spawn_detached(future: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(future).detach();
}

/// Spawns a task on this core's executor.
pub fn spawn_local<T: 'static>(future: impl Future<Output = T> + 'static) -> Task<T> {
    glommio::spawn_local(future)
}

/// Runs a blocking function on this executor's helper threads and awaits its result.
///
/// glommio's `spawn_blocking` future, if dropped before the function returns, never drops the
/// function's result (it is left in a `MaybeUninit`): a cold read whose fetch went away would
/// leak its buffer. So the call runs in a detached task that always takes the result, and the
/// caller waits for it on a oneshot; a caller that went away leaves it to be dropped there.
pub async fn spawn_blocking<F, R>(func: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (answer, answered) = futures_channel::oneshot::channel();
    glommio::spawn_local(async move {
        let result = glommio::executor().spawn_blocking(func).await;
        let _nobody_waits = answer.send(result);
    })
    .detach();
    answered.await.expect("a detached blocking call always answers")
}

/// Runs a blocking function on this executor's helper threads, not waiting for it.
pub fn spawn_blocking_detached(func: impl FnOnce() + Send + 'static) {
    glommio::spawn_local(async move { glommio::executor().spawn_blocking(func).await }).detach();
}

pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await
}

/// A level-triggered wake-up for one waiting task on the same core: `notify` sets it, `wait`
/// returns once it is set and clears it. Notifications while nobody waits are not lost.
#[derive(Clone, Default)]
pub struct Signal {
    inner: Rc<SignalInner>,
}

#[derive(Default)]
struct SignalInner {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    pub fn notify(&self) {
        self.inner.set.set(true);
        if let Some(waker) = self.inner.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.inner.set.replace(false) {
                return Poll::Ready(());
            }
            *self.inner.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// A one-way switch any number of tasks on this core can wait for: once `set`, every current
/// and future `wait` returns at once (shutdown).
#[derive(Clone, Default)]
pub struct Latch {
    inner: Rc<LatchInner>,
}

#[derive(Default)]
struct LatchInner {
    set: Cell<bool>,
    /// One waker per pending `wait`, under the key it registered with: a wait polled again
    /// replaces its own, and one dropped takes it out. (Pushing a waker on every poll kept one
    /// per request a connection served, and the connection's task with it, until shutdown.)
    waiters: RefCell<BTreeMap<u64, Waker>>,
    next_key: Cell<u64>,
}

impl Latch {
    pub fn set(&self) {
        self.inner.set.set(true);
        let waiters = std::mem::take(&mut *self.inner.waiters.borrow_mut());
        for waiter in waiters.into_values() {
            waiter.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.inner.set.get()
    }

    /// Resolves once the latch is set.
    pub fn wait(&self) -> LatchWait {
        LatchWait { inner: self.inner.clone(), key: None }
    }
}

/// A pending `Latch::wait`.
pub struct LatchWait {
    inner: Rc<LatchInner>,
    key: Option<u64>,
}

impl Future for LatchWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.set.get() {
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(key) => key,
            None => {
                let key = self.inner.next_key.get();
                self.inner.next_key.set(key + 1);
                self.key = Some(key);
                key
            }
        };
        let mut waiters = self.inner.waiters.borrow_mut();
        match waiters.get_mut(&key) {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            Some(waker) => waker.clone_from(cx.waker()),
            None => {
                waiters.insert(key, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Drop for LatchWait {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.inner.waiters.borrow_mut().remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its drops.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_blocking_call_whose_caller_went_away_still_drops_its_result() {
        let drops = Arc::new(AtomicUsize::new(0));
        block_on(async {
            let (started, start) = std::sync::mpsc::channel::<()>();
            let (release, released) = std::sync::mpsc::channel::<()>();
            let counted = drops.clone();
            let mut call = Box::pin(spawn_blocking(move || {
                let _ = started.send(());
                let _ = released.recv();
                Counted(counted)
            }));
            // The call is on its helper thread when its caller drops it.
            while futures_lite::future::poll_once(call.as_mut()).await.is_none() && start.try_recv().is_err()
            {
                futures_lite::future::yield_now().await;
            }
            drop(call);
            let _ = release.send(());
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while drops.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
                sleep(Duration::from_millis(1)).await;
            }
        });
        assert_eq!(drops.load(Ordering::SeqCst), 1, "the result was dropped, not leaked");
    }

    #[test]
    fn a_latch_keeps_one_waker_per_pending_wait_and_none_for_a_dropped_one() {
        let latch = Latch::default();
        let mut cx = Context::from_waker(Waker::noop());
        // A connection waits on its latch once per request it reads: each wait polled and
        // dropped must leave nothing behind.
        for _ in 0..1000 {
            let mut wait = latch.wait();
            assert!(Pin::new(&mut wait).poll(&mut cx).is_pending());
        }
        assert_eq!(latch.inner.waiters.borrow().len(), 0);
        let (mut first, mut second) = (latch.wait(), latch.wait());
        for _ in 0..1000 {
            assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
            assert!(Pin::new(&mut second).poll(&mut cx).is_pending());
        }
        assert_eq!(latch.inner.waiters.borrow().len(), 2);
        latch.set();
        assert!(Pin::new(&mut first).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut second).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut latch.wait()).poll(&mut cx).is_ready(), "a wait after the set returns at once");
        assert_eq!(latch.inner.waiters.borrow().len(), 0);
    }

    /// The limit covers every core's pool in each of its rings, or is as high as it may go.
    #[test]
    fn the_memlock_limit_is_raised_for_every_cores_buffers() {
        let cores = 6;
        raise_memlock_limit(cores);
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit fills the struct it is given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) }, 0);
        let wanted = memlock_wanted_bytes(cores);
        assert!(wanted >= cores as u64 * 3 * IO_MEMORY_BYTES as u64, "three rings a core: {wanted}");
        assert!(
            limit.rlim_cur >= wanted || limit.rlim_cur == limit.rlim_max,
            "limit {} of {} wanted (hard {})",
            limit.rlim_cur,
            wanted,
            limit.rlim_max
        );
    }
}
