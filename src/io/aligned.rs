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
        // SAFETY: the first `len` bytes are initialised (the allocation is zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this same layout.
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
}
