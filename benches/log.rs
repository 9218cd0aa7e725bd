//! Storage engine benchmarks, each beside the raw baseline it is judged against, in the same
//! run on the same disk (the data directory is under `RINGMQ_BENCH_DIR`, default the system
//! temporary directory):
//! - `append/log_1KiB_records_16KiB_batches` vs `append/raw_odirect_16KiB_writes` and
//!   `append/raw_odirect_1MiB_writes` (the same bytes written sequentially with O_DIRECT);
//! - `fsync/log_group_commit` vs `fsync/raw_write_fdatasync_each` (every write synced);
//! - `read/cached` and `read/cold` (O_DIRECT reads of closed segments);
//! - `index/lookup` and `batch/validate_16KiB`.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringmq::io::block_on;
use ringmq::log::{FlushPolicy, Log, LogConfig, ReadLimits};
use ringmq::testing::encode_batch;
use ringmq::types::{LeaderEpoch, Offset};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// 16 records of 1 KiB values: one 16 KiB producer batch.
fn producer_batch() -> Bytes {
    encode_batch(7, 16, 1000, 1_700_000_000_000)
}

/// Bytes appended per measured iteration.
const BYTES_PER_ITERATION: usize = 64 << 20;
/// Appends in flight at once, as concurrent producers (or one pipelining producer) make them:
/// 64 by default (1 MiB), `RINGMQ_BENCH_IN_FLIGHT` to change.
fn in_flight() -> usize {
    std::env::var("RINGMQ_BENCH_IN_FLIGHT").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

fn bench_dir() -> tempfile::TempDir {
    let parent = std::env::var_os("RINGMQ_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    tempfile::tempdir_in(parent).expect("bench dir")
}

fn config(flush: FlushPolicy) -> LogConfig {
    LogConfig { flush, retention_ms: None, ..LogConfig::default() }
}

/// Appends `bytes` worth of `batch` keeping `IN_FLIGHT` appends outstanding; returns elapsed.
async fn append_stream(log: &Log, batch: &Bytes, bytes: usize) -> Duration {
    let count = bytes / batch.len();
    let start = Instant::now();
    let window = in_flight();
    let mut in_flight = std::collections::VecDeque::with_capacity(window);
    for _ in 0..count {
        if in_flight.len() == window {
            let durable: ringmq::log::Durable = in_flight.pop_front().expect("in flight");
            durable.await.expect("durable");
        }
        in_flight.push_back(log.append(batch, LeaderEpoch(0)).expect("append").durable);
    }
    for durable in in_flight {
        durable.await.expect("durable");
    }
    start.elapsed()
}

/// Writes `bytes` sequentially with O_DIRECT in `block` sized writes, one at a time, syncing
/// after each if asked. The baseline a log append is compared with.
async fn raw_writes(path: &std::path::Path, block: usize, bytes: usize, sync_each: bool) -> Duration {
    // A new file every time, as the log's segments are: overwriting an existing file would
    // spare the baseline the block allocation and metadata journaling that appends pay.
    let _ = std::fs::remove_file(path);
    let file = ringmq::io::WriteFile::open(path, true).await.expect("raw file");

    let template = producer_batch();
    let start = Instant::now();
    let mut position = 0u64;
    while (position as usize) < bytes {
        let mut buf = file.alloc(position, block);
        for at in (0..block).step_by(template.len()) {
            let len = template.len().min(block - at);
            buf.put(at, &template[..len]);
        }
        file.write(buf).await.expect("raw write");
        if sync_each {
            file.fdatasync().await.expect("raw fdatasync");
        }
        position += block as u64;
    }
    let elapsed = start.elapsed();
    file.close().await.expect("close");
    elapsed
}

/// Alternates the baseline and the log on the same bytes, `pairs` times, and prints the median
/// of the per-pair throughput ratios: on a noisy machine only pairs measured back to back are
/// comparable.
fn print_interleaved_ratio(
    name: &str,
    pairs: usize,
    bytes: usize,
    mut baseline: impl FnMut() -> Duration,
    mut log: impl FnMut() -> Duration,
) {
    let mut ratios: Vec<f64> = (0..pairs)
        .map(|_| {
            let raw = baseline();
            let ours = log();
            raw.as_secs_f64() / ours.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "{name}: log/baseline throughput ratio median {median:.2} over {pairs} interleaved pairs of {} MiB [{}]",
        bytes >> 20,
        listed.join(" ")
    );
}

const SYNCED_BYTES: usize = 8 << 20;
const NO_FSYNC: FlushPolicy = FlushPolicy::Interval { messages: None, interval: None };

/// Appends `bytes` to a new log under `parent` (new files, as the raw baseline writes) and
/// returns the time the appends took, open and close excluded.
fn log_appends(parent: &std::path::Path, flush: FlushPolicy, bytes: usize) -> Duration {
    let dir = tempfile::tempdir_in(parent).expect("log dir");
    block_on(async {
        let log = Log::open(dir.path(), config(flush)).await.expect("open");
        let elapsed = append_stream(&log, &producer_batch(), bytes).await;
        log.close().await.expect("close");
        elapsed
    })
}

/// The raw baseline: `bytes` written to a new file in `block` sized O_DIRECT writes.
fn raw_run(parent: &std::path::Path, block: usize, bytes: usize, sync_each: bool) -> Duration {
    block_on(raw_writes(&parent.join("raw"), block, bytes, sync_each))
}

/// Reads the whole log from offset 0 in 1 MiB fetches; returns the time taken.
async fn read_log(log: &Log, expect_cached: bool) -> Duration {
    let start = Instant::now();
    let mut from = Offset(0);
    loop {
        let limits = ReadLimits { bytes_max: 1 << 20, min_one: true, upper: Offset(i64::MAX) };
        let read = log.read(from, limits).await.expect("read");
        if read.batches == 0 {
            return start.elapsed();
        }
        assert_eq!(read.from_cache, expect_cached, "cold reads come from disk, warm ones from cache");
        from = read.next_offset;
    }
}

/// The raw baseline for cold reads: the file read sequentially with 1 MiB O_DIRECT reads.
async fn raw_reads(path: &std::path::Path) -> Duration {
    let file = ringmq::io::ReadFile::open(path).expect("open raw file");
    let start = Instant::now();
    let mut position = 0u64;
    loop {
        let chunk = file.read_at(position, 1 << 20).await.expect("raw read");
        if chunk.is_empty() {
            return start.elapsed();
        }
        position += chunk.len() as u64;
    }
}

fn interleaved(c: &mut Criterion) {
    let _ = c;
    // `cargo test` runs benchmarks once as a smoke test; the ratios need `cargo bench`.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let dir = bench_dir();
    let parent = dir.path();
    print_interleaved_ratio(
        "append vs raw O_DIRECT 1 MiB writes",
        7,
        BYTES_PER_ITERATION,
        || raw_run(parent, 1 << 20, BYTES_PER_ITERATION, false),
        || log_appends(parent, NO_FSYNC, BYTES_PER_ITERATION),
    );
    print_interleaved_ratio(
        "group-commit append vs raw 1 MiB write + fdatasync",
        5,
        SYNCED_BYTES,
        || raw_run(parent, 1 << 20, SYNCED_BYTES, true),
        || log_appends(parent, FlushPolicy::FsyncBeforeAck, SYNCED_BYTES),
    );
    let log_dir = parent.join("cold");
    let raw_file = parent.join("raw-cold");
    block_on(async {
        raw_writes(&raw_file, 1 << 20, BYTES_PER_ITERATION, false).await;
        let log = Log::open(&log_dir, config(NO_FSYNC)).await.expect("open");
        append_stream(&log, &producer_batch(), BYTES_PER_ITERATION).await;
        log.close().await.expect("close");
    });
    print_interleaved_ratio(
        "cold read (1 MiB fetches) vs raw O_DIRECT 1 MiB reads",
        7,
        BYTES_PER_ITERATION,
        || block_on(raw_reads(&raw_file)),
        || {
            block_on(async {
                let log = Log::open(&log_dir, config(NO_FSYNC)).await.expect("reopen: empty cache");
                let elapsed = read_log(&log, false).await;
                log.close().await.expect("close");
                elapsed
            })
        },
    );
}

/// Benchmarks `run` (one measured pass over `bytes`) under `group/name`.
fn bench_runs(
    c: &mut Criterion,
    group: &str,
    name: &str,
    bytes: usize,
    run: impl Fn(&std::path::Path) -> Duration,
) {
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Bytes(bytes as u64)).sample_size(10);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let dir = bench_dir();
            (0..iters).map(|_| run(dir.path())).sum()
        })
    });
    group.finish();
}

fn append(c: &mut Criterion) {
    let bytes = BYTES_PER_ITERATION;
    bench_runs(c, "append", "log_1KiB_records_16KiB_batches", bytes, |dir| log_appends(dir, NO_FSYNC, bytes));
    bench_runs(c, "append", "raw_odirect_16KiB_writes", bytes, |dir| raw_run(dir, 16 << 10, bytes, false));
    bench_runs(c, "append", "raw_odirect_1MiB_writes", bytes, |dir| raw_run(dir, 1 << 20, bytes, false));
}

fn fsync(c: &mut Criterion) {
    let bytes = SYNCED_BYTES;
    let group_commit = FlushPolicy::FsyncBeforeAck;
    bench_runs(c, "fsync", "log_group_commit", bytes, |dir| log_appends(dir, group_commit, bytes));
    bench_runs(c, "fsync", "raw_write_fdatasync_each_16KiB", bytes, |dir| {
        raw_run(dir, 16 << 10, bytes, true)
    });
    bench_runs(c, "fsync", "raw_write_fdatasync_each_1MiB", bytes, |dir| raw_run(dir, 1 << 20, bytes, true));
}

fn read(c: &mut Criterion) {
    const LOG_BYTES: usize = 64 << 20;
    let dir = bench_dir();
    let cached_config = LogConfig { cache_bytes_max: LOG_BYTES * 2, ..config(NO_FSYNC) };
    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Bytes(LOG_BYTES as u64)).sample_size(10);
    for cold in [false, true] {
        let name = if cold { "cold" } else { "cached" };
        group.bench_function(BenchmarkId::new(name, "1MiB_fetches"), |b| {
            b.iter_custom(|iters| {
                block_on(async {
                    std::fs::remove_dir_all(dir.path()).ok();
                    let log = Log::open(dir.path(), cached_config.clone()).await.expect("open");
                    append_stream(&log, &producer_batch(), LOG_BYTES).await;
                    let log = if cold {
                        log.close().await.expect("close");
                        Log::open(dir.path(), cached_config.clone()).await.expect("reopen")
                    } else {
                        log
                    };
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += read_log(&log, !cold).await;
                    }
                    log.close().await.expect("close");
                    total
                })
            })
        });
    }
    group.finish();
}

fn small(c: &mut Criterion) {
    let batch = producer_batch();
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function("validate_16KiB", |b| {
        b.iter(|| ringmq::batch::split_validated(std::hint::black_box(&batch), usize::MAX).expect("valid"))
    });
    group.finish();

    // A full 1 GiB segment's sparse index: one entry per 4 KiB.
    let mut index = ringmq::log::OffsetIndex::default();
    for entry in 1..=262_144u32 {
        index.push(entry * 16 - 1, entry * 4096);
    }
    let targets: Vec<u32> = (0..1024u32).map(|i| i.wrapping_mul(2_654_435_761) % (262_144 * 16)).collect();
    let mut group = c.benchmark_group("index");
    group.throughput(Throughput::Elements(targets.len() as u64));
    group.bench_function("lookup_262144_entries", |b| {
        b.iter(|| targets.iter().map(|&t| index.position_for(std::hint::black_box(t)) as u64).sum::<u64>())
    });

    // An index lookup plus one O_DIRECT read of a small batch in a closed segment.
    let dir = bench_dir();
    let uncached = LogConfig { cache_bytes_max: 0, ..config(NO_FSYNC) };
    let log_end = block_on(async {
        let log = Log::open(dir.path(), uncached.clone()).await.expect("open");
        append_stream(&log, &encode_batch(1, 1, 100, 1), 32 << 20).await;
        let end = log.log_end_offset();
        log.close().await.expect("close");
        end
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("cold_point_read", |b| {
        b.iter_custom(|iters| {
            block_on(async {
                let log = Log::open(dir.path(), uncached.clone()).await.expect("open");
                let start = Instant::now();
                for i in 0..iters {
                    let from = Offset((i as i64).wrapping_mul(7919) % log_end.0);
                    let limits = ReadLimits { bytes_max: 1, min_one: true, upper: Offset(i64::MAX) };
                    let read = log.read(from, limits).await.expect("read");
                    assert_eq!(read.batches, 1);
                }
                let elapsed = start.elapsed();
                log.close().await.expect("close");
                elapsed
            })
        })
    });
    group.finish();
}

criterion_group!(benches, interleaved, append, fsync, read, small);
criterion_main!(benches);
