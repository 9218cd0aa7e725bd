//! This machine's limits, measured the way the broker uses the hardware: sequential O_DIRECT
//! writes and reads in the broker's write size (`WRITE_BYTES_MAX`) on the data directory's
//! disk, fdatasync after a small write (what a group commit costs), and loopback TCP
//! bandwidth in the benchmark's message size. Each part runs for about a second.

use crate::constants::WRITE_BYTES_MAX;
use crate::io::AlignedBuf;
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

const PART_DURATION: Duration = Duration::from_secs(1);
/// The file written is at most this large (it is read back, then removed).
const FILE_BYTES_MAX: u64 = 1 << 30;

#[derive(Clone, Debug, Serialize)]
pub struct Baseline {
    pub write_mb_per_s: f64,
    pub read_mb_per_s: f64,
    pub fdatasync_us_p50: f64,
    pub fdatasync_us_p99: f64,
    /// One O_DIRECT write of a block of the message size (what a lone acks=1 produce waits for).
    pub small_write_us_p50: f64,
    pub small_write_us_p99: f64,
    pub loopback_mb_per_s: f64,
    pub block_bytes: usize,
    pub message_bytes: usize,
}

pub fn measure(dir: &Path, message_bytes: usize, cpu: Option<usize>) -> Result<Baseline, String> {
    if let Some(cpu) = cpu {
        let _ = affinity::set_thread_affinity([cpu]);
    }
    let path = dir.join(format!(".ringmq-baseline-{}", std::process::id()));
    let disk = disk(&path, message_bytes);
    let _ = std::fs::remove_file(&path);
    let (write_mb_per_s, read_mb_per_s, fdatasync, small_write) = disk?;
    let ((fdatasync_us_p50, fdatasync_us_p99), (small_write_us_p50, small_write_us_p99)) =
        (fdatasync, small_write);
    let loopback_mb_per_s = loopback(message_bytes.max(1))?;
    Ok(Baseline {
        write_mb_per_s,
        read_mb_per_s,
        fdatasync_us_p50,
        fdatasync_us_p99,
        small_write_us_p50,
        small_write_us_p99,
        loopback_mb_per_s,
        block_bytes: WRITE_BYTES_MAX,
        message_bytes,
    })
}

/// (p50, p99) of a list of µs figures.
fn median_and_p99(mut figures: Vec<f64>) -> (f64, f64) {
    figures.sort_by(f64::total_cmp);
    let at = |q: f64| {
        figures
            .get(((figures.len() as f64 * q) as usize).min(figures.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    (at(0.5), at(0.99))
}

type Percentiles = (f64, f64);

fn disk(path: &Path, message_bytes: usize) -> Result<(f64, f64, Percentiles, Percentiles), String> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| format!("baseline {what} {}: {e}", path.display())
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(io("open (O_DIRECT)"))?;
    let mut block = AlignedBuf::zeroed(WRITE_BYTES_MAX);
    block.spare_mut().iter_mut().enumerate().for_each(|(i, b)| *b = (i * 31 % 251) as u8);
    block.set_len(WRITE_BYTES_MAX);
    let started = Instant::now();
    let mut written = 0u64;
    while started.elapsed() < PART_DURATION && written + (WRITE_BYTES_MAX as u64) <= FILE_BYTES_MAX {
        file.write_all_at(block.as_ref(), written).map_err(io("write"))?;
        written += WRITE_BYTES_MAX as u64;
    }
    let write = written as f64 / started.elapsed().as_secs_f64() / 1e6;
    let started = Instant::now();
    let mut read = 0u64;
    let mut into = AlignedBuf::zeroed(WRITE_BYTES_MAX);
    while read < written {
        let spare = into.spare_mut();
        file.read_exact_at(&mut spare[..WRITE_BYTES_MAX], read).map_err(io("read"))?;
        read += WRITE_BYTES_MAX as u64;
    }
    let read = read as f64 / started.elapsed().as_secs_f64().max(1e-9) / 1e6;
    // Like a group commit: append 4 KiB (the file grows, so its size must be synced too),
    // then fdatasync.
    let mut syncs = Vec::new();
    let small = &block.as_ref()[..4096];
    let started = Instant::now();
    let mut end = written;
    while started.elapsed() < PART_DURATION && syncs.len() < 10_000 {
        file.write_all_at(small, end).map_err(io("write"))?;
        end += small.len() as u64;
        let synced = Instant::now();
        file.sync_data().map_err(io("fdatasync"))?;
        syncs.push(synced.elapsed().as_secs_f64() * 1e6);
    }
    // A lone small write, rounded up to whole 4 KiB blocks as the log writes them.
    let small_bytes = message_bytes.clamp(1, WRITE_BYTES_MAX).next_multiple_of(4096).min(WRITE_BYTES_MAX);
    let mut writes = Vec::new();
    let started = Instant::now();
    while started.elapsed() < PART_DURATION && writes.len() < 10_000 {
        let at = Instant::now();
        file.write_all_at(&block.as_ref()[..small_bytes], end).map_err(io("write"))?;
        writes.push(at.elapsed().as_secs_f64() * 1e6);
        end += small_bytes as u64;
    }
    Ok((write, read, median_and_p99(syncs), median_and_p99(writes)))
}

/// Bandwidth of one TCP connection over loopback: a thread reads and discards what the caller
/// writes in `message_bytes` writes.
fn loopback(message_bytes: usize) -> Result<f64, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("baseline loopback: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let sink = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut stream = TcpStream::connect(address).map_err(|e| format!("baseline loopback: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let message = vec![7u8; message_bytes];
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < PART_DURATION {
        for _ in 0..64 {
            stream.write_all(&message).map_err(|e| format!("baseline loopback: {e}"))?;
        }
        sent += 64 * message_bytes as u64;
    }
    drop(stream);
    let received =
        sink.join().map_err(|_| "the loopback reader panicked".to_string())?.map_err(|e| e.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(received.min(sent) as f64 / seconds / 1e6)
}
