use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

/// The all-to-all channel mesh between shards: a bounded channel (glommio's `shared_channel`)
/// for every ordered pair of shards, all made on the starting thread; each shard takes its own
/// ends (its senders to every other shard, its receivers from them) and connects them.
///
/// glommio's own `channel_mesh::MeshBuilder` is not used: its clones share one `Rc`, which
/// the shards' threads cloned and dropped at the same time, and the torn reference count let
/// the allocation be freed while still in use. About one debug-build broker start in 150
/// aborted with "malloc(): unaligned tcache chunk detected" (14 in 200 with one blocking
/// thread per core; none with one core); the core dumps showed a freed 64-byte block whose
/// first word had been incremented, the size of that `Rc`'s allocation.
pub struct MeshBuilder<T: Send> {
    ends: flume::Receiver<ShardEnds<T>>,
}

impl<T: Send> Clone for MeshBuilder<T> {
    fn clone(&self) -> Self {
        MeshBuilder { ends: self.ends.clone() }
    }
}

/// One shard's ends of the mesh, before they are connected. Each end is owned by exactly one
/// thread at a time, so the `Rc` inside it is never shared across threads.
struct ShardEnds<T: Send> {
    shard: usize,
    senders: Vec<Option<SharedSender<T>>>,
    receivers: Vec<Option<SharedReceiver<T>>>,
}

/// A mesh with `shards` members and room for `capacity` messages per pair of shards: a full
/// channel makes the sender wait (back-pressure), never grows.
pub fn mesh<T: Send + 'static>(shards: usize, capacity: usize) -> MeshBuilder<T> {
    let mut senders: Vec<Vec<Option<SharedSender<T>>>> =
        (0..shards).map(|_| (0..shards).map(|_| None).collect()).collect();
    let mut receivers: Vec<Vec<Option<SharedReceiver<T>>>> =
        (0..shards).map(|_| (0..shards).map(|_| None).collect()).collect();
    for from in 0..shards {
        for to in (0..shards).filter(|&to| to != from) {
            let (sender, receiver) = shared_channel::new_bounded(capacity);
            senders[from][to] = Some(sender);
            receivers[to][from] = Some(receiver);
        }
    }
    let (handed, ends) = flume::bounded(shards);
    for (shard, (senders, receivers)) in senders.into_iter().zip(receivers).enumerate() {
        let sent = handed.try_send(ShardEnds { shard, senders, receivers });
        assert!(sent.is_ok(), "the hand-out channel holds one set of ends per shard");
    }
    MeshBuilder { ends }
}

impl<T: Send + 'static> MeshBuilder<T> {
    /// Joins the mesh from the calling shard, taking the next shard number; returns once
    /// every other shard has connected its ends of this shard's channels.
    pub async fn join(self) -> std::io::Result<Mesh<T>> {
        let ends = self
            .ends
            .try_recv()
            .map_err(|_| std::io::Error::other("more shards joined the mesh than it was made for"))?;
        // Every connection waits for its peer's: all of them at once, or two shards would each
        // wait for the other's second channel.
        let senders: Vec<_> = ends
            .senders
            .into_iter()
            .map(|sender| super::spawn_local(async move { Some(sender?.connect().await) }))
            .collect();
        let receivers: Vec<_> = ends
            .receivers
            .into_iter()
            .map(|receiver| super::spawn_local(async move { Some(receiver?.connect().await) }))
            .collect();
        let mut mesh = Mesh { shard: ends.shard, senders: Vec::new(), receivers: Vec::new() };
        for sender in senders {
            mesh.senders.push(sender.await);
        }
        for receiver in receivers {
            mesh.receivers.push(receiver.await);
        }
        Ok(mesh)
    }
}

/// This shard's ends of the mesh. Lives on one core.
pub struct Mesh<T: Send> {
    shard: usize,
    senders: Vec<Option<ConnectedSender<T>>>,
    receivers: Vec<Option<ConnectedReceiver<T>>>,
}

/// Messages from one other shard, in the order it sent them.
pub struct Inbox<T: Send>(ConnectedReceiver<T>);

impl<T: Send> Inbox<T> {
    /// The next message, or `None` once the sender is gone.
    pub async fn recv(&self) -> Option<T> {
        self.0.recv().await
    }
}

impl<T: Send + 'static> Mesh<T> {
    /// This shard's number, 0..shards.
    pub fn shard(&self) -> usize {
        self.shard
    }

    pub fn shards(&self) -> usize {
        self.senders.len()
    }

    /// Sends `message` to another shard, waiting while its channel is full. Gives the message
    /// back if it cannot be delivered (the shard is gone, or it is this shard).
    pub async fn send_to(&self, shard: usize, message: T) -> Result<(), T> {
        match self.senders.get(shard) {
            Some(Some(sender)) => sender.send(message).await.map_err(|error| match error {
                glommio::GlommioError::Closed(glommio::ResourceType::Channel(message)) => message,
                glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(message)) => message,
                other => panic!("mesh send failed without returning the message: {other}"),
            }),
            _ => Err(message),
        }
    }

    /// The inboxes from every other shard; taken once, by the shard's dispatcher.
    pub fn take_inboxes(&mut self) -> Vec<(usize, Inbox<T>)> {
        let receivers = self.receivers.iter_mut().enumerate();
        receivers.filter_map(|(shard, receiver)| Some((shard, Inbox(receiver.take()?)))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Each shard takes a number of its own and reaches every other shard, in order, through
    /// channels with less room than it sends; over and over, as joins race between threads.
    #[test]
    fn every_shard_reaches_every_other_in_order() {
        const SHARDS: usize = 2;
        const MESSAGES: u32 = 5;
        finishes_within(Duration::from_secs(120), || {
            for _ in 0..20 {
                let builder = mesh::<(usize, u32)>(SHARDS, 2);
                let (numbers, received) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
                let (taken, counted) = (numbers.clone(), received.clone());
                let ran = super::super::run_sharded(SHARDS, Duration::ZERO, move |_| {
                    let (builder, taken, counted) = (builder.clone(), taken.clone(), counted.clone());
                    async move {
                        let mut mesh = Rc::new(builder.join().await.expect("join"));
                        let me = mesh.shard();
                        taken.fetch_or(1 << me, Ordering::SeqCst);
                        let inboxes = Rc::get_mut(&mut mesh).expect("not shared yet").take_inboxes();
                        assert!(mesh.send_to(me, (me, 0)).await.is_err(), "a shard cannot send to itself");
                        let sending = super::super::spawn_local({
                            let mesh = mesh.clone();
                            async move {
                                for to in (0..mesh.shards()).filter(|&to| to != me) {
                                    for n in 0..MESSAGES {
                                        assert!(mesh.send_to(to, (me, n)).await.is_ok(), "delivered");
                                    }
                                }
                            }
                        });
                        for (from, inbox) in inboxes {
                            for n in 0..MESSAGES {
                                assert_eq!(inbox.recv().await, Some((from, n)), "in order, from its sender");
                                counted.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        sending.await;
                    }
                });
                ran.expect("the shards ran");
                assert_eq!(
                    numbers.load(Ordering::SeqCst),
                    (1 << SHARDS) - 1,
                    "every shard number taken once"
                );
                assert_eq!(received.load(Ordering::SeqCst), SHARDS * (SHARDS - 1) * MESSAGES as usize);
            }
        });
    }

    /// Runs `test` on its own thread and fails if it has not returned within `limit`: a shard
    /// asleep with work to do shows as this failure instead of a test run that never ends.
    fn finishes_within(limit: Duration, test: impl FnOnce() + Send + 'static) {
        let (done, finished) = std::sync::mpsc::channel();
        let runner = std::thread::spawn(move || {
            test();
            let _ = done.send(());
        });
        match finished.recv_timeout(limit) {
            Ok(()) => runner.join().expect("the test thread"),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(runner.join().expect_err("the test thread panicked"))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("not done after {limit:?}: a shard sleeps with a message waiting for it")
            }
        }
    }

    /// Every round trip makes both shards park and be woken by the other. glommio, when its
    /// preempt timer (or another latency-ring completion) fired before the first task queue
    /// ran, took the executor for idle and parked it with the message's task runnable; both
    /// shards then slept for good. With the 500 µs timer of `run_sharded` and glommio's
    /// `run_task_queues` unpatched, this test hung in 6 of 6 runs on the 2-vCPU VM (and the
    /// in-order test above in 4 of about 80).
    #[test]
    fn ping_pong_never_parks_a_shard_with_work() {
        const ROUND_TRIPS: u32 = 3_000;
        finishes_within(Duration::from_secs(120), || {
            let builder = mesh::<u32>(2, 1);
            let ran = super::super::run_sharded(2, Duration::ZERO, move |_| {
                let builder = builder.clone();
                async move {
                    let mut mesh = builder.join().await.expect("join");
                    let me = mesh.shard();
                    let peer = 1 - me;
                    let (_, inbox) = mesh.take_inboxes().pop().expect("one inbox, from the peer");
                    if me == 0 {
                        for n in 0..ROUND_TRIPS {
                            assert!(mesh.send_to(peer, n).await.is_ok(), "ping delivered");
                            assert_eq!(inbox.recv().await, Some(n), "pong");
                        }
                    } else {
                        for n in 0..ROUND_TRIPS {
                            assert_eq!(inbox.recv().await, Some(n), "ping");
                            assert!(mesh.send_to(peer, n).await.is_ok(), "pong delivered");
                        }
                    }
                }
            });
            ran.expect("the shards ran");
        });
    }
}
