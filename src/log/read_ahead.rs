//! Read-ahead for cold reads. Segments are read with O_DIRECT, so the page cache's read-ahead,
//! which lets a Kafka broker's disk work while its network does, does nothing for ringmq: a
//! fetch that reads from disk would read, then send, then wait for the next fetch to read
//! again, and disk and network would take turns. Instead, once a read from disk has answered,
//! the log starts reading what the next read of that partition will ask for (from where this
//! one stopped, as many bytes as it read), and the next read takes that buffer when it is the
//! one it needs.
//!
//! One registry per core, bounded by `READ_AHEAD_BYTES_MAX`. When it is full, a read-ahead
//! nobody took within `UNUSED_MAX` (its consumer went away, or moved elsewhere) makes room;
//! if none is that old, no new one starts, so many readers on one core cannot evict each
//! other's read-aheads before they are used. Read-aheads of a deleted segment, or of a log
//! generation since truncated, go at the next start. An entry names its file without keeping it
//! open, so a segment deleted by retention frees its disk space.
//!
//! A buffer serves only reads of the same file in the same log generation (truncations
//! counted), and only its bytes below the segment's size when it was started: those are whole
//! written batches that no later write changes.

use super::reader::DiskRange;
use crate::constants::READ_AHEAD_BYTES_MAX;
use crate::io::{ReadFile, ReadFileId, Task, spawn_local};
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

/// How long a read-ahead keeps its room when the registry is full and nobody takes it.
const UNUSED_MAX: Duration = Duration::from_secs(1);

/// A range of a segment file `[start, end)` being read (or read and not yet taken).
struct Pending {
    file: ReadFileId,
    truncations: u64,
    start: u64,
    end: u64,
    /// The bytes it holds against the registry's bound: the aligned length it reads.
    bytes: u64,
    started: Instant,
    read: Task<io::Result<Bytes>>,
}

impl Pending {
    fn covers(&self, file: &ReadFile, truncations: u64, position: u64, len: u64) -> bool {
        self.file.is(file)
            && self.truncations == truncations
            && self.start <= position
            && position + len <= self.end
    }
}

#[derive(Default)]
struct Registry {
    pending: VecDeque<Pending>,
    bytes: u64,
}

thread_local! {
    static READ_AHEADS: RefCell<Registry> = RefCell::default();
}

/// A range to read ahead: what a read of `file` from `position` will ask the disk for.
pub(super) struct Range<'a> {
    pub file: &'a ReadFile,
    pub truncations: u64,
    pub position: u64,
    pub disk: DiskRange,
}

/// Starts reading `range` on this core's blocking threads, unless it is empty or a read-ahead
/// already covers its start. Room comes from read-aheads nobody took within `UNUSED_MAX`; if
/// that is not enough, nothing starts.
pub(super) fn start(range: Range<'_>) {
    let DiskRange { start, len, end } = range.disk;
    if end <= range.position || end - start > READ_AHEAD_BYTES_MAX {
        return;
    }
    READ_AHEADS.with(|registry| {
        let mut registry = registry.borrow_mut();
        registry.drop_where(|p| {
            p.file.is_closed() || (p.file.is(range.file) && p.truncations != range.truncations)
        });
        if registry.pending.iter().any(|p| p.covers(range.file, range.truncations, range.position, 1)) {
            return;
        }
        while registry.bytes + len > READ_AHEAD_BYTES_MAX {
            if registry.pending.front().is_none_or(|oldest| oldest.started.elapsed() < UNUSED_MAX) {
                return;
            }
            registry.drop_where(|p| p.started.elapsed() >= UNUSED_MAX);
        }
        let file = range.file.clone();
        let read = spawn_local(async move { file.read_at(start, len as usize).await });
        registry.bytes += len;
        registry.pending.push_back(Pending {
            file: range.file.id(),
            truncations: range.truncations,
            start,
            end,
            bytes: len,
            started: Instant::now(),
            read,
        });
        crate::metrics::count(|c| c.read_ahead_started += 1);
    });
}

impl Registry {
    /// Drops the read-aheads `unwanted` picks (a read still running finishes on its own).
    fn drop_where(&mut self, unwanted: impl Fn(&Pending) -> bool) {
        let before = self.pending.len();
        let mut freed = 0;
        self.pending.retain(|p| {
            let keep = !unwanted(p);
            freed += if keep { 0 } else { p.bytes };
            keep
        });
        self.bytes -= freed;
        let dropped = (before - self.pending.len()) as u64;
        crate::metrics::count(|c| c.read_ahead_dropped += dropped);
    }
}

/// The read-ahead buffer of `file` holding `[position, position + len)`, taken out of the
/// registry and awaited: `(where it starts, its bytes up to the end it was started with)`.
/// `None` if no read-ahead holds that range or its read failed; the caller then reads itself.
pub(super) async fn take(file: &ReadFile, truncations: u64, position: u64, len: u64) -> Option<(u64, Bytes)> {
    let pending = READ_AHEADS.with(|registry| {
        let mut registry = registry.borrow_mut();
        let at = registry.pending.iter().position(|p| p.covers(file, truncations, position, len))?;
        let pending = registry.pending.remove(at)?;
        registry.bytes -= pending.bytes;
        Some(pending)
    })?;
    let bytes = pending.read.await.ok()?;
    let valid = (pending.end - pending.start).min(bytes.len() as u64);
    if position + len > pending.start + valid {
        return None;
    }
    crate::metrics::count(|c| c.read_ahead_used += 1);
    Some((pending.start, bytes.slice(..valid as usize)))
}
