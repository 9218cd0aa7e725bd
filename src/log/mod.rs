//! A partition's log: append-only Kafka record batches in segment files, owned by one core.
//!
//! Lives on the core that owns the partition; `Log` is `!Send` and no method blocks the core.
//! Appends are synchronous (validate, assign offsets, queue) and return a `Durable` future;
//! one flusher task per log writes everything queued with one O_DIRECT write, syncs as the
//! `FlushPolicy` says, and resolves the futures in offset order. Reads are served from the
//! batch cache or from the segment files, never beyond what was written.
//!
//! Positions, in order (asserted): synced <= written <= log end, and log start <= stable.
//! - `written`: every batch below it is in its segment file (survives SIGKILL);
//! - `synced`: every batch below it was fdatasync'd (survives a machine crash);
//! - log end: the next offset to assign; batches between `written` and it are queued.

mod appender;
pub(crate) mod checkpoint;
mod config;
mod epochs;
mod index;
pub mod producers;
mod read_ahead;
mod reader;
mod recovery;
mod retention;
mod segment;
mod write_queue;

pub use config::{ConfigError, FlushPolicy, LogConfig, TimestampType};
pub use index::{OffsetIndex, TimeIndex};
pub use reader::{ReadBatches, ReadLimits, TimestampLookup};
pub use retention::RetentionOutcome;

use crate::batch::{self, BatchError, BatchHeader, HEADER_BYTES};
use crate::batch_cache::{BatchCache, StoredBatch};
use crate::constants::APPEND_WAITERS_MAX;
use crate::io::{Signal, Task};
use crate::types::{LeaderEpoch, Offset, TimestampMs};
use bytes::Bytes;
use futures_channel::oneshot;
use producers::{Producers, SequenceError, Verdict};
use segment::Segment;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// An I/O failure of the log's files, with the operation that failed. Cheap to clone so every
/// append waiting on the failed write gets it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation}: {source}")]
pub struct StorageError {
    pub operation: &'static str,
    pub source: Arc<std::io::Error>,
}

impl StorageError {
    pub fn new(operation: &'static str, source: std::io::Error) -> StorageError {
        StorageError { operation, source: Arc::new(source) }
    }

    pub fn is_disk_full(&self) -> bool {
        self.source.raw_os_error() == Some(libc::ENOSPC)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("invalid batch: {0}")]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Storage(StorageError),
    #[error("the log is closing")]
    Closed,
    #[error("too many appends are waiting for durability")]
    Backpressure,
    #[error("the log is being truncated")]
    Truncating,
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    #[error("control batches are written by the broker, not by clients")]
    ControlBatchFromClient,
    #[error("invalid producer batch: {0}")]
    InvalidProducerBatch(&'static str),
    #[error("encode: {0}")]
    Encode(String),
    /// A replicated batch does not begin at this log's end.
    #[error("a replicated batch begins at {got}, not at the log end {expected}")]
    NotContiguous { expected: Offset, got: Offset },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error("offset {requested} is outside the log [{log_start}, {log_end}]")]
    OffsetOutOfRange { requested: Offset, log_start: Offset, log_end: Offset },
    #[error(transparent)]
    Storage(StorageError),
    #[error("corrupt batch in segment {segment} at byte {position}: {reason}")]
    Corrupt { segment: Offset, position: u64, reason: BatchError },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("invalid log config: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(StorageError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error("offset {0} is below the log start offset")]
    BelowLogStart(Offset),
    #[error("offset {requested} is beyond the stable offset {stable}")]
    BeyondStable { requested: Offset, stable: Offset },
    #[error("the log is being truncated")]
    Truncating,
    #[error("the log cannot start again at {0}: it holds records up to there")]
    RestartWithinLog(Offset),
    #[error("the log failed and refuses changes until reopened: {0}")]
    Failed(StorageError),
    #[error("the log is closing")]
    Closed,
    #[error("not on every in-sync replica in the epoch it was written in")]
    NotCommitted,
}

/// Where an append went, and a future that resolves once it is durable under the policy.
pub struct Appended {
    pub base_offset: Offset,
    pub last_offset: Offset,
    /// The broker time the batches were appended at (Kafka's log append time).
    pub log_append_time: TimestampMs,
    /// The batches repeat ones an idempotent producer already appended at these offsets:
    /// nothing new was appended, and `durable` says when the originals are.
    pub duplicate: bool,
    pub durable: Durable,
}

/// Resolves when the append is acknowledged under the log's flush policy, or fails it.
pub struct Durable(oneshot::Receiver<Result<(), AppendError>>);

impl Future for Durable {
    type Output = Result<(), AppendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|reply| reply.unwrap_or(Err(AppendError::Closed)))
    }
}

/// How far a reader may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// What `read_committed` consumers see: below the last stable offset.
    LastStable,
    /// What consumers see: below the high watermark.
    HighWatermark,
    /// What followers copy: everything written to the segment files.
    Written,
}

/// Who writes a batch: a client's produce request, or a coordinator of this broker (the group
/// coordinator's transactional offsets, the transaction coordinator's markers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Client,
    Coordinator,
}

enum ProducerCheck {
    Append(Vec<producers::Staged>),
    Duplicate { first: Offset, last: Offset },
}

struct Waiter {
    end: Offset,
    reply: oneshot::Sender<Result<(), AppendError>>,
}

enum Command {
    Truncate {
        offset: Offset,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    /// Empties the log and starts it again at `offset`.
    Restart {
        offset: Offset,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    Close {
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

/// Everything the log knows, mutated only on its core, never borrowed across an await.
struct LogState {
    config: LogConfig,
    /// Oldest first; the last one is active (appended to).
    segments: VecDeque<Segment>,
    log_start: Offset,
    synced: Offset,
    written: Offset,
    log_end: Offset,
    /// Assigned offsets, not yet written.
    unwritten: write_queue::WriteQueue,
    cache: BatchCache,
    waiters: VecDeque<Waiter>,
    commands: VecDeque<Command>,
    /// Set when an fdatasync failed: whether written data is durable is unknown, so the log
    /// accepts no more appends until it is reopened (Kafka takes the log dir offline).
    failed: Option<StorageError>,
    closing: bool,
    /// Set from a `truncate_to` call until it completes: appends and DeleteRecords are
    /// refused, and reads return nothing at or after the offset being cut to.
    truncating: Option<Offset>,
    /// Counts completed truncations: a read planned before one re-plans after its I/O.
    truncations: u64,
    unsynced_records: u64,
    unsynced_bytes: u64,
    last_sync_at: Instant,
    /// Readers (long-polling fetches) to wake when the stable offset moves past
    /// `stable_notified`.
    readers_waiting: Vec<std::task::Waker>,
    stable_notified: Offset,
    written_notified: Offset,
    /// For a replicated partition, the high watermark: readers see nothing at or beyond it.
    /// The partition's leader moves it as its in-sync followers fetch; a follower takes its
    /// leader's. `None` for a partition kept on one broker: only the flush policy bounds reads.
    high_watermark: Option<Offset>,
    /// Idempotent producers' sequences, including batches not yet written.
    producers: Producers,
    /// Where each leader epoch began, including batches not yet written.
    epochs: epochs::LeaderEpochs,
}

impl LogState {
    fn active(&self) -> &Segment {
        self.segments.back().expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.back_mut().expect("a log always has an active segment")
    }

    /// The offset below which appends are acknowledged and readers may see records.
    fn stable(&self) -> Offset {
        match self.config.flush {
            FlushPolicy::FsyncBeforeAck => self.synced,
            FlushPolicy::Interval { .. } => self.written,
        }
    }

    /// Whether appends may come now: not after a failed sync, while closing or truncating.
    fn open_for_appends(&self) -> Result<(), AppendError> {
        if let Some(error) = &self.failed {
            return Err(AppendError::Storage(error.clone()));
        }
        if self.closing {
            return Err(AppendError::Closed);
        }
        if self.truncating.is_some() {
            return Err(AppendError::Truncating);
        }
        Ok(())
    }

    /// The offset below which records are readable: stable, and below the high watermark.
    fn visible(&self) -> Offset {
        let stable = self.stable();
        self.high_watermark.map_or(stable, |high| high.min(stable))
    }

    /// A future that resolves once everything below `end` is acknowledged. Waiters stay in
    /// order of `end`: acknowledging pops from the front, failing a write from the back.
    fn wait_durable(&mut self, end: Offset) -> Durable {
        let (reply, receiver) = oneshot::channel();
        if end <= self.stable() {
            let _receiver_is_here = reply.send(Ok(()));
        } else {
            let at = self.waiters.partition_point(|waiter| waiter.end <= end);
            self.waiters.insert(at, Waiter { end, reply });
        }
        Durable(receiver)
    }

    /// Checks the batches of idempotent and transactional producers, in order, as if appended
    /// at the log end: what to record once they are, or the offsets of the batch they repeat
    /// (Kafka answers a request holding a retried batch with that batch's offsets and appends
    /// nothing). Clients may not write control batches; the coordinators' batches skip the
    /// sequence checks (they carry none).
    fn stage_producers(
        &self,
        batches: &[(BatchHeader, Bytes)],
        origin: Origin,
    ) -> Result<ProducerCheck, AppendError> {
        if origin == Origin::Client && batches.iter().any(|(header, _)| header.has_producer_id()) {
            // Kafka's rules: a producer's request carries one batch per partition (so a retry
            // is recognised whole), each with a sequence.
            if batches.len() > 1 {
                return Err(AppendError::InvalidProducerBatch("more than one batch in a request"));
            }
            if batches.iter().any(|(header, _)| header.base_sequence < 0 && !header.is_control()) {
                return Err(AppendError::InvalidProducerBatch("a producer id without a sequence"));
            }
        }
        let mut staged = Vec::new();
        let mut base = self.log_end.0;
        for (header, bytes) in batches {
            if header.is_control() {
                if origin == Origin::Client {
                    return Err(AppendError::ControlBatchFromClient);
                }
                let commits = batch::control_commits(bytes).ok_or(AppendError::ControlBatchFromClient)?;
                if header.has_producer_id() {
                    let (id, epoch) = (header.producer_id, header.producer_epoch);
                    staged.push(self.producers.stage_marker(&staged, id, epoch, commits, base)?);
                }
            } else if header.has_producer_id() {
                if origin == Origin::Coordinator {
                    self.producers.check_epoch(&staged, header)?;
                } else if let Verdict::Duplicate { first_offset, last_offset } =
                    self.producers.check(&staged, header)?
                {
                    return Ok(ProducerCheck::Duplicate {
                        first: Offset(first_offset),
                        last: Offset(last_offset),
                    });
                }
                staged.push(self.producers.stage_data(&staged, header, base));
            }
            base += i64::from(header.last_offset_delta) + 1;
        }
        Ok(ProducerCheck::Append(staged))
    }

    /// Below this, records are stable: acknowledged and not part of an open transaction (what
    /// `read_committed` consumers may read).
    fn last_stable(&self) -> Offset {
        let stable = self.visible();
        self.producers.first_unstable_offset().map_or(stable, |first| stable.min(Offset(first)))
    }

    fn check_positions(&self) {
        assert!(
            self.log_start <= self.stable() && self.synced <= self.written && self.written <= self.log_end,
            "log positions out of order: start {} synced {} written {} end {}",
            self.log_start,
            self.synced,
            self.written,
            self.log_end
        );
    }

    fn ack_waiters(&mut self) {
        self.check_positions();
        // Any move wakes readers, down included: after a truncation or a lower high watermark
        // the positions climb again below the old marks.
        let (visible, written) = (self.visible(), self.written);
        if visible != self.stable_notified || written != self.written_notified {
            self.stable_notified = visible;
            self.written_notified = written;
            for reader in self.readers_waiting.drain(..) {
                reader.wake();
            }
        }
        let stable = self.stable();
        while self.waiters.front().is_some_and(|waiter| waiter.end <= stable) {
            if let Some(waiter) = self.waiters.pop_front() {
                // The appender may have stopped waiting (request cancelled); nothing to tell.
                let _ignored = waiter.reply.send(Ok(()));
            }
        }
    }

    /// Queues `stored` for the flusher and caches it. Copied into its write now if no new
    /// segment comes before it (`write_queue`).
    fn enqueue(&mut self, stored: StoredBatch) {
        let position = self.active().size_bytes + self.unwritten.bytes();
        let stage_at = (!appender::needs_roll(self, position, &stored)).then_some(position);
        self.unwritten.push(stored.clone(), stage_at);
        self.cache.push(stored);
    }

    /// Forgets every batch from `offset` on (none of them written) and fails their appends.
    /// Appends wholly before `offset` keep waiting for their fdatasync.
    fn abandon_from(&mut self, offset: Offset, error: AppendError) {
        assert!(offset >= self.written, "abandoning written batches");
        self.log_end = offset;
        self.unwritten.clear();
        self.cache.truncate_from(offset);
        self.producers.truncate_from(offset.0);
        self.epochs.truncate_from_end(offset);
        while self.waiters.back().is_some_and(|waiter| waiter.end > offset) {
            if let Some(waiter) = self.waiters.pop_back() {
                let _ignored = waiter.reply.send(Err(error.clone()));
            }
        }
        self.check_positions();
    }

    /// The log can no longer vouch for its files: refuse appends until reopened, fail every
    /// append not yet acknowledged, keep serving reads of what is stable.
    fn fail(&mut self, error: StorageError) {
        let written = self.written;
        self.abandon_from(written, AppendError::Storage(error.clone()));
        for waiter in self.waiters.drain(..) {
            let _ignored = waiter.reply.send(Err(AppendError::Storage(error.clone())));
        }
        self.failed = Some(error);
    }
}

struct Shared {
    dir: PathBuf,
    state: RefCell<LogState>,
    wake_flusher: Signal,
}

/// One partition's log. Lives on its owning core.
pub struct Log {
    shared: Rc<Shared>,
    /// Kept so the flusher lives as long as the log (dropping a task cancels it).
    _flusher: Task<()>,
}

impl Log {
    /// Opens the log in `dir`, creating it if needed, recovering from a crash if the last close
    /// was not clean (see `recovery`).
    pub async fn open(dir: &Path, config: LogConfig) -> Result<Log, LogError> {
        config.validate()?;
        let (state, appender) = recovery::open(dir, config).await?;
        let shared = Rc::new(Shared {
            dir: dir.to_path_buf(),
            state: RefCell::new(state),
            wake_flusher: Signal::default(),
        });
        let flusher = crate::io::spawn_local(appender::run(shared.clone(), appender));
        Ok(Log { shared, _flusher: flusher })
    }

    /// Validates `records` (one or more v2 batches, as a produce request carries them),
    /// assigns offsets and queues them for writing. Nothing is appended unless every batch is
    /// valid. The returned `durable` future says when they are acknowledged.
    pub fn append(&self, records: &Bytes, leader_epoch: LeaderEpoch) -> Result<Appended, AppendError> {
        self.append_from(records, leader_epoch, Origin::Client)
    }

    /// Ends producer `producer_id`'s transaction in this partition with a marker (a control
    /// batch) at `epoch`; the transaction coordinator writes one to every partition of a
    /// transaction it commits or aborts.
    pub fn append_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        commits: bool,
        coordinator_epoch: i32,
        leader_epoch: LeaderEpoch,
    ) -> Result<Appended, AppendError> {
        let now = TimestampMs::now().0;
        let marker = crate::record::transaction_marker(producer_id, epoch, commits, coordinator_epoch, now);
        let batch = crate::record::encode(&[marker]).map_err(AppendError::Encode)?;
        self.append_from(&batch, leader_epoch, Origin::Coordinator)
    }

    /// `append`, by a client or by one of the broker's coordinators.
    pub fn append_from(
        &self,
        records: &Bytes,
        leader_epoch: LeaderEpoch,
        origin: Origin,
    ) -> Result<Appended, AppendError> {
        let mut state = self.shared.state.borrow_mut();
        let batches = batch::split_validated(records, state.config.message_bytes_max)?;
        state.open_for_appends()?;
        if state.waiters.len() >= APPEND_WAITERS_MAX {
            return Err(AppendError::Backpressure);
        }
        let now = TimestampMs::now();
        let staged = match state.stage_producers(&batches, origin)? {
            ProducerCheck::Append(staged) => staged,
            ProducerCheck::Duplicate { first, last } => {
                return Ok(Appended {
                    base_offset: first,
                    last_offset: last,
                    log_append_time: now,
                    duplicate: true,
                    durable: state.wait_durable(last.next()),
                });
            }
        };
        state.producers.record(staged, now.0);
        let log_append_time = (state.config.timestamp_type == TimestampType::LogAppendTime).then_some(now.0);
        let base_offset = state.log_end;
        for (header, bytes) in batches {
            let base = state.log_end;
            let last = Offset(base.0 + i64::from(header.last_offset_delta));
            let rewritten = batch::rewrite_header(&bytes, base.0, leader_epoch.0, log_append_time);
            state.epochs.assign(leader_epoch, base);
            let stored = StoredBatch {
                base,
                last,
                max_timestamp: log_append_time.unwrap_or(header.max_timestamp),
                records: header.records_count as u32,
                header: Bytes::copy_from_slice(&rewritten),
                body: bytes.slice(HEADER_BYTES..),
            };
            state.enqueue(stored);
            state.log_end = last.next();
        }
        let end = state.log_end;
        let durable = state.wait_durable(end);
        drop(state);
        self.shared.wake_flusher.notify();
        Ok(Appended {
            base_offset,
            last_offset: Offset(end.0 - 1),
            log_append_time: now,
            duplicate: false,
            durable,
        })
    }

    /// Appends batches its leader replicated, as the leader stored them: offsets, leader
    /// epochs and producer state are kept. Batches wholly below the log end (here already) are
    /// skipped; one that does not begin at the log end is refused, and so are the batches
    /// after it. `None` if nothing was new; otherwise when the batches are durable here.
    pub fn append_replica(&self, batches: Vec<(BatchHeader, Bytes)>) -> Result<Option<Durable>, AppendError> {
        let mut state = self.shared.state.borrow_mut();
        state.open_for_appends()?;
        let now = TimestampMs::now().0;
        let mut appended = false;
        for (header, bytes) in batches {
            if header.last_offset() < state.log_end.0 {
                continue;
            }
            if header.base_offset != state.log_end.0 {
                return Err(AppendError::NotContiguous {
                    expected: state.log_end,
                    got: Offset(header.base_offset),
                });
            }
            // A leader's batches are whole, uncompacted ones: counts and offsets agree.
            batch::validate_from_producer(&header)?;
            let commits = if header.is_control() { batch::control_commits(&bytes) } else { None };
            state.producers.replay(&header, commits, now);
            let (base, last) = (Offset(header.base_offset), Offset(header.last_offset()));
            state.epochs.assign(LeaderEpoch(header.leader_epoch), base);
            let stored = StoredBatch {
                base,
                last,
                max_timestamp: header.max_timestamp,
                records: header.records_count as u32,
                header: bytes.slice(..HEADER_BYTES),
                body: bytes.slice(HEADER_BYTES..),
            };
            state.enqueue(stored);
            state.log_end = last.next();
            appended = true;
        }
        if !appended {
            return Ok(None);
        }
        let end = state.log_end;
        let durable = state.wait_durable(end);
        drop(state);
        self.shared.wake_flusher.notify();
        Ok(Some(durable))
    }

    /// Sets the high watermark of a replicated partition (never beyond the log end), waking
    /// readers it makes records visible to; `None` for a partition on one broker.
    pub fn set_high_watermark(&self, high_watermark: Option<Offset>) {
        let mut state = self.shared.state.borrow_mut();
        state.high_watermark = high_watermark.map(|high| high.min(state.log_end));
        state.ack_waiters();
    }

    /// The high watermark as set (`None` on a partition kept on one broker).
    pub fn high_watermark(&self) -> Option<Offset> {
        self.shared.state.borrow().high_watermark
    }

    /// OffsetForLeaderEpoch: the largest epoch at or below `epoch` this log has, and where the
    /// epoch after it began (the log end for the latest); `(-1, -1)` if there is none.
    pub fn end_offset_for_epoch(&self, epoch: LeaderEpoch) -> (LeaderEpoch, Offset) {
        let state = self.shared.state.borrow();
        state.epochs.end_offset_for(epoch, state.log_end)
    }

    /// Starts leader epoch `epoch` at the log end, as a newly elected leader does before its
    /// first append, so OffsetForLeaderEpoch answers followers from newer epochs correctly.
    pub fn begin_epoch(&self, epoch: LeaderEpoch) {
        let mut state = self.shared.state.borrow_mut();
        let end = state.log_end;
        state.epochs.assign(epoch, end);
    }

    /// Waits (up to `timeout`) until the records up to `last`, appended in `epoch`, are below
    /// the high watermark while this log is still in that epoch: on every in-sync replica, and
    /// not replaced by a new leader's records. A broker alone (no high watermark) needs only
    /// their durability.
    pub async fn await_committed(
        &self,
        last: Offset,
        epoch: LeaderEpoch,
        timeout: std::time::Duration,
    ) -> Result<(), LogError> {
        let reached = async {
            self.wait_for_records_at(last, Bound::HighWatermark).await;
            true
        };
        let expired = async {
            crate::io::sleep(timeout).await;
            false
        };
        let committed = futures_lite::future::or(reached, expired).await && self.current_epoch() == epoch;
        if committed { Ok(()) } else { Err(LogError::NotCommitted) }
    }

    /// The epoch a coordinator's batch is written in: the one this broker leads the partition
    /// in (begun by `begin_epoch`), 0 on a broker alone.
    pub fn current_epoch(&self) -> LeaderEpoch {
        self.latest_epoch().unwrap_or(LeaderEpoch(0))
    }

    /// The leader epoch of the last batch, if any batch carries one.
    pub fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.shared.state.borrow().epochs.latest()
    }

    /// Cuts the log back so `offset` is the next offset (replication uses it to discard a
    /// divergent tail). A batch holding `offset` goes entirely, as in Kafka.
    pub async fn truncate_to(&self, offset: Offset) -> Result<(), LogError> {
        self.begin_truncation(offset)?;
        // The flusher ends the truncation (clears the flag) even if this caller is dropped.
        self.command(|reply| Command::Truncate { offset, reply }).await
    }

    /// Marks a truncation to `keep` as running: from now on nothing new is appended, so the
    /// queue drains and the cut can run; reads stop below `keep`.
    fn begin_truncation(&self, keep: Offset) -> Result<(), LogError> {
        let mut state = self.shared.state.borrow_mut();
        if let Some(error) = &state.failed {
            return Err(LogError::Failed(error.clone()));
        }
        if state.truncating.is_some() {
            return Err(LogError::Truncating);
        }
        state.truncating = Some(keep);
        Ok(())
    }

    /// Empties the log and starts it again, empty, at `offset` beyond its end: a follower whose
    /// log ends before its leader's log start (retention or DeleteRecords moved it while the
    /// follower was away) copies on from there, as Kafka's `truncateFullyAndStartAt`.
    pub async fn restart_at(&self, offset: Offset) -> Result<(), LogError> {
        self.begin_truncation(self.log_start_offset())?;
        self.command(|reply| Command::Restart { offset, reply }).await
    }

    /// Writes everything queued, syncs it and records a clean shutdown so the next open does
    /// not scan. Appends after this fail with `Closed`.
    pub async fn close(&self) -> Result<(), LogError> {
        self.shared.state.borrow_mut().closing = true;
        // The flusher answers once the checkpoint is written, then ends.
        self.command(|reply| Command::Close { reply }).await
    }

    async fn command(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), LogError>>) -> Command,
    ) -> Result<(), LogError> {
        let (reply, receiver) = oneshot::channel();
        self.shared.state.borrow_mut().commands.push_back(make(reply));
        self.shared.wake_flusher.notify();
        receiver.await.unwrap_or(Err(LogError::Closed))
    }

    /// Resolves once `bound` is beyond `offset`: new records a reader positioned at `offset`
    /// can read. For long-polling fetches; cancel by dropping.
    pub async fn wait_for_records_at(&self, offset: Offset, bound: Bound) {
        std::future::poll_fn(|cx| {
            let mut state = self.shared.state.borrow_mut();
            let visible = match bound {
                Bound::LastStable => state.last_stable(),
                Bound::HighWatermark => state.visible(),
                Bound::Written => state.written,
            };
            if visible > offset {
                return Poll::Ready(());
            }
            state.readers_waiting.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Applies changed topic settings to the open log (retention, roll, limits, timestamps,
    /// flush parameters). The flush policy's kind and the cache size stay as opened.
    pub fn reconfigure(&self, config: LogConfig) -> Result<(), ConfigError> {
        config.validate()?;
        let mut state = self.shared.state.borrow_mut();
        let same_kind = matches!(
            (&state.config.flush, &config.flush),
            (FlushPolicy::FsyncBeforeAck, FlushPolicy::FsyncBeforeAck)
                | (FlushPolicy::Interval { .. }, FlushPolicy::Interval { .. })
        );
        let flush = if same_kind { config.flush } else { state.config.flush };
        let cache_bytes_max = state.config.cache_bytes_max;
        state.config = LogConfig { flush, cache_bytes_max, ..config };
        Ok(())
    }

    /// Forgets idempotent producers whose last append was before `before_ms`; returns how many.
    pub fn expire_producers(&self, before_ms: i64) -> usize {
        self.shared.state.borrow_mut().producers.expire(before_ms)
    }

    /// Idempotent producers this partition remembers.
    pub fn producer_count(&self) -> usize {
        self.shared.state.borrow().producers.len()
    }

    /// Whether batches get the broker's time (topic `message.timestamp.type=LogAppendTime`).
    pub fn log_append_time_enabled(&self) -> bool {
        self.shared.state.borrow().config.timestamp_type == TimestampType::LogAppendTime
    }

    pub fn log_start_offset(&self) -> Offset {
        self.shared.state.borrow().log_start
    }

    /// The next offset to be assigned (Kafka's log end offset).
    pub fn log_end_offset(&self) -> Offset {
        self.shared.state.borrow().log_end
    }

    /// Below this, records are readable: acknowledged under the flush policy and, for a
    /// replicated partition, below the high watermark (Kafka's high watermark).
    pub fn stable_offset(&self) -> Offset {
        self.shared.state.borrow().visible()
    }

    /// Below this, appends are durable here under the flush policy.
    pub fn durable_offset(&self) -> Offset {
        self.shared.state.borrow().stable()
    }

    /// Below this, records are acknowledged and in no open transaction: what `read_committed`
    /// consumers read (Kafka's last stable offset).
    pub fn last_stable_offset(&self) -> Offset {
        self.shared.state.borrow().last_stable()
    }

    /// Aborted transactions with records in `[from, upper)`, for `read_committed` fetches.
    pub fn aborted_transactions(&self, from: Offset, upper: Offset) -> Vec<producers::AbortedTransaction> {
        self.shared.state.borrow().producers.aborted_between(from.0, upper.0)
    }

    pub fn written_offset(&self) -> Offset {
        self.shared.state.borrow().written
    }

    pub fn synced_offset(&self) -> Offset {
        self.shared.state.borrow().synced
    }

    /// Bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.shared.state.borrow().segments.iter().map(|segment| segment.size_bytes).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.shared.state.borrow().segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<Offset> {
        self.shared.state.borrow().segments.iter().map(|segment| segment.base).collect()
    }

    /// Bytes held by the batch cache and its (hits, misses).
    pub fn cache_stats(&self) -> (usize, (u64, u64)) {
        let state = self.shared.state.borrow();
        (state.cache.bytes(), state.cache.hit_counts())
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_producers;
