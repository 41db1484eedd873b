//! Host-memory tile buffers: 64-byte aligned, reinterpreted as typed slices.
//! The runtime, not the borrow checker, guarantees exclusive access for
//! writers (sequential consistency per data handle), which is why the typed
//! views are handed out from raw pointers.
//!
//! Freed buffers go to a pool by size and are handed out again. A training
//! step frees and allocates the same tile sizes every step (activations,
//! their gradients, the logits); from the allocator each large buffer was
//! fresh pages, one page fault per 4 KiB (1-5 ms per 8 MiB logits tile, 4-8 %
//! of worker time at 4x256, see benches/RESULTS.md). `GPT2RS_HOST_POOL_MB`
//! caps the pool (default 2048; 0 turns it off).

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

const ALIGN: usize = 64;

/// Smaller buffers come from malloc's own free lists at no fault cost.
const POOL_MIN_BYTES: usize = 64 << 10;

struct Pool {
    free: HashMap<usize, Vec<usize>>,
    bytes: usize,
    cap: usize,
}

fn pool() -> &'static Mutex<Pool> {
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let mb = std::env::var("GPT2RS_HOST_POOL_MB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(2048);
        Mutex::new(Pool {
            free: HashMap::new(),
            bytes: 0,
            cap: mb << 20,
        })
    })
}

fn layout(bytes: usize) -> Layout {
    Layout::from_size_align(bytes, ALIGN).expect("tile size overflows isize")
}

/// Gives every pooled buffer back to the allocator (when the last runtime
/// goes, so that a finished training run does not keep its step's memory).
pub fn trim_pool() {
    let free = {
        let mut p = pool().lock().unwrap();
        p.bytes = 0;
        std::mem::take(&mut p.free)
    };
    for (bytes, ptrs) in free {
        for p in ptrs {
            // SAFETY: pooled pointers were allocated with `layout(bytes)` and
            // are owned by the pool alone.
            unsafe { dealloc(p as *mut u8, layout(bytes)) }
        }
    }
}

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
        HostBuffer::new(bytes, true)
    }

    /// A buffer whose contents are whatever it held before: for a replica
    /// that a write-only access or a transfer fills completely.
    pub fn uninit(bytes: usize) -> HostBuffer {
        HostBuffer::new(bytes, false)
    }

    fn new(bytes: usize, zeroed: bool) -> HostBuffer {
        if bytes == 0 {
            return HostBuffer {
                ptr: NonNull::dangling(),
                bytes: 0,
            };
        }
        let pooled = (bytes >= POOL_MIN_BYTES)
            .then(|| pool().lock().unwrap().take(bytes))
            .flatten();
        if let Some(p) = pooled {
            let b = HostBuffer {
                ptr: NonNull::new(p as *mut u8).expect("pooled pointers are non-null"),
                bytes,
            };
            if zeroed {
                // SAFETY: a buffer nobody else holds.
                unsafe { b.bytes_mut() }.fill(0);
            }
            return b;
        }
        let layout = layout(bytes);
        // SAFETY: layout has non-zero size.
        let p = unsafe {
            if zeroed {
                alloc_zeroed(layout)
            } else {
                alloc(layout)
            }
        };
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

impl Pool {
    fn take(&mut self, bytes: usize) -> Option<usize> {
        let p = self.free.get_mut(&bytes)?.pop()?;
        self.bytes -= bytes;
        Some(p)
    }

    /// Keeps `p` unless the pool is full; false means the caller frees it.
    fn put(&mut self, bytes: usize, p: usize) -> bool {
        if self.bytes + bytes > self.cap {
            return false;
        }
        self.bytes += bytes;
        self.free.entry(bytes).or_default().push(p);
        true
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let p = self.ptr.as_ptr();
        if self.bytes >= POOL_MIN_BYTES && pool().lock().unwrap().put(self.bytes, p as usize) {
            return;
        }
        // SAFETY: allocated in `new` with this very layout.
        unsafe { dealloc(p, layout(self.bytes)) }
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

#[cfg(test)]
mod tests {
    use super::*;

    // Sizes no other test allocates, since the pool is shared by the process.
    const ODD: usize = POOL_MIN_BYTES + 3 * 4096 + 64;

    #[test]
    fn a_freed_buffer_is_reused_and_zeroed_on_request() {
        let a = HostBuffer::uninit(ODD);
        unsafe { a.bytes_mut() }.fill(0xAB);
        let p = a.as_ptr();
        drop(a);
        let b = HostBuffer::uninit(ODD);
        assert_eq!(b.as_ptr(), p, "the pool hands back the freed buffer");
        drop(b);
        let c = HostBuffer::zeroed(ODD);
        assert!(c.bytes().iter().all(|&x| x == 0));
    }

    #[test]
    fn a_full_pool_frees_instead() {
        let mut p = Pool {
            free: HashMap::new(),
            bytes: 0,
            cap: 3 << 20,
        };
        assert!(p.put(2 << 20, 64));
        assert!(!p.put(2 << 20, 128), "over the cap");
        assert_eq!(p.take(1 << 20), None, "sizes match exactly");
        assert_eq!(p.take(2 << 20), Some(64));
        assert_eq!(p.bytes, 0);
    }
}
