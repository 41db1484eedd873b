//! Codelets: a named op with one implementation per worker kind and a cost
//! model, and the operand views each implementation receives: host slices
//! ([`Buffers`]) for the CPU, typed device views ([`DevBuffers`]) for a GPU.

use super::cuda::GpuNode;
use super::handle::Access;
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::kernels::cuda::context::Gpu;
use crate::kernels::cuda::cuda_err;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr};
use std::cell::Cell;

/// Which worker kinds may run a task (bit mask).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Where(pub u8);

impl Where {
    pub const CPU: Where = Where(1);
    pub const SIM: Where = Where(2);
    pub const CUDA: Where = Where(4);
    /// The communication worker: collectives, issued in submission order.
    pub const COMM: Where = Where(8);
    /// Every worker that runs the CPU implementation (CPU cores and the simulated device).
    pub const ANY_CPU: Where = Where(3);
    /// Every computing worker kind: for codelets with a CUDA implementation too.
    pub const ANY: Where = Where(7);
    pub fn contains(self, o: Where) -> bool {
        self.0 & o.0 == o.0
    }
    pub fn and(self, o: Where) -> Where {
        Where(self.0 & o.0)
    }
}

/// A named op and its implementations. Implementors carry the task's scalar
/// arguments (shapes, alpha, beta) as fields.
pub trait Codelet: Send + Sync {
    fn name(&self) -> &'static str;
    /// Floating-point operations, for statistics and the scheduler.
    fn flops(&self) -> f64 {
        0.0
    }
    /// Shape parameters that set the cost (combined with operand sizes to key
    /// the performance model).
    fn footprint(&self) -> u64 {
        0
    }
    fn where_(&self) -> Where {
        Where::ANY_CPU
    }
    /// Bytes a collective sends plus receives (for the network's statistics).
    fn wire_bytes(&self) -> u64 {
        0
    }
    /// The CPU implementation, run on host-memory replicas.
    fn cpu(&self, bufs: &Buffers) -> Result<()>;
    /// The CUDA implementation: enqueues the work on the device's stream and
    /// returns without waiting for it (the worker tracks completion with an
    /// event). Only called when `where_` includes [`Where::CUDA`].
    fn cuda(&self, bufs: &DevBuffers) -> Result<()> {
        let _ = bufs;
        Err(Error::Argument {
            op: self.name().into(),
            msg: "this codelet has no CUDA implementation".into(),
        })
    }
}

/// One operand of a running task: where its replica is (`P`: a host
/// pointer, or the device slice), its length, dtype and access mode.
pub(crate) struct Operand<P> {
    pub ptr: P,
    pub len: usize,
    pub dtype: DType,
    pub mode: Access,
}

pub(crate) type BufRef = Operand<*mut u8>;
pub(crate) type DevRef = Operand<*mut CudaSlice<u8>>;

/// The checks both operand views make: index and dtype, and that an operand
/// borrowed for writing is not handed out again.
pub(crate) struct Operands<'a, P> {
    items: &'a [Operand<P>],
    borrowed: Cell<u64>,
}

impl<'a, P> Operands<'a, P> {
    pub(crate) fn new(items: &'a [Operand<P>]) -> Self {
        Operands {
            items,
            borrowed: Cell::new(0),
        }
    }

    fn get<T: Element>(&self, i: usize) -> Result<&'a Operand<P>> {
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

    /// Operand `i` as `T`, to read.
    fn read<T: Element>(&self, i: usize) -> Result<&'a Operand<P>> {
        let b = self.get::<T>(i)?;
        if self.borrowed.get() & (1 << i) != 0 {
            return Err(Error::Argument {
                op: "codelet".into(),
                msg: format!("operand {i} is borrowed for writing"),
            });
        }
        Ok(b)
    }

    /// Operand `i` as `T`, to write (mode W, RW or ACC), once.
    fn write<T: Element>(&self, i: usize) -> Result<&'a Operand<P>> {
        let b = self.get::<T>(i)?;
        if !b.mode.writes() || self.borrowed.get() & (1 << i) != 0 {
            return Err(Error::Argument {
                op: "codelet".into(),
                msg: format!("operand {i} is not writable here (mode {:?})", b.mode),
            });
        }
        self.borrowed.set(self.borrowed.get() | (1 << i));
        Ok(b)
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn dtype(&self, i: usize) -> DType {
        self.items[i].dtype
    }
}

/// The operands of a running task, in the order they were submitted.
pub struct Buffers<'a>(pub(crate) Operands<'a, *mut u8>);

impl<'a> Buffers<'a> {
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
    pub fn dtype(&self, i: usize) -> DType {
        self.0.dtype(i)
    }

    /// Operand `i` for reading.
    pub fn r<T: Element>(&self, i: usize) -> Result<&'a [T]> {
        let b = self.0.read::<T>(i)?;
        // SAFETY: the replica is pinned for the task's duration, and no task
        // writes it concurrently (sequential consistency per handle).
        Ok(unsafe { std::slice::from_raw_parts(b.ptr as *const T, b.len) })
    }

    /// Operand `i` for writing (its access mode must be W, RW or ACC).
    #[allow(clippy::mut_from_ref)]
    pub fn w<T: Element>(&self, i: usize) -> Result<&'a mut [T]> {
        let b = self.0.write::<T>(i)?;
        // SAFETY: as in `r`, plus this task is the only one accessing a handle
        // it writes, the same handle never appears twice in a task that writes
        // it, and the borrow mask forbids a second &mut of this operand.
        Ok(unsafe { std::slice::from_raw_parts_mut(b.ptr as *mut T, b.len) })
    }
}

/// A codelet from a closure: the op layer's usual way to submit a task whose
/// arguments are captured values.
pub struct FnCodelet<F> {
    name: &'static str,
    flops: f64,
    footprint: u64,
    f: F,
}

impl<F: Fn(&Buffers) -> Result<()> + Send + Sync> Codelet for FnCodelet<F> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn flops(&self) -> f64 {
        self.flops
    }
    fn footprint(&self) -> u64 {
        self.footprint
    }
    fn cpu(&self, bufs: &Buffers) -> Result<()> {
        (self.f)(bufs)
    }
}

/// Boxes `f` as a codelet named `name` costing `flops`, keyed by `footprint`.
pub fn codelet<F>(name: &'static str, flops: f64, footprint: u64, f: F) -> Box<dyn Codelet>
where
    F: Fn(&Buffers) -> Result<()> + Send + Sync + 'static,
{
    Box::new(FnCodelet {
        name,
        flops,
        footprint,
        f,
    })
}

/// The operands of a task running on a GPU, in submission order, as typed
/// device views. Mirrors [`Buffers`].
pub struct DevBuffers<'a> {
    pub(crate) node: &'a GpuNode,
    pub(crate) ops: Operands<'a, *mut CudaSlice<u8>>,
}

impl<'a> DevBuffers<'a> {
    /// The GPU (context, stream, kernels, BLAS handles).
    pub fn gpu(&self) -> &'a Gpu {
        &self.node.gpu
    }
    /// A new device buffer holding `src` (index lists a codelet uploads;
    /// asynchronous, `src` may be dropped on return).
    pub fn upload(&self, src: &[u8]) -> Result<CudaSlice<u8>> {
        self.node.upload(src)
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ops.len() == 0
    }
    pub fn dtype(&self, i: usize) -> DType {
        self.ops.dtype(i)
    }

    /// Operand `i` for reading.
    pub fn r<T: Element + DeviceRepr>(&self, i: usize) -> Result<CudaView<'a, T>> {
        let b = self.ops.read::<T>(i)?;
        // SAFETY: the replica is pinned (it neither moves nor is freed) for
        // the task's duration and nobody writes it concurrently; its byte
        // size is len * size_of::<T>() (at least).
        let s: &'a CudaSlice<u8> = unsafe { &*b.ptr };
        unsafe { s.transmute::<T>(b.len) }
            .ok_or_else(|| cuda_err("operand smaller than its handle"))
    }

    /// Operand `i` for writing (its access mode must be W, RW or ACC).
    pub fn w<T: Element + DeviceRepr>(&self, i: usize) -> Result<CudaViewMut<'a, T>> {
        let b = self.ops.write::<T>(i)?;
        // SAFETY: as in `r`, plus this task is the only one accessing a handle
        // it writes, and the borrow mask forbids a second view of it.
        let s: &'a mut CudaSlice<u8> = unsafe { &mut *b.ptr };
        unsafe { s.transmute_mut::<T>(b.len) }
            .ok_or_else(|| cuda_err("operand smaller than its handle"))
    }
}
