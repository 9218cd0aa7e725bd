use super::runtime::spawn_blocking_detached;
use super::{AlignedBuf, fault, spawn_blocking};
use crate::constants::{IO_ALIGNMENT_BYTES, ZERO_AHEAD_BYTES_MAX, ZERO_AHEAD_BYTES_MIN, ZERO_WRITE_BYTES};
use bytes::Bytes;
use std::cell::{Cell, OnceCell};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, Weak};

fn to_io(err: glommio::GlommioError<()>) -> io::Error {
    io::Error::from(err)
}

/// A buffer the kernel can DMA from: aligned, sized in whole blocks. Lives on one core.
pub struct WriteBuf(glommio::io::DmaBuffer);

impl WriteBuf {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.0.as_bytes_mut()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Copies `src` to `at..at + src.len()`, most of it with non-temporal stores, which skip
    /// the cache: only the device reads this buffer again (`streaming`).
    pub fn put(&mut self, at: usize, src: &[u8]) {
        let dst = &mut self.as_mut_slice()[at..at + src.len()];
        super::streaming::copy(dst, src);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A segment file opened for O_DIRECT writes through io_uring. Lives on the core that owns the
/// partition; writes must be aligned in position and length, and come from one task.
///
/// Asked to (`zero_ahead`), it keeps the blocks after the last write allocated and zeroed, a
/// helper thread filling them while the writes go on: on ext4 an io_uring write that grows the
/// file or lands in unwritten blocks goes to a kernel worker thread, one into written blocks
/// completes inline. So the file may be longer than what was written, with zeros after it;
/// `truncate` cuts them off.
pub struct WriteFile {
    file: glommio::io::DmaFile,
    /// The same file (a duplicate descriptor, made at the first fill) for the helper thread
    /// that zero-fills: it can only ever reach this file, whatever happens to the path.
    filler: OnceCell<Arc<File>>,
    /// Where the next fill starts: every block before it holds written data or an earlier
    /// fill's zeros, so a fill never overwrites data.
    fill_from: Cell<u64>,
    /// Where the last write ended.
    written_end: Cell<u64>,
    filling: Cell<Option<ZeroFill>>,
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
            filler: OnceCell::new(),
            fill_from: Cell::new(size.next_multiple_of(IO_ALIGNMENT_BYTES as u64)),
            written_end: Cell::new(size),
            filling: Cell::new(None),
        })
    }

    /// An aligned buffer of `len` bytes rounded up to whole blocks. Its contents are
    /// unspecified: the caller writes every byte it hands to `write_at`.
    pub fn alloc(&self, len: usize) -> WriteBuf {
        WriteBuf(self.file.alloc_dma_buffer(len.next_multiple_of(IO_ALIGNMENT_BYTES)))
    }

    /// Writes the whole buffer at `position`; a short write is an error.
    pub async fn write_at(&self, buf: WriteBuf, position: u64) -> io::Result<()> {
        assert!(position.is_multiple_of(IO_ALIGNMENT_BYTES as u64), "unaligned O_DIRECT write position");
        let end = position + buf.len() as u64;
        self.finish_fill_before(end).await;
        fault::on_write()?;
        let expected = buf.len();
        crate::metrics::count(|c| {
            c.disk_writes += 1;
            c.disk_writes_in_flight += 1;
        });
        let started = std::time::Instant::now();
        let written = self.file.write_at(buf.0, position).await.map_err(to_io);
        crate::metrics::count(|c| {
            c.disk_write.observe(started.elapsed());
            c.disk_writes_in_flight -= 1;
            c.disk_written_bytes += *written.as_ref().unwrap_or(&0) as u64;
        });
        let written = written?;
        if written != expected {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short O_DIRECT write"));
        }
        self.fill_from.set(self.fill_from.get().max(end));
        self.written_end.set(end);
        Ok(())
    }

    /// Starts zeroing the blocks after the last write, if fewer than the next fill's size are
    /// ready and none is under way, never past `limit` (the largest the file should grow).
    pub fn zero_ahead(&self, limit: u64) {
        if let Some(running) = self.filling.take() {
            self.filling.set(Some(running));
            return;
        }
        let from = self.fill_from.get();
        let len = from.clamp(ZERO_AHEAD_BYTES_MIN, ZERO_AHEAD_BYTES_MAX);
        let limit = limit.next_multiple_of(IO_ALIGNMENT_BYTES as u64);
        if self.written_end.get() + len <= from || from >= limit {
            return;
        }
        let end = (from + len).min(limit);
        match self.filler() {
            Ok(filler) => self.filling.set(Some(ZeroFill::start(filler, from, end))),
            Err(error) => tracing::debug!(%error, "cannot zero a segment ahead"),
        }
    }

    fn filler(&self) -> io::Result<Arc<File>> {
        if let Some(filler) = self.filler.get() {
            return Ok(filler.clone());
        }
        // SAFETY: the descriptor is `self.file`'s, open for as long as `self` lives.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.file.as_raw_fd()) };
        let filler = Arc::new(File::from(fd.try_clone_to_owned()?));
        Ok(self.filler.get_or_init(|| filler).clone())
    }

    /// Settles a fill that starts before `end`, so a write there comes after it: one still
    /// queued behind other blocking work is called off (the write then costs a kernel worker's
    /// round trip, not a wait), one running is waited for.
    async fn finish_fill_before(&self, end: u64) {
        let Some(fill) = self.filling.take() else { return };
        if fill.start >= end {
            self.filling.set(Some(fill));
        } else if !fill.abandon() {
            self.finish(fill).await;
        }
    }

    async fn finish(&self, fill: ZeroFill) {
        let (start, end) = (fill.start, fill.end);
        match fill.finish().await {
            Ok(()) => {
                crate::metrics::count(|c| c.disk_zero_filled_bytes += end - start);
                self.fill_from.set(self.fill_from.get().max(end));
            }
            // Not the write's failure: it goes on into blocks the fill may not have reached,
            // which only costs it the inline completion.
            Err(error) => tracing::debug!(%error, start, end, "zeroing a segment ahead failed"),
        }
    }

    /// Waits for the fill under way, if any, to end.
    #[cfg(test)]
    async fn fill_done(&self) {
        if let Some(fill) = self.filling.take() {
            self.finish(fill).await;
        }
    }

    pub async fn fdatasync(&self) -> io::Result<()> {
        fault::on_sync()?;
        let started = std::time::Instant::now();
        let synced = self.file.fdatasync().await.map_err(to_io);
        crate::metrics::count(|c| c.fsync.observe(started.elapsed()));
        synced
    }

    /// Cuts the file to `len` bytes, zeros ahead included.
    pub async fn truncate(&self, len: u64) -> io::Result<()> {
        self.finish_fill_before(u64::MAX).await;
        self.file.truncate(len).await.map_err(to_io)?;
        self.fill_from.set(len.next_multiple_of(IO_ALIGNMENT_BYTES as u64));
        self.written_end.set(len);
        Ok(())
    }

    pub async fn close(self) -> io::Result<()> {
        self.finish_fill_before(u64::MAX).await;
        self.file.close().await.map_err(to_io)
    }
}

/// A zero fill of `[start, end)` of a segment file on a blocking helper thread.
struct ZeroFill {
    start: u64,
    end: u64,
    stage: Arc<AtomicU8>,
    /// Taken once the result is in.
    done: Option<flume::Receiver<io::Result<()>>>,
}

const FILL_QUEUED: u8 = 0;
const FILL_RUNNING: u8 = 1;
const FILL_ABANDONED: u8 = 2;

/// Zeros to write from, aligned for O_DIRECT: one fill write's worth.
static ZEROS: LazyLock<AlignedBuf> = LazyLock::new(|| {
    let mut zeros = AlignedBuf::zeroed(ZERO_WRITE_BYTES);
    zeros.set_len(ZERO_WRITE_BYTES);
    zeros
});

impl ZeroFill {
    fn start(file: Arc<File>, start: u64, end: u64) -> ZeroFill {
        let (done_tx, done) = flume::bounded(1);
        let stage = Arc::new(AtomicU8::new(FILL_QUEUED));
        let running = stage.clone();
        spawn_blocking_detached(move || {
            if running
                .compare_exchange(FILL_QUEUED, FILL_RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let _nobody_waits = done_tx.send(zero_fill(&file, start, end));
            }
        });
        ZeroFill { start, end, stage, done: Some(done) }
    }

    /// Calls the fill off if its helper thread has not begun it; whether it did.
    fn abandon(&self) -> bool {
        let stage =
            self.stage.compare_exchange(FILL_QUEUED, FILL_ABANDONED, Ordering::AcqRel, Ordering::Acquire);
        matches!(stage, Ok(_) | Err(FILL_ABANDONED))
    }

    async fn finish(mut self) -> io::Result<()> {
        let Some(done) = self.done.take() else { return Ok(()) };
        match done.recv_async().await {
            Ok(result) => result,
            Err(flume::RecvError::Disconnected) => Err(io::Error::other("zero fill abandoned")),
        }
    }
}

impl Drop for ZeroFill {
    /// A fill that outlived its writer could zero what the file's next writer wrote there:
    /// one not yet begun never will; one running is waited for (a few MiB of writing). The
    /// wait needs only the helper thread, never this executor, which runs the queued ones.
    fn drop(&mut self) {
        if let Some(done) = self.done.take()
            && !self.abandon()
        {
            let _finished = done.recv();
        }
    }
}

/// Allocates `[start, end)` of `file`, growing it (one short exclusive hold of the inode, so
/// the writes that follow stay inside the file), then writes zeros over it.
fn zero_fill(file: &File, start: u64, end: u64) -> io::Result<()> {
    let len = end - start;
    // SAFETY: fallocate on an open descriptor; it reads and writes no memory of ours.
    let allocated = unsafe { libc::fallocate(file.as_raw_fd(), 0, start as libc::off_t, len as libc::off_t) };
    if allocated != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(error);
        }
    }
    let mut at = start;
    while at < end {
        let n = (end - at).min(ZEROS.as_ref().len() as u64);
        file.write_all_at(&ZEROS.as_ref()[..n as usize], at)?;
        at += n;
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
    fn write_without_waiting(path: &Path, position: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path)?;
        let block = &ZEROS.as_ref()[..IO_ALIGNMENT_BYTES];
        let iov = libc::iovec { iov_base: block.as_ptr() as *mut libc::c_void, iov_len: block.len() };
        // SAFETY: one iovec over a live, aligned buffer the kernel only reads.
        let written =
            unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, position as libc::off_t, libc::RWF_NOWAIT) };
        if written < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Appends in the flusher's pattern: each write rewrites the last partial block and adds
    /// the new bytes, then asks for zeros ahead. The fills run alongside the writes.
    #[test]
    fn fills_ahead_never_touch_written_data_and_truncate_cuts_them_off() {
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
                let mut buf = file.alloc(end - start);
                let bytes = buf.as_mut_slice();
                bytes[..end - start].copy_from_slice(&model[start..end]);
                bytes[end - start..].fill(0);
                file.write_at(buf, start as u64).await.expect("write");
                file.zero_ahead(limit);
                size = end;
            }
            file.fill_done().await;
            file.close().await.expect("close");
            size
        });
        let data = std::fs::read(&path).expect("read");
        assert!(logical > 1 << 20, "the writes went past several fills");
        assert_eq!(&data[..logical], &model[..logical], "every written byte survives the fills");
        assert!(data.len() > logical.next_multiple_of(IO_ALIGNMENT_BYTES), "zeros ahead: {}", data.len());
        assert!(data.len() as u64 <= limit, "no fill past the limit: {}", data.len());
        assert!(data[logical..].iter().all(|&byte| byte == 0), "only zeros after the data");

        block_on(async {
            let file = WriteFile::open(&path, false).await.expect("reopen");
            file.truncate(logical as u64).await.expect("truncate");
            file.close().await.expect("close");
        });
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), logical as u64);
    }

    /// What the zeros are for: a write into them need not wait, where one past the end of the
    /// file must (on ext4 and XFS).
    #[test]
    fn writes_into_zeroed_blocks_complete_without_waiting() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("segment");
        block_on(async {
            let file = WriteFile::open(&path, true).await.expect("open");
            let buf = file.alloc(IO_ALIGNMENT_BYTES);
            file.write_at(buf, 0).await.expect("write");
            file.zero_ahead(64 << 20);
            file.fill_done().await;
            let size = std::fs::metadata(&path).expect("stat").len();
            assert!(size >= ZERO_AHEAD_BYTES_MIN, "zeroed ahead: {size}");
            let past_end = write_without_waiting(&path, size + (64 << 20));
            if past_end.as_ref().err().and_then(io::Error::raw_os_error) != Some(libc::EAGAIN) {
                eprintln!("this filesystem appends without waiting ({past_end:?}): nothing to show");
            } else {
                write_without_waiting(&path, IO_ALIGNMENT_BYTES as u64).expect("a write into zeroed blocks");
                write_without_waiting(&path, size - IO_ALIGNMENT_BYTES as u64)
                    .expect("the last zeroed block");
            }
            file.close().await.expect("close");
        });
    }
}
