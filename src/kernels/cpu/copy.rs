//! n-d block copies between row-major arrays: the kernel behind tile
//! scatter/gather, re-tiling and slicing.
//!
//! ```text
//! dst[dst_offset + j] = src[src_offset + j]   for every multi-index j < block
//! ```
//!
//! `src` has shape `src_shape`, `dst` has shape `dst_shape`; all five index
//! arrays share one rank, which may be 0 (one element). Dimensions whose block
//! covers whole rows on both sides are merged with their inner neighbour
//! (and unit dimensions dropped), so the innermost loop is one contiguous run
//! as long as possible, moved with `copy_from_slice` (or a vectorized cast).
//!
//! ```
//! use gpt2rs::kernels::cpu::copy::copy_block;
//! // The 2x2 block at (1, 1) of a 3x3 array into the corner of a 2x2 one.
//! let src = [0, 1, 2, 3, 4, 5, 6, 7, 8];
//! let mut dst = [0; 4];
//! copy_block(&src, &[3, 3], &[1, 1], &mut dst, &[2, 2], &[0, 0], &[2, 2]);
//! assert_eq!(dst, [4, 5, 7, 8]);
//! ```

use crate::dtype::Element;
use crate::kernels::cpu::elementwise::cast;

/// Copy the block of extent `block` at `src_offset` in `src` to `dst_offset`
/// in `dst` (see the module doc).
pub fn copy_block<T: Copy>(
    src: &[T],
    src_shape: &[usize],
    src_offset: &[usize],
    dst: &mut [T],
    dst_shape: &[usize],
    dst_offset: &[usize],
    block: &[usize],
) {
    for_each_run(
        src,
        src_shape,
        src_offset,
        dst,
        dst_shape,
        dst_offset,
        block,
        |s, d| d.copy_from_slice(s),
    );
}

/// [`copy_block`] with conversion from `S` to `D` (round to nearest-even).
pub fn cast_block<S: Element, D: Element>(
    src: &[S],
    src_shape: &[usize],
    src_offset: &[usize],
    dst: &mut [D],
    dst_shape: &[usize],
    dst_offset: &[usize],
    block: &[usize],
) {
    for_each_run(
        src,
        src_shape,
        src_offset,
        dst,
        dst_shape,
        dst_offset,
        block,
        |s, d| cast(s, d),
    );
}

/// One loop dimension after merging: extent and the strides on both sides.
#[derive(Clone, Copy)]
struct Dim {
    n: usize,
    src: usize,
    dst: usize,
}

/// Walks the block as contiguous runs and calls `run(src_run, dst_run)` on
/// each, in row-major order.
#[allow(clippy::too_many_arguments)]
fn for_each_run<S, D>(
    src: &[S],
    src_shape: &[usize],
    src_offset: &[usize],
    dst: &mut [D],
    dst_shape: &[usize],
    dst_offset: &[usize],
    block: &[usize],
    mut run: impl FnMut(&[S], &mut [D]),
) {
    let rank = block.len();
    debug_assert!(
        src_shape.len() == rank
            && src_offset.len() == rank
            && dst_shape.len() == rank
            && dst_offset.len() == rank
    );
    debug_assert_eq!(src.len(), src_shape.iter().product::<usize>());
    debug_assert_eq!(dst.len(), dst_shape.iter().product::<usize>());
    debug_assert!((0..rank)
        .all(|d| src_offset[d] + block[d] <= src_shape[d]
            && dst_offset[d] + block[d] <= dst_shape[d]));
    if block.contains(&0) {
        return;
    }

    // Row-major strides and the flat start offsets on both sides.
    let (mut src_start, mut dst_start) = (0, 0);
    let (mut src_stride, mut dst_stride) = (1, 1);
    // Dims innermost first; merged into their inner neighbour when the pair
    // is contiguous on both sides, dropped when of extent 1.
    let mut dims: Vec<Dim> = Vec::with_capacity(rank);
    for d in (0..rank).rev() {
        src_start += src_offset[d] * src_stride;
        dst_start += dst_offset[d] * dst_stride;
        let dim = Dim {
            n: block[d],
            src: src_stride,
            dst: dst_stride,
        };
        src_stride *= src_shape[d];
        dst_stride *= dst_shape[d];
        if dim.n == 1 {
            continue;
        }
        match dims.last_mut() {
            Some(last) if dim.src == last.n * last.src && dim.dst == last.n * last.dst => {
                last.n *= dim.n;
            }
            _ => dims.push(dim),
        }
    }
    // The innermost loop dim is contiguous on both sides (stride 1) when it is
    // the original last axis; otherwise runs are single elements.
    let inner = match dims.first() {
        Some(d) if d.src == 1 && d.dst == 1 => dims.remove(0).n,
        _ => 1,
    };
    // `dims` now holds the outer loops, innermost first: an odometer.
    let mut idx = vec![0usize; dims.len()];
    let (mut s, mut t) = (src_start, dst_start);
    loop {
        run(&src[s..s + inner], &mut dst[t..t + inner]);
        // Advance the odometer, innermost outer dim first.
        let mut d = 0;
        loop {
            if d == dims.len() {
                return;
            }
            idx[d] += 1;
            s += dims[d].src;
            t += dims[d].dst;
            if idx[d] < dims[d].n {
                break;
            }
            s -= dims[d].n * dims[d].src;
            t -= dims[d].n * dims[d].dst;
            idx[d] = 0;
            d += 1;
        }
    }
}
