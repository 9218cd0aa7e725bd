use super::{AlignedBuf, fault, spawn_blocking};
use crate::constants::IO_ALIGNMENT_BYTES;
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

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

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A segment file opened for O_DIRECT writes through io_uring. Lives on the core that owns the
/// partition; writes must be aligned in position and length.
pub struct WriteFile {
    file: glommio::io::DmaFile,
}

impl WriteFile {
    /// Opens (creating if asked) `path` for O_DIRECT reads and writes.
    pub async fn open(path: &Path, create: bool) -> io::Result<WriteFile> {
        if create {
            fault::on_create()?;
        }
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .dma_open(path)
            .await
            .map_err(to_io)?;
        Ok(WriteFile { file })
    }

    /// An aligned buffer of `len` bytes rounded up to whole blocks. Its contents are
    /// unspecified: the caller writes every byte it hands to `write_at`.
    pub fn alloc(&self, len: usize) -> WriteBuf {
        WriteBuf(self.file.alloc_dma_buffer(len.next_multiple_of(IO_ALIGNMENT_BYTES)))
    }

    /// Writes the whole buffer at `position`; a short write is an error.
    pub async fn write_at(&self, buf: WriteBuf, position: u64) -> io::Result<()> {
        assert!(position.is_multiple_of(IO_ALIGNMENT_BYTES as u64), "unaligned O_DIRECT write position");
        fault::on_write()?;
        let expected = buf.len();
        crate::metrics::count(|c| {
            c.disk_writes += 1;
            c.disk_writes_in_flight += 1;
        });
        let written = self.file.write_at(buf.0, position).await.map_err(to_io);
        crate::metrics::count(|c| {
            c.disk_writes_in_flight -= 1;
            c.disk_written_bytes += *written.as_ref().unwrap_or(&0) as u64;
        });
        let written = written?;
        if written != expected {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short O_DIRECT write"));
        }
        Ok(())
    }

    pub async fn fdatasync(&self) -> io::Result<()> {
        fault::on_sync()?;
        let started = std::time::Instant::now();
        let synced = self.file.fdatasync().await.map_err(to_io);
        crate::metrics::count(|c| c.fsync.observe(started.elapsed()));
        synced
    }

    pub async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await.map_err(to_io)
    }

    pub async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(to_io)
    }
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
