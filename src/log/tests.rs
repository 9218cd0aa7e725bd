//! Tests of the log on real files in a temporary directory, on a real io_uring executor.

use super::*;
use crate::io::{block_on, fault};
use crate::testing::encode_batch;
use proptest::prelude::*;
use std::time::Duration;

fn config() -> LogConfig {
    LogConfig { segment_bytes: 64 << 10, index_interval_bytes: 1024, ..LogConfig::default() }
}

fn everything() -> ReadLimits {
    ReadLimits { bytes_max: usize::MAX, min_one: true, upper: Offset(i64::MAX) }
}

/// Appends a batch and waits until it is acknowledged.
async fn append(log: &Log, seed: u64, count: usize, value_bytes: usize) -> Result<Offset, AppendError> {
    let appended =
        log.append(&encode_batch(seed, count, value_bytes, 1_000 + seed as i64), LeaderEpoch(3))?;
    appended.durable.await?;
    Ok(appended.base_offset)
}

/// Every batch in the log, read in small steps, as (base offset, batch bytes).
async fn read_all(log: &Log) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut from = log.log_start_offset();
    loop {
        let limits = ReadLimits { bytes_max: 3000, ..everything() };
        let read = log.read(from, limits).await.expect("read");
        if read.batches == 0 {
            return out;
        }
        let bytes = read.to_vec();
        let mut at = 0;
        while at < bytes.len() {
            let header = batch::validate(&bytes[at..], usize::MAX).expect("valid batch read back");
            out.push((header.base_offset, bytes[at..at + header.total_bytes()].to_vec()));
            at += header.total_bytes();
        }
        from = read.next_offset;
    }
}

#[test]
fn appends_are_read_back_from_cache_and_disk_across_segments_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        for seed in 0..200 {
            let base = append(&log, seed, 3, 300).await.expect("append");
            assert_eq!(base, Offset(seed as i64 * 3));
        }
        assert!(log.segment_count() > 1, "rolled by size");
        let before = read_all(&log).await;
        assert_eq!(before.len(), 200);
        assert_eq!(before[7].0, 21);
        let header = batch::validate(&before[7].1, usize::MAX).expect("valid");
        assert_eq!(header.leader_epoch, 3, "leader epoch stamped");
        log.close().await.expect("close");

        let log = Log::open(dir.path(), config()).await.expect("reopen");
        assert_eq!(log.log_end_offset(), Offset(600));
        assert_eq!(read_all(&log).await, before, "cold reads after reopen are byte-identical");
        let (_, (hits, _)) = log.cache_stats();
        assert_eq!(hits, 0, "a reopened log serves from disk");
        assert_eq!(append(&log, 999, 1, 10).await.expect("append after reopen"), Offset(600));
        log.close().await.expect("close");
    });
}

#[test]
fn segment_files_are_named_by_base_offset_with_both_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        for seed in 0..100 {
            append(&log, seed, 2, 400).await.expect("append");
        }
        let bases = log.segment_bases();
        log.close().await.expect("close");
        for base in bases {
            for suffix in ["log", "index", "timeindex"] {
                let path = dir.path().join(format!("{:020}.{suffix}", base.0));
                assert!(path.exists(), "{} missing", path.display());
            }
        }
    });
}

#[test]
fn reads_respect_bytes_upper_bound_and_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        for seed in 0..10 {
            append(&log, seed, 4, 100).await.expect("append");
        }
        let one = log.read(Offset(5), ReadLimits { bytes_max: 1, ..everything() }).await.expect("read");
        assert_eq!((one.batches, one.next_offset), (1, Offset(8)), "min_one returns the batch holding 5");
        let none = log
            .read(Offset(5), ReadLimits { bytes_max: 1, min_one: false, ..everything() })
            .await
            .expect("read");
        assert_eq!(none.batches, 0);
        let bounded =
            log.read(Offset(0), ReadLimits { upper: Offset(12), ..everything() }).await.expect("read");
        assert_eq!(bounded.next_offset, Offset(12));
        let at_end = log.read(Offset(40), everything()).await.expect("read at log end");
        assert_eq!(at_end.batches, 0);
        assert!(matches!(log.read(Offset(41), everything()).await, Err(ReadError::OffsetOutOfRange { .. })));
        log.close().await.expect("close");
    });
}

#[test]
fn bad_batches_are_rejected_and_nothing_is_appended() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        let mut corrupt = encode_batch(1, 2, 10, 1).to_vec();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        let mut records = encode_batch(0, 2, 10, 1).to_vec();
        records.extend_from_slice(&corrupt);
        let result = log.append(&Bytes::from(records), LeaderEpoch(0));
        assert!(matches!(result, Err(AppendError::Batch(BatchError::BadCrc { .. }))));
        let mut wrong_magic = encode_batch(0, 1, 10, 1).to_vec();
        wrong_magic[16] = 1;
        assert!(matches!(log.append(&Bytes::from(wrong_magic), LeaderEpoch(0)), Err(AppendError::Batch(_))));
        let big = LogConfig { message_bytes_max: 1000, ..config() };
        log.close().await.expect("close");
        let log = Log::open(dir.path(), big).await.expect("reopen");
        let too_large = log.append(&encode_batch(0, 1, 2000, 1), LeaderEpoch(0));
        assert!(matches!(too_large, Err(AppendError::Batch(BatchError::TooLarge { .. }))));
        assert_eq!(log.log_end_offset(), Offset(0));
        log.close().await.expect("close");
    });
}

#[test]
fn concurrent_appends_coalesce_and_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let config = LogConfig { flush: FlushPolicy::FsyncBeforeAck, ..config() };
        let log = Log::open(dir.path(), config).await.expect("open");
        let appended: Vec<Appended> = (0..50)
            .map(|seed| log.append(&encode_batch(seed, 1, 100, 1), LeaderEpoch(0)).expect("append"))
            .collect();
        assert!(log.written_offset() < Offset(50), "appends are queued, not written inline");
        for append in appended {
            append.durable.await.expect("durable");
        }
        assert_eq!(log.synced_offset(), Offset(50));
        assert_eq!(read_all(&log).await.len(), 50);
        log.close().await.expect("close");
    });
}

#[test]
fn a_backlog_does_not_postpone_the_group_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let config = LogConfig { flush: FlushPolicy::FsyncBeforeAck, segment_bytes: 64 << 20, ..config() };
        let log = Log::open(dir.path(), config).await.expect("open");
        let batch = encode_batch(1, 16, 1000, 1);
        let queued = (crate::constants::UNSYNCED_BYTES_MAX as usize * 2) / batch.len();
        let mut appended: Vec<Appended> =
            (0..queued).map(|_| log.append(&batch, LeaderEpoch(0)).expect("append")).collect();
        appended.remove(0).durable.await.expect("first durable");
        assert!(
            log.written_offset() < log.log_end_offset(),
            "the first append was acknowledged before the whole backlog was written"
        );
        for append in appended {
            append.durable.await.expect("durable");
        }
        assert_eq!(log.synced_offset(), log.log_end_offset());
        log.close().await.expect("close");
    });
}

#[test]
fn disk_full_fails_the_append_keeps_reads_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        for seed in 0..5 {
            append(&log, seed, 2, 100).await.expect("append");
        }
        fault::arm(fault::Fault::WriteNoSpace { after_writes: 0 });
        let failed = append(&log, 5, 2, 100).await;
        match failed {
            Err(AppendError::Storage(error)) => assert!(error.is_disk_full()),
            other => panic!("expected a storage error, got {:?}", other.map(|_| ())),
        }
        assert_eq!(log.log_end_offset(), Offset(10), "the failed batch's offsets are given back");
        assert_eq!(read_all(&log).await.len(), 5, "reads keep working");
        fault::clear();
        assert_eq!(append(&log, 6, 2, 100).await.expect("space is back"), Offset(10));
        log.close().await.expect("close");
        let log = Log::open(dir.path(), config()).await.expect("reopen");
        assert_eq!(read_all(&log).await.len(), 6);
        log.close().await.expect("close");
    });
}

#[test]
fn a_failed_fsync_stops_appends_until_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let config = LogConfig { flush: FlushPolicy::FsyncBeforeAck, ..config() };
        let log = Log::open(dir.path(), config.clone()).await.expect("open");
        append(&log, 0, 1, 10).await.expect("append");
        fault::arm(fault::Fault::SyncIo);
        assert!(matches!(append(&log, 1, 1, 10).await, Err(AppendError::Storage(_))));
        assert!(matches!(
            log.append(&encode_batch(2, 1, 10, 1), LeaderEpoch(0)),
            Err(AppendError::Storage(_))
        ));
        assert_eq!(read_all(&log).await.len(), 1, "only the synced batch is visible");
        drop(log);
        let log = Log::open(dir.path(), config).await.expect("reopen");
        append(&log, 3, 1, 10).await.expect("a reopened log appends");
        log.close().await.expect("close");
    });
}

#[test]
fn interval_policy_syncs_on_count_and_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let by_count = FlushPolicy::Interval { messages: Some(4), interval: None };
        let log = Log::open(dir.path(), LogConfig { flush: by_count, ..config() }).await.expect("open");
        append(&log, 0, 3, 10).await.expect("append");
        assert_eq!((log.written_offset(), log.synced_offset()), (Offset(3), Offset(0)), "acked when written");
        append(&log, 1, 1, 10).await.expect("append");
        while log.synced_offset() < Offset(4) {
            crate::io::sleep(Duration::from_millis(1)).await;
        }
        log.close().await.expect("close");

        let by_time = FlushPolicy::Interval { messages: None, interval: Some(Duration::from_millis(20)) };
        let log = Log::open(dir.path(), LogConfig { flush: by_time, ..config() }).await.expect("open");
        append(&log, 2, 1, 10).await.expect("append");
        assert_eq!(log.synced_offset(), Offset(4));
        while log.synced_offset() < Offset(5) {
            crate::io::sleep(Duration::from_millis(5)).await;
        }
        log.close().await.expect("close");
    });
}

#[test]
fn timestamp_lookup_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        for i in 0..100u64 {
            let batch = encode_batch(i, 2, 300, 10_000 + 100 * i as i64);
            log.append(&batch, LeaderEpoch(0)).expect("append").durable.await.expect("durable");
        }
        let found = log.offset_for_timestamp(10_000 + 100 * 42 + 1).await.expect("lookup");
        // Batch 42 holds offsets 84 (at 14 200) and 85 (at 14 201): the record, not the batch.
        assert_eq!(found, Some(TimestampLookup { offset: Offset(85), timestamp: 10_000 + 4200 + 1 }));
        let exact = log.offset_for_timestamp(10_000 + 100 * 42).await.expect("lookup");
        assert_eq!(exact, Some(TimestampLookup { offset: Offset(84), timestamp: 10_000 + 4200 }));
        assert_eq!(log.offset_for_timestamp(0).await.expect("lookup").map(|l| l.offset), Some(Offset(0)));
        assert_eq!(log.offset_for_timestamp(1 << 40).await.expect("lookup"), None);
        log.close().await.expect("close");
    });
}

#[test]
fn log_append_time_topics_get_the_broker_time_with_a_valid_crc() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let config = LogConfig { timestamp_type: TimestampType::LogAppendTime, ..config() };
        let log = Log::open(dir.path(), config).await.expect("open");
        let appended = log.append(&encode_batch(0, 2, 10, 5), LeaderEpoch(0)).expect("append");
        appended.durable.await.expect("durable");
        let (_, bytes) = read_all(&log).await.remove(0);
        let header = batch::validate(&bytes, usize::MAX).expect("crc recomputed");
        assert!(header.is_log_append_time());
        assert_eq!(header.max_timestamp, appended.log_append_time.0);
        log.close().await.expect("close");
    });
}

#[test]
fn retention_by_size_and_time_deletes_whole_old_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let config = LogConfig { retention_bytes: Some(100 << 10), retention_ms: None, ..config() };
        let log = Log::open(dir.path(), config).await.expect("open");
        for seed in 0..400 {
            append(&log, seed, 1, 1000).await.expect("append");
        }
        let size_before = log.size_bytes();
        let outcome = log.enforce_retention(TimestampMs::now()).await.expect("retention");
        assert!(outcome.segments_deleted > 0);
        assert!(log.size_bytes() >= 100 << 10 && log.size_bytes() < size_before);
        assert_eq!(log.log_start_offset(), log.segment_bases()[0]);
        assert!(matches!(log.read(Offset(0), everything()).await, Err(ReadError::OffsetOutOfRange { .. })));
        assert_eq!(read_all(&log).await.first().map(|b| b.0), Some(outcome.log_start.0));
        log.close().await.expect("close");

        let by_time = LogConfig { retention_ms: Some(1000), ..LogConfig::default() };
        let log =
            Log::open(dir.path(), LogConfig { segment_bytes: 64 << 10, ..by_time }).await.expect("reopen");
        let outcome = log.enforce_retention(TimestampMs::now()).await.expect("retention");
        assert_eq!(log.segment_count(), 1, "every closed segment is older than a second ({outcome:?})");
        log.close().await.expect("close");
    });
}

#[test]
fn delete_records_moves_the_log_start_durably() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        for seed in 0..200 {
            append(&log, seed, 1, 500).await.expect("append");
        }
        let segments = log.segment_count();
        assert!(matches!(log.delete_records_before(Offset(500)).await, Err(LogError::BeyondStable { .. })));
        assert_eq!(log.delete_records_before(Offset(150)).await.expect("delete"), Offset(150));
        assert!(log.segment_count() < segments);
        let first = log.read(Offset(150), everything()).await.expect("read");
        assert!(first.batches > 0);
        drop(log); // crash: no clean shutdown
        let log = Log::open(dir.path(), config()).await.expect("reopen");
        assert_eq!(log.log_start_offset(), Offset(150));
        log.close().await.expect("close");
    });
}

/// What `append(log, seed, 2, 500)` stores at `base`.
fn stored(seed: u64, base: i64) -> Vec<u8> {
    let batch = encode_batch(seed, 2, 500, 1_000 + seed as i64);
    let mut stored = batch::rewrite_header(&batch, base, 3, None).to_vec();
    stored.extend_from_slice(&batch[batch::HEADER_BYTES..]);
    stored
}

#[test]
fn a_cold_read_reads_ahead_for_the_next_and_a_truncation_voids_what_it_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig { cache_bytes_max: 0, ..config() };
    block_on(async {
        let log = Log::open(dir.path(), config).await.expect("open");
        for seed in 0..40 {
            append(&log, seed, 2, 500).await.expect("append");
        }
        let expected = |seeds: std::ops::Range<u64>, base: i64| -> Vec<u8> {
            seeds.enumerate().flat_map(|(i, seed)| stored(seed, base + 2 * i as i64)).collect()
        };
        let limits = ReadLimits { bytes_max: 3000, ..everything() };
        let used = || crate::metrics::counters().read_ahead_used;

        let first = log.read(Offset(0), limits).await.expect("read");
        assert!(!first.from_cache, "nothing is cached");
        assert_eq!((first.batches, first.next_offset), (2, Offset(4)), "two batches of ~1.1 KB fit");
        let taken = used();
        let second = log.read(first.next_offset, limits).await.expect("read");
        assert_eq!(used(), taken + 1, "the second read takes what the first read ahead");
        assert!(second.to_vec() == expected(2..4, 4), "the batches at 4..8");

        // The second read has read ahead from offset 8. Cut the log there and append other
        // batches in its place: the bytes read ahead are no longer the file's.
        log.truncate_to(second.next_offset).await.expect("truncate");
        for seed in 100..110 {
            append(&log, seed, 2, 500).await.expect("append");
        }
        let third = log.read(second.next_offset, limits).await.expect("read");
        assert!(third.to_vec() == expected(100..102, 8), "the new batches, not those read ahead");
        assert_eq!(used(), taken + 1, "nothing read ahead before the truncation was used");
        let fourth = log.read(third.next_offset, limits).await.expect("read");
        assert_eq!(used(), taken + 2, "reads after the truncation read ahead again");
        assert!(fourth.to_vec() == expected(102..104, 12), "the new batches at 12..16");
        log.close().await.expect("close");
    });
}

#[test]
fn a_read_ahead_does_not_keep_a_deleted_segment_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config =
        LogConfig { cache_bytes_max: 0, retention_bytes: Some(64 << 10), retention_ms: None, ..config() };
    block_on(async {
        let log = Log::open(dir.path(), config).await.expect("open");
        for seed in 0..200 {
            append(&log, seed, 2, 500).await.expect("append");
        }
        let started = crate::metrics::counters().read_ahead_started;
        log.read(Offset(0), ReadLimits { bytes_max: 3000, ..everything() }).await.expect("read");
        assert_eq!(crate::metrics::counters().read_ahead_started, started + 1, "the read read ahead");

        let first = segment::log_path(dir.path(), Offset(0)).to_string_lossy().into_owned();
        let outcome = log.enforce_retention(TimestampMs::now()).await.expect("retention");
        assert!(outcome.log_start > Offset(8), "retention deleted the segment read ahead in");
        let open = || {
            let fds = std::fs::read_dir("/proc/self/fd").into_iter().flatten().flatten();
            fds.filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|target| target.to_string_lossy().starts_with(&first))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while open() && std::time::Instant::now() < deadline {
            crate::io::sleep(Duration::from_millis(1)).await;
        }
        assert!(!open(), "the deleted segment is closed, its disk space free");
        log.close().await.expect("close");
    });
}

#[test]
fn truncate_cuts_at_a_batch_boundary_and_appends_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        for seed in 0..150 {
            append(&log, seed, 2, 500).await.expect("append");
        }
        let segments = log.segment_count();
        log.truncate_to(Offset(41)).await.expect("truncate"); // inside the batch [40, 41]
        assert_eq!(log.log_end_offset(), Offset(40));
        assert!(log.segment_count() < segments);
        let kept = read_all(&log).await;
        assert_eq!(kept.len(), 20);
        assert_eq!(append(&log, 7, 1, 10).await.expect("append"), Offset(40));
        log.close().await.expect("close");
        let log = Log::open(dir.path(), config()).await.expect("reopen");
        assert_eq!(log.log_end_offset(), Offset(41));
        assert_eq!(read_all(&log).await.len(), 21);
        log.close().await.expect("close");
    });
}

/// The active segment is allocated ahead of its writes (those blocks read as zeros); recovery
/// after a crash cuts them off like any tail past the last batch, and a clean close leaves the
/// file at its size.
#[test]
fn blocks_allocated_ahead_are_cut_by_recovery_and_by_closing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base_path = dir.path().join(format!("{:020}.log", 0));
    let config = LogConfig { segment_bytes: 8 << 20, ..config() };
    let kept = block_on(async {
        let log = Log::open(dir.path(), config.clone()).await.expect("open");
        for seed in 0..40 {
            append(&log, seed, 2, 100).await.expect("append");
        }
        let kept = read_all(&log).await;
        drop(log); // crash: no checkpoint
        kept
    });
    let valid = kept.iter().map(|(_, bytes)| bytes.len()).sum::<usize>();
    let data = std::fs::read(&base_path).expect("read segment");
    assert!(data.len() >= valid + (128 << 10), "allocated ahead: {} bytes for {valid}", data.len());
    assert!(data[valid..].iter().all(|&byte| byte == 0));
    block_on(async {
        let log = Log::open(dir.path(), config.clone()).await.expect("recover");
        assert_eq!(log.log_end_offset(), Offset(80));
        assert_eq!(read_all(&log).await, kept);
        assert_eq!(std::fs::metadata(&base_path).expect("stat").len() as usize, valid, "blocks ahead cut");
        append(&log, 40, 2, 100).await.expect("append after recovery");
        log.close().await.expect("close");
    });
    let closed = std::fs::metadata(&base_path).expect("stat").len() as usize;
    block_on(async {
        let log = Log::open(dir.path(), config).await.expect("reopen");
        let all = read_all(&log).await;
        assert_eq!(all.len(), 41);
        assert_eq!(closed, all.iter().map(|(_, bytes)| bytes.len()).sum::<usize>(), "closed at its size");
        log.close().await.expect("close");
    });
}

#[test]
fn recovery_truncates_a_torn_tail_and_garbage_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base_path = dir.path().join(format!("{:020}.log", 0));
    let kept = block_on(async {
        let log =
            Log::open(dir.path(), LogConfig { segment_bytes: 1 << 20, ..config() }).await.expect("open");
        for seed in 0..30 {
            append(&log, seed, 2, 100).await.expect("append");
        }
        let kept = read_all(&log).await;
        drop(log); // crash: no checkpoint
        kept
    });
    // A torn last batch: its first half, then garbage.
    let mut data = std::fs::read(&base_path).expect("read segment");
    let valid = kept.iter().map(|(_, bytes)| bytes.len()).sum::<usize>();
    data.truncate(valid);
    data.extend_from_slice(&encode_batch(99, 4, 100, 1)[..150]);
    data.extend_from_slice(&[0xAB; 3000]);
    std::fs::write(&base_path, &data).expect("tear");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("recover");
        assert_eq!(log.log_end_offset(), Offset(60));
        assert_eq!(read_all(&log).await, kept);
        assert_eq!(std::fs::metadata(&base_path).expect("stat").len() as usize, valid, "tail truncated");
        log.close().await.expect("close");
    });
}

#[test]
fn recovery_drops_everything_after_a_bit_flip_and_rebuilds_lost_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let all = block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        for seed in 0..120 {
            append(&log, seed, 1, 1000).await.expect("append");
        }
        let all = read_all(&log).await;
        log.close().await.expect("close");
        all
    });
    let first = dir.path().join(format!("{:020}.log", 0));
    std::fs::remove_file(dir.path().join(format!("{:020}.index", 0))).expect("remove index");
    let mut data = std::fs::read(&first).expect("read");
    let flip_at = all[..10].iter().map(|(_, b)| b.len()).sum::<usize>() + 100; // inside batch 10
    data[flip_at] ^= 0x10;
    std::fs::write(&first, &data).expect("flip");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("recover");
        assert_eq!(log.log_end_offset(), Offset(10), "nothing follows the last valid batch");
        assert_eq!(log.segment_count(), 1);
        assert_eq!(read_all(&log).await, all[..10].to_vec());
        log.close().await.expect("close");
    });
    assert!(dir.path().join(format!("{:020}.index", 0)).exists(), "index rebuilt");
}

#[test]
fn a_clean_close_skips_the_scan_and_a_damaged_checkpoint_forces_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        append(&log, 0, 5, 100).await.expect("append");
        log.close().await.expect("close");
    });
    let checkpoint = dir.path().join(checkpoint::CLEAN_SHUTDOWN_FILE);
    assert!(checkpoint.exists());
    std::fs::write(&checkpoint, b"garbage").expect("damage");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open with a damaged checkpoint");
        assert!(!checkpoint.exists(), "removed on open: a crash from now on scans");
        assert_eq!(log.log_end_offset(), Offset(5));
        log.close().await.expect("close");
    });
}

#[test]
fn truncating_into_a_batch_that_holds_the_log_start_moves_the_start_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        for seed in 0..20 {
            append(&log, seed, 10, 50).await.expect("append");
        }
        log.delete_records_before(Offset(155)).await.expect("delete inside [150, 159]");
        log.truncate_to(Offset(157)).await.expect("truncate inside the same batch");
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (Offset(150), Offset(150)));
        assert_eq!(append(&log, 99, 1, 10).await.expect("append"), Offset(150));
        drop(log);
        let log = Log::open(dir.path(), config()).await.expect("reopen after a crash");
        assert_eq!(log.log_start_offset(), Offset(150), "the moved start was persisted");
        log.close().await.expect("close");
    });
}

#[test]
fn appends_and_delete_records_are_refused_while_truncating() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        for seed in 0..5 {
            append(&log, seed, 2, 50).await.expect("append");
        }
        {
            let mut truncation = std::pin::pin!(log.truncate_to(Offset(4)));
            assert!(
                futures_lite::future::poll_once(truncation.as_mut()).await.is_none(),
                "truncation queued"
            );
            let refused = log.append(&encode_batch(9, 1, 10, 1), LeaderEpoch(0));
            assert!(matches!(refused, Err(AppendError::Truncating)));
            assert!(matches!(log.delete_records_before(Offset(2)).await, Err(LogError::Truncating)));
            let during = log.read(Offset(0), everything()).await.expect("read during truncation");
            assert!(during.next_offset <= Offset(4), "nothing being cut is served");
            truncation.await.expect("truncate");
        }
        assert_eq!(append(&log, 10, 1, 10).await.expect("append after truncation"), Offset(4));
        log.close().await.expect("close");
    });
}

#[test]
fn a_failed_write_does_not_fail_appends_already_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let config = LogConfig { flush: FlushPolicy::FsyncBeforeAck, ..config() };
        let log = Log::open(dir.path(), config).await.expect("open");
        fault::arm(fault::Fault::WriteNoSpace { after_writes: 1 });
        let first = log.append(&encode_batch(1, 1, 10, 1), LeaderEpoch(0)).expect("append");
        futures_lite::future::yield_now().await; // the flusher takes `first` alone
        let second = log.append(&encode_batch(2, 1, 10, 1), LeaderEpoch(0)).expect("append");
        assert!(matches!(second.durable.await, Err(AppendError::Storage(_))));
        fault::clear();
        first.durable.await.expect("the written append is synced and acknowledged");
        assert_eq!(log.log_end_offset(), Offset(1));
        log.close().await.expect("close");
    });
}

/// Appends many batches at once, waits for them all, and says how many were acknowledged.
async fn append_together(log: &Log, seeds: std::ops::Range<u64>) -> usize {
    let appended: Vec<Appended> = seeds
        .map(|seed| {
            let batch = encode_batch(seed, 1 + seed as usize % 5, 50 + (seed as usize * 37) % 2000, 1);
            log.append(&batch, LeaderEpoch(0)).expect("append")
        })
        .collect();
    let mut acknowledged = 0;
    for append in appended {
        acknowledged += usize::from(append.durable.await.is_ok());
    }
    acknowledged
}

/// Batches appended while a write is under way are copied into the next write as they come
/// (`write_queue`); those that start a new segment are copied when written. Both reach the
/// files byte for byte, and a failed write drops what was staged behind it.
#[test]
fn batches_copied_into_writes_as_appended_land_whole_across_rolls_and_failed_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        let (writes, staged, rolls) = {
            let counters = crate::metrics::counters();
            (counters.disk_writes, counters.disk_writes_staged, counters.segment_roll.count())
        };
        assert_eq!(append_together(&log, 0..400).await, 400);
        let counters = crate::metrics::counters();
        let (writes, staged) = (counters.disk_writes - writes, counters.disk_writes_staged - staged);
        assert!(log.segment_count() > 3, "rolled by size");
        assert_eq!(counters.segment_roll.count() - rolls, log.segment_count() as u64 - 1, "every roll timed");
        assert!(staged > 0, "appends were staged: {staged} of {writes} writes");
        assert!(staged < writes, "rounds that start a segment were not: {staged} of {writes} writes");

        fault::arm(fault::Fault::WriteNoSpace { after_writes: 1 });
        let acknowledged = append_together(&log, 400..500).await;
        fault::clear();
        assert!(acknowledged < 100, "the second write failed: {acknowledged} acknowledged");
        let staged = crate::metrics::counters().disk_writes_staged;
        assert_eq!(append_together(&log, 500..600).await, 100);
        assert!(crate::metrics::counters().disk_writes_staged > staged, "staging resumed");

        let written = read_all(&log).await;
        assert_eq!(written.len(), 400 + acknowledged + 100);
        let mut next = 0;
        for (base, bytes) in &written {
            assert_eq!(*base, next, "no gap, no overlap");
            next = last_offset(bytes) + 1;
        }
        assert_eq!(next, log.log_end_offset().0);
        drop(log);
        let log = Log::open(dir.path(), config()).await.expect("reopen after a crash");
        assert_eq!(read_all(&log).await, written, "the files hold what was read back");
        log.close().await.expect("close");
    });
}

#[test]
fn batches_claiming_huge_offset_ranges_get_segments_of_their_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        // A "compressed" batch claiming i32::MAX records: the log does not decompress, so it
        // must store it without letting relative offsets overflow a segment's index.
        let mut claimed = encode_batch(1, 1, 10, 1).to_vec();
        claimed[21..23].copy_from_slice(&1i16.to_be_bytes()); // gzip
        claimed[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes()); // last offset delta
        claimed[57..61].copy_from_slice(&i32::MAX.to_be_bytes()); // records count
        let crc = crc32c::crc32c(&claimed[21..]);
        claimed[17..21].copy_from_slice(&crc.to_be_bytes());
        let mut three = claimed.clone();
        three.extend_from_slice(&claimed);
        three.extend_from_slice(&claimed);
        let appended = log.append(&Bytes::from(three), LeaderEpoch(0)).expect("append");
        appended.durable.await.expect("durable");
        assert_eq!(log.log_end_offset(), Offset(3 * i64::from(i32::MAX)));
        assert_eq!(
            log.segment_bases(),
            vec![Offset(0), Offset(i64::from(i32::MAX)), Offset(2 * i64::from(i32::MAX))]
        );
        assert_eq!(read_all(&log).await.len(), 3);
        log.close().await.expect("close");
        let log = Log::open(dir.path(), config()).await.expect("reopen");
        assert_eq!(read_all(&log).await.len(), 3);
        log.close().await.expect("close");
    });
}

#[test]
fn a_failed_roll_keeps_the_sealed_segment_active_and_appends_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        let mut acked = 0;
        while log.segment_count() == 1 && log.size_bytes() + 2000 < (64 << 10) {
            append(&log, acked, 1, 1000).await.expect("append");
            acked += 1;
        }
        fault::arm(fault::Fault::CreateFile);
        let mut failures = 0;
        for seed in 100..140 {
            match append(&log, seed, 1, 1000).await {
                Ok(_) => acked += 1,
                Err(AppendError::Storage(_)) => failures += 1,
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert_eq!(failures, 1, "only the append that needed the new segment failed");
        assert!(log.segment_count() > 1, "the next append rolled");
        drop(log);
        let log = Log::open(dir.path(), config()).await.expect("reopen after a crash");
        assert_eq!(read_all(&log).await.len() as u64, acked);
        log.close().await.expect("close");
    });
}

/// One step of the model-based test.
#[derive(Clone, Debug)]
enum Step {
    Append { records: usize, value_bytes: usize },
    Read { from_permille: u16, bytes_max: usize },
    Truncate { to_permille: u16 },
    Retention { bytes: u64 },
    Reopen { clean: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1usize..8, 0usize..900).prop_map(|(records, value_bytes)| Step::Append { records, value_bytes }),
        3 => (0u16..1001, 1usize..20_000).prop_map(|(from_permille, bytes_max)| Step::Read { from_permille, bytes_max }),
        1 => (0u16..1001).prop_map(|to_permille| Step::Truncate { to_permille }),
        1 => (16u64..200).prop_map(|kib| Step::Retention { bytes: kib << 10 }),
        1 => any::<bool>().prop_map(|clean| Step::Reopen { clean }),
    ]
}

fn pick(start: i64, end: i64, permille: u16) -> i64 {
    start + (end - start) * i64::from(permille) / 1000
}

/// (base offset, length, CRC32) of each batch: compares whole batches without printing them.
fn digest(batches: &[(i64, Vec<u8>)]) -> Vec<(i64, usize, u32)> {
    batches.iter().map(|(base, bytes)| (*base, bytes.len(), crc32fast::hash(bytes))).collect()
}

fn last_offset(bytes: &[u8]) -> i64 {
    batch::validate(bytes, usize::MAX).expect("model batch").last_offset()
}

/// Checks one read against the model: it starts with the batch holding `from`, continues with
/// the following batches in order, and respects the byte limit (one batch may exceed it).
fn check_read(model: &[(i64, Vec<u8>)], from: i64, bytes_max: usize, read: &ReadBatches) {
    let expected: Vec<(i64, Vec<u8>)> =
        model.iter().filter(|(_, bytes)| last_offset(bytes) >= from).take(read.batches).cloned().collect();
    let bytes = read.to_vec();
    let mut got = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let header = batch::validate(&bytes[at..], usize::MAX).expect("valid batch read");
        got.push((header.base_offset, bytes[at..at + header.total_bytes()].to_vec()));
        at += header.total_bytes();
    }
    assert_eq!(digest(&got), digest(&expected), "read from {from}");
    let remaining = model.iter().any(|(_, bytes)| last_offset(bytes) >= from);
    assert_eq!(read.batches > 0, remaining, "a read returns something iff something is there");
    assert!(read.batches <= 1 || read.bytes <= bytes_max, "byte limit");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random appends, reads, truncations, retention and reopenings (clean or crashed) agree
    /// with a model that is just the list of acknowledged batches.
    #[test]
    fn the_log_behaves_like_a_list_of_batches(steps in proptest::collection::vec(step(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            segment_bytes: 16 << 10,
            index_interval_bytes: 512,
            cache_bytes_max: 8 << 10,
            ..LogConfig::default()
        };
        block_on(async {
            let mut model: Vec<(i64, Vec<u8>)> = Vec::new();
            let mut model_end = 0i64;
            let mut log = Log::open(dir.path(), config.clone()).await.expect("open");
            for (seed, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Append { records, value_bytes } => {
                        let batch = encode_batch(seed as u64, records, value_bytes, seed as i64);
                        let appended = log.append(&batch, LeaderEpoch(1)).expect("append");
                        appended.durable.await.expect("durable");
                        assert_eq!(appended.base_offset.0, model_end);
                        let mut stored = batch::rewrite_header(&batch, model_end, 1, None).to_vec();
                        stored.extend_from_slice(&batch[batch::HEADER_BYTES..]);
                        model.push((model_end, stored));
                        model_end += records as i64;
                    }
                    Step::Read { from_permille, bytes_max } => {
                        let from = pick(log.log_start_offset().0, model_end, from_permille);
                        let limits = ReadLimits { bytes_max, min_one: true, upper: Offset(i64::MAX) };
                        let read = log.read(Offset(from), limits).await.expect("read");
                        check_read(&model, from, bytes_max, &read);
                    }
                    Step::Truncate { to_permille } => {
                        let to = pick(log.log_start_offset().0, model_end, to_permille);
                        log.truncate_to(Offset(to)).await.expect("truncate");
                        if let Some(cut) = model.iter().position(|(_, bytes)| last_offset(bytes) >= to) {
                            model_end = model[cut].0;
                            model.truncate(cut);
                        }
                    }
                    Step::Retention { bytes } => {
                        log.close().await.expect("close");
                        let retained = LogConfig { retention_bytes: Some(bytes), retention_ms: None, ..config.clone() };
                        let reopened = Log::open(dir.path(), retained).await.expect("open");
                        let outcome = reopened.enforce_retention(TimestampMs::now()).await.expect("retention");
                        model.retain(|(base, _)| *base >= outcome.log_start.0);
                        reopened.close().await.expect("close");
                        log = Log::open(dir.path(), config.clone()).await.expect("open");
                    }
                    Step::Reopen { clean } => {
                        if clean { log.close().await.expect("close") } else { drop(log) }
                        log = Log::open(dir.path(), config.clone()).await.expect("reopen");
                    }
                }
                assert_eq!(log.log_end_offset().0, model_end);
                assert_eq!(digest(&read_all(&log).await), digest(&model), "whole log matches the model");
            }
            log.close().await.expect("close");
        });
    }
}

#[test]
fn leader_epochs_survive_reopening_crashes_and_truncation() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        let appended = |log: &Log, seed: u64, epoch: i32| {
            let batch = encode_batch(seed, 2, 10, 1_000);
            log.append(&batch, LeaderEpoch(epoch)).expect("append").durable
        };
        for seed in 0..5 {
            appended(&log, seed, 1).await.expect("durable"); // offsets 0..10 in epoch 1
        }
        for seed in 5..8 {
            appended(&log, seed, 4).await.expect("durable"); // offsets 10..16 in epoch 4
        }
        let ends = |log: &Log| {
            [0, 1, 2, 4, 5].map(|epoch| {
                let (epoch, offset) = log.end_offset_for_epoch(LeaderEpoch(epoch));
                (epoch.0, offset.0)
            })
        };
        let expected = [(0, 0), (1, 10), (1, 10), (4, 16), (-1, -1)];
        assert_eq!(ends(&log), expected);
        log.close().await.expect("close");

        let log = Log::open(dir.path(), config()).await.expect("reopen after a clean close");
        assert_eq!(ends(&log), expected);
        appended(&log, 8, 6).await.expect("durable"); // offsets 16..18 in epoch 6
        drop(log); // crash: the checkpoint was written before the batch
        let log = Log::open(dir.path(), config()).await.expect("reopen after a crash");
        assert_eq!(log.end_offset_for_epoch(LeaderEpoch(5)), (LeaderEpoch(4), Offset(16)));
        assert_eq!(log.end_offset_for_epoch(LeaderEpoch(6)), (LeaderEpoch(6), Offset(18)));

        log.truncate_to(Offset(12)).await.expect("truncate");
        assert_eq!(
            log.end_offset_for_epoch(LeaderEpoch(6)),
            (LeaderEpoch(-1), Offset(-1)),
            "epoch 6 was cut"
        );
        assert_eq!(log.end_offset_for_epoch(LeaderEpoch(4)), (LeaderEpoch(4), Offset(12)));
        log.delete_records_before(Offset(4)).await.expect("delete records");
        assert_eq!(
            log.end_offset_for_epoch(LeaderEpoch(0)),
            (LeaderEpoch(0), Offset(4)),
            "epoch 1 now starts at 4"
        );
        log.close().await.expect("close");
        let text = std::fs::read_to_string(dir.path().join("leader-epoch-checkpoint")).expect("checkpoint");
        assert_eq!(text, "0\n2\n1 4\n4 10\n");
    });
}

#[test]
fn a_follower_keeps_its_leaders_offsets_and_epochs_and_readers_stop_at_the_high_watermark() {
    let (leader_dir, follower_dir) =
        (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    block_on(async {
        let leader = Log::open(leader_dir.path(), config()).await.expect("open leader");
        for (seed, epoch) in [(0, 2), (1, 2), (2, 5)] {
            let appended =
                leader.append(&encode_batch(seed, 4, 100, 1_000), LeaderEpoch(epoch)).expect("append");
            appended.durable.await.expect("durable");
        }
        let follower = Log::open(follower_dir.path(), config()).await.expect("open follower");
        follower.set_high_watermark(Some(Offset(0)));
        let shipped = leader.read_for_replica(Offset(0), usize::MAX).await.expect("read").to_vec();
        let batches = batch::whole_batches(&Bytes::from(shipped)).expect("valid batches");
        assert_eq!(batches.len(), 3);
        let durable = follower.append_replica(batches.clone()).expect("append").expect("something new");
        durable.await.expect("durable");
        assert_eq!(follower.log_end_offset(), Offset(12));
        assert_eq!(follower.end_offset_for_epoch(LeaderEpoch(2)), (LeaderEpoch(2), Offset(8)));
        assert_eq!(follower.latest_epoch(), Some(LeaderEpoch(5)));
        assert!(follower.append_replica(batches.clone()).expect("again").is_none(), "already here");
        let gap = batches[2..].to_vec();
        follower.truncate_to(Offset(4)).await.expect("truncate");
        assert!(matches!(follower.append_replica(gap), Err(AppendError::NotContiguous { .. })));

        // Consumers see only what is below the high watermark; followers copy everything.
        follower.append_replica(batches[1..].to_vec()).expect("append").expect("new").await.expect("durable");
        assert_eq!(follower.stable_offset(), Offset(0));
        assert_eq!(follower.read(Offset(0), everything()).await.expect("read").batches, 0);
        follower.set_high_watermark(Some(Offset(8)));
        assert_eq!(follower.stable_offset(), Offset(8));
        assert_eq!(follower.read(Offset(0), everything()).await.expect("read").next_offset, Offset(8));
        follower.set_high_watermark(None);
        assert_eq!(follower.stable_offset(), Offset(12), "a partition on one broker: the flush policy alone");
        assert_eq!(read_all(&follower).await, read_all(&leader).await, "the same batches, byte for byte");
    });
}

#[test]
fn a_follower_behind_its_leaders_log_start_starts_again_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), config()).await.expect("open");
        for seed in 0..200 {
            append(&log, seed, 3, 300).await.expect("append");
        }
        assert!(log.segment_count() > 1);
        assert!(matches!(log.restart_at(Offset(100)).await, Err(LogError::RestartWithinLog(_))));
        log.restart_at(Offset(1000)).await.expect("restart");
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (Offset(1000), Offset(1000)));
        assert_eq!(log.segment_bases(), [Offset(1000)]);
        assert_eq!(log.latest_epoch(), None);
        let mut batch = encode_batch(7, 4, 100, 5_000).to_vec();
        batch[..8].copy_from_slice(&1000i64.to_be_bytes());
        let batch = batch::whole_batches(&Bytes::from(batch)).expect("valid");
        log.append_replica(batch).expect("append").expect("new").await.expect("durable");
        log.close().await.expect("close");
        let reopened = Log::open(dir.path(), config()).await.expect("reopen");
        assert_eq!((reopened.log_start_offset(), reopened.log_end_offset()), (Offset(1000), Offset(1004)));
        let read = reopened.read(Offset(1000), everything()).await.expect("read");
        assert_eq!((read.batches, read.next_offset), (1, Offset(1004)));
    });
}
