//! Sparse indexes of one segment, kept in memory and persisted in Kafka's file formats:
//! `.index` holds (relative offset u32, position u32) and `.timeindex` holds
//! (timestamp i64, relative offset u32), big-endian. An offset index entry names the last
//! offset of the batch that starts at its position, as Kafka's does.

const OFFSET_ENTRY_BYTES: usize = 8;
const TIME_ENTRY_BYTES: usize = 12;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetIndex {
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    /// Records that the batch at `position` ends at `relative_offset`. Both only grow.
    pub fn push(&mut self, relative_offset: u32, position: u32) {
        if let Some(&(last_offset, last_position)) = self.entries.last() {
            assert!(relative_offset > last_offset && position > last_position, "index not increasing");
        }
        self.entries.push((relative_offset, position));
    }

    /// The position of the last indexed batch whose last offset is at most `relative_offset`,
    /// or 0: scanning forward from there reaches the batch holding `relative_offset`.
    pub fn position_for(&self, relative_offset: u32) -> u32 {
        let after = self.entries.partition_point(|&(offset, _)| offset <= relative_offset);
        after.checked_sub(1).map_or(0, |at| self.entries[at].1)
    }

    /// Like `position_for`, but one entry earlier: the scan from there also passes every batch
    /// between the two entries.
    pub fn position_before(&self, relative_offset: u32) -> u32 {
        let after = self.entries.partition_point(|&(offset, _)| offset <= relative_offset);
        after.checked_sub(2).map_or(0, |at| self.entries[at].1)
    }

    /// The position of the last indexed batch, or 0.
    pub fn last_position(&self) -> u32 {
        self.entries.last().map_or(0, |&(_, position)| position)
    }

    /// Drops entries for batches at or after `position`.
    pub fn truncate_to_position(&mut self, position: u32) {
        let keep = self.entries.partition_point(|&(_, at)| at < position);
        self.entries.truncate(keep);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_BYTES);
        for (offset, position) in &self.entries {
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&position.to_be_bytes());
        }
        out
    }

    /// Decodes an index file, or `None` if it is not a valid index of a segment holding
    /// `segment_bytes` bytes and `offsets` offsets.
    pub fn decode(data: &[u8], segment_bytes: u64, offsets: u64) -> Option<OffsetIndex> {
        if !data.len().is_multiple_of(OFFSET_ENTRY_BYTES) {
            return None;
        }
        let mut index = OffsetIndex::default();
        for entry in data.chunks_exact(OFFSET_ENTRY_BYTES) {
            let offset = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
            let position = u32::from_be_bytes([entry[4], entry[5], entry[6], entry[7]]);
            let increasing = index.entries.last().is_none_or(|&(o, p)| offset > o && position > p);
            if !increasing || u64::from(position) >= segment_bytes || u64::from(offset) >= offsets {
                return None;
            }
            index.entries.push((offset, position));
        }
        Some(index)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimeIndex {
    entries: Vec<(i64, u32)>,
}

impl TimeIndex {
    /// Records that offsets up to `relative_offset` have timestamps of at most `timestamp`,
    /// if that says more than the last entry did.
    pub fn maybe_push(&mut self, timestamp: i64, relative_offset: u32) {
        match self.entries.last() {
            Some(&(last_ts, last_offset)) if timestamp <= last_ts || relative_offset <= last_offset => {}
            _ => self.entries.push((timestamp, relative_offset)),
        }
    }

    pub fn max_timestamp(&self) -> Option<i64> {
        self.entries.last().map(|&(ts, _)| ts)
    }

    /// A relative offset from which a scan finds the first batch with a timestamp of at least
    /// `timestamp`: every batch before it has smaller timestamps.
    pub fn scan_start_for(&self, timestamp: i64) -> u32 {
        let after = self.entries.partition_point(|&(ts, _)| ts < timestamp);
        after.checked_sub(1).map_or(0, |at| self.entries[at].1)
    }

    pub fn truncate_to_offset(&mut self, relative_offset: u32) {
        let keep = self.entries.partition_point(|&(_, offset)| offset < relative_offset);
        self.entries.truncate(keep);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_ENTRY_BYTES);
        for (timestamp, offset) in &self.entries {
            out.extend_from_slice(&timestamp.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
        }
        out
    }

    pub fn decode(data: &[u8], offsets: u64) -> Option<TimeIndex> {
        if !data.len().is_multiple_of(TIME_ENTRY_BYTES) {
            return None;
        }
        let mut index = TimeIndex::default();
        for entry in data.chunks_exact(TIME_ENTRY_BYTES) {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&entry[..8]);
            let timestamp = i64::from_be_bytes(ts);
            let offset = u32::from_be_bytes([entry[8], entry[9], entry[10], entry[11]]);
            let increasing = index.entries.last().is_none_or(|&(t, o)| timestamp > t && offset > o);
            if !increasing || u64::from(offset) >= offsets {
                return None;
            }
            index.entries.push((timestamp, offset));
        }
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_lookup_finds_the_floor_entry() {
        let mut index = OffsetIndex::default();
        index.push(9, 4096);
        index.push(19, 8192);
        assert_eq!(index.position_for(0), 0);
        assert_eq!(index.position_for(9), 4096);
        assert_eq!(index.position_for(15), 4096);
        assert_eq!(index.position_for(100), 8192);
        assert_eq!(index.position_before(100), 4096);
        assert_eq!(index.position_before(15), 0);
        let decoded = OffsetIndex::decode(&index.encode(), 10_000, 20).expect("round trip");
        assert_eq!(decoded, index);
        assert!(OffsetIndex::decode(&index.encode(), 8192, 20).is_none(), "position past end");
        assert!(OffsetIndex::decode(&index.encode()[..7], 10_000, 20).is_none());
        index.truncate_to_position(8192);
        assert_eq!(index.position_for(100), 4096);
    }

    #[test]
    fn time_lookup_never_skips_an_equal_timestamp() {
        let mut index = TimeIndex::default();
        index.maybe_push(100, 4);
        index.maybe_push(100, 8); // not larger: ignored
        index.maybe_push(200, 12);
        assert_eq!(index.scan_start_for(100), 0);
        assert_eq!(index.scan_start_for(101), 4);
        assert_eq!(index.scan_start_for(1000), 12);
        assert_eq!(TimeIndex::decode(&index.encode(), 13), Some(index.clone()));
        assert_eq!(TimeIndex::decode(&index.encode(), 12), None);
        assert_eq!(index.max_timestamp(), Some(200));
    }
}
