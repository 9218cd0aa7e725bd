//! `ringmq log dump` against a real log written by the storage engine.

use ringmq::io::block_on;
use ringmq::log::{Log, LogConfig};
use ringmq::testing::encode_batch;
use ringmq::types::LeaderEpoch;
use std::process::Command;

fn dump(dir: &std::path::Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["log", "dump"])
        .arg(dir)
        .output()
        .expect("run ringmq");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Appends `batches` batches of three 900-byte records in leader epoch 2, each acknowledged.
async fn append(log: &Log, batches: u64) {
    for seed in 0..batches {
        log.append(&encode_batch(seed, 3, 900, 1), LeaderEpoch(2))
            .expect("append")
            .durable
            .await
            .expect("durable");
    }
}

/// A segment a broker still has open (or had, when it crashed) ends in the blocks it allocates
/// ahead, which read as zeros: not damage.
#[test]
fn dump_of_an_open_segment_reports_the_blocks_allocated_ahead_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), LogConfig::default()).await.expect("open");
        append(&log, 10).await;
        drop(log); // left open, as by a crash
    });
    let (ok, out) = dump(dir.path());
    assert!(ok, "{out}");
    assert!(out.contains("(10 batches, 30 records"), "{out}");
    assert!(out.contains("bytes allocated ahead (zeros) after the last batch"), "{out}");
}

#[test]
fn dump_lists_every_batch_and_reports_a_torn_tail_without_touching_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), LogConfig { segment_bytes: 64 << 10, ..LogConfig::default() })
            .await
            .expect("open");
        append(&log, 40).await;
        log.close().await.expect("close");
    });
    let (ok, out) = dump(dir.path());
    assert!(ok, "{out}");
    assert_eq!(out.lines().filter(|line| line.trim_start().starts_with("offsets")).count(), 40);
    assert!(out.contains("offsets 117..=119"), "{out}");
    assert!(out.contains("leader_epoch 2"));

    let segment = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes.extend_from_slice(&[0xEE; 100]);
    std::fs::write(&segment, &bytes).expect("append garbage");
    let (ok, out) = dump(dir.path());
    assert!(!ok, "garbage is reported as a failure");
    assert!(out.contains("recovery would truncate 100 bytes"), "{out}");
    assert_eq!(std::fs::read(&segment).expect("read").len(), bytes.len(), "dump never modifies");

    // Zeros end only an open segment: after a sealed one they are damage.
    std::fs::write(&segment, &bytes[..bytes.len() - 100]).expect("mend");
    let first = dir.path().join(format!("{:020}.log", 0));
    assert_ne!(first, segment, "several segments");
    let mut sealed = std::fs::read(&first).expect("read");
    sealed.extend_from_slice(&[0; 4096]);
    std::fs::write(&first, &sealed).expect("append zeros");
    let (ok, out) = dump(dir.path());
    assert!(!ok, "{out}");
    assert!(out.contains("recovery would truncate 4096 bytes"), "{out}");
}

/// A reader that stops early (`ringmq log dump … | head`) ends the dump as it ends `cat`:
/// quietly, not with a panic on the next print.
#[test]
fn dump_into_a_pipe_closed_early_ends_without_a_panic() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let log = Log::open(dir.path(), LogConfig::default()).await.expect("open");
        // Far more lines than a pipe buffers (64 KiB), so the dump is still printing when
        // the reader goes away.
        let mut last = None;
        for seed in 0..3000 {
            last = Some(log.append(&encode_batch(seed, 1, 10, 1), LeaderEpoch(1)).expect("append").durable);
        }
        last.expect("appended").await.expect("durable");
        log.close().await.expect("close");
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["log", "dump"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ringmq");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("read a line");
    assert!(first.contains("offsets 0..=0"), "{first}");
    // The reader is dropped here: the pipe closes with most of the dump unread.
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        output.status.success() || output.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        output.status
    );
}
