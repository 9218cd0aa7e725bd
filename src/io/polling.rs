//! Whether a device's segment I/O is polled for or interrupt-driven.
//!
//! glommio sends a DMA file's reads and writes to its poll ring (`IORING_SETUP_IOPOLL`) when a
//! test read through that ring succeeds, and on a device without poll queues it does succeed:
//! the kernel completes the read by interrupt, and io_uring still reaps it only when asked.
//! The executor then cannot sleep while a write is in flight and spins in `io_uring_enter`.
//! At half-rate produce on a virtio disk (sysfs `io_poll` 0) that was 141 000 calls a second
//! and 0.86 of the broker's core; settled here, 51 000 and 0.65 (`perf stat`, 8 partitions,
//! 280 000 records/s), with produce p50 1.0 → 0.83 ms.
//!
//! So before a thread first opens a file on a device whose block queue does not poll, it
//! opens a probe file there write-only: glommio's test read of it fails, and glommio records
//! the device as not pollable for the thread, whose I/O on it then goes to the interrupt-driven
//! main ring. glommio 0.9 keeps the first probe's answer per device and thread;
//! `segment_writes_follow_the_device` checks that it still does.

use super::Latch;
use std::cell::RefCell;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A log filter directive for what glommio's reactor logs, one thing only: a failed test of
/// whether a device polls, which `settle` fails on purpose.
pub const QUIET_LOGS: &str = "glommio::reactor=off";

thread_local! {
    /// Devices (`st_dev`) this thread has settled or is settling, each with a latch set once
    /// it is done: a file opened on the device meanwhile waits for it, or glommio could test
    /// the device with that file first and keep "pollable".
    static SETTLED: RefCell<Vec<(u64, Latch)>> = const { RefCell::new(Vec::new()) };
}

/// Settles, once per thread and device, how glommio does I/O on the device holding `dir`.
pub async fn settle(dir: &Path) {
    let Ok(device) = std::fs::metadata(dir).map(|meta| meta.dev()) else { return };
    loop {
        let under_way = SETTLED.with(|settled| {
            settled.borrow().iter().find(|(settled, _)| *settled == device).map(|(_, done)| done.clone())
        });
        match under_way {
            None => break,
            Some(done) if done.is_set() => return,
            // Then settled, or given up by its caller: gone from the list, settled here.
            Some(done) => done.wait().await,
        }
    }
    let settling = Settling { device, done: Latch::default(), finished: false };
    SETTLED.with(|settled| settled.borrow_mut().push((device, settling.done.clone())));
    if !polls(Path::new("/sys"), device) {
        probe(dir).await;
    }
    settling.finish();
}

/// The settling of one device on this thread. Dropped unfinished (its open was called off),
/// it forgets the device, so that the next file opened there settles it.
struct Settling {
    device: u64,
    done: Latch,
    finished: bool,
}

impl Settling {
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Settling {
    fn drop(&mut self) {
        if !self.finished {
            SETTLED.with(|settled| settled.borrow_mut().retain(|(device, _)| *device != self.device));
        }
        self.done.set();
    }
}

/// Opens a probe file in `dir` write-only: glommio's test read of it fails. One that cannot
/// be created (a full or read-only disk) leaves glommio to test the next file itself.
async fn probe(dir: &Path) {
    let thread = format!("{:?}", std::thread::current().id());
    let probe = dir.join(format!(".polling-probe-{}", thread.trim_matches(|c: char| !c.is_ascii_digit())));
    match glommio::io::OpenOptions::new().write(true).create(true).dma_open(&probe).await {
        Ok(file) => {
            let _closed = file.close().await;
        }
        Err(error) => tracing::debug!(%error, probe = %probe.display(), "cannot settle polling"),
    }
    let _gone = std::fs::remove_file(&probe);
}

/// Whether `device`'s block queue completes I/O by polling (`queue/io_poll` under `sysfs`;
/// a partition's is its disk's). Unknown is no: interrupts always work.
fn polls(sysfs: &Path, device: u64) -> bool {
    let dir: PathBuf = sysfs.join(format!("dev/block/{}:{}", libc::major(device), libc::minor(device)));
    let queue = match dir.join("queue").is_dir() {
        true => dir.join("queue"),
        false => dir.join("../queue"),
    };
    std::fs::read_to_string(queue.join("io_poll")).is_ok_and(|value| value.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::IO_ALIGNMENT_BYTES;
    use crate::io::{WriteFile, block_on};

    /// On this machine's disk (not /tmp, which may be tmpfs), segment writes go to the poll
    /// ring only if the device polls, for files opened together too.
    #[test]
    fn segment_writes_follow_the_device() {
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).expect("dir");
        let device = std::fs::metadata(dir.path()).expect("stat").dev();
        let (polled, interrupted) = block_on(async {
            let (first, second) = futures_lite::future::zip(
                WriteFile::open(&dir.path().join("first"), true),
                WriteFile::open(&dir.path().join("second"), true),
            )
            .await;
            let files = [first.expect("open"), second.expect("open")];
            let _earlier = glommio::executor().io_stats();
            for (file, block) in files.iter().cycle().zip(0..4u64) {
                let buf = file.alloc(block * IO_ALIGNMENT_BYTES as u64, IO_ALIGNMENT_BYTES);
                file.write(buf).await.expect("write");
            }
            let stats = glommio::executor().io_stats();
            for file in files {
                file.close().await.expect("close");
            }
            (stats.poll_ring.file_writes().0, stats.main_ring.file_writes().0)
        });
        match polls(Path::new("/sys"), device) {
            true => assert_eq!(polled, 4, "a polling device's writes are polled for"),
            false => assert_eq!((polled, interrupted), (0, 4), "no write waits on the poll ring"),
        }
        let mut names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        names.sort();
        assert_eq!(names, ["first", "second"], "the probe is gone");
    }

    fn sysfs_with(entries: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("dir");
        for (dir, io_poll) in entries {
            let queue = root.path().join(dir).join("queue");
            std::fs::create_dir_all(&queue).expect("mkdir");
            std::fs::write(queue.join("io_poll"), io_poll).expect("write");
        }
        root
    }

    #[test]
    fn a_device_polls_only_when_its_queue_says_so() {
        let sysfs = sysfs_with(&[("dev/block/259:0", "1\n"), ("dev/block/254:0", "0\n")]);
        // A partition has no queue of its own: its disk's counts.
        std::fs::create_dir_all(sysfs.path().join("dev/block/259:0/part1")).expect("mkdir");
        std::os::unix::fs::symlink("259:0/part1", sysfs.path().join("dev/block/259:1")).expect("link");
        assert!(polls(sysfs.path(), libc::makedev(259, 0)));
        assert!(polls(sysfs.path(), libc::makedev(259, 1)), "a partition of a polling disk");
        assert!(!polls(sysfs.path(), libc::makedev(254, 0)));
        assert!(!polls(sysfs.path(), libc::makedev(0, 45)), "no block device (tmpfs, overlay)");
    }
}
