//! Giving space back: retention by time and size (whole segments, oldest first, never the
//! active one) and DeleteRecords (moving the log start offset, durably).

use super::checkpoint::{self, LOG_START_FILE};
use super::segment;
use super::{Log, LogError, StorageError};
use crate::io;
use crate::types::{Offset, TimestampMs};
use std::path::Path;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub log_start: Offset,
}

impl Log {
    /// Deletes the oldest closed segments while their newest timestamp is older than
    /// `retention.ms` or the log without them is still at least `retention.bytes` (Kafka's
    /// rules), advancing the log start offset.
    pub async fn enforce_retention(&self, now: TimestampMs) -> Result<RetentionOutcome, LogError> {
        let (doomed, log_start) = {
            let mut state = self.shared.state.borrow_mut();
            let (retention_ms, retention_bytes) = (state.config.retention_ms, state.config.retention_bytes);
            let mut total: u64 = state.segments.iter().map(|segment| segment.size_bytes).sum();
            let mut doomed = Vec::new();
            while state.segments.len() > 1 {
                let oldest = state.segments.front().expect("more than one segment");
                let expired =
                    retention_ms.is_some_and(|ms| oldest.max_timestamp.is_some_and(|ts| ts < now.0 - ms));
                let oversize = retention_bytes.is_some_and(|bytes| total - oldest.size_bytes >= bytes);
                if !(expired || oversize) {
                    break;
                }
                total -= oldest.size_bytes;
                doomed.extend(state.segments.pop_front().map(|segment| (segment.base, segment.size_bytes)));
            }
            let first_base = state.segments.front().map_or(state.log_start, |first| first.base);
            state.log_start = state.log_start.max(first_base);
            let log_start = state.log_start;
            state.cache.evict_before(log_start);
            state.producers.forget_aborted_before(log_start.0);
            state.epochs.truncate_from_start(log_start);
            state.check_positions();
            (doomed, log_start)
        };
        for &(base, _) in &doomed {
            remove_segment_files(self.dir(), base).await.map_err(LogError::Storage)?;
        }
        Ok(RetentionOutcome {
            segments_deleted: doomed.len(),
            bytes_deleted: doomed.iter().map(|&(_, bytes)| bytes).sum(),
            log_start,
        })
    }

    /// Makes `offset` the log start offset (Kafka's DeleteRecords): records before it are no
    /// longer readable and segments wholly before it are deleted. Returns the log start offset
    /// after the call (the low watermark).
    pub async fn delete_records_before(&self, offset: Offset) -> Result<Offset, LogError> {
        let doomed = {
            let mut state = self.shared.state.borrow_mut();
            if state.truncating.is_some() {
                return Err(LogError::Truncating);
            }
            let stable = state.visible();
            if offset > stable {
                return Err(LogError::BeyondStable { requested: offset, stable });
            }
            if offset <= state.log_start {
                return Ok(state.log_start);
            }
            state.log_start = offset;
            state.cache.evict_before(offset);
            state.epochs.truncate_from_start(offset);
            state.producers.forget_aborted_before(offset.0);
            let mut doomed = Vec::new();
            while state.segments.len() > 1 && state.segments.front().is_some_and(|first| first.end <= offset)
            {
                doomed.extend(state.segments.pop_front().map(|segment| segment.base));
            }
            state.check_positions();
            doomed
        };
        io::write_file_atomic(&self.dir().join(LOG_START_FILE), checkpoint::encode_log_start(offset))
            .await
            .map_err(|e| LogError::Storage(StorageError::new("write log start offset", e)))?;
        for base in doomed {
            remove_segment_files(self.dir(), base).await.map_err(LogError::Storage)?;
        }
        Ok(offset)
    }
}

/// How long compaction waits for its copies to reach the in-sync replicas before giving up
/// (and deleting nothing).
const SUPERSEDE_REPLICATION_MAX: std::time::Duration = std::time::Duration::from_secs(30);

impl Log {
    /// Compaction for the coordinators' internal partitions, which are append-only: appends
    /// `batches` (the live state, written again) and, once they are durable, deletes every
    /// record before them. With no batches, everything stable is deleted.
    pub async fn supersede_with(&self, batches: &[bytes::Bytes]) -> Result<(), LogError> {
        let start = self.log_end_offset();
        let epoch = self.current_epoch();
        let mut last = None;
        for batch in batches {
            last = Some(self.append_from(batch, epoch, super::Origin::Coordinator)?);
        }
        if let Some(appended) = last {
            appended.durable.await?;
            // Followers move their log start with the leader's: the copies must be on every
            // in-sync replica before what they replace goes.
            self.await_committed(appended.last_offset, epoch, SUPERSEDE_REPLICATION_MAX).await?;
        }
        let from = if batches.is_empty() { self.stable_offset() } else { start };
        self.delete_records_before(from).await.map(|_| ())
    }
}

/// Removes a segment's log and index files and makes the removal durable. Readers that still
/// hold the file open finish their reads.
pub(super) async fn remove_segment_files(dir: &Path, base: Offset) -> Result<(), StorageError> {
    let paths = [
        segment::log_path(dir, base),
        segment::index_path(dir, base),
        segment::time_index_path(dir, base),
        segment::producers_path(dir, base),
    ];
    for path in &paths {
        io::remove_file(path).await.map_err(|e| StorageError::new("remove segment file", e))?;
    }
    io::sync_dir(&paths[0]).await.map_err(|e| StorageError::new("sync log directory", e))
}
