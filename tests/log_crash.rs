//! Crash test with real processes: a child appends to a log and prints each acknowledged batch;
//! the parent SIGKILLs it at random moments, many times. After every kill the log is reopened
//! (recovering as the broker would) and every acknowledged batch must be present and
//! byte-identical, offsets contiguous, and nothing after the last valid batch.
//!
//! This binary is its own child: run with `--child DIR POLICY` it appends until killed.
//! The random schedule's seed is printed; rerun a failure with RINGMQ_CRASH_SEED=<seed>.

use bytes::Bytes;
use ringmq::batch::{self, HEADER_BYTES};
use ringmq::io::block_on;
use ringmq::log::{FlushPolicy, Log, LogConfig, ReadLimits};
use ringmq::testing::encode_batch;
use ringmq::types::{LeaderEpoch, Offset};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KILLS_PER_POLICY: u32 = 12;
const APPENDERS: u64 = 8;
const LEADER_EPOCH: i32 = 5;

fn config(policy: &str) -> LogConfig {
    let flush = match policy {
        "fsync" => FlushPolicy::FsyncBeforeAck,
        "write" => FlushPolicy::Interval { messages: None, interval: None },
        other => panic!("unknown policy {other}"),
    };
    LogConfig { segment_bytes: 256 << 10, index_interval_bytes: 1024, flush, ..LogConfig::default() }
}

/// The batch appender `task` sends as its `n`th: sizes vary so batches straddle blocks.
fn batch_for(seed: u64) -> Bytes {
    let records = 1 + (seed % 7) as usize;
    let value_bytes = 10 + ((seed * 7919) % 1500) as usize;
    encode_batch(seed, records, value_bytes, 1_700_000_000_000 + seed as i64)
}

fn child(dir: &Path, policy: &str) {
    let config = config(policy);
    block_on(async move {
        let log = std::rc::Rc::new(Log::open(dir, config).await.expect("child open"));
        let start = Instant::now().elapsed().as_nanos() as u64 ^ std::process::id() as u64;
        let tasks: Vec<_> = (0..APPENDERS)
            .map(|task| {
                let log = log.clone();
                ringmq::io::spawn_local(async move {
                    for n in 0u64.. {
                        let seed = (start << 20) ^ (task << 40) ^ n;
                        let appended =
                            log.append(&batch_for(seed), LeaderEpoch(LEADER_EPOCH)).expect("append");
                        appended.durable.await.expect("durable");
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "{} {seed}", appended.base_offset.0).expect("stdout");
                        out.flush().expect("stdout");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
    });
}

/// A small deterministic generator for the kill schedule (xorshift64*).
struct Schedule(u64);

impl Schedule {
    fn next_ms(&mut self, max: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % max
    }
}

/// Runs one child until it acknowledged something and the schedule's delay passed, SIGKILLs
/// it, and returns the (base offset, seed) pairs it acknowledged.
fn run_and_kill(dir: &Path, policy: &str, delay: Duration) -> Vec<(i64, u64)> {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .args(["--child", dir.to_str().expect("utf-8 dir"), policy])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (first_ack, acked) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acks = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut fields = line.split(' ');
            let base = fields.next().and_then(|f| f.parse().ok()).expect("base offset");
            let seed = fields.next().and_then(|f| f.parse().ok()).expect("seed");
            if acks.is_empty() {
                let _ = first_ack.send(());
            }
            acks.push((base, seed));
        }
        acks
    });
    acked.recv_timeout(Duration::from_secs(30)).expect("the child acknowledges an append within 30 s");
    std::thread::sleep(delay);
    child.kill().expect("SIGKILL child");
    child.wait().expect("reap child");
    reader.join().expect("reader thread")
}

/// Reopens the log and checks every acknowledged batch against what was sent.
fn verify(dir: &Path, policy: &str, acked: &[(i64, u64)]) -> (i64, usize) {
    let config = config(policy);
    block_on(async move {
        let log = Log::open(dir, config).await.expect("recover after SIGKILL");
        let mut stored = std::collections::BTreeMap::new();
        let mut from = log.log_start_offset();
        let mut expected_base = from.0;
        loop {
            let limits = ReadLimits { bytes_max: 1 << 20, min_one: true, upper: Offset(i64::MAX) };
            let read = log.read(from, limits).await.expect("read back");
            if read.batches == 0 {
                break;
            }
            let bytes = read.to_vec();
            let mut at = 0;
            while at < bytes.len() {
                let header =
                    batch::validate(&bytes[at..], usize::MAX).expect("only valid batches are served");
                assert_eq!(header.base_offset, expected_base, "offsets are contiguous");
                expected_base = header.last_offset() + 1;
                stored.insert(header.base_offset, bytes[at..at + header.total_bytes()].to_vec());
                at += header.total_bytes();
            }
            from = read.next_offset;
        }
        assert_eq!(expected_base, log.log_end_offset().0, "nothing follows the last valid batch");
        let on_disk: u64 = std::fs::read_dir(dir)
            .expect("list")
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".log"))
            .map(|entry| entry.metadata().expect("stat").len())
            .sum();
        assert_eq!(on_disk, log.size_bytes(), "segment files hold exactly the valid batches");
        for &(base, seed) in acked {
            let sent = batch_for(seed);
            let mut expected = batch::rewrite_header(&sent, base, LEADER_EPOCH, None).to_vec();
            expected.extend_from_slice(&sent[HEADER_BYTES..]);
            let found = stored.get(&base).unwrap_or_else(|| panic!("acknowledged batch at {base} lost"));
            assert!(found == &expected, "acknowledged batch at {base} differs from what was sent");
        }
        let end = log.log_end_offset().0;
        log.close().await.expect("close");
        (end, stored.len())
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--child" {
        child(Path::new(&args[2]), &args[3]);
        return;
    }
    // `cargo test -- <filter>` passes a filter; run unless it excludes this test's name.
    let filter = args.iter().skip(1).find(|arg| !arg.starts_with('-'));
    if filter.is_some_and(|filter| !"sigkill_never_loses_an_acknowledged_batch".contains(filter.as_str())) {
        return;
    }
    let seed =
        std::env::var("RINGMQ_CRASH_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!(
        "running 1 test\nsigkill_never_loses_an_acknowledged_batch: seed {seed} (RINGMQ_CRASH_SEED to replay)"
    );
    let result = std::panic::catch_unwind(|| {
        let mut schedule = Schedule(seed);
        for policy in ["fsync", "write"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut all_acked = Vec::new();
            for kill in 0..KILLS_PER_POLICY {
                let delay = Duration::from_millis(schedule.next_ms(300));
                let acked = run_and_kill(dir.path(), policy, delay);
                assert!(!acked.is_empty(), "the child acknowledged appends before kill {kill}");
                all_acked.extend(acked);
                let (end, batches) = verify(dir.path(), policy, &all_acked);
                println!(
                    "  {policy}: kill {kill} after {delay:?}: {} acked so far, log end {end}, {batches} batches intact",
                    all_acked.len()
                );
            }
        }
    });
    match result {
        Ok(()) => println!(
            "test sigkill_never_loses_an_acknowledged_batch ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out"
        ),
        Err(_) => {
            println!(
                "test sigkill_never_loses_an_acknowledged_batch ... FAILED (seed {seed})\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out"
            );
            std::process::exit(101);
        }
    }
}
