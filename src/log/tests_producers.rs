//! Idempotent producers on a real log: retries are acknowledged at their first offsets and not
//! stored again, across a clean close, a crash, segment rolls and failed writes.

use super::producers::SequenceError;
use super::*;
use crate::io::{block_on, fault};
use crate::testing::{encode_idempotent_batch, encode_transactional_batch};

fn config() -> LogConfig {
    LogConfig { segment_bytes: 64 << 10, index_interval_bytes: 1024, ..LogConfig::default() }
}

/// Appends producer 42's batch of `count` records at `sequence` and waits for it.
async fn produce(log: &Log, epoch: i16, sequence: i32, count: usize) -> Result<(Offset, bool), AppendError> {
    let appended = log.append(&encode_idempotent_batch(42, epoch, sequence, count), LeaderEpoch(0))?;
    appended.durable.await?;
    Ok((appended.base_offset, appended.duplicate))
}

#[test]
fn a_retry_is_answered_with_the_first_offsets_and_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        assert_eq!(produce(&log, 0, 0, 3).await.expect("first"), (Offset(0), false));
        assert_eq!(produce(&log, 0, 3, 2).await.expect("second"), (Offset(3), false));
        assert_eq!(produce(&log, 0, 0, 3).await.expect("retry"), (Offset(0), true));
        assert_eq!(log.log_end_offset(), Offset(5), "nothing appended for the retry");
        let gap = produce(&log, 0, 9, 1).await;
        assert!(matches!(gap, Err(AppendError::Sequence(SequenceError::OutOfOrder { .. }))));
        let zombie = produce(&log, 1, 0, 1).await.map(|_| ());
        assert!(zombie.is_ok(), "a new epoch starts at 0");
        let fenced = produce(&log, 0, 5, 1).await;
        assert!(matches!(fenced, Err(AppendError::Sequence(SequenceError::InvalidEpoch { .. }))));
        log.close().await.expect("close");
    });
}

#[test]
fn dedup_holds_after_a_clean_close_a_crash_and_rolls() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        for batch in 0..1000 {
            produce(&log, 0, batch * 4, 4).await.expect("append");
        }
        assert!(log.segment_count() > 3, "rolled by size");
        log.close().await.expect("close");

        let log = Log::open(dir.path(), config()).await.expect("reopen");
        assert_eq!(
            produce(&log, 0, 3996, 4).await.expect("retry"),
            (Offset(3996), true),
            "after a clean close"
        );
        for batch in 1000..1300 {
            produce(&log, 0, batch * 4, 4).await.expect("append");
        }
        drop(log); // crash: the state comes from the last roll's snapshot and a replay

        let log = Log::open(dir.path(), config()).await.expect("reopen after a crash");
        assert_eq!(produce(&log, 0, 5196, 4).await.expect("retry"), (Offset(5196), true), "after a crash");
        let gap = produce(&log, 0, 6000, 1).await;
        assert!(matches!(gap, Err(AppendError::Sequence(SequenceError::OutOfOrder { last: 5199, .. }))));
        assert_eq!(produce(&log, 0, 5200, 1).await.expect("next"), (Offset(5200), false));
        log.close().await.expect("close");
    });
}

#[test]
fn a_damaged_snapshot_is_skipped_for_an_older_one_and_a_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        for batch in 0..600 {
            produce(&log, 0, batch * 4, 4).await.expect("append");
        }
        log.close().await.expect("close");
        let newest = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "producers"))
            .max()
            .expect("a snapshot");
        std::fs::write(&newest, b"garbage").expect("damage");
        let log = Log::open(dir.path(), config()).await.expect("reopen");
        assert_eq!(produce(&log, 0, 2396, 4).await.expect("retry"), (Offset(2396), true));
        log.close().await.expect("close");
    });
}

#[test]
fn a_failed_write_gives_the_sequence_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        produce(&log, 0, 0, 2).await.expect("append");
        fault::arm(fault::Fault::WriteNoSpace { after_writes: 0 });
        assert!(matches!(produce(&log, 0, 2, 2).await, Err(AppendError::Storage(_))));
        fault::clear();
        // Not a duplicate: the failed batch was never stored, so its retry must be.
        assert_eq!(produce(&log, 0, 2, 2).await.expect("retry after the failure"), (Offset(2), false));
        assert_eq!(log.log_end_offset(), Offset(4));
        log.close().await.expect("close");
    });
}

#[test]
fn a_retry_of_a_batch_still_in_flight_waits_for_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let config = LogConfig { flush: FlushPolicy::FsyncBeforeAck, ..config() };
        let log = Log::open(dir.path(), config).await.expect("open");
        let first = log.append(&encode_idempotent_batch(42, 0, 0, 2), LeaderEpoch(0)).expect("append");
        let retry = log.append(&encode_idempotent_batch(42, 0, 0, 2), LeaderEpoch(0)).expect("retry");
        assert!(retry.duplicate);
        assert!(log.stable_offset() < Offset(2), "not yet durable when the retry arrives");
        retry.durable.await.expect("acknowledged once the original is");
        assert!(log.stable_offset() >= Offset(2));
        first.durable.await.expect("original");
        log.close().await.expect("close");
    });
}

/// Appends producer `id`'s transactional batch and waits for it.
async fn produce_in_transaction(log: &Log, id: i64, sequence: i32, count: usize) -> Offset {
    let appended =
        log.append(&encode_transactional_batch(id, 0, sequence, count), LeaderEpoch(0)).expect("append");
    appended.durable.await.expect("durable");
    appended.base_offset
}

async fn end_transaction(log: &Log, id: i64, commits: bool) -> Offset {
    let appended = log.append_marker(id, 0, commits, 0, LeaderEpoch(0)).expect("marker");
    appended.durable.await.expect("durable");
    appended.base_offset
}

#[test]
fn transactions_bound_the_last_stable_offset_and_aborts_survive_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        assert_eq!(produce_in_transaction(&log, 7, 0, 3).await, Offset(0));
        assert_eq!(produce_in_transaction(&log, 8, 0, 2).await, Offset(3));
        assert_eq!((log.stable_offset(), log.last_stable_offset()), (Offset(5), Offset(0)));
        assert_eq!(end_transaction(&log, 7, false).await, Offset(5));
        assert_eq!(log.last_stable_offset(), Offset(3), "producer 8 is still open");
        assert_eq!(end_transaction(&log, 8, true).await, Offset(6));
        assert_eq!(log.last_stable_offset(), Offset(7));
        let aborted = log.aborted_transactions(Offset(0), Offset(7));
        assert_eq!(
            aborted.iter().map(|a| (a.producer_id, a.first_offset, a.last_offset)).collect::<Vec<_>>(),
            [(7, 0, 5)]
        );
        produce_in_transaction(&log, 9, 0, 1).await; // left open across the restarts
        log.close().await.expect("close");

        let log = Log::open(dir.path(), config()).await.expect("reopen");
        assert_eq!(log.last_stable_offset(), Offset(7), "the open transaction is restored");
        assert_eq!(log.aborted_transactions(Offset(0), Offset(7)).len(), 1);
        end_transaction(&log, 9, false).await;
        drop(log); // crash: the abort marker is replayed

        let log = Log::open(dir.path(), config()).await.expect("reopen after a crash");
        assert_eq!(log.last_stable_offset(), Offset(9));
        assert_eq!(log.aborted_transactions(Offset(0), Offset(9)).len(), 2);
        let refused = log.append(&log_marker_batch(), LeaderEpoch(0));
        assert!(matches!(refused, Err(AppendError::ControlBatchFromClient)));
        log.close().await.expect("close");
    });
}

/// A transaction marker as a client might try to send one.
fn log_marker_batch() -> Bytes {
    crate::record::encode(&[crate::record::transaction_marker(7, 0, true, 0, 1)]).expect("encode")
}

#[test]
fn a_producer_request_carries_one_batch_with_a_sequence() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        let mut two = encode_idempotent_batch(42, 0, 0, 2).to_vec();
        two.extend_from_slice(&encode_idempotent_batch(42, 0, 2, 2));
        let refused = log.append(&Bytes::from(two), LeaderEpoch(0));
        assert!(matches!(refused, Err(AppendError::InvalidProducerBatch(_))));
        let unsequenced = log.append(&encode_idempotent_batch(42, 0, -1, 1), LeaderEpoch(0));
        assert!(matches!(unsequenced, Err(AppendError::InvalidProducerBatch(_))));
        assert_eq!(log.log_end_offset(), Offset(0), "nothing appended");
        log.close().await.expect("close");
    });
}
