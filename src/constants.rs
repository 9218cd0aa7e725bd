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

/// How far ahead of its writes a segment file is allocated (`io::WriteFile`): the first
/// allocation of a segment is the minimum, each next one as large as the file so far, up to the
/// maximum. A write inside the file completes inline in io_uring; an append that grows the
/// file is handed to a kernel worker thread on ext4 (measured on this VM: every segment write
/// was, before segments were allocated ahead).
///
/// The blocks are only allocated, not zeroed: until 2026-12 a helper thread wrote zeros over
/// them (so that segment writes were pure overwrites), which wrote every byte of a segment
/// twice, cost that thread's wake-ups and doorbells on the broker's core and made every
/// fdatasync flush the zeros too. Writing into the unwritten blocks instead (a write split
/// where the written blocks end, `io::WriteBuf`), alternating runs on a 2-vCPU VM (broker on
/// one core, 8 connections with 5 produce requests in flight, 1 KiB records): acks=1 as fast
/// as acknowledged 1049 / 1134 / 1010 -> 1046 / 1110 / 1202 MB/s at half of the disk's bytes,
/// acks=all under the fsync policy 663 / 701 / 559 -> 778 / 709 / 706 MB/s; at a fixed 450 000
/// records/s the same latency (p99 5.4-10.4 ms against 4.5-8.3 ms, within this VM's noise).
/// The disk there takes 2.2 GB/s of overwrites but about 1.6 GB/s into unwritten blocks.
pub const ALLOCATE_AHEAD_BYTES_MIN: u64 = 256 << 10;
pub const ALLOCATE_AHEAD_BYTES_MAX: u64 = 4 << 20;
/// The most bytes a segment file holds past its last batch, all zeros: the rest of the last
/// allocation, one started before the writes reached it, the last block's padding. Recovery
/// and `log dump` take a longer run of zeros for damage.
pub const ALLOCATED_AHEAD_BYTES_MAX: u64 = 2 * ALLOCATE_AHEAD_BYTES_MAX + IO_ALIGNMENT_BYTES as u64;

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
