//! The newest batches of one partition, in memory. Segments are written with O_DIRECT, which
//! bypasses the page cache, so tail reads (consumers keeping up) are served from here.
//!
//! Lives on the partition's owning core. Holds `Bytes` shared with the produce request that
//! brought the batch: a cached batch costs no copy beyond its 61-byte rewritten header.

use crate::batch::HEADER_BYTES;
use crate::types::Offset;
use bytes::Bytes;
use std::collections::VecDeque;

/// A batch as the log stores it: the rewritten header and the producer's bytes after it.
#[derive(Clone, Debug)]
pub struct StoredBatch {
    pub base: Offset,
    pub last: Offset,
    pub max_timestamp: i64,
    pub records: u32,
    /// The first `HEADER_BYTES` of the batch with offsets and epoch assigned.
    pub header: Bytes,
    /// The batch from byte `HEADER_BYTES` on, unchanged from the producer.
    pub body: Bytes,
}

impl StoredBatch {
    pub fn len(&self) -> usize {
        HEADER_BYTES + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Contiguous newest batches, bounded by bytes; evicts the oldest.
pub struct BatchCache {
    batches: VecDeque<StoredBatch>,
    bytes: usize,
    bytes_max: usize,
    hits: u64,
    misses: u64,
}

impl BatchCache {
    pub fn new(bytes_max: usize) -> BatchCache {
        BatchCache { batches: VecDeque::new(), bytes: 0, bytes_max, hits: 0, misses: 0 }
    }

    pub fn push(&mut self, batch: StoredBatch) {
        if let Some(newest) = self.batches.back() {
            assert!(batch.base == newest.last.next(), "cache must stay contiguous");
        }
        self.bytes += batch.len();
        self.batches.push_back(batch);
        while self.bytes > self.bytes_max {
            let Some(oldest) = self.batches.pop_front() else { break };
            self.bytes -= oldest.len();
        }
    }

    /// Drops every batch at or after `offset` (a batch boundary).
    pub fn truncate_from(&mut self, offset: Offset) {
        while self.batches.back().is_some_and(|newest| newest.base >= offset) {
            if let Some(newest) = self.batches.pop_back() {
                self.bytes -= newest.len();
            }
        }
    }

    /// Drops every batch wholly before `offset`.
    pub fn evict_before(&mut self, offset: Offset) {
        while self.batches.front().is_some_and(|oldest| oldest.last < offset) {
            if let Some(oldest) = self.batches.pop_front() {
                self.bytes -= oldest.len();
            }
        }
    }

    /// Whether `from` is in the cache or after it (a read from there would not go to disk).
    pub fn covers(&self, from: Offset) -> bool {
        self.batches.front().is_some_and(|oldest| oldest.base <= from)
    }

    /// The cached batches from the one holding `from`, or `None` if `from` is older than the
    /// cache. Stops before `upper`, and at `bytes_max` unless that would return nothing while
    /// `min_one` is set.
    pub fn read(
        &mut self,
        from: Offset,
        upper: Offset,
        bytes_max: usize,
        min_one: bool,
    ) -> Option<Vec<&StoredBatch>> {
        if !self.covers(from) {
            self.misses += 1;
            return None;
        }
        self.hits += 1;
        let start = self.batches.partition_point(|batch| batch.last < from);
        let mut taken = Vec::new();
        let mut bytes = 0;
        for batch in self.batches.range(start..) {
            if batch.last >= upper || (bytes + batch.len() > bytes_max && !(min_one && taken.is_empty())) {
                break;
            }
            bytes += batch.len();
            taken.push(batch);
        }
        Some(taken)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// (hits, misses) since the cache was made.
    pub fn hit_counts(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: i64, last: i64, body: usize) -> StoredBatch {
        StoredBatch {
            base: Offset(base),
            last: Offset(last),
            max_timestamp: 0,
            records: (last - base + 1) as u32,
            header: Bytes::from(vec![0; HEADER_BYTES]),
            body: Bytes::from(vec![0; body]),
        }
    }

    #[test]
    fn evicts_oldest_and_reads_within_bounds() {
        let mut cache = BatchCache::new(3 * (HEADER_BYTES + 39));
        for i in 0..5 {
            cache.push(batch(i * 2, i * 2 + 1, 39));
        }
        assert_eq!(cache.bytes(), 3 * 100);
        assert!(cache.read(Offset(3), Offset(100), usize::MAX, true).is_none(), "evicted");
        let read = cache.read(Offset(7), Offset(100), usize::MAX, true).expect("cached");
        assert_eq!(read.iter().map(|b| b.base.0).collect::<Vec<_>>(), vec![6, 8]);
        let read = cache.read(Offset(6), Offset(9), usize::MAX, true).expect("cached");
        assert_eq!(read.len(), 1, "batch straddling upper bound is not returned");
        let read = cache.read(Offset(6), Offset(100), 10, true).expect("cached");
        assert_eq!(read.len(), 1, "min_one returns one batch over the byte limit");
        let read = cache.read(Offset(6), Offset(100), 10, false).expect("cached");
        assert!(read.is_empty());
        cache.truncate_from(Offset(8));
        assert_eq!(cache.bytes(), 200);
        cache.evict_before(Offset(6));
        assert_eq!(cache.bytes(), 100);
    }
}
