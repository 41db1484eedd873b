//! CUDA devices as memory nodes: one context and one stream per GPU, device
//! replicas (`CudaSlice<u8>`), host<->device transfers (host->device through
//! a ring of pinned staging chunks, so the copy is asynchronous), and the
//! typed views a codelet's CUDA implementation gets ([`DevBuffers`]).
//!
//! Everything of one device goes to its one stream: transfers into a replica
//! are ordered before the kernels that read it, and a replica freed with
//! `cuMemFreeAsync` (cudarc's drop) is freed after every kernel queued before.
//! The runtime, not cudarc, orders work across devices and the host: a task
//! completes only when its event has completed, so data read by another node
//! is final. That is why cudarc's per-slice event tracking is turned off.

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::kernels::cuda::launch::CudaKernels;
use crate::kernels::cuda::{cuda_err, driver_available};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr,
    PinnedHostSlice,
};
use std::cell::Cell;
use std::sync::{Arc, Mutex, OnceLock};

pub(crate) fn drv(e: cudarc::driver::DriverError) -> Error {
    cuda_err(format!("driver: {e}"))
}

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

/// One GPU: its context, its stream, its kernels and BLAS handles.
pub struct CudaDevice {
    pub ordinal: usize,
    pub name: String,
    pub arch: String,
    pub total_mem: usize,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub kernels: CudaKernels,
    blas: OnceLock<std::result::Result<BlasHandle, String>>,
    blaslt: OnceLock<std::result::Result<BlasLtHandle, String>>,
    staging: Mutex<Staging>,
}

/// A cuBLAS handle bound to a device's stream. Held raw rather than as
/// cudarc's `CudaBlas`, whose `Drop` unwraps `cublasDestroy`: after a device
/// error that would panic during teardown (and abort if already unwinding).
pub struct BlasHandle(cudarc::cublas::sys::cublasHandle_t);

/// A cuBLASLt handle (the stream and workspace go with each matmul). Raw for
/// the same reason as [`BlasHandle`]; it also spares cudarc's `CudaBlasLT`
/// its own 32 MiB workspace, which gpt2rs never uses.
pub struct BlasLtHandle(cudarc::cublaslt::sys::cublasLtHandle_t);

// SAFETY: cuBLAS handles may be used from any thread, one call at a time;
// every call on a device's handle is made by its one worker (or under the
// device's OnceLock at creation).
unsafe impl Send for BlasHandle {}
unsafe impl Sync for BlasHandle {}
unsafe impl Send for BlasLtHandle {}
unsafe impl Sync for BlasLtHandle {}

impl BlasHandle {
    pub fn raw(&self) -> cudarc::cublas::sys::cublasHandle_t {
        self.0
    }
}

impl BlasLtHandle {
    pub fn raw(&self) -> cudarc::cublaslt::sys::cublasLtHandle_t {
        self.0
    }
}

impl Drop for BlasHandle {
    fn drop(&mut self) {
        // SAFETY: created by cublasCreate, destroyed once; a failure (a
        // device already in error) leaves nothing to do.
        let _ = unsafe { cudarc::cublas::result::destroy_handle(self.0) };
    }
}

impl Drop for BlasLtHandle {
    fn drop(&mut self) {
        // SAFETY: as for BlasHandle.
        let _ = unsafe { cudarc::cublaslt::result::destroy_handle(self.0) };
    }
}

/// Makes `ctx` current on this thread. Unlike `CudaContext::bind_to_thread`,
/// which first returns (and clears) an error a `Drop` stored earlier and
/// then skips the binding, this always binds: it is for the paths that must
/// work on a context in error (freeing replicas, polling events).
pub(crate) fn make_current(ctx: &CudaContext) -> Result<()> {
    // SAFETY: the context is alive (borrowed) and `cu_ctx` is its handle.
    unsafe { cudarc::driver::result::ctx::set_current(ctx.cu_ctx()) }.map_err(drv)
}

/// Keeps memory freed into the device's default pool (which cudarc's
/// stream-ordered allocations use) instead of returning it to the driver at
/// every synchronisation: a training step frees and reallocates the same
/// tiles, and `cuMemAllocAsync` is then a pool hit.
fn keep_freed_memory(ctx: &CudaContext) -> Result<()> {
    use cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
    let mut threshold: u64 = u64::MAX;
    // SAFETY: the device is this context's; the attribute takes a cuuint64_t.
    unsafe {
        let pool =
            cudarc::driver::result::device::get_default_mem_pool(ctx.cu_device()).map_err(drv)?;
        cudarc::driver::result::mem_pool::set_attribute(
            pool,
            CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
        .map_err(drv)
    }
}

/// Runs a call into cudarc, turning its panic (a missing library or symbol)
/// into an error.
pub(crate) fn guard<R>(what: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        Err(cuda_err(format!("{what}: {msg}")))
    })
}

/// GPUs visible to this process (0 when there is no driver).
pub fn device_count() -> usize {
    if driver_available().is_err() {
        return 0;
    }
    guard("counting devices", || {
        cudarc::driver::result::init().map_err(drv)?;
        CudaContext::device_count().map_err(drv)
    })
    .map(|n| n.max(0) as usize)
    .unwrap_or(0)
}

impl CudaDevice {
    /// Opens GPU `ordinal` (its primary context) with a stream of its own.
    pub fn open(ordinal: usize) -> Result<Arc<CudaDevice>> {
        driver_available()?;
        guard("opening a CUDA device", || {
            let n = device_count();
            if ordinal >= n {
                return Err(cuda_err(format!(
                    "GPU {ordinal} requested but {n} visible (CUDA_VISIBLE_DEVICES?)"
                )));
            }
            let ctx = CudaContext::new(ordinal).map_err(drv)?;
            // SAFETY: set before any slice of this context exists; the runtime
            // orders cross-stream work itself (see the module doc).
            unsafe { ctx.disable_event_tracking() };
            let stream = ctx.new_stream().map_err(drv)?;
            keep_freed_memory(&ctx)?;
            let (major, minor) = ctx.compute_capability().map_err(drv)?;
            if major < 8 {
                return Err(cuda_err(format!(
                    "GPU {ordinal} has compute capability {major}.{minor}; gpt2rs needs 8.0 (Ampere) or newer"
                )));
            }
            let kernels = CudaKernels::new(stream.clone())?;
            Ok(Arc::new(CudaDevice {
                ordinal,
                name: ctx.name().map_err(drv)?,
                arch: format!("sm_{major}{minor}"),
                total_mem: ctx.total_mem().map_err(drv)?,
                ctx,
                stream,
                kernels,
                blas: OnceLock::new(),
                blaslt: OnceLock::new(),
                staging: Mutex::new(Staging::default()),
            }))
        })
    }

    /// The cuBLAS handle of this device's stream (created on first use).
    pub fn blas(&self) -> Result<&BlasHandle> {
        self.blas
            .get_or_init(|| {
                self.handle("cuBLAS", || {
                    let h = cudarc::cublas::result::create_handle()
                        .map_err(|e| cuda_err(format!("cuBLAS: {e:?}")))?;
                    let h = BlasHandle(h);
                    // SAFETY: a live handle and this device's live stream.
                    unsafe {
                        cudarc::cublas::result::set_stream(h.0, self.stream.cu_stream() as _)
                    }
                    .map_err(|e| cuda_err(format!("cuBLAS: {e:?}")))?;
                    Ok(h)
                })
            })
            .as_ref()
            .map_err(|e| Error::Cuda(e.clone()))
    }

    /// The cuBLASLt handle of this device (created on first use).
    pub fn blaslt(&self) -> Result<&BlasLtHandle> {
        self.blaslt
            .get_or_init(|| {
                self.handle("cuBLASLt", || {
                    cudarc::cublaslt::result::create_handle()
                        .map(BlasLtHandle)
                        .map_err(|e| cuda_err(format!("cuBLASLt: {e:?}")))
                })
            })
            .as_ref()
            .map_err(|e| Error::Cuda(e.clone()))
    }

    /// Creates a library handle in this device's context; a missing library
    /// (cudarc panics) or a failure is kept as the error every later use gets.
    fn handle<H>(
        &self,
        what: &str,
        make: impl FnOnce() -> Result<H>,
    ) -> std::result::Result<H, String> {
        guard(&format!("loading {what}"), || {
            self.ctx.bind_to_thread().map_err(drv)?;
            make()
        })
        .map_err(|e| match e {
            Error::Cuda(m) => m,
            e => e.to_string(),
        })
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx.bind_to_thread().map_err(drv)?;
        self.ctx.mem_get_info().map_err(drv)
    }

    /// A device buffer of `bytes` (stream-ordered allocation), zeroed when
    /// `zeroed`; otherwise its contents are undefined, for a replica that a
    /// transfer or a write-only task fills before anything reads it.
    pub(crate) fn alloc(&self, bytes: usize, zeroed: bool) -> Result<CudaSlice<u8>> {
        self.ctx.bind_to_thread().map_err(drv)?;
        // cuMemAlloc refuses 0 bytes; empty tiles get a token allocation.
        let r = if zeroed {
            self.stream.alloc_zeros::<u8>(bytes.max(16))
        } else {
            // SAFETY: bytes; the caller writes all of them before reading.
            unsafe { self.stream.alloc::<u8>(bytes.max(16)) }
        };
        r.map_err(|e| {
            if matches!(
                e.0,
                cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
            ) {
                Error::OutOfMemory {
                    node: format!("cuda{}", self.ordinal),
                    limit: self.total_mem as u64,
                    msg: format!("cudaMalloc of {bytes} bytes failed (set a lower memory limit for this node)"),
                }
            } else {
                drv(e)
            }
        })
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
        self.ctx.bind_to_thread().map_err(drv)?;
        let mut st = self.staging.lock().unwrap();
        while st.chunks.len() < STAGING_CHUNKS {
            // SAFETY: the chunk is written before any copy reads it.
            let buf = unsafe { self.ctx.alloc_pinned::<u8>(STAGING_CHUNK) }.map_err(drv)?;
            let done = self.ctx.new_event(None).map_err(drv)?;
            done.record(&self.stream).map_err(drv)?;
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
            self.stream
                .memcpy_htod(host, &mut dst.slice_mut(off..off + n))
                .map_err(drv)?;
            c.done.record(&self.stream).map_err(drv)?;
            off += n;
        }
        Ok(())
    }

    /// Device->host, waiting for it (and for everything queued on the stream
    /// before it) to finish.
    pub(crate) fn dtoh(&self, src: &CudaSlice<u8>, dst: &mut [u8]) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv)?;
        let n = dst.len();
        self.stream
            .memcpy_dtoh(&src.slice(0..n), dst)
            .map_err(drv)?;
        self.stream.synchronize().map_err(drv)
    }

    /// Device->device within this device (stream-ordered).
    pub(crate) fn dtod(
        &self,
        src: &CudaSlice<u8>,
        dst: &mut CudaSlice<u8>,
        n: usize,
    ) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv)?;
        self.stream
            .memcpy_dtod(&src.slice(0..n), &mut dst.slice_mut(0..n))
            .map_err(drv)
    }

    /// A timing-capable event (for completion tracking and kernel times).
    pub(crate) fn event(&self) -> Result<CudaEvent> {
        self.ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(drv)
    }
}

/// A device operand of a running task.
pub(crate) struct DevRef {
    pub slice: *mut CudaSlice<u8>,
    pub len: usize,
    pub dtype: DType,
    pub mode: super::handle::Access,
}

/// The operands of a task running on a GPU, in submission order, as typed
/// device views. Mirrors [`super::task::Buffers`].
pub struct DevBuffers<'a> {
    pub(crate) dev: &'a CudaDevice,
    pub(crate) items: &'a [DevRef],
    pub(crate) borrowed: Cell<u64>,
}

impl<'a> DevBuffers<'a> {
    /// The device (stream, kernels, BLAS handles).
    pub fn dev(&self) -> &'a CudaDevice {
        self.dev
    }
    /// The kernels of the device.
    pub fn k(&self) -> &'a CudaKernels {
        &self.dev.kernels
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn dtype(&self, i: usize) -> DType {
        self.items[i].dtype
    }

    fn check<T: Element>(&self, i: usize) -> Result<&DevRef> {
        let b = self.items.get(i).ok_or_else(|| Error::Argument {
            op: "codelet".into(),
            msg: format!("operand {i} does not exist"),
        })?;
        if b.dtype != T::DTYPE {
            return Err(Error::DType {
                op: format!("operand {i}"),
                expected: b.dtype,
                got: T::DTYPE,
            });
        }
        Ok(b)
    }

    /// Operand `i` for reading.
    pub fn r<T: Element + DeviceRepr>(&self, i: usize) -> Result<CudaView<'a, T>> {
        let b = self.check::<T>(i)?;
        if self.borrowed.get() & (1 << i) != 0 {
            return Err(Error::Argument {
                op: "codelet".into(),
                msg: format!("operand {i} is borrowed for writing"),
            });
        }
        // SAFETY: the replica is pinned (it neither moves nor is freed) for
        // the task's duration and nobody writes it concurrently; its byte
        // size is len * size_of::<T>() (at least).
        let s: &'a CudaSlice<u8> = unsafe { &*b.slice };
        unsafe { s.transmute::<T>(b.len) }
            .ok_or_else(|| cuda_err("operand smaller than its handle"))
    }

    /// Operand `i` for writing (its access mode must be W, RW or ACC).
    pub fn w<T: Element + DeviceRepr>(&self, i: usize) -> Result<CudaViewMut<'a, T>> {
        let b = self.check::<T>(i)?;
        if !b.mode.writes() || self.borrowed.get() & (1 << i) != 0 {
            return Err(Error::Argument {
                op: "codelet".into(),
                msg: format!("operand {i} is not writable here (mode {:?})", b.mode),
            });
        }
        self.borrowed.set(self.borrowed.get() | (1 << i));
        // SAFETY: as in `r`, plus this task is the only one accessing a handle
        // it writes, and the borrow mask forbids a second view of it.
        let s: &'a mut CudaSlice<u8> = unsafe { &mut *b.slice };
        unsafe { s.transmute_mut::<T>(b.len) }
            .ok_or_else(|| cuda_err("operand smaller than its handle"))
    }
}

/// A GPU's stream as seen by the asynchronous worker.
pub(crate) struct DeviceStream(pub Arc<CudaDevice>);

impl super::async_worker::Stream for DeviceStream {
    type Event = CudaEvent;

    fn new_event(&self) -> Result<CudaEvent> {
        self.0.event()
    }

    // Each call binds this device's context first: dropping another GPU's
    // replica or copying from it on this thread makes that context current.
    fn record(&self, e: &CudaEvent) -> Result<()> {
        self.0.ctx.bind_to_thread().map_err(drv)?;
        e.record(&self.0.stream).map_err(drv)
    }

    fn query(&self, e: &CudaEvent) -> bool {
        let _ = make_current(&self.0.ctx);
        !matches!(e.try_is_complete(), Ok(false))
    }

    fn wait(&self, e: &CudaEvent) -> Result<()> {
        self.0.ctx.bind_to_thread().map_err(drv)?;
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
        self.0.ctx.bind_to_thread().map_err(drv)?;
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
                    slice,
                    len: h.len(),
                    dtype: h.dtype(),
                    mode: *mode,
                }
            })
            .collect();
        let bufs = DevBuffers {
            dev: &self.0,
            items: &items,
            borrowed: Cell::new(0),
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.body.codelet.cuda(&bufs)))
            .unwrap_or_else(|p| Err(super::worker::panic_error(&s.task.label(), p)))
    }
}
