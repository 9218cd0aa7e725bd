//! The leader epoch cache: the first offset each leader epoch wrote, as Kafka keeps it in
//! `leader-epoch-checkpoint` (KIP-101, KIP-279). It answers OffsetForLeaderEpoch, with which a
//! consumer (KIP-320) or a follower finds where its copy of the log parted from the leader's.
//!
//! The file is Kafka's text format: a version line (`0`), a count line, then one
//! `EPOCH START_OFFSET` line per epoch. It is written before the first batch of a new epoch, so
//! a batch on disk never has an epoch the file lacks; entries past the log end after a crash
//! are dropped when the log opens.

use crate::types::{LeaderEpoch, Offset};

pub const EPOCH_FILE: &str = "leader-epoch-checkpoint";
const VERSION: &str = "0";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderEpochs {
    /// `(epoch, first offset)`, both ascending.
    entries: Vec<(LeaderEpoch, Offset)>,
    /// Changed since last written.
    dirty: bool,
}

impl LeaderEpochs {
    /// Notes that `epoch` wrote a batch at `offset`: a new epoch starts there. An epoch older
    /// than the latest (a coordinator rewriting old records) changes nothing.
    pub fn assign(&mut self, epoch: LeaderEpoch, offset: Offset) {
        if epoch.0 < 0 || self.latest().is_some_and(|latest| epoch <= latest) {
            return;
        }
        self.entries.push((epoch, offset));
        self.dirty = true;
    }

    pub fn latest(&self) -> Option<LeaderEpoch> {
        self.entries.last().map(|(epoch, _)| *epoch)
    }

    /// Forgets the epochs that start at or after `end` (the log was cut there).
    pub fn truncate_from_end(&mut self, end: Offset) {
        let keep = self.entries.partition_point(|(_, start)| *start < end);
        if keep < self.entries.len() {
            self.entries.truncate(keep);
            self.dirty = true;
        }
    }

    /// The log now starts at `start`: the epoch holding it starts there, older ones go.
    pub fn truncate_from_start(&mut self, start: Offset) {
        let before = self.entries.partition_point(|(_, first)| *first <= start);
        if before == 0 {
            return;
        }
        let (epoch, first) = self.entries[before - 1];
        if before > 1 || first < start {
            self.entries.drain(..before - 1);
            self.entries[0] = (epoch, start);
            self.dirty = true;
        }
    }

    /// Kafka's answer to OffsetForLeaderEpoch: the largest epoch at or below `epoch` and the
    /// offset where the next epoch began (the log end for the latest epoch); `(-1, -1)` when
    /// `epoch` is newer than every epoch here or none is known.
    pub fn end_offset_for(&self, epoch: LeaderEpoch, log_end: Offset) -> (LeaderEpoch, Offset) {
        const UNDEFINED: (LeaderEpoch, Offset) = (LeaderEpoch(-1), Offset(-1));
        if epoch.0 < 0 {
            return UNDEFINED;
        }
        if self.latest() == Some(epoch) {
            return (epoch, log_end);
        }
        let higher = self.entries.partition_point(|(known, _)| *known <= epoch);
        let Some(&(_, next_start)) = self.entries.get(higher) else { return UNDEFINED };
        match higher.checked_sub(1).map(|floor| self.entries[floor].0) {
            Some(floor) => (floor, next_start),
            // Older than every epoch kept: it ended where the oldest kept one began.
            None => (epoch, next_start),
        }
    }

    /// The file's contents, if changed since last taken.
    pub fn take_dirty(&mut self) -> Option<Vec<u8>> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(self.encode())
    }

    /// Marks the cache as not yet written (after a failed write).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut text = format!("{VERSION}\n{}\n", self.entries.len());
        for (epoch, start) in &self.entries {
            text.push_str(&format!("{} {}\n", epoch.0, start.0));
        }
        text.into_bytes()
    }

    /// Reads the file; `None` if it is not a version-0 checkpoint with ascending entries.
    pub fn decode(data: &[u8]) -> Option<LeaderEpochs> {
        let text = std::str::from_utf8(data).ok()?;
        let mut lines = text.lines();
        if lines.next()?.trim() != VERSION {
            return None;
        }
        let count: usize = lines.next()?.trim().parse().ok()?;
        let mut entries: Vec<(LeaderEpoch, Offset)> = Vec::with_capacity(count.min(1 << 16));
        for line in lines.by_ref().take(count) {
            let (epoch, start) = line.trim().split_once(' ')?;
            let entry = (LeaderEpoch(epoch.parse().ok()?), Offset(start.parse().ok()?));
            if entries.last().is_some_and(|last| last.0 >= entry.0 || last.1 > entry.1) {
                return None;
            }
            entries.push(entry);
        }
        (entries.len() == count).then_some(LeaderEpochs { entries, dirty: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epochs(entries: &[(i32, i64)]) -> LeaderEpochs {
        let mut cache = LeaderEpochs::default();
        for (epoch, start) in entries {
            cache.assign(LeaderEpoch(*epoch), Offset(*start));
        }
        cache
    }

    #[test]
    fn answers_as_kafka_does() {
        let cache = epochs(&[(1, 0), (3, 100), (4, 250)]);
        let end = Offset(300);
        let answer = |epoch| {
            let (epoch, offset) = cache.end_offset_for(LeaderEpoch(epoch), end);
            (epoch.0, offset.0)
        };
        assert_eq!(answer(4), (4, 300), "the latest epoch runs to the log end");
        assert_eq!(answer(3), (3, 250));
        assert_eq!(answer(2), (1, 100), "an epoch that wrote nothing: the one before it");
        assert_eq!(answer(1), (1, 100));
        assert_eq!(answer(0), (0, 0), "older than every epoch: it ended where the first began");
        assert_eq!(answer(5), (-1, -1), "newer than every epoch");
        assert_eq!(answer(-1), (-1, -1));
        assert_eq!(
            LeaderEpochs::default().end_offset_for(LeaderEpoch(0), end),
            (LeaderEpoch(-1), Offset(-1))
        );
    }

    #[test]
    fn truncation_keeps_what_the_log_holds() {
        let mut cache = epochs(&[(1, 0), (3, 100), (4, 250)]);
        cache.assign(LeaderEpoch(2), Offset(260));
        cache.assign(LeaderEpoch(4), Offset(270));
        assert_eq!(cache, epochs(&[(1, 0), (3, 100), (4, 250)]), "old or same epochs change nothing");
        cache.truncate_from_end(Offset(250));
        assert_eq!(cache.latest(), Some(LeaderEpoch(3)));
        cache.truncate_from_start(Offset(120));
        assert_eq!(cache.end_offset_for(LeaderEpoch(1), Offset(200)), (LeaderEpoch(1), Offset(120)));
        assert_eq!(cache.encode(), b"0\n1\n3 120\n");
        cache.truncate_from_start(Offset(50));
        assert_eq!(cache.encode(), b"0\n1\n3 120\n", "an earlier start changes nothing");
    }

    #[test]
    fn the_file_round_trips_and_damage_is_refused() {
        let mut cache = epochs(&[(0, 0), (7, 42)]);
        let bytes = cache.take_dirty().expect("dirty after assigning");
        assert_eq!(bytes, b"0\n2\n0 0\n7 42\n");
        assert!(cache.take_dirty().is_none());
        assert_eq!(LeaderEpochs::decode(&bytes), Some(LeaderEpochs { dirty: false, ..cache }));
        for bad in [&b"1\n0\n"[..], b"0\n2\n0 0\n", b"0\n2\n5 0\n3 10\n", b"0\n1\nx 1\n", b""] {
            assert_eq!(LeaderEpochs::decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
