//! Every limit of the storage engine, named once. Relations between them are checked at
//! compile time so a change to one cannot silently break another.

/// O_DIRECT alignment for file offsets, lengths and buffers. 4 KiB covers every logical block
/// size in use on Linux block devices today (512 B and 4 KiB).
pub const IO_ALIGNMENT_BYTES: usize = 4096;

/// Largest single record batch the log accepts (Kafka's `max.message.bytes` default is
/// 1 MiB + overhead; topics may raise it up to this hard ceiling).
pub const BATCH_BYTES_MAX: usize = 64 << 20;

/// Default of the per-topic `max.message.bytes` (Kafka's default: 1048588).
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 1_048_588;

/// Most bytes the flusher copies into one O_DIRECT write. Appends beyond this wait for the
/// next write, which starts as soon as the current one completes; meanwhile producers validate
/// the next batches. 1 MiB writes reach this machine's sequential O_DIRECT bandwidth.
pub const WRITE_BYTES_MAX: usize = 1 << 20;

/// Under fsync-before-ack, the most bytes written without an fdatasync while more appends keep
/// arriving: a backlog shares one fdatasync among several writes, but never postpones it
/// (and the acknowledgements waiting on it) beyond this.
pub const UNSYNCED_BYTES_MAX: u64 = 4 << 20;

/// Segment file sizes. Positions in the offset index are u32, as in Kafka.
pub const SEGMENT_BYTES_DEFAULT: u64 = 1 << 30;
pub const SEGMENT_BYTES_MIN: u64 = 16 << 10;
pub const SEGMENT_BYTES_MAX: u64 = (i32::MAX as u64) - BATCH_BYTES_MAX as u64;

/// Bytes of log between two sparse index entries (Kafka's `index.interval.bytes`).
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 4096;

/// Default size of one partition's in-memory batch cache.
pub const BATCH_CACHE_BYTES_DEFAULT: usize = 8 << 20;

/// Size of one read when scanning a segment during recovery or a timestamp lookup.
pub const SCAN_READ_BYTES: usize = 1 << 20;

/// How far ahead of its writes a segment file is allocated and zeroed (`io::WriteFile`): the
/// first fill of a segment is the minimum, each next one as large as the file so far, up to the
/// maximum. Writes into such blocks are pure overwrites, which io_uring completes inline; an
/// append that grows the file, or lands in blocks still unwritten, is handed to a kernel worker
/// thread on ext4 (measured on this VM: every segment write was, before segments were zeroed).
pub const ZERO_AHEAD_BYTES_MIN: u64 = 256 << 10;
pub const ZERO_AHEAD_BYTES_MAX: u64 = 4 << 20;
/// A fill is written in pieces of this size. The segment writes share the disk's queue with
/// them, and a produce answer waits for its segment write: with 1 MiB pieces, produce at half
/// of max rate (8 connections, 280 000 1 KiB records/s, broker on one core) had a p99 of
/// 12-15 ms and 20-25% of requests over 2.5 ms in the broker; with 128 KiB pieces, 5 ms and
/// 2% (64 KiB: no better). Max produce rose too: 604 / 495 -> 692 / 648 MB/s.
/// Each piece costs a helper thread's sleep and wake-up, an unwritten-extent conversion and a
/// doorbell, whatever its size: at max produce the fills took 22.7% of the broker's samples
/// with 128 KiB pieces. With 256 KiB pieces (after the writes stopped being polled for), max
/// produce went from 1.22 to 1.12 ms of broker CPU per MB (778 / 694 / 735 -> 857 / 855 / 765
/// MB/s, alternating runs) and half rate answered 84-86% within 1 ms against 80-83%;
/// 512 KiB saved as much CPU but only 78-79% within 1 ms.
pub const ZERO_WRITE_BYTES: usize = 256 << 10;
/// The most zeros a segment file holds past its last batch: the rest of the last fill, a
/// fill started before the writes reached it, the last block's padding. Recovery and `log
/// dump` take a longer run of zeros for damage.
pub const ZEROED_AHEAD_BYTES_MAX: u64 = 2 * ZERO_AHEAD_BYTES_MAX + IO_ALIGNMENT_BYTES as u64;

/// Largest single read a fetch issues against a segment file.
pub const READ_BYTES_MAX: usize = 64 << 20;

/// Bytes of cold-read read-ahead one core holds at most (`log::read_ahead`).
pub const READ_AHEAD_BYTES_MAX: u64 = 128 << 20;

/// Bytes of dropped read buffers one thread keeps to read into again (`io::AlignedBuf`).
pub const POOLED_BUFFER_BYTES_MAX: usize = 128 << 20;

/// Appends that may wait for durability at once on one partition. Beyond this the log answers
/// with back-pressure instead of queueing without bound.
pub const APPEND_WAITERS_MAX: usize = 64 * 1024;

const _: () = assert!(IO_ALIGNMENT_BYTES.is_power_of_two());
const _: () = assert!(WRITE_BYTES_MAX.is_multiple_of(IO_ALIGNMENT_BYTES));
const _: () = assert!(UNSYNCED_BYTES_MAX >= WRITE_BYTES_MAX as u64);
const _: () = assert!(SCAN_READ_BYTES.is_multiple_of(IO_ALIGNMENT_BYTES));
const _: () = assert!(MESSAGE_BYTES_MAX_DEFAULT <= BATCH_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MIN < SEGMENT_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MAX + BATCH_BYTES_MAX as u64 <= u32::MAX as u64);
const _: () = assert!(READ_BYTES_MAX >= BATCH_BYTES_MAX);
const _: () = assert!(READ_AHEAD_BYTES_MAX >= READ_BYTES_MAX as u64);
