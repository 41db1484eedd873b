//! NCCL, loaded at run time from a given file (`nvidia/nccl/lib/libnccl.so.2`
//! of the `nvidia-nccl-cu13` wheel; `gpt2rs.mpi.nccl_library_path()` finds
//! it), never linked: a typed table of the functions gpt2rs calls, each
//! symbol resolved as a `Result` so that an old or odd library is one error
//! line, not a panic (cudarc's loader tries no `.so.2` and panics on a
//! missing symbol, hence this table).
//!
//! The unique id (`ncclGetUniqueId`, 128 bytes) and the version need no GPU.
//! Communicators and collectives take raw device pointers, `cudaStream_t`s
//! and `ncclComm_t`s: they are `unsafe fn`s whose callers vouch for those,
//! and each is one checked call. Signatures: NCCL 2's `nccl.h`.

use crate::error::{Error, Result};
use libloading::Library;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::Path;

/// `ncclComm_t`: an opaque communicator handle.
pub type RawComm = *mut c_void;
/// `cudaStream_t`: a CUDA stream handle (null is the legacy default stream).
pub type RawStream = *mut c_void;

/// `ncclUniqueId`: what rank 0 creates and every rank passes to
/// `ncclCommInitRank` (broadcast over MPI, or through a shared file).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UniqueId {
    pub internal: [u8; UNIQUE_ID_BYTES],
}

/// `NCCL_UNIQUE_ID_BYTES`.
pub const UNIQUE_ID_BYTES: usize = 128;

impl UniqueId {
    pub fn from_bytes(b: &[u8]) -> Result<UniqueId> {
        let internal = b.try_into().map_err(|_| Error::Argument {
            op: "nccl".into(),
            msg: format!("a unique id has {UNIQUE_ID_BYTES} bytes, got {}", b.len()),
        })?;
        Ok(UniqueId { internal })
    }
}

/// `ncclDataType_t`, the values gpt2rs uses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    Uint8 = 1,
    Float16 = 6,
    Float32 = 7,
    Float64 = 8,
    Bfloat16 = 9,
}

/// `ncclRedOp_t`, the built-in operation gpt2rs uses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedOp {
    Sum = 0,
}

/// `ncclResult_t`: 0 is `ncclSuccess`.
type NcclResult = c_int;

/// `ncclAllReduce` and `ncclReduceScatter` (send, recv, count, type, op,
/// comm, stream).
type ReduceFn = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    DataType,
    RedOp,
    RawComm,
    RawStream,
) -> NcclResult;

struct Table {
    get_version: unsafe extern "C" fn(*mut c_int) -> NcclResult,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> NcclResult,
    comm_init_rank: unsafe extern "C" fn(*mut RawComm, c_int, UniqueId, c_int) -> NcclResult,
    comm_abort: unsafe extern "C" fn(RawComm) -> NcclResult,
    comm_destroy: unsafe extern "C" fn(RawComm) -> NcclResult,
    comm_get_async_error: unsafe extern "C" fn(RawComm, *mut NcclResult) -> NcclResult,
    get_error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
    all_reduce: ReduceFn,
    reduce_scatter: ReduceFn,
    all_gather: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        DataType,
        RawComm,
        RawStream,
    ) -> NcclResult,
    #[allow(clippy::type_complexity)] // ncclReduce's own signature
    reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        DataType,
        RedOp,
        c_int,
        RawComm,
        RawStream,
    ) -> NcclResult,
    #[allow(clippy::type_complexity)] // ncclBroadcast's own signature
    broadcast: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        DataType,
        c_int,
        RawComm,
        RawStream,
    ) -> NcclResult,
    group_start: unsafe extern "C" fn() -> NcclResult,
    group_end: unsafe extern "C" fn() -> NcclResult,
}

/// An NCCL library and its function table.
pub struct Nccl {
    f: Table,
    path: String,
    _lib: Library,
}

impl Nccl {
    /// Loads NCCL from `path` and resolves every function gpt2rs calls.
    pub fn open(path: &Path) -> Result<Nccl> {
        let shown = path.display().to_string();
        // SAFETY: NCCL's initialisers only set up its own state; loading it
        // needs no GPU (it opens libcuda lazily).
        let lib = unsafe { Library::new(path) }
            .map_err(|e| Error::Io(format!("NCCL: cannot load {shown}: {e}")))?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the field's type is the function's signature in
                // NCCL 2's nccl.h.
                *unsafe { lib.get($name) }
                    .map_err(|e| Error::Io(format!("NCCL: {shown} lacks {} ({e})", $name)))?
            };
        }
        let f = Table {
            get_version: sym!("ncclGetVersion"),
            get_unique_id: sym!("ncclGetUniqueId"),
            comm_init_rank: sym!("ncclCommInitRank"),
            comm_abort: sym!("ncclCommAbort"),
            comm_destroy: sym!("ncclCommDestroy"),
            comm_get_async_error: sym!("ncclCommGetAsyncError"),
            get_error_string: sym!("ncclGetErrorString"),
            all_reduce: sym!("ncclAllReduce"),
            reduce_scatter: sym!("ncclReduceScatter"),
            all_gather: sym!("ncclAllGather"),
            reduce: sym!("ncclReduce"),
            broadcast: sym!("ncclBroadcast"),
            group_start: sym!("ncclGroupStart"),
            group_end: sym!("ncclGroupEnd"),
        };
        Ok(Nccl {
            f,
            path: shown,
            _lib: lib,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn check(&self, op: &str, rc: NcclResult) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        Err(Error::Io(format!(
            "NCCL: {op} failed with error {rc}: {}",
            self.error_string(rc)
        )))
    }

    /// `ncclGetErrorString`.
    pub fn error_string(&self, rc: c_int) -> String {
        // SAFETY: NCCL returns a static string (or null) for any code.
        let s = unsafe { (self.f.get_error_string)(rc) };
        if s.is_null() {
            return "unknown error".into();
        }
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    }

    /// `ncclGetVersion`: major × 10000 + minor × 100 + patch (2.32.6 is 23206).
    pub fn version(&self) -> Result<i32> {
        let mut v: c_int = 0;
        // SAFETY: writes one int.
        self.check("ncclGetVersion", unsafe { (self.f.get_version)(&mut v) })?;
        Ok(v)
    }

    /// `ncclGetUniqueId` (on one rank, which sends it to the others).
    pub fn unique_id(&self) -> Result<UniqueId> {
        let mut id = UniqueId {
            internal: [0; UNIQUE_ID_BYTES],
        };
        // SAFETY: writes one ncclUniqueId.
        self.check("ncclGetUniqueId", unsafe {
            (self.f.get_unique_id)(&mut id)
        })?;
        Ok(id)
    }

    /// `ncclCommInitRank`: collective over the `nranks` ranks sharing `id`,
    /// on the current CUDA device.
    pub fn comm_init_rank(&self, nranks: usize, id: &UniqueId, rank: usize) -> Result<RawComm> {
        let (n, r) = (
            ints("ncclCommInitRank", nranks)?,
            ints("ncclCommInitRank", rank)?,
        );
        let mut comm: RawComm = std::ptr::null_mut();
        // SAFETY: writes one handle; `id` is passed by value.
        self.check("ncclCommInitRank", unsafe {
            (self.f.comm_init_rank)(&mut comm, n, *id, r)
        })?;
        Ok(comm)
    }

    /// `ncclCommDestroy` (after the communicator's work is done).
    ///
    /// # Safety
    /// `comm` came from [`Nccl::comm_init_rank`] and is used no more.
    pub unsafe fn comm_destroy(&self, comm: RawComm) -> Result<()> {
        self.check("ncclCommDestroy", (self.f.comm_destroy)(comm))
    }

    /// `ncclCommAbort`: frees the communicator, ending its pending work.
    ///
    /// # Safety
    /// As [`Nccl::comm_destroy`].
    pub unsafe fn comm_abort(&self, comm: RawComm) -> Result<()> {
        self.check("ncclCommAbort", (self.f.comm_abort)(comm))
    }

    /// `ncclCommGetAsyncError`: an error if the communicator has one
    /// (a peer failed, a network error); `ncclInProgress` counts as none.
    ///
    /// # Safety
    /// `comm` is a live communicator.
    pub unsafe fn comm_async_error(&self, comm: RawComm) -> Result<()> {
        let mut e: NcclResult = 0;
        self.check(
            "ncclCommGetAsyncError",
            (self.f.comm_get_async_error)(comm, &mut e),
        )?;
        const IN_PROGRESS: NcclResult = 7;
        match e {
            0 | IN_PROGRESS => Ok(()),
            e => self.check("the communicator (asynchronous error)", e),
        }
    }

    /// `ncclAllReduce` of `count` elements, enqueued on `stream`.
    ///
    /// # Safety
    /// `send` and `recv` are device buffers of `count` elements of `dtype`
    /// on the communicator's device, valid until `stream` reaches this work.
    #[allow(clippy::too_many_arguments)] // ncclAllReduce's own arguments
    pub unsafe fn all_reduce(
        &self,
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        dtype: DataType,
        op: RedOp,
        comm: RawComm,
        stream: RawStream,
    ) -> Result<()> {
        let rc = (self.f.all_reduce)(send, recv, count, dtype, op, comm, stream);
        self.check("ncclAllReduce", rc)
    }

    /// `ncclReduceScatter`: rank i gets block i (`recv_count` elements) of
    /// the reduction of every rank's `send` (nranks × `recv_count`).
    ///
    /// # Safety
    /// As [`Nccl::all_reduce`], with those sizes.
    #[allow(clippy::too_many_arguments)] // ncclReduceScatter's own arguments
    pub unsafe fn reduce_scatter(
        &self,
        send: *const c_void,
        recv: *mut c_void,
        recv_count: usize,
        dtype: DataType,
        op: RedOp,
        comm: RawComm,
        stream: RawStream,
    ) -> Result<()> {
        let rc = (self.f.reduce_scatter)(send, recv, recv_count, dtype, op, comm, stream);
        self.check("ncclReduceScatter", rc)
    }

    /// `ncclAllGather`: `recv` (nranks × `send_count` elements) gets every
    /// rank's `send`, in rank order.
    ///
    /// # Safety
    /// As [`Nccl::all_reduce`], with those sizes.
    pub unsafe fn all_gather(
        &self,
        send: *const c_void,
        recv: *mut c_void,
        send_count: usize,
        dtype: DataType,
        comm: RawComm,
        stream: RawStream,
    ) -> Result<()> {
        let rc = (self.f.all_gather)(send, recv, send_count, dtype, comm, stream);
        self.check("ncclAllGather", rc)
    }

    /// `ncclReduce` of `count` elements to rank `root` (whose `recv` gets
    /// the sum; the other ranks' `recv` is not written).
    ///
    /// # Safety
    /// As [`Nccl::all_reduce`].
    #[allow(clippy::too_many_arguments)] // ncclReduce's own arguments
    pub unsafe fn reduce(
        &self,
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        dtype: DataType,
        op: RedOp,
        root: usize,
        comm: RawComm,
        stream: RawStream,
    ) -> Result<()> {
        let root = ints("ncclReduce", root)?;
        let rc = (self.f.reduce)(send, recv, count, dtype, op, root, comm, stream);
        self.check("ncclReduce", rc)
    }

    /// `ncclBroadcast` of `count` elements from rank `root`.
    ///
    /// # Safety
    /// As [`Nccl::all_reduce`].
    #[allow(clippy::too_many_arguments)] // ncclBroadcast's own arguments
    pub unsafe fn broadcast(
        &self,
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        dtype: DataType,
        root: usize,
        comm: RawComm,
        stream: RawStream,
    ) -> Result<()> {
        let root = ints("ncclBroadcast", root)?;
        let rc = (self.f.broadcast)(send, recv, count, dtype, root, comm, stream);
        self.check("ncclBroadcast", rc)
    }

    /// `ncclGroupStart`: the collectives until [`Nccl::group_end`] are
    /// issued as one.
    pub fn group_start(&self) -> Result<()> {
        // SAFETY: no arguments; only NCCL's thread-local group state moves.
        self.check("ncclGroupStart", unsafe { (self.f.group_start)() })
    }

    /// `ncclGroupEnd`.
    pub fn group_end(&self) -> Result<()> {
        // SAFETY: as group_start.
        self.check("ncclGroupEnd", unsafe { (self.f.group_end)() })
    }
}

fn ints(op: &str, v: usize) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| Error::Argument {
        op: op.into(),
        msg: format!("{v} does not fit NCCL's int"),
    })
}

/// "2.32.6" for 23206 (the encoding of NCCL 2.9 and later).
/// One all-reduce (sum) of `values` through a real NCCL communicator of
/// `nranks` ranks sharing `id`, as rank `rank`, on `gpu`'s stream: the
/// first-contact probe of the GPU path (`tests/gpu/test_gpu_nccl.py`), run
/// with the id broadcast over MPI. Returns the reduced values.
pub fn all_reduce_probe(
    nccl: &Nccl,
    gpu: &crate::kernels::cuda::context::Gpu,
    nranks: usize,
    rank: usize,
    id: &UniqueId,
    values: &[f32],
) -> Result<Vec<f32>> {
    use crate::kernels::cuda::cuda_err;
    use cudarc::driver::DevicePtrMut;
    let drv = |e: cudarc::driver::DriverError| cuda_err(e.to_string());
    crate::kernels::cuda::context::make_current(&gpu.ctx)?;
    let comm = nccl.comm_init_rank(nranks, id, rank)?;
    let stream = &gpu.stream;
    let run = || -> Result<Vec<f32>> {
        let mut buf = stream.clone_htod(values).map_err(drv)?;
        {
            let (ptr, _written) = buf.device_ptr_mut(stream);
            let p = ptr as *mut c_void;
            // SAFETY: `buf` holds values.len() f32 on this communicator's
            // device and lives until the stream is synchronised below.
            unsafe {
                nccl.all_reduce(
                    p,
                    p,
                    values.len(),
                    DataType::Float32,
                    RedOp::Sum,
                    comm,
                    stream.cu_stream() as RawStream,
                )?
            };
        }
        stream.synchronize().map_err(drv)?;
        // SAFETY: a live communicator.
        unsafe { nccl.comm_async_error(comm)? };
        stream.clone_dtoh(&buf).map_err(drv)
    };
    let out = run();
    // SAFETY: `comm` came from comm_init_rank and its work is done (or failed).
    let end = unsafe {
        if out.is_ok() {
            nccl.comm_destroy(comm)
        } else {
            nccl.comm_abort(comm)
        }
    };
    let out = out?;
    end?;
    Ok(out)
}

pub fn version_string(code: i32) -> String {
    format!("{}.{}.{}", code / 10000, code / 100 % 100, code % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_and_unique_id_shapes() {
        assert_eq!(version_string(23206), "2.32.6");
        assert_eq!(std::mem::size_of::<UniqueId>(), 128);
        assert!(UniqueId::from_bytes(&[0; 127]).is_err());
        assert_eq!(UniqueId::from_bytes(&[5; 128]).unwrap().internal[127], 5);
        assert!(Nccl::open(Path::new("/nonexistent/libnccl.so.2")).is_err());
    }
}
