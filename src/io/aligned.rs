use crate::constants::{IO_ALIGNMENT_BYTES, POOLED_BUFFER_BYTES_MAX};
use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::ptr::NonNull;

/// Buffers of at least this many bytes go back to their thread's pool when dropped; smaller
/// ones come cheaply from the allocator's heap.
const POOLED_CAPACITY_MIN: usize = 256 << 10;

/// Allocations of dropped buffers this thread keeps for its next ones, up to
/// `POOLED_BUFFER_BYTES_MAX`. A fresh allocation of megabytes is mapped anew, and an O_DIRECT
/// read into it makes the kernel fault in and zero every page as it pins them: while a
/// consumer read cold data, that was 38% of the broker's CPU (`perf record`, 8 MiB reads)
/// and unmapping the freed buffers another 7%.
#[derive(Default)]
struct Pool {
    free: Vec<(NonNull<u8>, usize)>,
    bytes: usize,
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (ptr, capacity) in self.free.drain(..) {
            // SAFETY: every pooled allocation was made with `AlignedBuf::layout(capacity)`.
            unsafe { alloc::dealloc(ptr.as_ptr(), AlignedBuf::layout(capacity)) }
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::default();
}

/// A heap buffer aligned for O_DIRECT, owned by whoever holds it and `Send`, so a DMA read
/// can become `Bytes` (`Bytes::from_owner`) and travel between cores without a copy.
/// glommio's own buffers cannot: they hold an `Rc` or a raw pointer into a per-core slab.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    capacity: usize,
    len: usize,
    /// Made by `zeroed`: every byte is initialised. A read buffer (`for_read`) holds only what
    /// its reads wrote, so it never hands out its spare capacity.
    zeroed: bool,
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
        AlignedBuf { ptr, capacity, len: 0, zeroed: true }
    }

    /// An empty buffer for a read of up to `len` bytes: a pooled allocation of this thread's
    /// if one fits (at most a quarter larger), else a new one. Its bytes are not initialised;
    /// only what `read_at` reads into it is ever exposed. (A zeroed 8 MiB buffer costs a
    /// memset as long as a tenth of the read.)
    pub(super) fn for_read(len: usize) -> AlignedBuf {
        let capacity = len.max(1).next_multiple_of(IO_ALIGNMENT_BYTES);
        let pooled = POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            let fits =
                |&(_, have): &(NonNull<u8>, usize)| have >= capacity && have - capacity <= capacity / 4;
            let at = pool.free.iter().position(fits)?;
            let (ptr, have) = pool.free.swap_remove(at);
            pool.bytes -= have;
            Some(AlignedBuf { ptr, capacity: have, len: 0, zeroed: false })
        });
        pooled.unwrap_or_else(|| {
            let layout = Self::layout(capacity);
            // SAFETY: the layout has a non-zero size.
            let raw = unsafe { alloc::alloc(layout) };
            let Some(ptr) = NonNull::new(raw) else { alloc::handle_alloc_error(layout) };
            AlignedBuf { ptr, capacity, len: 0, zeroed: false }
        })
    }

    /// Reads up to `len` bytes (at most its capacity) of `file` at the aligned `position` into
    /// the buffer, replacing what it held; fewer at the end of the file.
    pub(super) fn read_at(&mut self, file: &std::fs::File, position: u64, len: usize) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let len = len.min(self.capacity);
        self.len = 0;
        while self.len < len {
            let offset = (position + self.len as u64) as libc::off_t;
            // SAFETY: pread(2) writes at most `len - self.len` bytes at `ptr + self.len`,
            // inside the allocation of `capacity >= len` bytes that `self` uniquely owns.
            let read = unsafe {
                libc::pread(file.as_raw_fd(), self.ptr.as_ptr().add(self.len).cast(), len - self.len, offset)
            };
            match read {
                0 => break,
                n if n > 0 => self.len += n as usize,
                _ => {
                    let error = std::io::Error::last_os_error();
                    if error.kind() != std::io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
            }
            if !self.len.is_multiple_of(IO_ALIGNMENT_BYTES) {
                break; // a short, unaligned read only happens at end of file
            }
        }
        Ok(())
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
        assert!(self.zeroed, "only a zeroed buffer hands out its spare capacity");
        // SAFETY: the allocation is `capacity` bytes, zero-initialised (checked above), and
        // uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }

    /// Marks the first `len` bytes as holding data.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity, "AlignedBuf::set_len beyond capacity");
        assert!(self.zeroed, "a read buffer's length is what its reads wrote");
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
        let (ptr, capacity) = (self.ptr, self.capacity);
        let pooled = capacity >= POOLED_CAPACITY_MIN
            && POOL
                .try_with(|pool| {
                    let mut pool = pool.borrow_mut();
                    let room = pool.bytes + capacity <= POOLED_BUFFER_BYTES_MAX;
                    if room {
                        pool.bytes += capacity;
                        pool.free.push((ptr, capacity));
                    }
                    room
                })
                .unwrap_or(false);
        if !pooled {
            // SAFETY: allocated in `zeroed` or `for_read` with this same layout.
            unsafe { alloc::dealloc(ptr.as_ptr(), Self::layout(capacity)) }
        }
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
        let read = |position, len| {
            let mut buf = AlignedBuf::for_read(len);
            buf.read_at(&file, position, len).expect("read");
            buf
        };
        let tail = read(4096, 8192);
        assert_eq!(tail.as_ref(), &content[4096..], "a short read at the end of the file");
        assert_eq!(tail.ptr.as_ptr() as usize % IO_ALIGNMENT_BYTES, 0);
        assert_eq!(read(0, 8192).as_ref(), &content[..8192]);
        assert!(read(16_384, 4096).as_ref().is_empty(), "past the end");
    }

    #[test]
    fn large_buffers_are_reused_and_small_ones_are_not() {
        let pooled = |ptr: NonNull<u8>| POOL.with(|pool| pool.borrow().free.iter().any(|&(p, _)| p == ptr));
        let big = AlignedBuf::for_read(POOLED_CAPACITY_MIN);
        let (ptr, capacity) = (big.ptr, big.capacity);
        drop(big);
        assert!(pooled(ptr), "a large buffer goes to the pool");
        let again = AlignedBuf::for_read(POOLED_CAPACITY_MIN - 100);
        assert_eq!((again.ptr, again.capacity), (ptr, capacity), "and comes back for a read it fits");
        assert!(!pooled(ptr), "leaving the pool");
        drop(again);
        let half = AlignedBuf::for_read(POOLED_CAPACITY_MIN / 2);
        assert_ne!(half.ptr, ptr, "a pooled buffer is not used for a much smaller read");
        assert!(pooled(ptr));
        let small = AlignedBuf::for_read(4096);
        let small_ptr = small.ptr;
        drop(small);
        assert!(!pooled(small_ptr), "small ones are freed");
        let held: Vec<AlignedBuf> =
            (0..=POOLED_BUFFER_BYTES_MAX / (4 << 20)).map(|_| AlignedBuf::for_read(4 << 20)).collect();
        drop(held);
        assert!(POOL.with(|pool| pool.borrow().bytes) <= POOLED_BUFFER_BYTES_MAX, "the pool stays bounded");
    }
}
