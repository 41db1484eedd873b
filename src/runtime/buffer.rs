//! Host-memory tile buffers: zero-initialised, 64-byte aligned, reinterpreted as
//! typed slices. The runtime, not the borrow checker, guarantees exclusive
//! access for writers (sequential consistency per data handle), which is why
//! the typed views are handed out from raw pointers.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

const ALIGN: usize = 64;

pub struct HostBuffer {
    ptr: NonNull<u8>,
    bytes: usize,
}

// SAFETY: the buffer is plain memory; concurrent access is serialised by the
// runtime's dependency tracking and coherence locks.
unsafe impl Send for HostBuffer {}
unsafe impl Sync for HostBuffer {}

impl HostBuffer {
    pub fn zeroed(bytes: usize) -> HostBuffer {
        if bytes == 0 {
            return HostBuffer {
                ptr: NonNull::dangling(),
                bytes: 0,
            };
        }
        let layout = Layout::from_size_align(bytes, ALIGN).expect("tile size overflows isize");
        // SAFETY: layout has non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        HostBuffer { ptr, bytes }
    }

    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr is valid for `bytes` bytes (or dangling with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.bytes) }
    }

    /// # Safety
    /// The caller must hold exclusive access to this buffer (see module doc).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self) -> &mut [u8] {
        std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.bytes)
    }

    pub fn copy_from(&self, src: &HostBuffer) {
        debug_assert_eq!(self.bytes, src.bytes);
        // SAFETY: both valid for `bytes`; distinct allocations never overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.ptr.as_ptr(), self.ptr.as_ptr(), self.bytes) }
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        if self.bytes != 0 {
            let layout = Layout::from_size_align(self.bytes, ALIGN).unwrap();
            // SAFETY: allocated in `zeroed` with this very layout.
            unsafe { dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

/// A replica's storage: host memory, or memory of one GPU.
pub(crate) enum Buf {
    Host(HostBuffer),
    Cuda(cudarc::driver::CudaSlice<u8>),
}

impl Buf {
    pub fn host(&self) -> &HostBuffer {
        match self {
            Buf::Host(b) => b,
            Buf::Cuda(_) => panic!("a device replica used as host memory (a runtime bug)"),
        }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // A replica may be dropped on any thread (a writer elsewhere
        // invalidates it, a tensor dies in Python): the slice's stream-ordered
        // free needs its context current there.
        if let Buf::Cuda(c) = self {
            let _ = crate::kernels::cuda::context::make_current(c.context());
        }
    }
}
