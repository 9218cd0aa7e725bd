//! `ringmq log …`: read-only inspection of a partition directory, like Kafka's
//! `kafka-dump-log.sh`. Never modifies files: recovery is the broker's job.

use clap::Subcommand;
use ringmq::batch::{self, BatchError, LOG_OVERHEAD_BYTES};
use ringmq::constants::{ALLOCATED_AHEAD_BYTES_MAX, BATCH_BYTES_MAX};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum LogCommand {
    /// List the segments of a partition directory and every batch in them, validating each
    /// (length, magic, CRC32C) and reporting any invalid tail that recovery would cut.
    Dump {
        /// The partition directory, `<data-dir>/<topic>-<partition>`.
        dir: PathBuf,
        /// Print only the per-segment summary, not each batch.
        #[arg(long)]
        summary: bool,
    },
}

pub fn run(command: LogCommand) -> Result<(), String> {
    match command {
        LogCommand::Dump { dir, summary } => dump(&dir, summary),
    }
}

fn dump(dir: &Path, summary: bool) -> Result<(), String> {
    let mut segments: Vec<(i64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let digits = name.strip_suffix(".log")?;
            (digits.len() == 20).then(|| digits.parse().ok()).flatten().map(|base| (base, entry.path()))
        })
        .collect();
    segments.sort();
    if segments.is_empty() {
        return Err(format!("{} holds no segment files", dir.display()));
    }
    let mut invalid = false;
    let last = segments.len() - 1;
    for (i, (base, path)) in segments.into_iter().enumerate() {
        invalid |= dump_segment(base, &path, summary, i == last)?;
    }
    if invalid {
        return Err("invalid data found (see above)".into());
    }
    Ok(())
}

/// Prints one segment; returns whether it ends in invalid bytes. The last may end in the zeros
/// a broker writes ahead while it has the segment open.
fn dump_segment(base: i64, path: &Path, summary: bool, last: bool) -> Result<bool, String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let file_bytes = file.metadata().map_err(|e| e.to_string())?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let (mut position, mut batches, mut records, mut next_offset) = (0u64, 0u64, 0u64, base);
    let mut problem = None;
    while position < file_bytes {
        match read_batch(&mut reader) {
            Ok(bytes) => {
                let header = batch::validate(&bytes, BATCH_BYTES_MAX).map_err(|e| e.to_string())?;
                if header.base_offset != next_offset {
                    problem = Some(format!("offset {} where {next_offset} was expected", header.base_offset));
                    break;
                }
                if !summary {
                    println!(
                        "  offsets {}..={} position {position} bytes {} records {} max_timestamp {} leader_epoch {} crc {:#010x}",
                        header.base_offset,
                        header.last_offset(),
                        bytes.len(),
                        header.records_count,
                        header.max_timestamp,
                        header.leader_epoch,
                        header.crc
                    );
                }
                position += bytes.len() as u64;
                batches += 1;
                records += header.records_count as u64;
                next_offset = header.last_offset() + 1;
            }
            Err(reason) => {
                problem = Some(reason);
                break;
            }
        }
    }
    println!(
        "{}: offsets {base}..{next_offset} ({batches} batches, {records} records, {position} valid of {file_bytes} bytes)",
        path.display()
    );
    let allocated_ahead = last && file_bytes - position <= ALLOCATED_AHEAD_BYTES_MAX;
    if problem.is_some() && allocated_ahead && only_zeros(path, position, file_bytes)? {
        // An open segment of a running (or crashed) broker: the space it allocates ahead of
        // its writes (`io::WriteFile`), which closing or recovery cuts off.
        println!("  {} bytes allocated ahead (zeros) after the last batch", file_bytes - position);
        return Ok(false);
    }
    if let Some(reason) = &problem {
        println!(
            "  invalid tail at byte {position}: {reason}; recovery would truncate {} bytes",
            file_bytes - position
        );
    }
    Ok(problem.is_some())
}

/// Whether bytes `[from, to)` of the file are all zeros.
fn only_zeros(path: &Path, from: u64, to: u64) -> Result<bool, String> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let len = (to - at).min(chunk.len() as u64) as usize;
        file.read_exact_at(&mut chunk[..len], at)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if chunk[..len].iter().any(|&byte| byte != 0) {
            return Ok(false);
        }
        at += len as u64;
    }
    Ok(true)
}

/// Reads the next whole batch, checking its length before allocating for it.
fn read_batch(reader: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut overhead = [0u8; LOG_OVERHEAD_BYTES];
    reader.read_exact(&mut overhead).map_err(|_| "truncated batch header".to_string())?;
    let length = i32::from_be_bytes([overhead[8], overhead[9], overhead[10], overhead[11]]);
    if length < batch::BATCH_LENGTH_MIN as i32 {
        return Err(BatchError::LengthTooSmall(length).to_string());
    }
    let total = LOG_OVERHEAD_BYTES + length as usize;
    if total > BATCH_BYTES_MAX {
        return Err(BatchError::TooLarge { len: total, max: BATCH_BYTES_MAX }.to_string());
    }
    let mut bytes = vec![0u8; total];
    bytes[..LOG_OVERHEAD_BYTES].copy_from_slice(&overhead);
    reader
        .read_exact(&mut bytes[LOG_OVERHEAD_BYTES..])
        .map_err(|_| format!("batch of {length} bytes truncated"))?;
    batch::validate(&bytes, BATCH_BYTES_MAX).map_err(|e| e.to_string())?;
    Ok(bytes)
}
