//! Opening a log: finding its segments, trusting what a clean shutdown or a roll made durable,
//! and scanning the rest.
//!
//! - Segments before the last were sealed by a roll (synced, cut to size, indexes written);
//!   their index files are loaded and checked against the file, and rebuilt by a scan if
//!   missing or inconsistent.
//! - The last segment is trusted only if the `clean-shutdown` checkpoint describes it exactly;
//!   otherwise every batch in it is validated (length, magic, CRC32C, contiguous offsets) and
//!   the file is cut after the last valid one, dropping a torn or garbage tail.
//! - A segment that ends early or short of the next one's base means corruption in the
//!   middle: everything after the last valid batch goes, as Kafka does.
//!
//! The checkpoint is removed before the log accepts appends, so a crash from then on scans.
//!
//! Idempotent producers' state comes from the newest intact `<offset>.producers` snapshot at or
//! below the recovered log end, with the batches written after it replayed (`producers`).

use super::appender::{Appender, load_tail};
use super::checkpoint::{self, CLEAN_SHUTDOWN_FILE, CleanShutdown, LOG_START_FILE};
use super::epochs::{EPOCH_FILE, LeaderEpochs};
use super::index::{OffsetIndex, TimeIndex};
use super::producers::{Producers, Snapshot};
use super::reader::BatchReader;
use super::segment::{self, Segment};
use super::{LogConfig, LogError, LogState, ReadError, StorageError};
use crate::batch_cache::BatchCache;
use crate::constants::{ALLOCATED_AHEAD_BYTES_MAX, IO_ALIGNMENT_BYTES, SCAN_READ_BYTES};
use crate::io::{self, ReadFile, WriteFile};
use crate::types::{Offset, TimestampMs};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn storage(operation: &'static str) -> impl FnOnce(std::io::Error) -> LogError {
    move |error| LogError::Storage(StorageError::new(operation, error))
}

pub(super) async fn open(dir: &Path, config: LogConfig) -> Result<(LogState, Appender), LogError> {
    let (bases, snapshots) = list_files(dir).await.map_err(storage("list log directory"))?;
    let clean = io::read_small_file(&dir.join(CLEAN_SHUTDOWN_FILE))
        .await
        .map_err(storage("read clean-shutdown checkpoint"))?
        .and_then(|data| CleanShutdown::decode(&data));
    let persisted_start = io::read_small_file(&dir.join(LOG_START_FILE))
        .await
        .map_err(storage("read log start offset"))?
        .and_then(|data| checkpoint::decode_log_start(&data));

    let segments = open_segments(dir, &bases, clean, persisted_start, config.index_interval_bytes).await?;
    let active = segments.back().expect("at least one segment");
    let log_end = active.end;
    let first_base = segments.front().map_or(Offset(0), |first| first.base);
    let log_start = persisted_start.map_or(first_base, |start| start.max(first_base)).min(log_end);
    if persisted_start.is_some_and(|start| start > log_start) {
        // The data past the recorded start was lost (a machine crash under a policy that
        // does not sync before acknowledging): record the start the log really has, so records
        // appended from here on are not hidden after the next restart.
        io::write_file_atomic(&dir.join(LOG_START_FILE), checkpoint::encode_log_start(log_start))
            .await
            .map_err(storage("write log start offset"))?;
    }
    let producers = recover_producers(dir, &segments, &snapshots).await?;
    let epochs = recover_epochs(dir, log_start, log_end).await?;
    let active_path = segment::log_path(dir, active.base);
    let writer = WriteFile::open(&active_path, false).await.map_err(storage("open segment"))?;
    let tail = load_tail(&active.reader, active.size_bytes).await?;
    io::remove_file(&dir.join(CLEAN_SHUTDOWN_FILE))
        .await
        .map_err(storage("remove clean-shutdown checkpoint"))?;
    io::sync_dir(&active_path).await.map_err(storage("sync log directory"))?;

    let state = LogState::recovered(config, segments, log_start, producers, epochs);
    state.check_positions();
    Ok((state, Appender { writer, tail }))
}

/// The leader epoch checkpoint, cut to the log as recovered (entries past a crash's lost
/// tail, or before the start, go). A damaged file is dropped with a warning: OffsetForLeaderEpoch
/// then knows no epoch until the next is written.
async fn recover_epochs(dir: &Path, log_start: Offset, log_end: Offset) -> Result<LeaderEpochs, LogError> {
    let path = dir.join(EPOCH_FILE);
    let data = io::read_small_file(&path).await.map_err(storage("read leader epoch checkpoint"))?;
    let mut epochs = match data.map(|data| LeaderEpochs::decode(&data)) {
        Some(Some(epochs)) => epochs,
        Some(None) => {
            tracing::warn!(path = %path.display(), "ignoring a damaged leader epoch checkpoint");
            let mut empty = LeaderEpochs::default();
            empty.mark_dirty();
            empty
        }
        None => LeaderEpochs::default(),
    };
    epochs.truncate_from_end(log_end);
    epochs.truncate_from_start(log_start);
    Ok(epochs)
}

/// Opens every segment in order; stops (deleting the rest) after one that ends early. An
/// empty directory gets its first segment, at the persisted log start if there is one.
async fn open_segments(
    dir: &Path,
    bases: &[Offset],
    clean: Option<CleanShutdown>,
    persisted_start: Option<Offset>,
    index_interval_bytes: u32,
) -> Result<VecDeque<Segment>, LogError> {
    let mut segments: VecDeque<Segment> = VecDeque::new();
    for (at, &base) in bases.iter().enumerate() {
        let next_base = bases.get(at + 1).copied();
        let segment = open_segment(dir, base, next_base, clean, index_interval_bytes).await?;
        let complete = next_base.is_none_or(|next| segment.end == next);
        segments.push_back(segment);
        if !complete {
            tracing::warn!(dir = %dir.display(), segment = %base, "segment corrupt before its end; dropping later segments");
            for &later in &bases[at + 1..] {
                super::retention::remove_segment_files(dir, later).await.map_err(LogError::Storage)?;
            }
            break;
        }
    }
    if segments.is_empty() {
        let base = persisted_start.unwrap_or(Offset(0));
        let path = segment::log_path(dir, base);
        WriteFile::open(&path, true)
            .await
            .map_err(storage("create segment"))?
            .close()
            .await
            .map_err(storage("create segment"))?;
        io::sync_dir(&path).await.map_err(storage("sync log directory"))?;
        let reader = ReadFile::open(&path).map_err(storage("open segment"))?;
        segments.push_back(Segment::new(base, reader));
    }

    Ok(segments)
}

impl LogState {
    /// The state of a log just opened: everything in its files is written and synced.
    fn recovered(
        config: LogConfig,
        segments: VecDeque<Segment>,
        log_start: Offset,
        producers: Producers,
        epochs: LeaderEpochs,
    ) -> LogState {
        let log_end = segments.back().expect("at least one segment").end;
        LogState {
            cache: BatchCache::new(config.cache_bytes_max),
            config,
            segments,
            log_start,
            synced: log_end,
            written: log_end,
            log_end,
            unwritten: Default::default(),
            waiters: VecDeque::new(),
            commands: VecDeque::new(),
            failed: None,
            closing: false,
            truncating: None,
            truncations: 0,
            unsynced_records: 0,
            unsynced_bytes: 0,
            last_sync_at: Instant::now(),
            readers_waiting: Vec::new(),
            stable_notified: log_end,
            written_notified: log_end,
            high_watermark: None,
            producers,
            epochs,
        }
    }
}

/// The segment at `base`, from its index files when they can be trusted, else by a scan that
/// rebuilds them. A segment that is not the last must end where `next_base` begins.
async fn open_segment(
    dir: &Path,
    base: Offset,
    next_base: Option<Offset>,
    clean: Option<CleanShutdown>,
    index_interval_bytes: u32,
) -> Result<Segment, LogError> {
    let path = segment::log_path(dir, base);
    let reader = ReadFile::open(&path).map_err(storage("open segment"))?;
    let file_size = reader.file_size_bytes().map_err(storage("stat segment"))?;
    let trusted_end = match next_base {
        Some(next) => Some(next),
        None => {
            clean.filter(|c| c.active_base == base && c.active_size_bytes == file_size).map(|c| c.log_end)
        }
    };
    if let Some(end) = trusted_end
        && let Some(segment) = load_indexes(dir, base, end, file_size, reader.clone()).await?
    {
        return Ok(segment);
    }
    let segment = scan(base, reader.clone(), file_size, index_interval_bytes).await?;
    if segment.size_bytes < file_size {
        if allocated_ahead(&reader, segment.size_bytes, file_size).await? {
            tracing::info!(segment = %path.display(), bytes = file_size - segment.size_bytes, "cutting the blocks allocated ahead");
        } else {
            tracing::warn!(
                segment = %path.display(),
                valid_bytes = segment.size_bytes,
                file_bytes = file_size,
                "truncating invalid or torn tail"
            );
        }
        let writer = WriteFile::open(&path, false).await.map_err(storage("open segment"))?;
        writer.truncate(segment.size_bytes).await.map_err(storage("truncate torn tail"))?;
        writer.fdatasync().await.map_err(storage("fdatasync segment"))?;
        writer.close().await.map_err(storage("close segment"))?;
    }
    if next_base.is_some() {
        io::write_file_atomic(&segment::index_path(dir, base), segment.index.encode())
            .await
            .map_err(storage("write offset index"))?;
        io::write_file_atomic(&segment::time_index_path(dir, base), segment.sealed_time_index().encode())
            .await
            .map_err(storage("write time index"))?;
    }
    Ok(segment)
}

/// Whether the file's bytes `[from, to)` are zeros no longer than a writer allocates ahead of
/// its writes (`io::WriteFile`): what an open segment leaves past its last batch, not damage.
async fn allocated_ahead(reader: &ReadFile, from: u64, to: u64) -> Result<bool, LogError> {
    if to - from > ALLOCATED_AHEAD_BYTES_MAX {
        return Ok(false);
    }
    let start = segment::align_down(from);
    let len = (to - start).next_multiple_of(IO_ALIGNMENT_BYTES as u64) as usize;
    let bytes = reader.read_at(start, len).await.map_err(storage("read segment"))?;
    let skip = ((from - start) as usize).min(bytes.len());
    Ok(bytes.len() as u64 == to - start && bytes[skip..].iter().all(|&byte| byte == 0))
}

/// The segment described by its index files, if both exist and fit a segment of `file_size`
/// bytes holding offsets `[base, end)`.
async fn load_indexes(
    dir: &Path,
    base: Offset,
    end: Offset,
    file_size: u64,
    reader: ReadFile,
) -> Result<Option<Segment>, LogError> {
    if end < base || end.0 - base.0 > i64::from(i32::MAX) {
        return Ok(None);
    }
    let offsets = (end.0 - base.0) as u64;
    let index =
        io::read_small_file(&segment::index_path(dir, base)).await.map_err(storage("read offset index"))?;
    let time_index = io::read_small_file(&segment::time_index_path(dir, base))
        .await
        .map_err(storage("read time index"))?;
    let (Some(index), Some(time_index)) = (index, time_index) else { return Ok(None) };
    let (Some(index), Some(time_index)) =
        (OffsetIndex::decode(&index, file_size, offsets), TimeIndex::decode(&time_index, offsets))
    else {
        return Ok(None);
    };
    if (file_size > 0) != time_index.max_timestamp().is_some() || (file_size > 0) != (offsets > 0) {
        return Ok(None);
    }
    let mut segment = Segment::new(base, reader);
    segment.end = end;
    segment.size_bytes = file_size;
    segment.max_timestamp = time_index.max_timestamp();
    segment.bytes_since_index = file_size - u64::from(index.last_position());
    segment.index = index;
    segment.time_index = time_index;
    if file_size > 0 {
        segment.first_append_at = Some(Instant::now());
    }
    Ok(Some(segment))
}

/// Rebuilds a segment's metadata by validating its batches from the start; stops at the
/// first invalid byte or offset discontinuity. `size_bytes` of the result is the valid length.
async fn scan(
    base: Offset,
    reader: ReadFile,
    file_size: u64,
    index_interval_bytes: u32,
) -> Result<Segment, LogError> {
    let mut segment = Segment::new(base, reader.clone());
    let mut batches = BatchReader::new(reader, base, file_size);
    loop {
        match batches.batch_at(segment.size_bytes, SCAN_READ_BYTES).await {
            Ok(Some((header, bytes))) if plausible(&header, &segment) => {
                let last = Offset(header.last_offset());
                segment.record_batch(
                    segment.end,
                    last,
                    header.max_timestamp,
                    bytes.len() as u64,
                    index_interval_bytes,
                );
            }
            Ok(_) | Err(ReadError::Corrupt { .. }) | Err(ReadError::OffsetOutOfRange { .. }) => {
                return Ok(segment);
            }
            Err(ReadError::Storage(error)) => return Err(LogError::Storage(error)),
        }
    }
}

/// Whether a batch that passed its CRC also fits where it was found: next in offset order,
/// offsets consistent with its record count, within the segment's relative offset range.
fn plausible(header: &crate::batch::BatchHeader, segment: &Segment) -> bool {
    header.base_offset == segment.end.0
        && header.last_offset_delta >= 0
        && header.records_count > 0
        && header.records_count <= header.last_offset_delta.saturating_add(1)
        && header.last_offset() - segment.base.0 <= i64::from(i32::MAX)
}

/// Base offsets of the segment files in `dir` and offsets of its producer snapshots, both
/// ascending. Creates `dir` if missing and removes temporary files a crash left behind.
async fn list_files(dir: &Path) -> std::io::Result<(Vec<Offset>, Vec<Offset>)> {
    let dir: PathBuf = dir.to_path_buf();
    io::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let (mut bases, mut snapshots) = (Vec::new(), Vec::new());
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                std::fs::remove_file(entry.path())?;
            } else if let Some(base) = segment::parse_log_file_name(&name) {
                bases.push(base);
            } else if let Some(offset) = segment::parse_producers_file_name(&name) {
                snapshots.push(offset);
            }
        }
        bases.sort();
        snapshots.sort();
        Ok((bases, snapshots))
    })
    .await
}

/// Offsets of the producer snapshots in `dir`, ascending.
pub(super) async fn list_snapshots(dir: &Path) -> std::io::Result<Vec<Offset>> {
    Ok(list_files(dir).await?.1)
}

/// The idempotent producers' state at the log end: the newest intact snapshot at or below it,
/// then every batch written after it. Without one, every segment is replayed. Snapshots past
/// the log end (their data was lost) or superseded ones that name no segment are removed.
async fn recover_producers(
    dir: &Path,
    segments: &VecDeque<Segment>,
    snapshots: &[Offset],
) -> Result<Producers, LogError> {
    let log_end = segments.back().expect("at least one segment").end;
    let mut loaded = None;
    for &offset in snapshots.iter().rev().filter(|&&offset| offset <= log_end) {
        let data = io::read_small_file(&segment::producers_path(dir, offset))
            .await
            .map_err(storage("read producer snapshot"))?;
        match data.and_then(|data| Snapshot::decode(&data)).filter(|snapshot| snapshot.offset == offset.0) {
            Some(snapshot) => {
                loaded = Some((offset, Producers::from_snapshot(snapshot)));
                break;
            }
            None => tracing::warn!(dir = %dir.display(), %offset, "ignoring a damaged producer snapshot"),
        }
    }
    let loaded_at = loaded.as_ref().map(|(offset, _)| *offset);
    let (from, mut producers) = loaded.unwrap_or_else(|| (Offset(0), Producers::default()));
    let now = TimestampMs::now().0;
    for segment in segments.iter().filter(|segment| segment.end > from) {
        let mut position = if segment.base >= from {
            0
        } else {
            u64::from(segment.index.position_before(segment.relative(from)))
        };
        let mut batches = BatchReader::new(segment.reader.clone(), segment.base, segment.size_bytes);
        while let Some((header, bytes)) = batches.batch_at(position, SCAN_READ_BYTES).await? {
            if header.last_offset() >= from.0 {
                let commits = if header.is_control() { crate::batch::control_commits(&bytes) } else { None };
                producers.replay(&header, commits, now);
            }
            position += bytes.len() as u64;
        }
    }
    let bases: Vec<Offset> = segments.iter().map(|segment| segment.base).collect();
    for &offset in snapshots {
        let kept = loaded_at == Some(offset) || (offset <= log_end && bases.contains(&offset));
        if !kept {
            io::remove_file(&segment::producers_path(dir, offset))
                .await
                .map_err(storage("remove producer snapshot"))?;
        }
    }
    Ok(producers)
}
