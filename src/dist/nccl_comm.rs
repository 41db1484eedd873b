//! A live NCCL communicator on one GPU, for the data-parallel collectives on
//! device memory (`collective::Collective::cuda`, enqueued on the
//! communication worker's stream). It is made collectively: rank 0's unique
//! id goes to the others over the host transport (MPI), then every rank
//! calls `ncclCommInitRank` on its GPU. Dropping it destroys it, or aborts
//! it once a call has failed (a peer may be gone: destroying would wait).

use super::nccl::{DataType, Nccl, RawComm, RawStream, RedOp, UniqueId, UNIQUE_ID_BYTES};
use super::Communicator;
use crate::dtype::DType;
use crate::error::Result;
use crate::kernels::cuda::context::{make_current, Gpu};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct NcclComm {
    nccl: Arc<Nccl>,
    raw: RawComm,
    rank: usize,
    size: usize,
    gpu: Arc<Gpu>,
    failed: AtomicBool,
}

// SAFETY: an ncclComm_t may be used from any thread, one call at a time.
// Once made, its one user is the communication worker (collectives are
// issued by that single thread, in submission order); it is destroyed by
// whichever thread drops the last reference, when no task holds it.
unsafe impl Send for NcclComm {}
unsafe impl Sync for NcclComm {}

/// One NCCL call of a bucket: sum over every rank (`root` None), sum to
/// `root`, or `root`'s copy to every rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    AllReduce,
    Reduce { root: usize },
    Broadcast { root: usize },
}

impl NcclComm {
    /// The communicator of the ranks of `host` on `gpu`, NCCL's id sent
    /// from rank 0 over `host`. Collective over `host`.
    pub fn init(nccl: Arc<Nccl>, gpu: Arc<Gpu>, host: &dyn Communicator) -> Result<NcclComm> {
        let mut id = [0u8; UNIQUE_ID_BYTES];
        if host.rank() == 0 {
            id = nccl.unique_id()?.internal;
        }
        host.broadcast(&mut id, 0)?;
        Self::with_id(
            nccl,
            gpu,
            host.size(),
            host.rank(),
            &UniqueId::from_bytes(&id)?,
        )
    }

    /// `ncclCommInitRank` on `gpu` with an id every rank already has.
    pub fn with_id(
        nccl: Arc<Nccl>,
        gpu: Arc<Gpu>,
        size: usize,
        rank: usize,
        id: &UniqueId,
    ) -> Result<NcclComm> {
        make_current(&gpu.ctx)?;
        let raw = nccl.comm_init_rank(size, id, rank)?;
        Ok(NcclComm {
            nccl,
            raw,
            rank,
            size,
            gpu,
            failed: AtomicBool::new(false),
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn size(&self) -> usize {
        self.size
    }
    /// The GPU the communicator was made on (the context its calls need).
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Enqueues `calls` on `stream` as one NCCL group, each in place on
    /// its buffer (`(device pointer, element count)`) of `dtype`.
    ///
    /// # Safety
    /// Every pointer is a device buffer of at least its count of `dtype` on
    /// this communicator's GPU, valid until `stream` reaches this work;
    /// `stream` belongs to that GPU.
    pub unsafe fn group(
        &self,
        calls: &[(Call, *mut c_void, usize)],
        dtype: DType,
        stream: RawStream,
    ) -> Result<()> {
        let t = match dtype {
            DType::F32 => DataType::Float32,
            DType::F64 => DataType::Float64,
            DType::BF16 => DataType::Bfloat16,
            DType::F16 => DataType::Float16,
        };
        let n = &self.nccl;
        let res = n.group_start().and_then(|()| {
            let mut first_err = Ok(());
            for &(call, p, count) in calls {
                // SAFETY: the caller vouches for the buffers and the stream.
                let r = match call {
                    Call::AllReduce => n.all_reduce(p, p, count, t, RedOp::Sum, self.raw, stream),
                    Call::Reduce { root } => {
                        n.reduce(p, p, count, t, RedOp::Sum, root, self.raw, stream)
                    }
                    Call::Broadcast { root } => n.broadcast(p, p, count, t, root, self.raw, stream),
                };
                if first_err.is_ok() {
                    first_err = r;
                }
            }
            // The group is closed even after a failed call, so NCCL's
            // thread-local group state does not leak into the next task.
            let end = n.group_end();
            first_err.and(end)
        });
        if res.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        res
    }

    /// An error if the communicator has one pending (a peer failed).
    pub fn async_error(&self) -> Result<()> {
        // SAFETY: a live communicator.
        let r = unsafe { self.nccl.comm_async_error(self.raw) };
        if r.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        r
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        let _ = make_current(&self.gpu.ctx);
        // SAFETY: made by comm_init_rank, ended once, and no task holds it
        // (each holds an Arc).
        let _ = unsafe {
            if self.failed.load(Ordering::Acquire) {
                self.nccl.comm_abort(self.raw)
            } else {
                self.nccl.comm_destroy(self.raw)
            }
        };
    }
}
