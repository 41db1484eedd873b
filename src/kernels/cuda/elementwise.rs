//! `cuda/elementwise.cu`: the CPU's kernels of the same names, on flat tiles.

use super::context::{DevElement, Gpu};
use crate::error::{shape_err, Result};
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr};

cuda_table! { cuda_table_elementwise($) Elementwise;
    /// `y = value`.
    fill<T>(n = y.len(), value: val f64, y: out T [n]) @ elementwise(n);
    /// `y = alpha * y`.
    scale<T>(n = y.len(), alpha: val f64, y: out T [n]) @ elementwise(n);
    /// `y = alpha * x + y`.
    axpy<T>(n = y.len(), alpha: val f64, x: in T [n], y: out T [n]) @ elementwise(n);
    /// `y = alpha * x + beta * y` (y not read when `beta == 0`).
    add<T>(n = y.len(), alpha: val f64, x: in T [n], beta: val f64, y: out T [n]) @ elementwise(n);
    /// `y = x` converted to `D`.
    cast<S, D> for pairs (n = y.len(), x: in S [n], y: out D [n]) @ elementwise(n);
    /// The block copy of the loop nest `d` (see [`copy_block`]).
    copy_block as copy_block_dims<S, D> for pairs (
        d: val BlockDims, total, x: in S [>= d.reach(total).0], y: out D [>= d.reach(total).1],
    ) @ elementwise(total);
}

/// Most dims of a block copy after merging (`COPY_MAX_DIMS` in elementwise.cu).
pub const COPY_MAX_DIMS: usize = 8;

/// `struct BlockDims` of elementwise.cu: the loop nest of one block copy,
/// innermost first, with dims contiguous on both sides merged, as on the CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockDims {
    pub ndim: u64,
    pub n: [u64; COPY_MAX_DIMS],
    pub src: [u64; COPY_MAX_DIMS],
    pub dst: [u64; COPY_MAX_DIMS],
    pub src_start: u64,
    pub dst_start: u64,
}

// SAFETY: `#[repr(C)]` plain 64-bit integers, the same layout as the CUDA
// struct; no pointers, no padding.
unsafe impl DeviceRepr for BlockDims {}

impl BlockDims {
    /// The loop nest and its element count (`None`: an empty block).
    pub fn new(
        src_shape: &[usize],
        src_offset: &[usize],
        dst_shape: &[usize],
        dst_offset: &[usize],
        block: &[usize],
    ) -> Result<Option<(BlockDims, usize)>> {
        let (rank, op) = (block.len(), "cuda.copy_block");
        let ranks = [src_shape, src_offset, dst_shape, dst_offset].map(<[usize]>::len);
        let fit = |shape: &[usize], off: &[usize]| (0..rank).all(|a| off[a] + block[a] <= shape[a]);
        if ranks != [rank; 4] || !fit(src_shape, src_offset) || !fit(dst_shape, dst_offset) {
            let msg = format!(
                "block {block:?} at {src_offset:?} of {src_shape:?} -> at {dst_offset:?} of \
                 {dst_shape:?} does not fit"
            );
            return Err(shape_err(op, msg));
        }
        if block.contains(&0) {
            return Ok(None);
        }
        let mut d = BlockDims::default();
        let (mut nd, mut total) = (0usize, 1usize);
        let (mut src_stride, mut dst_stride) = (1usize, 1usize);
        for a in (0..rank).rev() {
            d.src_start += (src_offset[a] * src_stride) as u64;
            d.dst_start += (dst_offset[a] * dst_stride) as u64;
            let (n, s, t) = (block[a], src_stride, dst_stride);
            src_stride *= src_shape[a];
            dst_stride *= dst_shape[a];
            total *= n;
            if n == 1 {
                continue;
            }
            // Contiguous with the inner neighbour on both sides: one dim.
            if nd > 0
                && s as u64 == d.n[nd - 1] * d.src[nd - 1]
                && t as u64 == d.n[nd - 1] * d.dst[nd - 1]
            {
                d.n[nd - 1] *= n as u64;
                continue;
            }
            if nd == COPY_MAX_DIMS {
                let msg = format!("block {block:?} needs more than {COPY_MAX_DIMS} loop dims");
                return Err(shape_err(op, msg));
            }
            (d.n[nd], d.src[nd], d.dst[nd]) = (n as u64, s as u64, t as u64);
            nd += 1;
        }
        d.ndim = nd as u64;
        Ok(Some((d, total)))
    }

    /// Elements of (source, destination) a copy of `total` elements reaches:
    /// one past the offsets of element `total - 1` (`copy_one` in elementwise.cu).
    pub fn reach(&self, total: usize) -> (usize, usize) {
        let Some(last) = total.checked_sub(1) else {
            return (0, 0);
        };
        let nd = self.ndim as usize;
        let (mut r, mut s, mut t) = (last as u64, self.src_start, self.dst_start);
        for k in 0..nd {
            let j = if k + 1 < nd { r % self.n[k] } else { r };
            s += j * self.src[k];
            t += j * self.dst[k];
            r /= self.n[k];
        }
        (s as usize + 1, t as usize + 1)
    }
}

/// `dst[dst_offset + j] = (D) src[src_offset + j]` for every `j < block`.
#[allow(clippy::too_many_arguments)]
pub fn copy_block<S: DevElement, D: DevElement>(
    gpu: &Gpu,
    src: &CudaView<S>,
    src_shape: &[usize],
    src_offset: &[usize],
    dst: &mut CudaViewMut<D>,
    dst_shape: &[usize],
    dst_offset: &[usize],
    block: &[usize],
) -> Result<()> {
    use super::table::check_len;
    let (ns, nd) = (src_shape.iter().product(), dst_shape.iter().product());
    check_len("copy_block", "src", ns, src.len(), false)?;
    check_len("copy_block", "dst", nd, dst.len(), false)?;
    match BlockDims::new(src_shape, src_offset, dst_shape, dst_offset, block)? {
        Some((dims, total)) => copy_block_dims::<S, D>(gpu, dims, total, src, dst),
        None => Ok(()),
    }
}
