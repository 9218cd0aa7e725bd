//! The batches a log has assigned offsets to and not yet written, and the segment writes they
//! are copied into as they come.
//!
//! A batch is copied into its write's aligned buffer when it is appended, while the append
//! has just received and checked it and its bytes are in the core's cache. The flusher used
//! to copy a round's batches when the write before it completed, milliseconds later, from
//! memory: that copy ran at about 8.5 GB/s where one from cache runs at 15-18 GB/s (2-vCPU
//! Intel VM). Copying at append time took max produce from 1176 / 1290 / 1228 / 1203 to
//! 1355 / 1449 / 1327 / 1301 MB/s, and the broker from 0.92-1.03 to 0.83-0.93 ms of CPU per
//! MB (alternating runs: broker on core 0, `ringmq bench produce --partitions 8` on core 1).
//!
//! A staged round is a forecast: the batches that, written after everything queued before
//! them, start at `position` in the active segment. The flusher writes it whole when its first
//! batch is next and the segment is `position` long. If it is not (the segment rolled by age
//! in between, or a write failed), the flusher drops it and every round after it and copies
//! their batches as they are written. A batch that would start a new segment is not staged,
//! nor any after it until the flusher has rolled: positions in the next segment are not
//! known before then.

use super::segment::align_down;
use crate::batch_cache::StoredBatch;
use crate::constants::{IO_ALIGNMENT_BYTES, WRITE_BYTES_MAX};
use crate::io::WriteBuf;
use crate::types::Offset;
use std::collections::VecDeque;

/// The smallest staged round's buffer.
const STAGED_BYTES_MIN: usize = 64 << 10;

#[derive(Default)]
pub(super) struct WriteQueue {
    /// In offset order; the flusher takes from the front.
    batches: VecDeque<StoredBatch>,
    /// Bytes of the batches queued and of those in the write under way: the next batch goes
    /// this far past the active segment's size.
    bytes: u64,
    /// In offset order, each over batches queued one after another; batches between them, or
    /// before the first, are not staged.
    staged: VecDeque<StagedRound>,
    /// The largest recent write's batch bytes (it falls by an eighth a write). A staged
    /// round's buffer holds twice as many, so that a write's batches fit one buffer under a
    /// load that varies (a round cut short by a full buffer is a write more, and a smaller
    /// one).
    recent_round_bytes: usize,
}

struct StagedRound {
    /// Where its first batch goes in the segment.
    position: u64,
    first: Offset,
    /// The offset after its last batch.
    end: Offset,
    /// Starts at the block holding `position`. Its bytes before `position` are the segment's
    /// partial last block, put in when it is written.
    buf: WriteBuf,
    /// Bytes filled from the start of `buf`, the partial block's included.
    filled: usize,
}

impl StagedRound {
    fn put(&mut self, batch: &StoredBatch) {
        put_batch(&mut self.buf, self.filled, batch);
        self.filled += batch.len();
        self.end = batch.last.next();
    }
}

/// Copies `batch` (its rewritten header, then the rest) into `buf` at `at`.
pub(super) fn put_batch(buf: &mut WriteBuf, at: usize, batch: &StoredBatch) {
    buf.put(at, &batch.header);
    buf.put(at + batch.header.len(), &batch.body);
}

impl WriteQueue {
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    pub fn front(&self) -> Option<&StoredBatch> {
        self.batches.front()
    }

    /// Bytes queued or being written.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Queues `batch`, copying it into a staged round if it will be written at segment
    /// position `stage_at`.
    pub fn push(&mut self, batch: StoredBatch, stage_at: Option<u64>) {
        self.bytes += batch.len() as u64;
        if let Some(position) = stage_at {
            self.stage(&batch, position);
        }
        self.batches.push_back(batch);
    }

    fn stage(&mut self, batch: &StoredBatch, position: u64) {
        if let Some(round) = self.staged.back_mut()
            && round.end == batch.base
            && round.buf.position() + round.filled as u64 == position
            && round.filled + batch.len() <= round.buf.len()
        {
            round.put(batch);
            return;
        }
        let start = align_down(position);
        let partial = (position - start) as usize;
        // A power of two: the buffer pool hands out no other sizes.
        let wanted =
            (2 * self.recent_round_bytes).clamp(STAGED_BYTES_MIN, WRITE_BYTES_MAX).next_power_of_two();
        let capacity = wanted.max((partial + batch.len()).next_multiple_of(IO_ALIGNMENT_BYTES));
        // When it is written, the writes before it will have ended at `position`.
        let buf = WriteBuf::new(start, capacity, position.next_multiple_of(IO_ALIGNMENT_BYTES as u64));
        let mut round = StagedRound { position, first: batch.base, end: batch.base, buf, filled: partial };
        round.put(batch);
        self.staged.push_back(round);
    }

    /// The next write, if its batches were staged for a segment `size` bytes long: the
    /// batches, taken, and the buffer holding them after `size % IO_ALIGNMENT_BYTES` bytes
    /// for the partial block, cut to the blocks they fill. Staged rounds that turned out wrong
    /// are dropped.
    pub fn take_staged(&mut self, size: u64) -> Option<(Vec<StoredBatch>, WriteBuf)> {
        let first = self.batches.front()?.base;
        let round = self.staged.front()?;
        if round.first > first {
            return None;
        }
        if round.first < first || round.position != size {
            tracing::debug!(staged_at = round.position, size, "staged segment writes dropped");
            self.staged.clear();
            return None;
        }
        let round = self.staged.pop_front()?;
        let mut batches = Vec::new();
        while self.batches.front().is_some_and(|batch| batch.base < round.end) {
            batches.extend(self.batches.pop_front());
        }
        let staged_bytes = round.filled - (size % IO_ALIGNMENT_BYTES as u64) as usize;
        assert_eq!(
            batches.iter().map(StoredBatch::len).sum::<usize>(),
            staged_bytes,
            "staged round out of step"
        );
        let mut buf = round.buf;
        buf.trim(round.filled);
        Some((batches, buf))
    }

    /// The front batch, unless a staged round starts with it.
    pub fn next_unstaged(&self) -> Option<&StoredBatch> {
        let next = self.batches.front()?;
        match self.staged.front() {
            Some(round) if round.first == next.base => None,
            _ => Some(next),
        }
    }

    pub fn pop(&mut self) -> Option<StoredBatch> {
        self.batches.pop_front()
    }

    /// A write of `bytes` of batches is in the segment.
    pub fn written(&mut self, bytes: usize) {
        self.bytes -= bytes as u64;
        self.recent_round_bytes = bytes.max(self.recent_round_bytes - self.recent_round_bytes / 8);
    }

    /// Forgets every queued batch, and the write under way, which failed.
    pub fn clear(&mut self) {
        self.batches.clear();
        self.staged.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::HEADER_BYTES;
    use crate::io::block_on;
    use bytes::Bytes;

    /// A batch at `base` of `len` bytes, each byte telling the batch and its place in it.
    fn batch(base: i64, len: usize) -> StoredBatch {
        let bytes: Vec<u8> = (0..len).map(|i| (base as usize * 31 + i % 251) as u8).collect();
        StoredBatch {
            base: Offset(base),
            last: Offset(base),
            max_timestamp: 0,
            records: 1,
            header: Bytes::copy_from_slice(&bytes[..HEADER_BYTES]),
            body: Bytes::copy_from_slice(&bytes[HEADER_BYTES..]),
        }
    }

    fn bytes_of(batches: &[StoredBatch]) -> Vec<u8> {
        batches.iter().flat_map(|batch| [batch.header.to_vec(), batch.body.to_vec()].concat()).collect()
    }

    fn bases(batches: &[StoredBatch]) -> Vec<i64> {
        batches.iter().map(|batch| batch.base.0).collect()
    }

    #[test]
    fn batches_queued_one_after_another_fill_one_write_behind_the_partial_block() {
        block_on(async {
            let mut queue = WriteQueue::default();
            let (first, second) = (batch(0, 1000), batch(1, 5000));
            queue.push(first.clone(), Some(4096 + 100));
            queue.push(second.clone(), Some(4096 + 1100));
            let (taken, buf) = queue.take_staged(4096 + 100).expect("the segment is where forecast");
            assert_eq!(bases(&taken), vec![0, 1]);
            assert_eq!(buf.position(), 4096, "starts at the partial block");
            assert_eq!(buf.len(), 8192, "cut to the blocks the batches fill");
            let expected = bytes_of(&[first, second]);
            assert_eq!(buf.to_vec(100..4096), expected[..3996].to_vec(), "the rewritten block");
            assert_eq!(buf.to_vec(4096..6100), expected[3996..].to_vec(), "the new block");
            assert!(queue.is_empty());
            queue.written(6000);
            assert_eq!(queue.bytes(), 0);
        });
    }

    #[test]
    fn a_round_forecast_for_another_position_is_dropped_with_every_round_after_it() {
        block_on(async {
            let mut queue = WriteQueue::default();
            queue.push(batch(0, 40 << 10), Some(0));
            queue.push(batch(1, 40 << 10), Some(40 << 10)); // past the first buffer: a second round
            queue.push(batch(2, 100), Some(80 << 10));
            assert_eq!(queue.staged.len(), 2);
            // A new segment came first (a roll by age): nothing is where it was forecast.
            assert!(queue.take_staged(1).is_none());
            assert!(queue.staged.is_empty(), "the rounds after it were forecast from it");
            assert_eq!(queue.next_unstaged().map(|next| next.base), Some(Offset(0)), "copied when written");
        });
    }

    #[test]
    fn unstaged_batches_go_first_then_the_staged_round_behind_them() {
        block_on(async {
            let mut queue = WriteQueue::default();
            queue.push(batch(0, 500), None); // would have started a new segment
            queue.push(batch(1, 700), Some(500));
            assert!(queue.take_staged(0).is_none(), "the front batch was not staged");
            assert_eq!(queue.next_unstaged().map(|next| next.base), Some(Offset(0)));
            assert_eq!(queue.pop().map(|popped| popped.base), Some(Offset(0)));
            assert!(queue.next_unstaged().is_none(), "the staged round starts here");
            let (taken, buf) = queue.take_staged(500).expect("staged");
            assert_eq!(bases(&taken), vec![1]);
            assert_eq!(buf.to_vec(500..1200), bytes_of(&taken));
            assert_eq!(queue.bytes(), 1200, "both in flight until written");
        });
    }

    #[test]
    fn buffers_grow_with_the_writes_up_to_the_largest_write() {
        block_on(async {
            let mut queue = WriteQueue::default();
            queue.push(batch(0, 100), Some(0));
            assert_eq!(queue.staged[0].buf.len(), STAGED_BYTES_MIN);
            let _round = queue.take_staged(0).expect("staged");
            queue.written(100);
            queue.push(batch(1, 300 << 10), Some(100));
            assert_eq!(queue.staged[0].buf.len(), (300 << 10) + 4096, "a batch larger than the buffer fits");
            let _round = queue.take_staged(100).expect("staged");
            queue.written(300 << 10);
            let mut size = 100 + (300 << 10);
            queue.push(batch(2, 100), Some(size));
            assert_eq!(queue.staged[0].buf.len(), 1 << 20, "twice the last write, in a power of two");
            let _round = queue.take_staged(size).expect("staged");
            queue.written(100);
            size += 100;
            queue.push(batch(3, 100), Some(size));
            assert_eq!(queue.staged[0].buf.len(), 1 << 20, "a short write after a long one keeps it");
            assert_eq!(queue.bytes(), 100);
        });
    }
}
