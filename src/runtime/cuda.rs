//! GPUs as memory nodes: device replicas (`CudaSlice<u8>`), host<->device
//! transfers (host->device through a ring of pinned staging chunks, so the
//! copy is asynchronous), and the stream the asynchronous worker drives.
//! The GPU itself (context, stream, kernels, BLAS handles) is a
//! `kernels::cuda::context::Gpu`.
//!
//! Everything of one device goes to its one stream: transfers into a replica
//! are ordered before the kernels that read it, and a replica freed with
//! `cuMemFreeAsync` (cudarc's drop) is freed after every kernel queued before.
//! The runtime, not cudarc, orders work across devices and the host: a task
//! completes only when its event has completed, so data read by another node
//! is final. That is why cudarc's per-slice event tracking is turned off.

use super::codelet::{DevBuffers, DevRef, Operands};
use crate::error::{Error, Result};
use crate::kernels::cuda::context::{drv, make_current, Gpu};
use crate::kernels::cuda::cuda_err;
use cudarc::driver::{CudaEvent, CudaSlice, PinnedHostSlice};
use std::sync::{Arc, Mutex};

/// Size of one pinned staging chunk for host->device copies.
const STAGING_CHUNK: usize = 8 << 20;
/// Chunks in the ring: while one is being filled, the others are in flight.
const STAGING_CHUNKS: usize = 4;

struct StagingChunk {
    buf: PinnedHostSlice<u8>,
    /// Recorded after the copy out of this chunk was enqueued.
    done: CudaEvent,
}

#[derive(Default)]
struct Staging {
    chunks: Vec<StagingChunk>,
    next: usize,
}

/// A GPU as a memory node: its [`Gpu`] context plus the pinned staging
/// ring of host->device copies. Replicas are allocated, copied and freed
/// here; kernels and BLAS calls get the `Gpu`.
pub struct GpuNode {
    pub gpu: Arc<Gpu>,
    staging: Mutex<Staging>,
}

impl GpuNode {
    /// GPU `ordinal` as a memory node.
    pub fn open(ordinal: usize) -> Result<Arc<GpuNode>> {
        Ok(Arc::new(GpuNode {
            gpu: Gpu::open(ordinal)?,
            staging: Mutex::new(Staging::default()),
        }))
    }

    /// A device buffer of `bytes` (stream-ordered allocation), zeroed when
    /// `zeroed`; otherwise its contents are undefined, for a replica that a
    /// transfer or a write-only task fills before anything reads it.
    pub(crate) fn alloc(&self, bytes: usize, zeroed: bool) -> Result<CudaSlice<u8>> {
        self.gpu.ctx.bind_to_thread().map_err(drv)?;
        // cuMemAlloc refuses 0 bytes; empty tiles get a token allocation.
        let r = if zeroed {
            self.gpu.stream.alloc_zeros::<u8>(bytes.max(16))
        } else {
            // SAFETY: bytes; the caller writes all of them before reading.
            unsafe { self.gpu.stream.alloc::<u8>(bytes.max(16)) }
        };
        r.map_err(|e| {
            if matches!(
                e.0,
                cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
            ) {
                Error::OutOfMemory {
                    node: format!("cuda{}", self.gpu.ordinal),
                    limit: self.gpu.total_mem as u64,
                    msg: format!("cudaMalloc of {bytes} bytes failed (set a lower memory limit for this node)"),
                }
            } else {
                drv(e)
            }
        })
    }

    /// This GPU with a stream of its own (and its own staging ring), for
    /// the communication worker: its collectives overlap the compute stream.
    pub fn fork_stream(&self) -> Result<Arc<GpuNode>> {
        Ok(Arc::new(GpuNode {
            gpu: self.gpu.fork_stream()?,
            staging: Mutex::new(Staging::default()),
        }))
    }

    /// A new device buffer holding `src` (copied through the pinned
    /// staging, asynchronously: `src` may be dropped on return).
    pub fn upload(&self, src: &[u8]) -> Result<CudaSlice<u8>> {
        let mut buf = self.alloc(src.len(), false)?;
        self.htod(src, &mut buf)?;
        Ok(buf)
    }

    /// Enqueues host->device: `src` is staged through pinned chunks, so the
    /// copy proceeds asynchronously and `src` may be dropped on return.
    pub(crate) fn htod(&self, src: &[u8], dst: &mut CudaSlice<u8>) -> Result<()> {
        self.gpu.ctx.bind_to_thread().map_err(drv)?;
        let mut st = self.staging.lock().unwrap();
        while st.chunks.len() < STAGING_CHUNKS {
            // SAFETY: the chunk is written before any copy reads it.
            let buf = unsafe { self.gpu.ctx.alloc_pinned::<u8>(STAGING_CHUNK) }.map_err(drv)?;
            let done = self.gpu.ctx.new_event(None).map_err(drv)?;
            done.record(&self.gpu.stream).map_err(drv)?;
            st.chunks.push(StagingChunk { buf, done });
        }
        let mut off = 0;
        while off < src.len() {
            let n = (src.len() - off).min(STAGING_CHUNK);
            let i = st.next;
            st.next = (i + 1) % STAGING_CHUNKS;
            let c = &mut st.chunks[i];
            // The previous copy out of this chunk must be done before refilling it.
            c.done.synchronize().map_err(drv)?;
            c.buf.as_mut_slice().map_err(drv)?[..n].copy_from_slice(&src[off..off + n]);
            // SAFETY: the chunk holds n initialised bytes and is not written
            // again before `done` says this copy has finished.
            let host = unsafe { std::slice::from_raw_parts(c.buf.as_ptr().map_err(drv)?, n) };
            self.gpu
                .stream
                .memcpy_htod(host, &mut dst.slice_mut(off..off + n))
                .map_err(drv)?;
            c.done.record(&self.gpu.stream).map_err(drv)?;
            off += n;
        }
        Ok(())
    }

    /// Device->host, waiting for it (and for everything queued on the stream
    /// before it) to finish.
    pub(crate) fn dtoh(&self, src: &CudaSlice<u8>, dst: &mut [u8]) -> Result<()> {
        self.gpu.ctx.bind_to_thread().map_err(drv)?;
        let n = dst.len();
        self.gpu
            .stream
            .memcpy_dtoh(&src.slice(0..n), dst)
            .map_err(drv)?;
        self.gpu.stream.synchronize().map_err(drv)
    }

    /// Device->device within this device (stream-ordered).
    pub(crate) fn dtod(
        &self,
        src: &CudaSlice<u8>,
        dst: &mut CudaSlice<u8>,
        n: usize,
    ) -> Result<()> {
        self.gpu.ctx.bind_to_thread().map_err(drv)?;
        self.gpu
            .stream
            .memcpy_dtod(&src.slice(0..n), &mut dst.slice_mut(0..n))
            .map_err(drv)
    }
}

/// A GPU's stream as seen by the asynchronous worker: the device's own, or
/// (for the communication worker) a fork of it, in which case `after` is
/// the node whose stream the memory manager copies operands on, and every
/// task first waits for what that stream holds so far.
pub(crate) struct DeviceStream {
    pub node: Arc<GpuNode>,
    pub after: Option<Arc<GpuNode>>,
}

impl super::async_worker::Stream for DeviceStream {
    type Event = CudaEvent;

    fn new_event(&self) -> Result<CudaEvent> {
        self.node.gpu.event()
    }

    // Each call binds this device's context first: dropping another GPU's
    // replica or copying from it on this thread makes that context current.
    fn record(&self, e: &CudaEvent) -> Result<()> {
        self.node.gpu.ctx.bind_to_thread().map_err(drv)?;
        e.record(&self.node.gpu.stream).map_err(drv)
    }

    fn query(&self, e: &CudaEvent) -> bool {
        let _ = make_current(&self.node.gpu.ctx);
        !matches!(e.try_is_complete(), Ok(false))
    }

    fn wait(&self, e: &CudaEvent) -> Result<()> {
        self.node.gpu.ctx.bind_to_thread().map_err(drv)?;
        e.synchronize().map_err(|e| {
            cuda_err(format!(
                "the GPU failed while running this task (the CUDA context is unusable now): {e}"
            ))
        })
    }

    fn elapsed(&self, begin: &CudaEvent, end: &CudaEvent) -> Option<f64> {
        begin.elapsed_ms(end).ok().map(|ms| ms as f64 / 1e3)
    }

    fn enqueue(&self, s: &super::worker::Started, node: usize) -> Result<()> {
        self.node.gpu.ctx.bind_to_thread().map_err(drv)?;
        if let Some(main) = &self.after {
            // The operands were made valid on the main stream (transfers).
            self.node.gpu.stream.join(&main.gpu.stream).map_err(drv)?;
        }
        let items: Vec<DevRef> = s
            .body
            .accesses
            .iter()
            .map(|(h, mode)| {
                let mut coh = h.0.coh.lock().unwrap();
                let r = coh.replicas[node]
                    .as_mut()
                    .expect("operand pinned on this node");
                let slice = match &mut r.buf {
                    super::buffer::Buf::Cuda(c) => c as *mut CudaSlice<u8>,
                    super::buffer::Buf::Host(_) => {
                        panic!("a host replica on a CUDA node (a runtime bug)")
                    }
                };
                DevRef {
                    ptr: slice,
                    len: h.len(),
                    dtype: h.dtype(),
                    mode: *mode,
                }
            })
            .collect();
        let bufs = DevBuffers {
            node: &self.node,
            ops: Operands::new(&items),
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.body.codelet.cuda(&bufs)))
            .unwrap_or_else(|p| Err(super::worker::panic_error(&s.task.label(), p)))
    }
}
