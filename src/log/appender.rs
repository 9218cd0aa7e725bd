//! The flusher: one task per log, the only code that writes its segment files.
//!
//! Each round takes everything queued (up to `WRITE_BYTES_MAX`), puts it behind the partial
//! last block of the segment in aligned buffers and writes it with one O_DIRECT io_uring
//! write (two where it rewrites that last block and goes on past it: `io::WriteBuf`),
//! rewriting that last block in place instead of leaving holes. The batches are in those
//! buffers already, copied as they were appended (`write_queue`), unless the round's forecast
//! failed; then they are copied here. Appends that arrive while a write is in flight go into
//! the next one: batches of many producers coalesce, and under `FsyncBeforeAck` they share
//! one fdatasync (group commit).

use super::checkpoint::{self, CLEAN_SHUTDOWN_FILE, CleanShutdown, LOG_START_FILE};
use super::producers::Snapshot;
use super::reader::BatchReader;
use super::segment::{self, Segment, align_down};
use super::write_queue;
use super::{AppendError, Command, FlushPolicy, LogError, LogState, Shared, StorageError};
use crate::batch_cache::StoredBatch;
use crate::constants::{IO_ALIGNMENT_BYTES, SCAN_READ_BYTES, UNSYNCED_BYTES_MAX, WRITE_BYTES_MAX};
use crate::io::{self, ReadFile, WriteFile};
use crate::types::Offset;
use std::rc::Rc;
use std::time::Instant;

/// The write side of the active segment, owned by the flusher task.
pub(super) struct Appender {
    pub writer: WriteFile,
    /// The bytes of the segment's last, partial block (`size_bytes % IO_ALIGNMENT_BYTES`).
    pub tail: Vec<u8>,
}

pub(super) async fn run(shared: Rc<Shared>, mut appender: Appender) {
    loop {
        let (has_pending, sync_now) = {
            let state = shared.state.borrow();
            let backlog_unsynced = state.unsynced_bytes >= UNSYNCED_BYTES_MAX;
            (
                !state.unwritten.is_empty(),
                sync_due(&state) && (state.unwritten.is_empty() || backlog_unsynced),
            )
        };
        if has_pending && !sync_now {
            write_round(&shared, &mut appender).await;
            continue;
        }
        if sync_now {
            sync(&shared, &appender).await;
            continue;
        }
        let command = shared.state.borrow_mut().commands.pop_front();
        let command_is_restart = matches!(command, Some(Command::Restart { .. }));
        match command {
            Some(Command::Truncate { offset, reply } | Command::Restart { offset, reply }) => {
                let result = match command_is_restart {
                    true => restart(&shared, &mut appender, offset).await,
                    false => truncate(&shared, &mut appender, offset).await,
                };
                let mut state = shared.state.borrow_mut();
                if let Err(LogError::Storage(error)) = &result {
                    // The files and the state may disagree now: trust neither until reopened.
                    state.fail(error.clone());
                }
                // Ended here, not by the caller, which may have stopped waiting.
                state.truncating = None;
                state.truncations += 1;
                drop(state);
                let _ignored = reply.send(result);
            }
            Some(Command::Close { reply }) => {
                let _ignored = reply.send(close(&shared, appender).await);
                return;
            }
            None => wait_for_work(&shared).await,
        }
    }
}

/// Sleeps until an append or command arrives, or the flush interval expires.
async fn wait_for_work(shared: &Shared) {
    let deadline = {
        let state = shared.state.borrow();
        match state.config.flush {
            FlushPolicy::Interval { interval: Some(interval), .. } if state.unsynced_records > 0 => {
                Some(interval.saturating_sub(state.last_sync_at.elapsed()))
            }
            _ => None,
        }
    };
    match deadline {
        Some(remaining) => futures_lite::future::or(shared.wake_flusher.wait(), io::sleep(remaining)).await,
        None => shared.wake_flusher.wait().await,
    }
}

fn sync_due(state: &LogState) -> bool {
    if state.failed.is_some() || state.unsynced_records == 0 {
        return false;
    }
    match state.config.flush {
        FlushPolicy::FsyncBeforeAck => true,
        FlushPolicy::Interval { messages, interval } => {
            messages.is_some_and(|messages| state.unsynced_records >= messages)
                || interval.is_some_and(|interval| state.last_sync_at.elapsed() >= interval)
        }
    }
}

/// Whether `batch`, going in at `size` bytes into the active segment, must start a new one.
pub(super) fn needs_roll(state: &LogState, size: u64, batch: &StoredBatch) -> bool {
    let active = state.active();
    if size == 0 {
        return false;
    }
    let full = size + batch.len() as u64 > state.config.segment_bytes;
    let old = match (state.config.segment_age_max, active.first_append_at) {
        (Some(age_max), Some(first)) => first.elapsed() >= age_max,
        _ => false,
    };
    full || old || relative_overflow(state, batch)
}

/// Whether `batch` would take the active segment's relative offsets past what its index holds.
fn relative_overflow(state: &LogState, batch: &StoredBatch) -> bool {
    batch.last.0 - state.active().base.0 > i64::from(i32::MAX)
}

/// Takes the queued batches that go into the active segment in this round, when they were
/// not staged: up to a staged round's first.
fn take_round(state: &mut LogState) -> Vec<StoredBatch> {
    let mut taken = Vec::new();
    let mut bytes = 0usize;
    while let Some(next) = state.unwritten.next_unstaged() {
        let over_write = bytes + next.len() > WRITE_BYTES_MAX;
        let over_segment =
            state.active().size_bytes + (bytes + next.len()) as u64 > state.config.segment_bytes;
        if !taken.is_empty() && (over_write || over_segment || relative_overflow(state, next)) {
            break;
        }
        bytes += next.len();
        taken.extend(state.unwritten.pop());
    }
    taken
}

async fn write_round(shared: &Shared, appender: &mut Appender) {
    let roll_at = {
        let state = shared.state.borrow();
        let size = state.active().size_bytes;
        state.unwritten.front().filter(|first| needs_roll(&state, size, first)).map(|first| first.base)
    };
    if let Some(base) = roll_at
        && let Err(error) = roll(shared, appender, base).await
    {
        fail_writes(shared, base, error);
        return;
    }
    let (batches, staged, size_before) = {
        let mut state = shared.state.borrow_mut();
        let size_before = state.active().size_bytes;
        let (batches, staged) = match state.unwritten.take_staged(size_before) {
            Some((batches, buf)) => (batches, Some(buf)),
            None => (take_round(&mut state), None),
        };
        (batches, staged, size_before)
    };
    let Some(first) = batches.first().map(|batch| batch.base) else { return };
    if let Err(error) = save_epochs(shared).await {
        fail_writes(shared, first, error);
        return;
    }

    let block_start = align_down(size_before);
    assert_eq!(appender.tail.len() as u64, size_before - block_start, "tail block out of step");
    let round_bytes = batches.iter().map(StoredBatch::len).sum::<usize>();
    let total = appender.tail.len() + round_bytes;
    let mut buf = match staged {
        Some(buf) => {
            crate::metrics::count(|c| c.disk_writes_staged += 1);
            buf
        }
        None => {
            let mut buf = appender.writer.alloc(block_start, total);
            let mut at = appender.tail.len();
            for batch in &batches {
                write_queue::put_batch(&mut buf, at, batch);
                at += batch.len();
            }
            buf
        }
    };
    buf.put(0, &appender.tail);
    buf.zero_from(total); // the padding of the last block: zeros, never stale memory
    let next_tail = buf.to_vec(align_down(total as u64) as usize..total);

    if let Err(error) = appender.writer.write(buf).await {
        let error = StorageError::new("write segment", error);
        // Drop whatever part of the failed write reached the file, so a later recovery cannot
        // resurrect batches that were never acknowledged. The next write rewrites the block.
        let _best_effort = appender.writer.truncate(size_before).await;
        fail_writes(shared, first, error);
        return;
    }
    appender.tail = next_tail;

    let mut state = shared.state.borrow_mut();
    state.unwritten.written(round_bytes);
    appender.writer.allocate_ahead(state.config.segment_bytes);
    let index_interval = state.config.index_interval_bytes;
    for batch in &batches {
        state.active_mut().record_batch(
            batch.base,
            batch.last,
            batch.max_timestamp,
            batch.len() as u64,
            index_interval,
        );
        state.unsynced_records += u64::from(batch.records);
        state.unsynced_bytes += batch.len() as u64;
    }
    state.written = batches.last().map_or(state.written, |batch| batch.last.next());
    state.ack_waiters();
}

/// A write failed: nothing from `first` on was acknowledged; forget it. The log keeps serving
/// reads and accepts appends again (a full disk may get space back).
fn fail_writes(shared: &Shared, first: Offset, error: StorageError) {
    tracing::warn!(dir = %shared.dir.display(), %error, offset = %first, "segment write failed");
    shared.state.borrow_mut().abandon_from(first, AppendError::Storage(error));
}

async fn sync(shared: &Shared, appender: &Appender) -> bool {
    let target = shared.state.borrow().written;
    match appender.writer.fdatasync().await {
        Ok(()) => {
            let mut state = shared.state.borrow_mut();
            state.synced = state.synced.max(target);
            if state.written == target {
                state.unsynced_records = 0;
                state.unsynced_bytes = 0;
            }
            state.last_sync_at = Instant::now();
            state.ack_waiters();
            true
        }
        Err(error) => {
            let error = StorageError::new("fdatasync segment", error);
            tracing::error!(dir = %shared.dir.display(), %error, "fdatasync failed; log refuses appends until reopened");
            shared.state.borrow_mut().fail(error);
            false
        }
    }
}

/// Makes the active segment durable and complete on disk: synced, cut to its logical size
/// (dropping the padding of its last block) and its indexes written.
async fn seal_active(shared: &Shared, appender: &Appender) -> Result<(), StorageError> {
    if !sync(shared, appender).await {
        return Err(shared.state.borrow().failed.clone().expect("a failed sync sets `failed`"));
    }
    let (size, base, index, time_index) = {
        let state = shared.state.borrow();
        let active = state.active();
        (active.size_bytes, active.base, active.index.encode(), active.sealed_time_index().encode())
    };
    appender.writer.truncate(size).await.map_err(|e| StorageError::new("truncate segment", e))?;
    appender.writer.fdatasync().await.map_err(|e| StorageError::new("fdatasync segment", e))?;
    io::write_file_atomic(&segment::index_path(&shared.dir, base), index)
        .await
        .map_err(|e| StorageError::new("write offset index", e))?;
    io::write_file_atomic(&segment::time_index_path(&shared.dir, base), time_index)
        .await
        .map_err(|e| StorageError::new("write time index", e))
}

/// Seals the active segment and starts a new one at `base`. If the new segment cannot be
/// set up, its file is removed again so the sealed segment stays the last one; if even that
/// fails, the log fails (its sealed index no longer describes what would be appended).
async fn roll(shared: &Shared, appender: &mut Appender, base: Offset) -> Result<(), StorageError> {
    assert_eq!(shared.state.borrow().written, base, "roll with unwritten batches before it");
    let started = Instant::now();
    seal_active(shared, appender).await?;
    save_producers(shared, base).await?;
    let path = segment::log_path(&shared.dir, base);
    let (writer, reader) = match open_new_segment(&path).await {
        Ok(opened) => opened,
        Err(error) => {
            let undone = io::remove_file(&path).await.and(io::sync_dir(&path).await);
            if let Err(cleanup) = undone {
                tracing::error!(segment = %path.display(), %cleanup, "cannot remove a half-made segment");
                shared.state.borrow_mut().fail(error.clone());
            }
            return Err(error);
        }
    };
    let previous = std::mem::replace(appender, Appender { writer, tail: Vec::new() });
    if let Err(error) = previous.writer.close().await {
        tracing::warn!(%error, "closing a sealed segment failed");
    }
    shared.state.borrow_mut().segments.push_back(Segment::new(base, reader));
    crate::metrics::count(|c| c.segment_roll.observe(started.elapsed()));
    Ok(())
}

/// Saves the idempotent producers' state as of `offset` (everything before it written) as the
/// snapshot a later open starts from.
/// Writes the leader epoch checkpoint if it changed: before the batches that start a new
/// epoch, so the file always knows the epoch of every batch on disk.
async fn save_epochs(shared: &Shared) -> Result<(), StorageError> {
    let Some(bytes) = shared.state.borrow_mut().epochs.take_dirty() else { return Ok(()) };
    let written = io::write_file_atomic(&shared.dir.join(super::epochs::EPOCH_FILE), bytes).await;
    written.map_err(|error| {
        shared.state.borrow_mut().epochs.mark_dirty();
        StorageError::new("write leader epoch checkpoint", error)
    })
}

async fn save_producers(shared: &Shared, offset: Offset) -> Result<(), StorageError> {
    let snapshot: Snapshot = shared.state.borrow().producers.snapshot_at(offset.0);
    let data = snapshot
        .encode()
        .map_err(|e| StorageError::new("encode producer snapshot", std::io::Error::other(e)))?;
    io::write_file_atomic(&segment::producers_path(&shared.dir, offset), data)
        .await
        .map_err(|e| StorageError::new("write producer snapshot", e))
}

async fn open_new_segment(path: &std::path::Path) -> Result<(WriteFile, ReadFile), StorageError> {
    let writer = WriteFile::open(path, true).await.map_err(|e| StorageError::new("create segment", e))?;
    let reader = ReadFile::open(path).map_err(|e| StorageError::new("open segment", e))?;
    io::sync_dir(path).await.map_err(|e| StorageError::new("sync log directory", e))?;
    Ok((writer, reader))
}

async fn close(shared: &Shared, appender: Appender) -> Result<(), LogError> {
    let failed = shared.state.borrow().failed.clone();
    if let Some(error) = failed {
        // A clean-shutdown checkpoint would vouch for data of unknown durability. Closed all
        // the same: an allocation under way is waited for here, not by blocking in a drop.
        let _already_failed = appender.writer.close().await;
        return Err(LogError::Failed(error));
    }
    seal_active(shared, &appender).await.map_err(LogError::Storage)?;
    save_epochs(shared).await.map_err(LogError::Storage)?;
    let log_end = shared.state.borrow().log_end;
    save_producers(shared, log_end).await.map_err(LogError::Storage)?;
    let checkpoint = {
        let state = shared.state.borrow();
        let active = state.active();
        CleanShutdown {
            active_base: active.base,
            active_size_bytes: active.size_bytes,
            log_end: state.log_end,
        }
    };
    appender.writer.close().await.map_err(|e| LogError::Storage(StorageError::new("close segment", e)))?;
    io::write_file_atomic(&shared.dir.join(CLEAN_SHUTDOWN_FILE), checkpoint.encode())
        .await
        .map_err(|e| LogError::Storage(StorageError::new("write clean-shutdown checkpoint", e)))
}

/// Cuts the log so that `offset` is the next offset. Runs with nothing queued.
async fn truncate(shared: &Shared, appender: &mut Appender, offset: Offset) -> Result<(), LogError> {
    let (log_start, log_end) = {
        let state = shared.state.borrow();
        (state.log_start, state.log_end)
    };
    if offset >= log_end {
        return Ok(());
    }
    if offset < log_start {
        return Err(LogError::BelowLogStart(offset));
    }
    // Segments wholly at or after `offset` go, except one to append to.
    let doomed: Vec<Offset> = {
        let mut state = shared.state.borrow_mut();
        let mut doomed = Vec::new();
        while state.segments.len() > 1 && state.active().base >= offset {
            doomed.extend(state.segments.pop_back().map(|segment| segment.base));
        }
        doomed
    };
    if !doomed.is_empty() {
        let (path, size, reader) = {
            let state = shared.state.borrow();
            let active = state.active();
            (segment::log_path(&shared.dir, active.base), active.size_bytes, active.reader.clone())
        };
        let writer = WriteFile::open(&path, false).await.map_err(|e| storage("open segment", e))?;
        let previous = std::mem::replace(appender, Appender { writer, tail: Vec::new() });
        let _closing_a_doomed_file = previous.writer.close().await;
        appender.tail = load_tail(&reader, size).await?;
        for base in doomed {
            super::retention::remove_segment_files(&shared.dir, base).await.map_err(LogError::Storage)?;
        }
    }
    let (cut_position, new_end, scanned_max_timestamp) = find_cut(shared, offset).await?;
    if new_end < log_start {
        // The cut batch held the log start (DeleteRecords inside it): the start moves back to
        // the batch's base, as the log cannot start past its end.
        io::write_file_atomic(&shared.dir.join(LOG_START_FILE), checkpoint::encode_log_start(new_end))
            .await
            .map_err(|e| storage("write log start offset", e))?;
    }
    for snapshot in
        super::recovery::list_snapshots(&shared.dir).await.map_err(|e| storage("list log directory", e))?
    {
        if snapshot > new_end {
            io::remove_file(&segment::producers_path(&shared.dir, snapshot))
                .await
                .map_err(|e| storage("remove producer snapshot", e))?;
        }
    }
    appender.writer.truncate(cut_position).await.map_err(|e| storage("truncate segment", e))?;
    appender.writer.fdatasync().await.map_err(|e| storage("fdatasync segment", e))?;
    let reader = shared.state.borrow().active().reader.clone();
    appender.tail = load_tail(&reader, cut_position).await?;

    let mut state = shared.state.borrow_mut();
    let active = state.active_mut();
    active.size_bytes = cut_position;
    active.end = new_end;
    active.index.truncate_to_position(cut_position as u32);
    let relative_end = active.relative(new_end);
    active.time_index.truncate_to_offset(relative_end);
    active.max_timestamp = match (active.time_index.max_timestamp(), scanned_max_timestamp) {
        (Some(indexed), Some(scanned)) => Some(indexed.max(scanned)),
        (indexed, scanned) => indexed.or(scanned),
    };
    active.bytes_since_index = 0;
    state.log_start = state.log_start.min(new_end);
    state.log_end = new_end;
    state.written = new_end;
    state.synced = new_end;
    state.unsynced_records = 0;
    state.unsynced_bytes = 0;
    state.cache.truncate_from(new_end);
    state.producers.truncate_from(new_end.0);
    state.epochs.truncate_from_end(new_end);
    state.check_positions();
    Ok(())
}

/// Empties the log and starts it at `offset`, beyond its end: cut to its start, a new segment
/// at `offset`, every older segment removed, the log start checkpointed; producers and leader
/// epochs start afresh (they come again with the batches copied from there).
async fn restart(shared: &Shared, appender: &mut Appender, offset: Offset) -> Result<(), LogError> {
    let log_start = shared.state.borrow().log_start;
    if offset <= shared.state.borrow().log_end {
        return Err(LogError::RestartWithinLog(offset));
    }
    truncate(shared, appender, log_start).await?;
    {
        let mut state = shared.state.borrow_mut();
        state.producers = super::producers::Producers::default();
        state.epochs.truncate_from_end(Offset(0));
        state.cache.truncate_from(Offset(0));
        // Nothing lies between the old end and `offset`: the new segment begins the log there.
        state.log_end = offset;
        state.written = offset;
        state.synced = offset;
    }
    roll(shared, appender, offset).await.map_err(LogError::Storage)?;
    let doomed: Vec<Offset> = {
        let mut state = shared.state.borrow_mut();
        let mut doomed = Vec::new();
        while state.segments.len() > 1 {
            doomed.extend(state.segments.pop_front().map(|segment| segment.base));
        }
        state.log_start = offset;
        doomed
    };
    io::write_file_atomic(&shared.dir.join(LOG_START_FILE), checkpoint::encode_log_start(offset))
        .await
        .map_err(|e| storage("write log start offset", e))?;
    for base in doomed {
        super::retention::remove_segment_files(&shared.dir, base).await.map_err(LogError::Storage)?;
    }
    save_epochs(shared).await.map_err(LogError::Storage)?;
    shared.state.borrow().check_positions();
    Ok(())
}

fn storage(operation: &'static str, error: std::io::Error) -> LogError {
    LogError::Storage(StorageError::new(operation, error))
}

/// In the active segment: the byte position of the first batch holding `offset` or later,
/// the offset the log ends at once cut there, and the largest timestamp among the batches
/// scanned before the cut. The scan starts one index entry early so that, with the time index
/// entries before it, every kept batch's timestamp is accounted for.
async fn find_cut(shared: &Shared, offset: Offset) -> Result<(u64, Offset, Option<i64>), LogError> {
    let (reader, base, size, start) = {
        let state = shared.state.borrow();
        let active = state.active();
        let start = active.index.position_before(active.relative(offset.max(active.base)));
        (active.reader.clone(), active.base, active.size_bytes, u64::from(start))
    };
    let mut batches = BatchReader::new(reader, base, size);
    let mut position = start;
    let mut end = base;
    let mut max_timestamp = None;
    while let Some((header, _)) = batches.batch_at(position, SCAN_READ_BYTES).await? {
        if header.last_offset() >= offset.0 {
            end = Offset(header.base_offset);
            break;
        }
        max_timestamp =
            Some(max_timestamp.map_or(header.max_timestamp, |ts: i64| ts.max(header.max_timestamp)));
        position += header.total_bytes() as u64;
        end = Offset(header.last_offset() + 1);
    }
    Ok((position, end, max_timestamp))
}

/// The partial last block of a segment of `size` bytes, read back from the file.
pub(super) async fn load_tail(reader: &ReadFile, size: u64) -> Result<Vec<u8>, LogError> {
    let partial = (size % IO_ALIGNMENT_BYTES as u64) as usize;
    if partial == 0 {
        return Ok(Vec::new());
    }
    let block = reader
        .read_at(align_down(size), IO_ALIGNMENT_BYTES)
        .await
        .map_err(|e| storage("read tail block", e))?;
    if block.len() < partial {
        return Err(storage("read tail block", std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(block[..partial].to_vec())
}
