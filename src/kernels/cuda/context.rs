//! The kernels-level GPU context: one GPU's CUDA context, its stream, the
//! kernel modules loaded on it ([`CudaKernels`]) and its cuBLAS/cuBLASLt
//! handles. Launchers and BLAS calls take a [`Gpu`]; device memory as the
//! runtime manages it (replicas, staging, transfers) lives in
//! `runtime::cuda`, which holds one of these per GPU node.

use super::cuda_err;
use super::{compile_module, Module};
use crate::dtype::Element;
use crate::error::{Error, Result};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr,
};
use cudarc::nvrtc::Ptx;
use std::sync::{Arc, Mutex, OnceLock};

pub fn drv(e: cudarc::driver::DriverError) -> Error {
    cuda_err(format!("driver: {e}"))
}

/// The kernels of one device: its stream, its architecture, and each module
/// loaded once (cached by module index).
pub struct CudaKernels {
    stream: Arc<CudaStream>,
    arch: String,
    modules: Mutex<Vec<Option<Arc<CudaModule>>>>,
}

/// A storage dtype usable on the device (its accumulator too).
pub trait DevElement: Element<Acc: DeviceRepr> + DeviceRepr {}
impl<T: Element<Acc: DeviceRepr> + DeviceRepr> DevElement for T {}

impl CudaKernels {
    /// Kernels for the device of `stream`, compiled for its compute capability.
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let (major, minor) = stream.context().compute_capability().map_err(drv)?;
        Ok(Self {
            stream,
            arch: format!("sm_{major}{minor}"),
            modules: Mutex::new(vec![None; Module::ALL.len()]),
        })
    }

    /// The architecture the modules are compiled for.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The stream launches go to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The function `name` of `module`, compiling and loading the module once.
    pub fn func(&self, module: Module, name: &str) -> Result<CudaFunction> {
        let idx = Module::ALL.iter().position(|m| *m == module).unwrap_or(0);
        let mut mods = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if mods[idx].is_none() {
            let ptx = compile_module(module, &self.arch)?.ptx;
            let m = self
                .stream
                .context()
                .load_module(Ptx::from_src(ptx))
                .map_err(drv)?;
            mods[idx] = Some(m);
        }
        let m = mods[idx].as_ref().expect("loaded above");
        m.load_function(name)
            .map_err(|e| cuda_err(format!("kernel {name} in {}: {e}", module.file())))
    }

    /// `n` elements of scratch on the stream, not cleared (no memset), freed
    /// stream-ordered when dropped.
    ///
    /// # Safety
    /// The caller's first kernel writes every element before any kernel
    /// reads one.
    pub unsafe fn scratch<E: DeviceRepr>(&self, n: usize) -> Result<CudaSlice<E>> {
        // SAFETY: passed on to the caller (uninitialised device memory).
        unsafe { self.stream.alloc::<E>(n) }.map_err(drv)
    }
}

/// One GPU: its context, its stream, its kernels and BLAS handles.
pub struct Gpu {
    pub ordinal: usize,
    pub name: String,
    pub arch: String,
    pub total_mem: usize,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub kernels: CudaKernels,
    blas: OnceLock<std::result::Result<BlasHandle, String>>,
    blaslt: OnceLock<std::result::Result<BlasLtHandle, String>>,
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
    if super::driver_available().is_err() {
        return 0;
    }
    guard("counting devices", || {
        cudarc::driver::result::init().map_err(drv)?;
        CudaContext::device_count().map_err(drv)
    })
    .map(|n| n.max(0) as usize)
    .unwrap_or(0)
}

impl Gpu {
    /// Opens GPU `ordinal` (its primary context) with a stream of its own.
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>> {
        super::driver_available()?;
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
            Ok(Arc::new(Gpu {
                ordinal,
                name: ctx.name().map_err(drv)?,
                arch: format!("sm_{major}{minor}"),
                total_mem: ctx.total_mem().map_err(drv)?,
                ctx,
                stream,
                kernels,
                blas: OnceLock::new(),
                blaslt: OnceLock::new(),
            }))
        })
    }

    /// The same device and context with a stream of its own (and its own
    /// module cache and BLAS handles), for work that must overlap this
    /// one's: the communication worker's NCCL collectives.
    pub fn fork_stream(&self) -> Result<Arc<Gpu>> {
        self.ctx.bind_to_thread().map_err(drv)?;
        let stream = self.ctx.new_stream().map_err(drv)?;
        Ok(Arc::new(Gpu {
            ordinal: self.ordinal,
            name: self.name.clone(),
            arch: self.arch.clone(),
            total_mem: self.total_mem,
            ctx: self.ctx.clone(),
            kernels: CudaKernels::new(stream.clone())?,
            stream,
            blas: OnceLock::new(),
            blaslt: OnceLock::new(),
        }))
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

    /// A timing-capable event (for completion tracking and kernel times).
    pub fn event(&self) -> Result<CudaEvent> {
        self.ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(drv)
    }
}
