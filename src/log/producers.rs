//! Idempotent producers: what a partition remembers of each producer id so a retried batch is
//! acknowledged without being appended twice and a gap or a zombie is refused (Kafka's
//! ProducerStateManager).
//!
//! Each producer keeps the last batches it appended (their sequence and offset ranges, at
//! most `BATCHES_RETAINED`): a batch that matches one of them is a duplicate; any other must
//! carry the next sequence of the producer's current epoch, or sequence 0 of a newer epoch.
//!
//! The state is updated when offsets are assigned, before the batch is written, so the next
//! in-flight request sees it. A write that fails takes its batches back (`truncate_from`),
//! restoring each producer to what it was before them. The state as of an offset is saved
//! beside the log (`<offset>.producers`, rkyv, CRC32) when a segment is rolled and when the log
//! closes; opening loads the newest one and replays batch headers written after it.

use crate::batch::{self, BatchHeader};
use std::collections::{HashMap, VecDeque};

/// Batches remembered per producer for deduplication: Kafka's producers keep at most five
/// requests in flight per partition, so a retry is always among the last five.
pub const BATCHES_RETAINED: usize = 5;

/// One batch a producer appended: enough to recognise its retry and to continue its sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AppendedBatch {
    pub epoch: i16,
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

impl AppendedBatch {
    fn of(header: &BatchHeader, first_offset: i64) -> AppendedBatch {
        AppendedBatch {
            epoch: header.producer_epoch,
            first_sequence: header.base_sequence,
            last_sequence: header.last_sequence(),
            first_offset,
            last_offset: first_offset + i64::from(header.last_offset_delta),
        }
    }
}

/// What one producer has appended to this partition, oldest first. One more batch than
/// `BATCHES_RETAINED` is kept: the oldest only says what the producer was before the others,
/// so that taking the newer ones back (a failed write) leaves the producer where it was.
#[derive(Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Producer {
    pub batches: VecDeque<AppendedBatch>,
    /// Broker time of its last append, for expiry (`producer_id_expiration_ms`).
    pub last_append_ms: i64,
}

impl Producer {
    fn last(&self) -> Option<&AppendedBatch> {
        self.batches.back()
    }

    fn push(&mut self, batch: AppendedBatch, now_ms: i64) {
        self.batches.push_back(batch);
        while self.batches.len() > BATCHES_RETAINED + 1 {
            self.batches.pop_front();
        }
        self.last_append_ms = now_ms;
    }

    /// The retained batch `header` repeats, if it is a retry of one.
    fn duplicate_of(&self, header: &BatchHeader) -> Option<&AppendedBatch> {
        let last_sequence = header.last_sequence();
        self.batches.iter().rev().take(BATCHES_RETAINED).find(|batch| {
            batch.epoch == header.producer_epoch
                && batch.first_sequence == header.base_sequence
                && batch.last_sequence == last_sequence
        })
    }
}

/// Why a producer's batch is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("producer {producer_id} epoch {epoch} is older than its current epoch {current}")]
    InvalidEpoch { producer_id: i64, epoch: i16, current: i16 },
    #[error("producer {producer_id} sent sequence {sequence} after {last} (epoch {epoch})")]
    OutOfOrder { producer_id: i64, epoch: i16, sequence: i32, last: i32 },
}

/// What to do with a producer's batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A new batch, next in its producer's sequence: append it.
    Append,
    /// A retry of a batch already in the log at these offsets: answer with them, append nothing.
    Duplicate { first_offset: i64, last_offset: i64 },
}

/// Decides on `header` (a batch with a producer id) given what its producer last appended:
/// `last` is the producer's newest batch, `producer` its retained history (both `None` for a
/// producer this partition does not know, which may start at any sequence, as in Kafka since
/// KIP-360).
pub fn check(
    producer: Option<&Producer>,
    last: Option<&AppendedBatch>,
    header: &BatchHeader,
) -> Result<Verdict, SequenceError> {
    let Some(last) = last else { return Ok(Verdict::Append) };
    let (producer_id, epoch) = (header.producer_id, header.producer_epoch);
    if epoch < last.epoch {
        return Err(SequenceError::InvalidEpoch { producer_id, epoch, current: last.epoch });
    }
    if let Some(duplicate) = producer.and_then(|producer| producer.duplicate_of(header)) {
        return Ok(Verdict::Duplicate {
            first_offset: duplicate.first_offset,
            last_offset: duplicate.last_offset,
        });
    }
    let in_sequence = if epoch > last.epoch {
        header.base_sequence == 0
    } else {
        header.base_sequence == batch::sequence_after(last.last_sequence, 1)
    };
    if !in_sequence {
        return Err(SequenceError::OutOfOrder {
            producer_id,
            epoch,
            sequence: header.base_sequence,
            last: last.last_sequence,
        });
    }
    Ok(Verdict::Append)
}

/// Every producer known to one partition.
#[derive(Debug, Default)]
pub struct Producers {
    producers: HashMap<i64, Producer>,
}

impl Producers {
    pub fn get(&self, producer_id: i64) -> Option<&Producer> {
        self.producers.get(&producer_id)
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Checks `header`, a batch that would be appended at `first_offset`, against what is known
    /// plus `staged` (batches of the same request checked before it, not yet recorded).
    pub fn check(
        &self,
        staged: &[(i64, AppendedBatch)],
        header: &BatchHeader,
    ) -> Result<Verdict, SequenceError> {
        let producer = self.producers.get(&header.producer_id);
        let staged_last =
            staged.iter().rev().find(|(id, _)| *id == header.producer_id).map(|(_, batch)| batch);
        check(producer, staged_last.or_else(|| producer.and_then(Producer::last)), header)
    }

    /// The entry for a batch that passed `check` and is appended at `first_offset`.
    pub fn staged(header: &BatchHeader, first_offset: i64) -> (i64, AppendedBatch) {
        (header.producer_id, AppendedBatch::of(header, first_offset))
    }

    /// Records batches that passed `check` and were given their offsets.
    pub fn record(&mut self, staged: impl IntoIterator<Item = (i64, AppendedBatch)>, now_ms: i64) {
        for (producer_id, batch) in staged {
            self.producers.entry(producer_id).or_default().push(batch, now_ms);
        }
    }

    /// Records a batch read back from the log (recovery), without checking it: the log is the
    /// truth. Control batches and batches without a producer id change nothing here.
    pub fn replay(&mut self, header: &BatchHeader, now_ms: i64) {
        if header.has_producer_id() && !header.is_control() {
            self.record([Producers::staged(header, header.base_offset)], now_ms);
        }
    }

    /// Forgets every batch at or after `offset` (a failed write, a truncation): each producer
    /// goes back to its state before them. A producer left with no batch is forgotten, and is
    /// then accepted at any sequence, as a producer the partition never saw.
    pub fn truncate_from(&mut self, offset: i64) {
        self.producers.retain(|_, producer| {
            while producer.batches.back().is_some_and(|batch| batch.last_offset >= offset) {
                producer.batches.pop_back();
            }
            !producer.batches.is_empty()
        });
    }

    /// Forgets producers that appended nothing since `before_ms` (Kafka's
    /// `producer.id.expiration.ms`). Returns how many went.
    pub fn expire(&mut self, before_ms: i64) -> usize {
        let count = self.producers.len();
        self.producers.retain(|_, producer| producer.last_append_ms >= before_ms);
        count - self.producers.len()
    }

    /// The producers as they were just before `offset`: what a snapshot at `offset` holds.
    pub fn as_of(&self, offset: i64) -> Vec<(i64, Producer)> {
        let mut copy = Producers { producers: self.producers.clone() };
        copy.truncate_from(offset);
        let mut producers: Vec<(i64, Producer)> = copy.producers.into_iter().collect();
        producers.sort_by_key(|(id, _)| *id);
        producers
    }

    pub fn from_snapshot(snapshot: Snapshot) -> Producers {
        Producers { producers: snapshot.producers.into_iter().collect() }
    }
}

/// The producers of a partition as of `offset`, saved to `<offset>.producers`.
#[derive(Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Snapshot {
    pub offset: i64,
    pub producers: Vec<(i64, Producer)>,
}

const SNAPSHOT_MAGIC: &[u8; 4] = b"RMQP";

impl Snapshot {
    /// Magic, rkyv body, CRC32 of the body (little endian).
    pub fn encode(&self) -> Result<Vec<u8>, rkyv::rancor::Error> {
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(self)?;
        let mut out = Vec::with_capacity(body.len() + 8);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        Ok(out)
    }

    /// `None` for anything but an intact snapshot: bad magic, checksum or structure.
    pub fn decode(data: &[u8]) -> Option<Snapshot> {
        let body = data.strip_prefix(SNAPSHOT_MAGIC)?;
        let (body, crc) = body.split_at_checked(body.len().checked_sub(4)?)?;
        if crc32fast::hash(body).to_le_bytes() != crc {
            return None;
        }
        // rkyv reads archived data at its alignment; the body sits 4 bytes into the file.
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
        aligned.extend_from_slice(body);
        rkyv::from_bytes::<Snapshot, rkyv::rancor::Error>(&aligned).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(producer_id: i64, epoch: i16, base_sequence: i32, records: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 0,
            leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence,
            records_count: records,
        }
    }

    /// Checks and records like the log does, returning the verdict.
    fn append(
        producers: &mut Producers,
        end: &mut i64,
        batch: &BatchHeader,
    ) -> Result<Verdict, SequenceError> {
        let verdict = producers.check(&[], batch)?;
        if verdict == Verdict::Append {
            producers.record([Producers::staged(batch, *end)], 0);
            *end += i64::from(batch.records_count);
        }
        Ok(verdict)
    }

    #[test]
    fn retries_are_duplicates_and_gaps_are_refused() {
        let (mut producers, mut end) = (Producers::default(), 0);
        assert_eq!(append(&mut producers, &mut end, &header(7, 0, 0, 3)), Ok(Verdict::Append));
        assert_eq!(append(&mut producers, &mut end, &header(7, 0, 3, 2)), Ok(Verdict::Append));
        assert_eq!(
            append(&mut producers, &mut end, &header(7, 0, 0, 3)),
            Ok(Verdict::Duplicate { first_offset: 0, last_offset: 2 })
        );
        assert!(matches!(
            append(&mut producers, &mut end, &header(7, 0, 9, 1)),
            Err(SequenceError::OutOfOrder { sequence: 9, last: 4, .. })
        ));
        assert_eq!(end, 5);
    }

    #[test]
    fn a_newer_epoch_restarts_at_zero_and_fences_the_old_one() {
        let (mut producers, mut end) = (Producers::default(), 0);
        append(&mut producers, &mut end, &header(7, 0, 0, 1)).expect("first");
        assert!(matches!(
            append(&mut producers, &mut end, &header(7, 1, 5, 1)),
            Err(SequenceError::OutOfOrder { .. })
        ));
        assert_eq!(append(&mut producers, &mut end, &header(7, 1, 0, 1)), Ok(Verdict::Append));
        assert!(matches!(
            append(&mut producers, &mut end, &header(7, 0, 1, 1)),
            Err(SequenceError::InvalidEpoch { current: 1, .. })
        ));
    }

    #[test]
    fn an_unknown_producer_may_start_anywhere_and_sequences_wrap() {
        let (mut producers, mut end) = (Producers::default(), 0);
        assert_eq!(append(&mut producers, &mut end, &header(3, 0, i32::MAX - 1, 2)), Ok(Verdict::Append));
        assert_eq!(append(&mut producers, &mut end, &header(3, 0, 0, 1)), Ok(Verdict::Append));
    }

    #[test]
    fn batches_of_one_request_are_checked_in_order() {
        let producers = Producers::default();
        let first = header(1, 0, 0, 2);
        let staged = [Producers::staged(&first, 0)];
        assert_eq!(producers.check(&staged, &header(1, 0, 2, 1)), Ok(Verdict::Append));
        assert!(producers.check(&staged, &header(1, 0, 5, 1)).is_err());
    }

    #[test]
    fn snapshots_round_trip_and_reject_damage() {
        let (mut producers, mut end) = (Producers::default(), 0);
        for sequence in 0..8 {
            append(&mut producers, &mut end, &header(11, 2, sequence, 1)).expect("append");
        }
        let snapshot = Snapshot { offset: end, producers: producers.as_of(end) };
        let encoded = snapshot.encode().expect("encode");
        assert_eq!(
            Snapshot::decode(&encoded),
            Some(Snapshot { offset: end, producers: producers.as_of(end) })
        );
        for at in 0..encoded.len() {
            let mut damaged = encoded.clone();
            damaged[at] ^= 0x40;
            assert_eq!(Snapshot::decode(&damaged), None, "flip at {at}");
        }
        assert_eq!(Snapshot::decode(&encoded[..encoded.len() - 1]), None);
    }

    proptest! {
        /// Taking appends back restores exactly the state before them (as long as the producer
        /// keeps a batch from before the cut), which is what a failed write relies on.
        #[test]
        fn truncation_restores_the_earlier_state(
            appends in proptest::collection::vec((0i64..3, 1i32..4), 1..40),
            cut_after in 0usize..40,
        ) {
            let mut producers = Producers::default();
            let mut sequences: HashMap<i64, i32> = HashMap::new();
            let mut end = 0i64;
            let mut before = None;
            for (at, (producer_id, records)) in appends.iter().enumerate() {
                if at == cut_after {
                    before = Some((end, producers.as_of(end)));
                }
                let sequence = sequences.entry(*producer_id).or_insert(0);
                let batch = header(*producer_id, 0, *sequence, *records);
                prop_assert_eq!(append(&mut producers, &mut end, &batch), Ok(Verdict::Append));
                *sequence += records;
            }
            if let Some((cut, expected)) = before {
                producers.truncate_from(cut);
                let now = producers.as_of(i64::MAX);
                for (producer_id, producer) in &now {
                    let was = expected.iter().find(|(id, _)| id == producer_id).map(|(_, p)| p.last().copied());
                    prop_assert_eq!(was.flatten(), producer.last().copied());
                }
            }
        }
    }
}
