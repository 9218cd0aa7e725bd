use super::index::{OffsetIndex, TimeIndex};
use crate::constants::IO_ALIGNMENT_BYTES;
use crate::io::ReadFile;
use crate::types::Offset;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One segment's metadata, held by the owning core. The file bytes in `[0, size_bytes)` are
/// whole valid batches holding offsets `[base, end)`; anything after `size_bytes` in the file
/// is either padding of the last O_DIRECT block or not yet acknowledged.
pub struct Segment {
    pub base: Offset,
    pub end: Offset,
    pub size_bytes: u64,
    pub index: OffsetIndex,
    pub time_index: TimeIndex,
    pub max_timestamp: Option<i64>,
    /// Bytes appended since the last offset index entry.
    pub bytes_since_index: u64,
    /// When the first batch went in (for `segment.ms`); set on load for recovered segments.
    pub first_append_at: Option<Instant>,
    pub reader: ReadFile,
}

/// The start of the O_DIRECT block holding file position `value`.
pub fn align_down(value: u64) -> u64 {
    value - value % IO_ALIGNMENT_BYTES as u64
}

pub fn log_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.log", base.0))
}

pub fn index_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.index", base.0))
}

pub fn time_index_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.timeindex", base.0))
}

/// The producers' state as of `offset` (see `producers`), saved at a roll or a clean close.
pub fn producers_path(dir: &Path, offset: Offset) -> PathBuf {
    dir.join(format!("{:020}.producers", offset.0))
}

/// The base offset named by a segment file name (`00000000000000000042.log` → 42).
pub fn parse_log_file_name(name: &str) -> Option<Offset> {
    parse_offset_file_name(name, ".log")
}

/// The offset named by a producer snapshot's file name.
pub fn parse_producers_file_name(name: &str) -> Option<Offset> {
    parse_offset_file_name(name, ".producers")
}

fn parse_offset_file_name(name: &str, suffix: &str) -> Option<Offset> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<i64>().ok().map(Offset)
}

impl Segment {
    pub fn new(base: Offset, reader: ReadFile) -> Segment {
        Segment {
            base,
            end: base,
            size_bytes: 0,
            index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            max_timestamp: None,
            bytes_since_index: 0,
            first_append_at: None,
            reader,
        }
    }

    pub fn relative(&self, offset: Offset) -> u32 {
        let relative = offset.0 - self.base.0;
        assert!(
            (0..=i64::from(u32::MAX)).contains(&relative),
            "offset {offset} outside segment {}",
            self.base
        );
        relative as u32
    }

    /// Accounts for a batch of offsets `[base, last]` and `bytes` bytes now written at
    /// `size_bytes`; adds index entries every `index_interval_bytes`, as Kafka does.
    pub fn record_batch(
        &mut self,
        base: Offset,
        last: Offset,
        max_timestamp: i64,
        bytes: u64,
        index_interval_bytes: u32,
    ) {
        assert!(base == self.end && last >= base, "batch [{base}, {last}] appended at {}", self.end);
        let position = self.size_bytes as u32;
        let max_timestamp = self.max_timestamp.map_or(max_timestamp, |ts| ts.max(max_timestamp));
        if self.size_bytes == 0 || self.bytes_since_index >= u64::from(index_interval_bytes) {
            if self.size_bytes > 0 {
                self.index.push(self.relative(last), position);
            }
            self.time_index.maybe_push(max_timestamp, self.relative(last));
            self.bytes_since_index = 0;
        }
        self.max_timestamp = Some(max_timestamp);
        self.bytes_since_index += bytes;
        self.size_bytes += bytes;
        self.end = last.next();
        self.first_append_at.get_or_insert_with(Instant::now);
    }

    /// The time index as it is persisted: with a final entry for the segment's largest
    /// timestamp, so retention and lookups know it without a scan.
    pub fn sealed_time_index(&self) -> TimeIndex {
        let mut sealed = self.time_index.clone();
        if let Some(max_timestamp) = self.max_timestamp
            && self.end > self.base
        {
            sealed.maybe_push(max_timestamp, self.relative(Offset(self.end.0 - 1)));
        }
        sealed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let path = log_path(Path::new("/d"), Offset(42));
        assert_eq!(path.to_str(), Some("/d/00000000000000000042.log"));
        assert_eq!(parse_log_file_name("00000000000000000042.log"), Some(Offset(42)));
        assert_eq!(parse_log_file_name("42.log"), None);
        assert_eq!(parse_log_file_name("0000000000000000004x.log"), None);
        assert_eq!(parse_log_file_name("00000000000000000042.index"), None);
    }
}
