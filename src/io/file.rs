use super::runtime::spawn_blocking_detached;
use super::{AlignedBuf, fault, spawn_blocking};
use crate::constants::{ALLOCATE_AHEAD_BYTES_MAX, ALLOCATE_AHEAD_BYTES_MIN, IO_ALIGNMENT_BYTES};
use bytes::Bytes;
use std::cell::{Cell, OnceCell};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};

fn to_io(err: glommio::GlommioError<()>) -> io::Error {
    io::Error::from(err)
}

/// One O_DIRECT write of a segment file: whole blocks from an aligned position, in aligned
/// buffers the kernel DMAs from. Lives on one core; made by `WriteFile::alloc`.
///
/// A write that rewrites written blocks (the segment's partial last block) and goes on into
/// the blocks allocated ahead holds two pieces, written as two writes: ext4 refuses a
/// non-blocking write that covers written and unwritten blocks alike (io_uring then hands it
/// to a kernel worker thread), and completes each piece inline.
pub struct WriteBuf {
    position: u64,
    first: glommio::io::DmaBuffer,
    /// The blocks from `first.len()` on, when the write goes in two pieces.
    rest: Option<glommio::io::DmaBuffer>,
}

impl WriteBuf {
    /// Buffers for a write at the aligned `position` of up to `capacity` bytes (whole blocks),
    /// to go when the blocks before `written_to` (an aligned position: where the writes before
    /// it end, rounded up) are written: two pieces if it starts before them and ends after.
    /// Made now for a write due now (`WriteFile::alloc`) or ahead of it (`log::write_queue`,
    /// which `trim`s it to what was filled).
    pub fn new(position: u64, capacity: usize, written_to: u64) -> WriteBuf {
        assert!(position.is_multiple_of(IO_ALIGNMENT_BYTES as u64), "unaligned O_DIRECT write position");
        assert!(capacity.is_multiple_of(IO_ALIGNMENT_BYTES), "O_DIRECT write of partial blocks");
        let first_len = written_to.saturating_sub(position) as usize;
        if first_len > 0 && first_len < capacity {
            let first = glommio::allocate_dma_buffer(first_len);
            let rest = Some(glommio::allocate_dma_buffer(capacity - first_len));
            return WriteBuf { position, first, rest };
        }
        WriteBuf { position, first: glommio::allocate_dma_buffer(capacity), rest: None }
    }

    /// Cuts the write to the blocks holding its first `len` bytes.
    pub fn trim(&mut self, len: usize) {
        let len = len.next_multiple_of(IO_ALIGNMENT_BYTES);
        assert!(len <= self.len(), "trimmed longer than allocated");
        let first_len = self.first.len();
        if len <= first_len {
            self.first.trim_to_size(len);
            self.rest = None;
        } else if let Some(rest) = self.rest.as_mut() {
            rest.trim_to_size(len - first_len);
        }
    }

    /// Where the write goes.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Bytes written: whole blocks.
    pub fn len(&self) -> usize {
        self.first.len() + self.rest.as_ref().map_or(0, |rest| rest.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `src` to `at..at + src.len()`, most of it with non-temporal stores, which skip
    /// the cache: only the device reads this buffer again (`streaming`).
    pub fn put(&mut self, at: usize, src: &[u8]) {
        let first_len = self.first.len();
        let (to_first, to_rest) = src.split_at(first_len.saturating_sub(at).min(src.len()));
        if !to_first.is_empty() {
            super::streaming::copy(&mut self.first.as_bytes_mut()[at..at + to_first.len()], to_first);
        }
        if !to_rest.is_empty() {
            let from = at.max(first_len) - first_len;
            let rest = self.rest.as_mut().expect("a write longer than its first piece has a second");
            super::streaming::copy(&mut rest.as_bytes_mut()[from..from + to_rest.len()], to_rest);
        }
    }

    /// Zeros from `at` to the end: the padding of the last block, never stale memory.
    pub fn zero_from(&mut self, at: usize) {
        let first_len = self.first.len();
        self.first.as_bytes_mut()[at.min(first_len)..].fill(0);
        if let Some(rest) = self.rest.as_mut() {
            rest.as_bytes_mut()[at.max(first_len) - first_len..].fill(0);
        }
    }

    /// A copy of the bytes `range`, which lie in one piece (within one block, say).
    pub fn to_vec(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        let first_len = self.first.len();
        match &self.rest {
            Some(rest) if range.start >= first_len => {
                rest.as_bytes()[range.start - first_len..range.end - first_len].to_vec()
            }
            _ => self.first.as_bytes()[range].to_vec(),
        }
    }

    /// Where each piece goes and how long it is.
    #[cfg(test)]
    fn pieces(&self) -> Vec<(u64, usize)> {
        let mut pieces = vec![(self.position, self.first.len())];
        pieces.extend(self.rest.as_ref().map(|rest| (self.position + self.first.len() as u64, rest.len())));
        pieces
    }
}

/// A segment file opened for O_DIRECT writes through io_uring. Lives on the core that owns the
/// partition; writes must be aligned in position and length, and come from one task.
///
/// Asked to (`allocate_ahead`), it keeps the blocks after the last write allocated, a helper
/// thread allocating them (`fallocate`) while the writes go on: on ext4 an io_uring write that
/// grows the file goes to a kernel worker thread, one inside the file completes inline (see
/// `WriteBuf` for the one that needs two pieces). So the file may be longer than what was
/// written; the blocks after it read as zeros, and `truncate` cuts them off.
pub struct WriteFile {
    file: glommio::io::DmaFile,
    /// The same file (a duplicate descriptor, made at the first allocation) for the helper
    /// thread that allocates: it can only ever reach this file, whatever happens to the path.
    allocator: OnceCell<Arc<File>>,
    /// Where the next allocation starts: every block before it is allocated or written.
    allocate_from: Cell<u64>,
    /// Where the last write ended: the blocks before it are written.
    written_end: Cell<u64>,
    allocating: Cell<Option<Allocation>>,
    /// Set once the filesystem turned `fallocate` down: writes then grow the file.
    cannot_allocate: Cell<bool>,
}

impl WriteFile {
    /// Opens (creating if asked) `path` for O_DIRECT reads and writes.
    pub async fn open(path: &Path, create: bool) -> io::Result<WriteFile> {
        if create {
            fault::on_create()?;
        }
        if let Some(dir) = path.parent() {
            super::polling::settle(dir).await;
        }
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .dma_open(path)
            .await
            .map_err(to_io)?;
        let size = file.file_size().await.map_err(to_io)?;
        Ok(WriteFile {
            file,
            allocator: OnceCell::new(),
            allocate_from: Cell::new(size.next_multiple_of(IO_ALIGNMENT_BYTES as u64)),
            written_end: Cell::new(size),
            allocating: Cell::new(None),
            cannot_allocate: Cell::new(false),
        })
    }

    /// Aligned buffers for a write of `len` bytes (rounded up to whole blocks) at the aligned
    /// `position`: one piece, or two where the write goes from written blocks into the ones
    /// after them (`WriteBuf`). Their contents are unspecified: the caller writes every byte.
    pub fn alloc(&self, position: u64, len: usize) -> WriteBuf {
        assert!(position.is_multiple_of(IO_ALIGNMENT_BYTES as u64), "unaligned O_DIRECT write position");
        let written_to = self.written_end.get().next_multiple_of(IO_ALIGNMENT_BYTES as u64);
        WriteBuf::new(position, len.next_multiple_of(IO_ALIGNMENT_BYTES), written_to)
    }

    /// Writes the whole buffer where it was allocated for, its pieces at once; a short write
    /// is an error, and after an error any part of it may have reached the file.
    pub async fn write(&self, buf: WriteBuf) -> io::Result<()> {
        let expected = buf.len();
        let WriteBuf { position, first, rest } = buf;
        let end = position + expected as u64;
        self.finish_allocation_before(end).await;
        fault::on_write()?;
        crate::metrics::count(|c| {
            c.disk_writes += 1;
            c.disk_writes_in_flight += 1;
        });
        let started = std::time::Instant::now();
        let first_len = first.len();
        let written = match rest {
            None => self.file.write_at(first, position).await,
            Some(rest) => {
                let (first, rest) = futures_lite::future::zip(
                    self.file.write_at(first, position),
                    self.file.write_at(rest, position + first_len as u64),
                )
                .await;
                first.and_then(|first| rest.map(|rest| first + rest))
            }
        }
        .map_err(to_io);
        crate::metrics::count(|c| {
            c.disk_write.observe(started.elapsed());
            c.disk_writes_in_flight -= 1;
            c.disk_written_bytes += *written.as_ref().unwrap_or(&0) as u64;
        });
        if written? != expected {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short O_DIRECT write"));
        }
        self.allocate_from.set(self.allocate_from.get().max(end));
        self.written_end.set(end);
        Ok(())
    }

    /// Starts allocating the blocks after the last write, if fewer than the next allocation's
    /// size are ready and none is under way, never past `limit` (the largest the file should
    /// grow).
    pub fn allocate_ahead(&self, limit: u64) {
        if self.cannot_allocate.get() {
            return;
        }
        if let Some(running) = self.allocating.take() {
            self.allocating.set(Some(running));
            return;
        }
        let from = self.allocate_from.get();
        let len = from.clamp(ALLOCATE_AHEAD_BYTES_MIN, ALLOCATE_AHEAD_BYTES_MAX);
        let limit = limit.next_multiple_of(IO_ALIGNMENT_BYTES as u64);
        if self.written_end.get() + len <= from || from >= limit {
            return;
        }
        let end = (from + len).min(limit);
        match self.allocator() {
            Ok(allocator) => self.allocating.set(Some(Allocation::start(allocator, from, end))),
            Err(error) => tracing::debug!(%error, "cannot allocate a segment ahead"),
        }
    }

    fn allocator(&self) -> io::Result<Arc<File>> {
        if let Some(allocator) = self.allocator.get() {
            return Ok(allocator.clone());
        }
        // SAFETY: the descriptor is `self.file`'s, open for as long as `self` lives.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.file.as_raw_fd()) };
        let allocator = Arc::new(File::from(fd.try_clone_to_owned()?));
        Ok(self.allocator.get_or_init(|| allocator).clone())
    }

    /// Settles an allocation that starts before `end`, so a write there comes after it: one
    /// still queued behind other blocking work is called off (the write then costs a kernel
    /// worker's round trip, not a wait), one running is waited for.
    async fn finish_allocation_before(&self, end: u64) {
        let Some(allocation) = self.allocating.take() else { return };
        if allocation.start >= end {
            self.allocating.set(Some(allocation));
        } else if !allocation.abandon() {
            self.finish(allocation).await;
        }
    }

    async fn finish(&self, allocation: Allocation) {
        let (start, end) = (allocation.start, allocation.end);
        match allocation.finish().await {
            Ok(()) => {
                crate::metrics::count(|c| c.disk_allocated_ahead_bytes += end - start);
                self.allocate_from.set(self.allocate_from.get().max(end));
            }
            // Not the write's failure: it goes on into blocks that may not be allocated, which
            // only costs it the inline completion.
            Err(error) => {
                if error.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    self.cannot_allocate.set(true);
                }
                tracing::debug!(%error, start, end, "allocating a segment ahead failed");
            }
        }
    }

    /// Waits for the allocation under way, if any, to end.
    #[cfg(test)]
    async fn allocation_done(&self) {
        if let Some(allocation) = self.allocating.take() {
            self.finish(allocation).await;
        }
    }

    pub async fn fdatasync(&self) -> io::Result<()> {
        fault::on_sync()?;
        let started = std::time::Instant::now();
        let synced = self.file.fdatasync().await.map_err(to_io);
        crate::metrics::count(|c| c.fsync.observe(started.elapsed()));
        synced
    }

    /// Cuts the file to `len` bytes, the blocks allocated ahead included.
    pub async fn truncate(&self, len: u64) -> io::Result<()> {
        self.finish_allocation_before(u64::MAX).await;
        self.file.truncate(len).await.map_err(to_io)?;
        self.allocate_from.set(len.next_multiple_of(IO_ALIGNMENT_BYTES as u64));
        self.written_end.set(len);
        Ok(())
    }

    pub async fn close(self) -> io::Result<()> {
        self.finish_allocation_before(u64::MAX).await;
        self.file.close().await.map_err(to_io)
    }
}

/// An allocation of `[start, end)` of a segment file on a blocking helper thread.
struct Allocation {
    start: u64,
    end: u64,
    stage: Arc<AtomicU8>,
    /// Taken once the result is in.
    done: Option<flume::Receiver<io::Result<()>>>,
}

const ALLOCATION_QUEUED: u8 = 0;
const ALLOCATION_RUNNING: u8 = 1;
const ALLOCATION_ABANDONED: u8 = 2;

impl Allocation {
    fn start(file: Arc<File>, start: u64, end: u64) -> Allocation {
        let (done_tx, done) = flume::bounded(1);
        let stage = Arc::new(AtomicU8::new(ALLOCATION_QUEUED));
        let running = stage.clone();
        spawn_blocking_detached(move || {
            if running
                .compare_exchange(ALLOCATION_QUEUED, ALLOCATION_RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let _nobody_waits = done_tx.send(allocate(&file, start, end));
            }
        });
        Allocation { start, end, stage, done: Some(done) }
    }

    /// Calls the allocation off if its helper thread has not begun it; whether it did.
    fn abandon(&self) -> bool {
        let stage = self.stage.compare_exchange(
            ALLOCATION_QUEUED,
            ALLOCATION_ABANDONED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        matches!(stage, Ok(_) | Err(ALLOCATION_ABANDONED))
    }

    async fn finish(mut self) -> io::Result<()> {
        let Some(done) = self.done.take() else { return Ok(()) };
        match done.recv_async().await {
            Ok(result) => result,
            Err(flume::RecvError::Disconnected) => Err(io::Error::other("allocation abandoned")),
        }
    }
}

impl Drop for Allocation {
    /// An allocation that outlived its writer could grow the file again after it was cut to
    /// size (a sealed segment must end at its last batch): one not yet begun never will; one
    /// running is waited for (one `fallocate`). The wait needs only the helper thread, never
    /// this executor, which runs the queued ones.
    fn drop(&mut self) {
        if let Some(done) = self.done.take()
            && !self.abandon()
        {
            let _finished = done.recv();
        }
    }
}

/// Allocates `[start, end)` of `file`, growing it (one short exclusive hold of the inode, so
/// the writes that follow stay inside the file). The blocks stay unwritten (they read as
/// zeros) until written: nothing is written here, and blocks already holding data are left as
/// they are.
fn allocate(file: &File, start: u64, end: u64) -> io::Result<()> {
    // SAFETY: fallocate on an open descriptor; it reads and writes no memory of ours.
    let allocated =
        unsafe { libc::fallocate(file.as_raw_fd(), 0, start as libc::off_t, (end - start) as libc::off_t) };
    if allocated != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A segment file opened for O_DIRECT reads. `Send` and cheap to clone, so a read runs on a
/// blocking helper thread into an `AlignedBuf` that becomes `Bytes` without a copy. The file
/// stays open while any clone lives, so a segment deleted by retention can finish its reads.
#[derive(Clone)]
pub struct ReadFile {
    file: Arc<File>,
}

impl ReadFile {
    pub fn open(path: &Path) -> io::Result<ReadFile> {
        let file = OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path)?;
        Ok(ReadFile { file: Arc::new(file) })
    }

    /// Reads up to `len` bytes at the aligned `position`; fewer at end of file. The result
    /// starts at `position`.
    pub async fn read_at(&self, position: u64, len: usize) -> io::Result<Bytes> {
        assert!(position.is_multiple_of(IO_ALIGNMENT_BYTES as u64), "unaligned O_DIRECT read position");
        let file = self.file.clone();
        let _in_flight = ReadInFlight::start();
        // The buffer is taken and, on failure, dropped here, so it comes from and goes back to
        // this core's pool (`AlignedBuf::for_read`), not a helper thread's.
        let mut buf = AlignedBuf::for_read(len);
        let (buf, read) = spawn_blocking(move || {
            let read = buf.read_at(&file, position, len);
            (buf, read)
        })
        .await;
        let read = read.map(|()| Bytes::from_owner(buf));
        crate::metrics::count(|c| c.disk_read_bytes += read.as_ref().map_or(0, |bytes| bytes.len() as u64));
        read
    }

    /// A handle that names this file without keeping it open.
    pub fn id(&self) -> ReadFileId {
        ReadFileId(Arc::downgrade(&self.file))
    }

    pub fn file_size_bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

/// Names a `ReadFile` without keeping it open: the file closes when its last `ReadFile` goes.
/// While the id lives, no other file can take its identity.
pub struct ReadFileId(Weak<File>);

impl ReadFileId {
    pub fn is(&self, file: &ReadFile) -> bool {
        std::ptr::eq(self.0.as_ptr(), Arc::as_ptr(&file.file))
    }

    /// Whether every `ReadFile` of it is gone (the segment was deleted or its log closed).
    pub fn is_closed(&self) -> bool {
        self.0.strong_count() == 0
    }
}

/// Counts a segment read in flight until it ends, or until its caller drops it.
struct ReadInFlight;

impl ReadInFlight {
    fn start() -> ReadInFlight {
        crate::metrics::count(|c| {
            c.disk_reads += 1;
            c.disk_reads_in_flight += 1;
        });
        ReadInFlight
    }
}

impl Drop for ReadInFlight {
    fn drop(&mut self) {
        crate::metrics::count(|c| c.disk_reads_in_flight -= 1);
    }
}

/// Replaces `path` with `data` durably: write a temporary file, fsync it, rename, fsync the
/// directory. A crash leaves either the old file or the new one.
pub async fn write_file_atomic(path: &Path, data: Vec<u8>) -> io::Result<()> {
    let path = path.to_path_buf();
    spawn_blocking(move || {
        let tmp = tmp_path(&path);
        let mut file = File::create(&tmp)?;
        file.write_all(&data)?;
        file.sync_data()?;
        std::fs::rename(&tmp, &path)?;
        sync_dir_blocking(&path)
    })
    .await
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn sync_dir_blocking(path: &Path) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// The contents of a small file, or `None` if it does not exist.
pub async fn read_small_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let path = path.to_path_buf();
    spawn_blocking(move || match std::fs::read(&path) {
        Ok(data) => Ok(Some(data)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    })
    .await
}

/// Removes `path`; a file already gone is not an error.
pub async fn remove_file(path: &Path) -> io::Result<()> {
    let path = path.to_path_buf();
    spawn_blocking(move || match std::fs::remove_file(&path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    })
    .await
}

/// fsyncs the directory holding `path`, making creations, renames and removals in it durable.
pub async fn sync_dir(path: &Path) -> io::Result<()> {
    let path = path.to_path_buf();
    spawn_blocking(move || sync_dir_blocking(&path)).await
}

/// Removes a directory and everything in it; one already gone is not an error.
pub async fn remove_dir_all(path: &Path) -> io::Result<()> {
    let path = path.to_path_buf();
    spawn_blocking(move || match std::fs::remove_dir_all(&path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => sync_dir_blocking(&path),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::block_on;

    /// A write of zeros at `position` with RWF_NOWAIT: refused (EAGAIN) where the kernel would
    /// have to block, as io_uring's first, inline attempt is.
    fn write_without_waiting(path: &Path, position: u64, len: usize) -> io::Result<()> {
        let file = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path)?;
        let mut zeros = AlignedBuf::zeroed(len);
        zeros.set_len(len);
        let iov = libc::iovec { iov_base: zeros.as_ref().as_ptr() as *mut libc::c_void, iov_len: len };
        // SAFETY: one iovec over a live, aligned buffer the kernel only reads.
        let written =
            unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, position as libc::off_t, libc::RWF_NOWAIT) };
        if written < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Appends in the flusher's pattern: each write rewrites the last partial block and adds
    /// the new bytes, then asks for blocks ahead. The allocations run alongside the writes.
    #[test]
    fn allocations_ahead_never_touch_written_data_and_truncate_cuts_them_off() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("segment");
        let limit = 3 << 20;
        let model: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8 + 1).collect();
        let logical = block_on(async {
            let file = WriteFile::open(&path, true).await.expect("open");
            let mut size = 0usize;
            for step in 0..400usize {
                let add = 1000 + (step * 7919) % 9000;
                let start = size - size % IO_ALIGNMENT_BYTES;
                let end = (size + add).min(model.len());
                let mut buf = file.alloc(start as u64, end - start);
                buf.put(0, &model[start..end]);
                buf.zero_from(end - start);
                file.write(buf).await.expect("write");
                file.allocate_ahead(limit);
                size = end;
            }
            file.allocation_done().await;
            file.close().await.expect("close");
            size
        });
        let data = std::fs::read(&path).expect("read");
        assert!(logical > 1 << 20, "the writes went past several allocations");
        assert_eq!(&data[..logical], &model[..logical], "every written byte survives the allocations");
        assert!(data.len() > logical.next_multiple_of(IO_ALIGNMENT_BYTES), "allocated ahead: {}", data.len());
        assert!(data.len() as u64 <= limit, "no allocation past the limit: {}", data.len());
        assert!(data[logical..].iter().all(|&byte| byte == 0), "only zeros after the data");

        block_on(async {
            let file = WriteFile::open(&path, false).await.expect("reopen");
            file.truncate(logical as u64).await.expect("truncate");
            file.close().await.expect("close");
        });
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), logical as u64);
    }

    /// A write that starts in written blocks and goes on past them is split where they end;
    /// one that starts after them, or stays inside them, is not.
    #[test]
    fn a_write_splits_where_the_written_blocks_end() {
        let dir = tempfile::tempdir().expect("dir");
        let block = IO_ALIGNMENT_BYTES;
        block_on(async {
            let file = WriteFile::open(&dir.path().join("segment"), true).await.expect("open");
            let mut first = file.alloc(0, 2 * block + 100);
            assert_eq!(first.pieces(), vec![(0, 3 * block)], "nothing written yet");
            first.zero_from(0);
            file.write(first).await.expect("write");
            let tail_at = 2 * block as u64;
            assert_eq!(file.alloc(tail_at, 100).pieces(), vec![(tail_at, block)], "inside the last block");
            assert_eq!(
                file.alloc(tail_at, block + 100).pieces(),
                vec![(tail_at, block), (tail_at + block as u64, block)],
                "the rewritten block, then the rest"
            );
            assert_eq!(
                file.alloc(0, 5 * block).pieces(),
                vec![(0, 3 * block), (3 * block as u64, 2 * block)]
            );
            let after = 3 * block as u64;
            assert_eq!(file.alloc(after, 2 * block).pieces(), vec![(after, 2 * block)], "all new blocks");

            let mut split = file.alloc(tail_at, 2 * block);
            let bytes: Vec<u8> = (0..2 * block).map(|i| (i % 251) as u8).collect();
            split.put(0, &bytes[..10]);
            split.put(10, &bytes[10..]);
            assert_eq!(split.to_vec(block - 5..block), bytes[block - 5..block].to_vec());
            assert_eq!(split.to_vec(block..block + 7), bytes[block..block + 7].to_vec());
            file.write(split).await.expect("write in two pieces");
            file.close().await.expect("close");
            let data = std::fs::read(dir.path().join("segment")).expect("read");
            assert_eq!(&data[2 * block..4 * block], &bytes[..], "both pieces in place");
        });
    }

    /// Why segments are allocated ahead and a write is split where the written blocks end: a
    /// write past the end of the file, or one covering written and unwritten blocks, would
    /// have to wait (io_uring hands it to a kernel worker thread); a write into written blocks
    /// or into allocated, unwritten ones need not (on ext4 and XFS).
    #[test]
    fn writes_into_allocated_blocks_complete_without_waiting() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("segment");
        let block = IO_ALIGNMENT_BYTES;
        block_on(async {
            let file = WriteFile::open(&path, true).await.expect("open");
            let mut buf = file.alloc(0, block);
            buf.zero_from(0);
            file.write(buf).await.expect("write");
            file.allocate_ahead(64 << 20);
            file.allocation_done().await;
            let size = std::fs::metadata(&path).expect("stat").len();
            assert!(size >= ALLOCATE_AHEAD_BYTES_MIN, "allocated ahead: {size}");
            let past_end = write_without_waiting(&path, size + (64 << 20), block);
            if past_end.as_ref().err().and_then(io::Error::raw_os_error) != Some(libc::EAGAIN) {
                eprintln!("this filesystem appends without waiting ({past_end:?}): nothing to show");
            } else {
                write_without_waiting(&path, 0, block).expect("a write into the written block");
                write_without_waiting(&path, block as u64, 2 * block).expect("a write into allocated blocks");
                write_without_waiting(&path, size - block as u64, block).expect("the last allocated block");
                let straddling = write_without_waiting(&path, 2 * block as u64, 2 * block);
                if straddling.as_ref().err().and_then(io::Error::raw_os_error) != Some(libc::EAGAIN) {
                    eprintln!("this filesystem writes written and unwritten blocks at once: {straddling:?}");
                }
            }
            file.close().await.expect("close");
        });
    }
}
