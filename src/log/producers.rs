//! Idempotent and transactional producers: what a partition remembers of each producer id so
//! a retried batch is acknowledged without being appended twice, a gap or a zombie is refused,
//! and transactions are tracked (Kafka's ProducerStateManager).
//!
//! Each producer keeps the last batches it appended (their sequence and offset ranges): a
//! batch that matches one of them is a duplicate; any other must carry the next sequence of
//! the producer's current epoch, or sequence 0 of a newer epoch. A transactional batch opens
//! the producer's transaction at its offset unless one is open; the coordinator's marker (a
//! control batch) closes it, and an abort marker records the aborted range for
//! `read_committed` consumers. The lowest open transaction bounds the last stable offset.
//!
//! The state is updated when offsets are assigned, before the batch is written, so the next
//! in-flight request sees it. A write that fails takes its batches back (`truncate_from`),
//! restoring each producer to what it was before them. The state as of an offset is saved
//! beside the log (`<offset>.producers`, rkyv, CRC32) when a segment is rolled and when the log
//! closes; opening loads the newest one and replays batch headers written after it.

use crate::batch::{self, BatchHeader};
use std::collections::{BTreeSet, HashMap, VecDeque};

/// Batches remembered per producer for deduplication: Kafka's producers keep at most five
/// requests in flight per partition, so a retry is always among the last five.
pub const BATCHES_RETAINED: usize = 5;

/// Entries kept per producer: room for the five data batches with a transaction marker
/// between each, and one more that says what the producer was before them all.
const ENTRIES_RETAINED: usize = 2 * BATCHES_RETAINED + 1;

/// One batch a producer appended, or a marker that ended its transaction: enough to recognise
/// a retry, continue its sequence and know its open transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AppendedBatch {
    pub epoch: i16,
    /// -1 for a marker.
    pub first_sequence: i32,
    /// The producer's last sequence once this is in (a marker of a new epoch resets it to -1,
    /// so the next batch starts at 0).
    pub last_sequence: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub marker: bool,
    /// The first offset of the producer's open transaction once this is in.
    pub open_transaction: Option<i64>,
}

/// What one producer has appended to this partition, oldest first. More entries are kept than
/// deduplication needs: the oldest only says what the producer was before the others, so that
/// taking the newer ones back (a failed write) leaves the producer where it was.
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
        while self.batches.len() > ENTRIES_RETAINED {
            self.batches.pop_front();
        }
        self.last_append_ms = now_ms;
    }

    /// The retained batch `header` repeats, if it is a retry of one.
    fn duplicate_of(&self, header: &BatchHeader) -> Option<&AppendedBatch> {
        let last_sequence = header.last_sequence();
        self.batches.iter().rev().filter(|batch| !batch.marker).take(BATCHES_RETAINED).find(|batch| {
            batch.epoch == header.producer_epoch
                && batch.first_sequence == header.base_sequence
                && batch.last_sequence == last_sequence
        })
    }
}

/// A transaction that was aborted: `read_committed` consumers skip its records in
/// `[first_offset, last_offset]` (the last offset is the abort marker's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AbortedTransaction {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
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

/// Decides on `header` (a data batch with a producer id) given what its producer last
/// appended: `last` is the producer's newest entry, `producer` its retained history (both
/// `None` for a producer this partition does not know, which may start at any sequence, as in
/// Kafka since KIP-360).
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
        let (sequence, last) = (header.base_sequence, last.last_sequence);
        return Err(SequenceError::OutOfOrder { producer_id, epoch, sequence, last });
    }
    Ok(Verdict::Append)
}

/// A producer's entry for a batch or marker about to be appended, from its previous entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staged {
    pub producer_id: i64,
    pub entry: AppendedBatch,
    /// For a marker: whether it commits (else aborts).
    pub commits: Option<bool>,
}

/// Every producer known to one partition, its open transactions and the aborted ones.
#[derive(Debug, Default)]
pub struct Producers {
    producers: HashMap<i64, Producer>,
    /// (first offset, producer id) of every open transaction.
    open: BTreeSet<(i64, i64)>,
    /// Oldest first, ordered by `last_offset`.
    aborted: VecDeque<AbortedTransaction>,
}

impl Producers {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// The newest entry of `producer_id`, counting `staged` (entries of the same request not
    /// yet recorded).
    pub fn last<'a>(&'a self, staged: &'a [Staged], producer_id: i64) -> Option<&'a AppendedBatch> {
        newest_staged(staged, producer_id).or_else(|| self.producers.get(&producer_id)?.last())
    }

    /// Checks `header`, a data batch of an idempotent producer, against what is known plus
    /// `staged`.
    pub fn check(&self, staged: &[Staged], header: &BatchHeader) -> Result<Verdict, SequenceError> {
        // One lookup serves both the history and the newest entry (this runs on every batch).
        let producer = self.producers.get(&header.producer_id);
        let last = newest_staged(staged, header.producer_id).or_else(|| producer.and_then(Producer::last));
        check(producer, last, header)
    }

    /// Checks that `header`'s epoch is not older than its producer's here (the coordinators'
    /// batches carry no sequence, but a fenced producer's must not land).
    pub fn check_epoch(&self, staged: &[Staged], header: &BatchHeader) -> Result<(), SequenceError> {
        match self.last(staged, header.producer_id) {
            Some(last) if last.epoch > header.producer_epoch => Err(SequenceError::InvalidEpoch {
                producer_id: header.producer_id,
                epoch: header.producer_epoch,
                current: last.epoch,
            }),
            _ => Ok(()),
        }
    }

    /// The entry of a data batch appended at `first_offset`: a transactional batch opens the
    /// producer's transaction unless one is open.
    pub fn stage_data(&self, staged: &[Staged], header: &BatchHeader, first_offset: i64) -> Staged {
        let open = self.last(staged, header.producer_id).and_then(|last| last.open_transaction);
        let entry = AppendedBatch {
            epoch: header.producer_epoch,
            first_sequence: header.base_sequence,
            last_sequence: header.last_sequence(),
            first_offset,
            last_offset: first_offset + i64::from(header.last_offset_delta),
            marker: false,
            open_transaction: if header.is_transactional() { open.or(Some(first_offset)) } else { open },
        };
        Staged { producer_id: header.producer_id, entry, commits: None }
    }

    /// The entry of a transaction marker for `producer_id` at `epoch`, appended at `offset`.
    /// A marker of an older epoch than the producer's is refused.
    pub fn stage_marker(
        &self,
        staged: &[Staged],
        producer_id: i64,
        epoch: i16,
        commits: bool,
        offset: i64,
    ) -> Result<Staged, SequenceError> {
        let last = self.last(staged, producer_id);
        if let Some(last) = last.filter(|last| last.epoch > epoch) {
            return Err(SequenceError::InvalidEpoch { producer_id, epoch, current: last.epoch });
        }
        let last_sequence = last.filter(|last| last.epoch == epoch).map_or(-1, |last| last.last_sequence);
        let entry = AppendedBatch {
            epoch,
            first_sequence: -1,
            last_sequence,
            first_offset: offset,
            last_offset: offset,
            marker: true,
            open_transaction: None,
        };
        Ok(Staged { producer_id, entry, commits: Some(commits) })
    }

    /// Records entries that were checked and given their offsets, in order.
    pub fn record(&mut self, staged: impl IntoIterator<Item = Staged>, now_ms: i64) {
        for Staged { producer_id, entry, commits } in staged {
            let producer = self.producers.entry(producer_id).or_default();
            let was_open = producer.last().and_then(|last| last.open_transaction);
            match (was_open, entry.open_transaction) {
                (None, Some(first)) => {
                    self.open.insert((first, producer_id));
                }
                (Some(first), None) => {
                    self.open.remove(&(first, producer_id));
                    if commits == Some(false) {
                        let last_offset = entry.last_offset;
                        self.aborted.push_back(AbortedTransaction {
                            producer_id,
                            first_offset: first,
                            last_offset,
                        });
                    }
                }
                _ => {}
            }
            producer.push(entry, now_ms);
        }
    }

    /// Records a batch read back from the log (recovery), without checking it: the log is the
    /// truth. `commits` is the marker type of a control batch (`None` if unreadable: skipped).
    pub fn replay(&mut self, header: &BatchHeader, commits: Option<bool>, now_ms: i64) {
        if !header.has_producer_id() {
            return;
        }
        let staged = if header.is_control() {
            let Some(commits) = commits else { return };
            let (id, epoch, offset) = (header.producer_id, header.producer_epoch, header.base_offset);
            match self.stage_marker(&[], id, epoch, commits, offset) {
                Ok(staged) => staged,
                Err(_) => return,
            }
        } else {
            self.stage_data(&[], header, header.base_offset)
        };
        self.record([staged], now_ms);
    }

    /// The first offset of the oldest open transaction: records from there on are not stable.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.open.first().map(|&(first, _)| first)
    }

    /// Aborted transactions with records in `[from, upper)`, oldest first.
    pub fn aborted_between(&self, from: i64, upper: i64) -> Vec<AbortedTransaction> {
        let start = self.aborted.partition_point(|aborted| aborted.last_offset < from);
        self.aborted.range(start..).filter(|aborted| aborted.first_offset < upper).copied().collect()
    }

    /// Forgets aborted transactions that ended before the log start.
    pub fn forget_aborted_before(&mut self, log_start: i64) {
        while self.aborted.front().is_some_and(|aborted| aborted.last_offset < log_start) {
            self.aborted.pop_front();
        }
    }

    /// Forgets every entry at or after `offset` (a failed write, a truncation): each producer
    /// goes back to its state before them. A producer left with no entry is forgotten, and is
    /// then accepted at any sequence, as a producer the partition never saw.
    pub fn truncate_from(&mut self, offset: i64) {
        self.producers.retain(|_, producer| {
            while producer.batches.back().is_some_and(|batch| batch.last_offset >= offset) {
                producer.batches.pop_back();
            }
            !producer.batches.is_empty()
        });
        while self.aborted.back().is_some_and(|aborted| aborted.last_offset >= offset) {
            self.aborted.pop_back();
        }
        self.open = open_transactions(&self.producers);
    }

    /// Forgets producers that appended nothing since `before_ms` (Kafka's
    /// `producer.id.expiration.ms`), unless their transaction is open. Returns how many went.
    pub fn expire(&mut self, before_ms: i64) -> usize {
        let count = self.producers.len();
        self.producers.retain(|_, producer| {
            producer.last_append_ms >= before_ms
                || producer.last().is_some_and(|last| last.open_transaction.is_some())
        });
        count - self.producers.len()
    }

    /// The state as it was just before `offset`: what a snapshot at `offset` holds.
    pub fn snapshot_at(&self, offset: i64) -> Snapshot {
        let mut copy = Producers {
            producers: self.producers.clone(),
            open: BTreeSet::new(),
            aborted: self.aborted.clone(),
        };
        copy.truncate_from(offset);
        let mut producers: Vec<(i64, Producer)> = copy.producers.into_iter().collect();
        producers.sort_by_key(|(id, _)| *id);
        Snapshot { offset, producers, aborted: copy.aborted.into_iter().collect() }
    }

    pub fn from_snapshot(snapshot: Snapshot) -> Producers {
        let producers: HashMap<i64, Producer> = snapshot.producers.into_iter().collect();
        let open = open_transactions(&producers);
        Producers { producers, open, aborted: snapshot.aborted.into_iter().collect() }
    }
}

/// The newest of `staged` that belongs to `producer_id`.
fn newest_staged(staged: &[Staged], producer_id: i64) -> Option<&AppendedBatch> {
    staged.iter().rev().find(|staged| staged.producer_id == producer_id).map(|staged| &staged.entry)
}

fn open_transactions(producers: &HashMap<i64, Producer>) -> BTreeSet<(i64, i64)> {
    producers.iter().filter_map(|(&id, producer)| Some((producer.last()?.open_transaction?, id))).collect()
}

/// The producers of a partition as of `offset`, saved to `<offset>.producers`.
#[derive(Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Snapshot {
    pub offset: i64,
    pub producers: Vec<(i64, Producer)>,
    pub aborted: Vec<AbortedTransaction>,
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
            let staged = producers.stage_data(&[], batch, *end);
            producers.record([staged], 0);
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
        let staged = [producers.stage_data(&[], &first, 0)];
        assert_eq!(producers.check(&staged, &header(1, 0, 2, 1)), Ok(Verdict::Append));
        assert!(producers.check(&staged, &header(1, 0, 5, 1)).is_err());
    }

    #[test]
    fn snapshots_round_trip_and_reject_damage() {
        let (mut producers, mut end) = (Producers::default(), 0);
        for sequence in 0..8 {
            append(&mut producers, &mut end, &header(11, 2, sequence, 1)).expect("append");
        }
        let encoded = producers.snapshot_at(end).encode().expect("encode");
        assert_eq!(Snapshot::decode(&encoded), Some(producers.snapshot_at(end)));
        for at in 0..encoded.len() {
            let mut damaged = encoded.clone();
            damaged[at] ^= 0x40;
            assert_eq!(Snapshot::decode(&damaged), None, "flip at {at}");
        }
        assert_eq!(Snapshot::decode(&encoded[..encoded.len() - 1]), None);
    }

    fn transactional(producer_id: i64, epoch: i16, base_sequence: i32, records: i32) -> BatchHeader {
        BatchHeader { attributes: 1 << 4, ..header(producer_id, epoch, base_sequence, records) }
    }

    fn mark(producers: &mut Producers, end: &mut i64, producer_id: i64, epoch: i16, commits: bool) {
        let staged = producers.stage_marker(&[], producer_id, epoch, commits, *end).expect("marker");
        producers.record([staged], 0);
        *end += 1;
    }

    #[test]
    fn open_transactions_bound_the_stable_offset_and_aborts_are_listed() {
        let (mut producers, mut end) = (Producers::default(), 0);
        append(&mut producers, &mut end, &header(1, 0, 0, 2)).expect("plain");
        append(&mut producers, &mut end, &transactional(2, 0, 0, 3)).expect("txn A");
        append(&mut producers, &mut end, &transactional(3, 0, 0, 1)).expect("txn B");
        append(&mut producers, &mut end, &transactional(2, 0, 3, 1)).expect("txn A again");
        assert_eq!(producers.first_unstable_offset(), Some(2));
        mark(&mut producers, &mut end, 2, 0, false); // abort A at 7
        assert_eq!(producers.first_unstable_offset(), Some(5), "B is still open");
        mark(&mut producers, &mut end, 3, 0, true); // commit B at 8
        assert_eq!(producers.first_unstable_offset(), None);
        let aborted = AbortedTransaction { producer_id: 2, first_offset: 2, last_offset: 7 };
        assert_eq!(producers.aborted_between(0, 100), vec![aborted]);
        assert_eq!(producers.aborted_between(8, 100), vec![]);
        assert_eq!(producers.aborted_between(0, 2), vec![]);
        producers.forget_aborted_before(8);
        assert_eq!(producers.aborted_between(0, 100), vec![]);
    }

    #[test]
    fn a_marker_of_a_new_epoch_restarts_the_sequence_and_fences_older_batches() {
        let (mut producers, mut end) = (Producers::default(), 0);
        append(&mut producers, &mut end, &transactional(5, 0, 0, 4)).expect("txn");
        mark(&mut producers, &mut end, 5, 1, false); // the coordinator bumped the epoch
        assert!(matches!(
            append(&mut producers, &mut end, &transactional(5, 0, 4, 1)),
            Err(SequenceError::InvalidEpoch { current: 1, .. })
        ));
        assert_eq!(append(&mut producers, &mut end, &transactional(5, 1, 0, 1)), Ok(Verdict::Append));
        assert!(producers.stage_marker(&[], 5, 0, true, end).is_err(), "a stale marker");
    }

    #[test]
    fn taking_back_a_marker_reopens_its_transaction() {
        let (mut producers, mut end) = (Producers::default(), 0);
        append(&mut producers, &mut end, &transactional(9, 0, 0, 2)).expect("txn");
        mark(&mut producers, &mut end, 9, 0, false);
        assert_eq!(producers.first_unstable_offset(), None);
        producers.truncate_from(2);
        assert_eq!(producers.first_unstable_offset(), Some(0));
        assert_eq!(producers.aborted_between(0, 100), vec![]);
        let snapshot = producers.snapshot_at(2);
        assert_eq!(Producers::from_snapshot(snapshot).first_unstable_offset(), Some(0));
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
                    before = Some((end, producers.snapshot_at(end).producers));
                }
                let sequence = sequences.entry(*producer_id).or_insert(0);
                let batch = header(*producer_id, 0, *sequence, *records);
                prop_assert_eq!(append(&mut producers, &mut end, &batch), Ok(Verdict::Append));
                *sequence += records;
            }
            if let Some((cut, expected)) = before {
                producers.truncate_from(cut);
                let now = producers.snapshot_at(i64::MAX).producers;
                for (producer_id, producer) in &now {
                    let was = expected.iter().find(|(id, _)| id == producer_id).map(|(_, p)| p.last().copied());
                    prop_assert_eq!(was.flatten(), producer.last().copied());
                }
            }
        }
    }
}
