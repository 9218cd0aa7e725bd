//! Reads: from the batch cache when it holds the offset, else from the segment file with
//! O_DIRECT reads into aligned buffers that become `Bytes`; returned batches are slices of
//! those buffers or the cached `Bytes` themselves, never copies.
//!
//! Every batch read from a file is checked (length, magic, CRC32C) before it is returned:
//! the log never serves bytes it cannot vouch for.

use super::read_ahead;
use super::segment::{self, Segment};
use super::{Log, LogState, ReadError, StorageError};
use crate::batch::{self, BatchError, BatchHeader, HEADER_BYTES};
use crate::constants::{BATCH_BYTES_MAX, IO_ALIGNMENT_BYTES, READ_BYTES_MAX, SCAN_READ_BYTES};
use crate::io::ReadFile;
use crate::types::Offset;
use bytes::Bytes;

/// Bounds of one read.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// Stop before exceeding this many bytes...
    pub bytes_max: usize,
    /// ...unless it would return nothing and this is set: then one batch of any size comes
    /// back, as Kafka does for the first partition of a fetch.
    pub min_one: bool,
    /// Return only batches wholly below this offset. The log also never returns anything at
    /// or above its high watermark (`Log::stable_offset`), except to a follower
    /// (`read_for_replica`).
    pub upper: Offset,
}

/// Whole batches, as `Bytes` chunks to write to a socket in order.
#[derive(Debug, Default)]
pub struct ReadBatches {
    pub chunks: Vec<Bytes>,
    pub bytes: usize,
    pub batches: usize,
    /// The offset after the last batch returned (`from` if none was).
    pub next_offset: Offset,
    pub from_cache: bool,
}

impl ReadBatches {
    fn empty(from: Offset) -> ReadBatches {
        ReadBatches { next_offset: from, ..ReadBatches::default() }
    }

    /// The batches as one contiguous buffer (a copy: for tests and tools, not the fetch path).
    pub fn to_vec(&self) -> Vec<u8> {
        crate::metrics::count(|counters| counters.log_read_copied_bytes += self.bytes as u64);
        self.chunks.iter().flat_map(|chunk| chunk.iter().copied()).collect()
    }
}

/// Sequential, validated access to the batches of one segment file, reading ahead in aligned
/// chunks. Only bytes below `limit` (the segment's written size) are ever interpreted.
pub(super) struct BatchReader {
    file: ReadFile,
    segment: Offset,
    limit: u64,
    buf: Bytes,
    buf_start: u64,
    /// The log's truncation count, when a read-ahead (`read_ahead`) may stand in for a read.
    read_ahead: Option<u64>,
}

impl BatchReader {
    pub fn new(file: ReadFile, segment: Offset, limit: u64) -> BatchReader {
        BatchReader { file, segment, limit, buf: Bytes::new(), buf_start: 0, read_ahead: None }
    }

    fn corrupt(&self, position: u64, reason: BatchError) -> ReadError {
        ReadError::Corrupt { segment: self.segment, position, reason }
    }

    /// The validated batch starting at `position`, or `None` at the end of the segment.
    /// When it has to read, it reads at least `read_ahead` bytes.
    pub async fn batch_at(
        &mut self,
        position: u64,
        read_ahead: usize,
    ) -> Result<Option<(BatchHeader, Bytes)>, ReadError> {
        if position >= self.limit {
            return Ok(None);
        }
        let remaining = self.limit - position;
        if remaining < HEADER_BYTES as u64 {
            return Err(self
                .corrupt(position, BatchError::Truncated { need: HEADER_BYTES, have: remaining as usize }));
        }
        self.ensure(position, HEADER_BYTES, read_ahead).await?;
        let at = (position - self.buf_start) as usize;
        let header =
            BatchHeader::parse(&self.buf[at..], BATCH_BYTES_MAX).map_err(|e| self.corrupt(position, e))?;
        let total = header.total_bytes();
        if total as u64 > remaining {
            return Err(
                self.corrupt(position, BatchError::Truncated { need: total, have: remaining as usize })
            );
        }
        self.ensure(position, total, read_ahead).await?;
        let at = (position - self.buf_start) as usize;
        batch::validate(&self.buf[at..at + total], BATCH_BYTES_MAX).map_err(|e| self.corrupt(position, e))?;
        Ok(Some((header, self.buf.slice(at..at + total))))
    }

    /// Makes `[position, position + len)` available in `buf`.
    async fn ensure(&mut self, position: u64, len: usize, read_ahead: usize) -> Result<(), ReadError> {
        let buffered_end = self.buf_start + self.buf.len() as u64;
        if self.buf_start <= position && position + len as u64 <= buffered_end {
            return Ok(());
        }
        if let Some(truncations) = self.read_ahead
            && let Some((start, buf)) = read_ahead::take(&self.file, truncations, position, len as u64).await
        {
            self.buf = buf;
            self.buf_start = start;
            return Ok(());
        }
        let DiskRange { start, len: read_len, .. } =
            DiskRange::new(position, len.max(read_ahead.min(READ_BYTES_MAX)), self.limit);
        self.buf = self
            .file
            .read_at(start, read_len as usize)
            .await
            .map_err(|e| ReadError::Storage(StorageError::new("read segment", e)))?;
        self.buf_start = start;
        let have = self.buf.len() as u64 - (position - start).min(self.buf.len() as u64);
        if have < len as u64 {
            // The file is shorter than the size the log recorded for it.
            return Err(self.corrupt(position, BatchError::Truncated { need: len, have: have as usize }));
        }
        Ok(())
    }
}

/// Where the first record with a timestamp at or after a target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimestampLookup {
    pub offset: Offset,
    /// That record's timestamp.
    pub timestamp: i64,
}

enum Planned {
    Done(ReadBatches),
    Segment { view: SegmentView, upper: Offset, truncations: u64 },
}

/// What a read of `want` bytes from file position `position` asks the disk for, in a segment
/// whose first `limit` bytes are written: whole blocks from the one holding `position`, up to
/// `end`, the last byte it may interpret. `BatchReader` reads it, and `read_ahead` reads ahead
/// the very same range for the read to come.
pub(super) struct DiskRange {
    pub start: u64,
    pub len: u64,
    pub end: u64,
}

impl DiskRange {
    fn new(position: u64, want: usize, limit: u64) -> DiskRange {
        let start = segment::align_down(position);
        let end = (position + want as u64).min(limit);
        DiskRange { start, len: end.saturating_sub(start).next_multiple_of(IO_ALIGNMENT_BYTES as u64), end }
    }
}

/// Bytes a read from a segment asks the disk for at once: what the fetch may return and a
/// little more, so the batch that crosses `bytes_max` is usually whole in the same read.
fn read_len(limits: ReadLimits) -> usize {
    limits.bytes_max.saturating_add(SCAN_READ_BYTES / 16).min(READ_BYTES_MAX)
}

/// A segment's read handle and extent, taken so the read can await without borrowing state.
struct SegmentView {
    reader: ReadFile,
    base: Offset,
    size_bytes: u64,
    start_position: u64,
}

impl SegmentView {
    fn new(segment: &Segment, start_position: u32) -> SegmentView {
        SegmentView {
            reader: segment.reader.clone(),
            base: segment.base,
            size_bytes: segment.size_bytes,
            start_position: u64::from(start_position),
        }
    }
}

impl Log {
    /// Reads whole batches starting with the one holding `from`.
    pub async fn read(&self, from: Offset, limits: ReadLimits) -> Result<ReadBatches, ReadError> {
        self.read_within(from, limits, super::Bound::HighWatermark).await
    }

    /// Reads whole batches for a follower: everything written, the high watermark aside.
    pub async fn read_for_replica(&self, from: Offset, bytes_max: usize) -> Result<ReadBatches, ReadError> {
        let limits = ReadLimits { bytes_max, min_one: true, upper: Offset(i64::MAX) };
        self.read_within(from, limits, super::Bound::Written).await
    }

    async fn read_within(
        &self,
        from: Offset,
        limits: ReadLimits,
        bound: super::Bound,
    ) -> Result<ReadBatches, ReadError> {
        // A truncation that completes while the segment is being read may have cut what was
        // read: plan again. Truncations are rare (leader changes), so this loop is short.
        loop {
            let (view, upper, truncations) = match self.plan_read(from, limits, bound)? {
                Planned::Done(read) => return Ok(read),
                Planned::Segment { view, upper, truncations } => (view, upper, truncations),
            };
            let result = read_segment(view, from, upper, limits, truncations).await;
            if self.shared.state.borrow().truncations == truncations {
                if let Ok(read) = &result
                    && read.batches > 0
                {
                    self.read_ahead_from(read.next_offset, limits, bound);
                }
                return result;
            }
        }
    }

    /// Answers from the cache or says which segment to read, without awaiting.
    fn plan_read(&self, from: Offset, limits: ReadLimits, bound: super::Bound) -> Result<Planned, ReadError> {
        let mut state = self.shared.state.borrow_mut();
        if from < state.log_start || from > state.log_end {
            return Err(ReadError::OffsetOutOfRange {
                requested: from,
                log_start: state.log_start,
                log_end: state.log_end,
            });
        }
        let upper = state.read_upper(limits, bound);
        if from >= upper {
            return Ok(Planned::Done(ReadBatches::empty(from)));
        }
        if let Some(cached) = state.cache.read(from, upper, limits.bytes_max, limits.min_one) {
            let mut read = ReadBatches { from_cache: true, ..ReadBatches::empty(from) };
            for batch in cached {
                read.chunks.push(batch.header.clone());
                read.chunks.push(batch.body.clone());
                read.bytes += batch.len();
                read.batches += 1;
                read.next_offset = batch.last.next();
            }
            return Ok(Planned::Done(read));
        }
        let Some(view) = state.segment_view(from) else {
            return Ok(Planned::Done(ReadBatches::empty(from)));
        };
        Ok(Planned::Segment { view, upper, truncations: state.truncations })
    }

    /// After a read from disk that ended at `from`: starts reading what the next read from
    /// there will read, unless that read would be answered from the cache or find nothing.
    fn read_ahead_from(&self, from: Offset, limits: ReadLimits, bound: super::Bound) {
        let state = self.shared.state.borrow();
        if from >= state.read_upper(limits, bound) || state.cache.covers(from) {
            return;
        }
        let Some(view) = state.segment_view(from) else { return };
        read_ahead::start(read_ahead::Range {
            file: &view.reader,
            truncations: state.truncations,
            position: view.start_position,
            disk: DiskRange::new(view.start_position, read_len(limits), view.size_bytes),
        });
    }

    /// The first record carrying the log's largest timestamp (ListOffsets' MAX_TIMESTAMP,
    /// KIP-734), among readable records; `None` if the log holds none.
    pub async fn offset_of_max_timestamp(&self) -> Result<Option<TimestampLookup>, ReadError> {
        let max =
            self.shared.state.borrow().segments.iter().filter_map(|segment| segment.max_timestamp).max();
        match max {
            Some(max) => self.offset_for_timestamp(max).await,
            None => Ok(None),
        }
    }

    /// The first record whose timestamp is at or after `timestamp` (ListOffsets by time), among
    /// readable records. `None` if every record is older. The time index finds where to start;
    /// only the batch that holds the answer is decoded (ListOffsets is no hot path).
    pub async fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<TimestampLookup>, ReadError> {
        let (candidates, upper, log_start) = {
            let state = self.shared.state.borrow();
            let candidates: Vec<SegmentView> = state
                .segments
                .iter()
                .filter(|segment| segment.max_timestamp.is_some_and(|max| max >= timestamp))
                .map(|segment| {
                    let from = segment.time_index.scan_start_for(timestamp);
                    SegmentView::new(segment, segment.index.position_for(from))
                })
                .collect();
            (candidates, state.visible().min(state.truncating.unwrap_or(Offset(i64::MAX))), state.log_start)
        };
        for view in candidates {
            let mut batches = BatchReader::new(view.reader, view.base, view.size_bytes);
            let mut position = view.start_position;
            while let Some((header, bytes)) = batches.batch_at(position, SCAN_READ_BYTES).await? {
                if header.last_offset() >= upper.0 {
                    return Ok(None);
                }
                if header.max_timestamp >= timestamp
                    && let Some(found) = first_record_at(&header, &bytes, timestamp, log_start)
                {
                    return Ok(Some(found));
                }
                position += header.total_bytes() as u64;
            }
        }
        Ok(None)
    }
}

/// The first record of a batch at or after `timestamp` and at or after the log start
/// (DeleteRecords may have put it inside the batch). A LogAppendTime batch's records all have
/// its timestamp. If the records cannot be decoded (a codec this build lacks), the batch's
/// first readable offset and largest timestamp stand in.
fn first_record_at(
    header: &BatchHeader,
    bytes: &Bytes,
    timestamp: i64,
    log_start: Offset,
) -> Option<TimestampLookup> {
    let fallback = TimestampLookup {
        offset: Offset(header.base_offset).max(log_start),
        timestamp: header.max_timestamp,
    };
    if header.is_log_append_time() {
        return Some(fallback);
    }
    let mut buf = bytes.clone();
    let Ok(records) = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf) else {
        return Some(fallback);
    };
    records
        .records
        .iter()
        .find(|record| record.offset >= log_start.0 && record.timestamp >= timestamp)
        .map(|record| TimestampLookup { offset: Offset(record.offset), timestamp: record.timestamp })
}

impl LogState {
    /// The offset reads stop before: the high watermark (or what is written, for a follower),
    /// the caller's bound, and while a truncation runs, the offset it cuts to (only batches
    /// wholly below it are certain to stay).
    fn read_upper(&self, limits: ReadLimits, bound: super::Bound) -> Offset {
        let cutting = self.truncating.unwrap_or(Offset(i64::MAX));
        let ceiling = if bound == super::Bound::Written { self.written } else { self.visible() };
        limits.upper.min(ceiling).min(cutting)
    }

    /// The segment holding `from`, and where in it the scan for `from` starts.
    fn segment_view(&self, from: Offset) -> Option<SegmentView> {
        let segment = self.segments.iter().find(|segment| segment.end > from)?;
        let start = segment.index.position_for(segment.relative(from.max(segment.base)));
        Some(SegmentView::new(segment, start))
    }
}

async fn read_segment(
    view: SegmentView,
    from: Offset,
    upper: Offset,
    limits: ReadLimits,
    truncations: u64,
) -> Result<ReadBatches, ReadError> {
    let mut read = ReadBatches::empty(from);
    let mut batches = BatchReader::new(view.reader, view.base, view.size_bytes);
    batches.read_ahead = Some(truncations);
    let mut position = view.start_position;
    let read_ahead = read_len(limits);
    while let Some((header, bytes)) = batches.batch_at(position, read_ahead).await? {
        position += bytes.len() as u64;
        if header.last_offset() < from.0 {
            continue;
        }
        let over = read.bytes + bytes.len() > limits.bytes_max && !(limits.min_one && read.batches == 0);
        if header.last_offset() >= upper.0 || over {
            break;
        }
        read.bytes += bytes.len();
        read.batches += 1;
        read.next_offset = Offset(header.last_offset() + 1);
        read.chunks.push(bytes);
    }
    Ok(read)
}
