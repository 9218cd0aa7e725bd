//! Read-ahead for cold reads. Segments are read with O_DIRECT, so the page cache's read-ahead,
//! which lets a Kafka broker's disk work while its network does, does nothing for ringmq: a
//! fetch that reads from disk would read, then send, then wait for the next fetch to read
//! again, and disk and network would take turns. Instead, once a read from disk has answered,
//! the log starts reading what the next read of that partition will ask for (from where this
//! one stopped, as many bytes as it read), and the next read takes that buffer when it is the
//! one it needs.
//!
//! One registry per core, bounded by `READ_AHEAD_BYTES_MAX`; the oldest read-ahead is dropped
//! first, so one left by a consumer that went away lasts only until newer ones need the room.
//! A buffer serves only reads of the same file in the same log generation (truncations
//! counted), and only its bytes below the segment's size when it was started: those are whole
//! written batches that no later write changes.

use crate::constants::{IO_ALIGNMENT_BYTES, READ_AHEAD_BYTES_MAX};
use crate::io::{ReadFile, Task, spawn_local};
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;

/// A range of a segment file `[start, end)` being read (or read and not yet taken).
struct Pending {
    file: ReadFile,
    truncations: u64,
    start: u64,
    end: u64,
    read: Task<io::Result<Bytes>>,
}

impl Pending {
    fn covers(&self, file: &ReadFile, truncations: u64, position: u64, len: u64) -> bool {
        self.file.same_file(file)
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

/// A range to read ahead: of `file`, from `position` to `end` (at most the segment's size now).
pub(super) struct Range<'a> {
    pub file: &'a ReadFile,
    pub truncations: u64,
    pub position: u64,
    pub end: u64,
}

/// Starts reading `range` on this core's blocking threads, unless a read-ahead already covers
/// its start or it is empty. Drops the oldest read-ahead while the new one would not fit.
pub(super) fn start(range: Range<'_>) {
    let start = range.position - range.position % IO_ALIGNMENT_BYTES as u64;
    if range.end <= range.position || range.end - start > READ_AHEAD_BYTES_MAX {
        return;
    }
    READ_AHEADS.with(|registry| {
        let mut registry = registry.borrow_mut();
        if registry.pending.iter().any(|p| p.covers(range.file, range.truncations, range.position, 1)) {
            return;
        }
        while registry.bytes + (range.end - start) > READ_AHEAD_BYTES_MAX {
            let Some(oldest) = registry.pending.pop_front() else { break };
            registry.bytes -= oldest.end - oldest.start;
            crate::metrics::count(|c| c.read_ahead_dropped += 1);
        }
        let file = range.file.clone();
        let len = (range.end - start).next_multiple_of(IO_ALIGNMENT_BYTES as u64) as usize;
        let read = spawn_local(async move { file.read_at(start, len).await });
        registry.bytes += range.end - start;
        registry.pending.push_back(Pending {
            file: range.file.clone(),
            truncations: range.truncations,
            start,
            end: range.end,
            read,
        });
        crate::metrics::count(|c| c.read_ahead_started += 1);
    });
}

/// The read-ahead buffer of `file` holding `[position, position + len)`, taken out of the
/// registry and awaited: `(where it starts, its bytes up to the end it was started with)`.
/// `None` if no read-ahead holds that range or its read failed; the caller then reads itself.
pub(super) async fn take(file: &ReadFile, truncations: u64, position: u64, len: u64) -> Option<(u64, Bytes)> {
    let pending = READ_AHEADS.with(|registry| {
        let mut registry = registry.borrow_mut();
        let at = registry.pending.iter().position(|p| p.covers(file, truncations, position, len))?;
        let pending = registry.pending.remove(at)?;
        registry.bytes -= pending.end - pending.start;
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
