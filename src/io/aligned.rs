use crate::constants::IO_ALIGNMENT_BYTES;
use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// A heap buffer aligned for O_DIRECT, owned by whoever holds it and `Send`, so a DMA read
/// can become `Bytes` (`Bytes::from_owner`) and travel between cores without a copy.
/// glommio's own buffers cannot: they hold an `Rc` or a raw pointer into a per-core slab.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    capacity: usize,
    len: usize,
}

// SAFETY: `AlignedBuf` uniquely owns its allocation (like `Vec<u8>`); nothing else aliases it.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads the initialised bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `capacity` bytes rounded up to the alignment.
    pub fn zeroed(capacity: usize) -> AlignedBuf {
        let capacity = capacity.max(1).next_multiple_of(IO_ALIGNMENT_BYTES);
        let layout = Self::layout(capacity);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else { alloc::handle_alloc_error(layout) };
        AlignedBuf { ptr, capacity, len: 0 }
    }

    /// Reads up to `len` bytes of `file` at the aligned `position` into a new buffer (fewer at
    /// the end of the file). The buffer is not zero-filled first: the kernel writes it, and only
    /// the bytes it wrote are ever exposed. (A zeroed 8 MiB buffer from the heap costs a memset
    /// as long as the read itself takes a tenth of.)
    pub fn read_at(file: &std::fs::File, position: u64, len: usize) -> std::io::Result<AlignedBuf> {
        use std::os::fd::AsRawFd;
        let capacity = len.max(1).next_multiple_of(IO_ALIGNMENT_BYTES);
        let layout = Self::layout(capacity);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else { alloc::handle_alloc_error(layout) };
        let mut buf = AlignedBuf { ptr, capacity, len: 0 };
        while buf.len < len {
            let offset = (position + buf.len as u64) as libc::off_t;
            // SAFETY: pread(2) writes at most `len - buf.len` bytes at `ptr + buf.len`, inside
            // the allocation of `capacity >= len` bytes that `buf` uniquely owns.
            let read = unsafe {
                libc::pread(file.as_raw_fd(), buf.ptr.as_ptr().add(buf.len).cast(), len - buf.len, offset)
            };
            match read {
                0 => break,
                n if n > 0 => buf.len += n as usize,
                _ => {
                    let error = std::io::Error::last_os_error();
                    if error.kind() != std::io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
            }
            if !buf.len.is_multiple_of(IO_ALIGNMENT_BYTES) {
                break; // a short, unaligned read only happens at end of file
            }
        }
        Ok(buf)
    }

    fn layout(capacity: usize) -> Layout {
        match Layout::from_size_align(capacity, IO_ALIGNMENT_BYTES) {
            Ok(layout) => layout,
            Err(_) => panic!("aligned buffer of {capacity} bytes exceeds isize::MAX"),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The whole capacity, for a read to fill.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is `capacity` bytes, zero-initialised, and uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }

    /// Marks the first `len` bytes as holding data.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity, "AlignedBuf::set_len beyond capacity");
        self.len = len;
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialised: zeroed, or written by a read.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` or `read_at` with this same layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.capacity)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_aligned_and_rounds_up() {
        let mut buf = AlignedBuf::zeroed(10);
        assert_eq!(buf.capacity(), IO_ALIGNMENT_BYTES);
        assert_eq!(buf.spare_mut().as_ptr() as usize % IO_ALIGNMENT_BYTES, 0);
        buf.spare_mut()[..3].copy_from_slice(b"abc");
        buf.set_len(3);
        let bytes = bytes::Bytes::from_owner(buf);
        assert_eq!(&bytes[..], b"abc");
    }

    #[test]
    fn reads_expose_only_what_the_file_held() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let read = AlignedBuf::read_at(&file, 4096, 8192).expect("read");
        assert_eq!(read.as_ref(), &content[4096..], "a short read at the end of the file");
        assert_eq!(read.ptr.as_ptr() as usize % IO_ALIGNMENT_BYTES, 0);
        let whole = AlignedBuf::read_at(&file, 0, 8192).expect("read");
        assert_eq!(whole.as_ref(), &content[..8192]);
        assert!(AlignedBuf::read_at(&file, 16_384, 4096).expect("read").as_ref().is_empty(), "past the end");
    }
}
