//! Launch geometries: the functions the kernel tables name (`@ geometry(args)`),
//! shared by the cudarc launchers and the host emulator (`tools/cuda-emu`),
//! so both launch every kernel alike. Grids are 1-D, blocks 1-D or 2-D
//! (`sum_axis` only); no kernel uses dynamic shared memory.

use super::{ceil_div, ELEMENTWISE_BLOCK, MAX_GRID, ROW_BLOCK, WARP_SIZE};

/// A launch geometry: cudarc's, which the emulator launches by too.
pub type Geom = cudarc::driver::LaunchConfig;

/// `grid` blocks of `bx x by` threads, no dynamic shared memory.
fn dims(grid: u32, (bx, by): (u32, u32)) -> Geom {
    let (grid_dim, block_dim) = ((grid, 1, 1), (bx, by, 1));
    Geom {
        grid_dim,
        block_dim,
        shared_mem_bytes: 0,
    }
}

/// `grid` blocks of `block` threads, the grid capped to `1..=MAX_GRID` (for
/// the kernels that stride over the rest).
fn geom(grid: usize, block: u32) -> Geom {
    dims(grid.clamp(1, MAX_GRID as usize) as u32, (block, 1))
}

/// Threads per block of the column-strip kernels: a block owns one item (a
/// row block, a distinct id) and `COL_BLOCK` columns of it.
pub const COL_BLOCK: u32 = 128;

/// Rows per partial sum of the column reductions (their `rblk`): the CPU
/// kernels' `BLOCK`, so the partial sums are the CPU's.
pub const COL_ROW_BLOCK: usize = 256;

/// Thread rows per block of `sum_axis` (`AXIS_SPLIT` in reduce.cu).
pub const SUM_AXIS_SPLIT: u32 = 8;

/// Most partial sums of the two-pass reductions; fixed, so the partition
/// (and the rounding) depends on the tile size only, never on the device.
pub const REDUCE_PARTS: usize = 1024;

/// Block size of the attention_tc row kernels (one warp per row of scores).
pub const ATTN_TC_BLOCK: u32 = 256;

/// Grid-stride over `n` elements.
pub fn elementwise(n: usize) -> Geom {
    geom(ceil_div(n, ELEMENTWISE_BLOCK as usize), ELEMENTWISE_BLOCK)
}

/// One block per row; the grid must not be capped when the kernel takes
/// `blockIdx.x` as the row.
pub fn per_row(rows: usize) -> Geom {
    dims(rows.max(1) as u32, (ROW_BLOCK, 1))
}

/// One block per row, the kernels striding over the rows past the grid.
pub fn per_row_capped(rows: usize) -> Geom {
    geom(rows, ROW_BLOCK)
}

/// One thread (the sequential merge steps of the reductions).
pub fn single() -> Geom {
    geom(1, 1)
}

/// `items` x `ceil(cols / COL_BLOCK)` blocks of `COL_BLOCK` threads.
pub fn col_strips(items: usize, cols: usize) -> Geom {
    geom(items * ceil_div(cols, COL_BLOCK as usize), COL_BLOCK)
}

/// Partial sums of the two-pass reductions over `n` elements.
pub fn reduce_parts(n: usize) -> usize {
    ceil_div(n.max(1), ROW_BLOCK as usize).min(REDUCE_PARTS)
}

/// `sum_axis` for `inner > 1`: `WARP_SIZE x SUM_AXIS_SPLIT` blocks.
pub fn sum_axis(outer: usize, inner: usize) -> Geom {
    let blocks = outer * ceil_div(inner, WARP_SIZE as usize);
    let grid = blocks.min(MAX_GRID as usize) as u32;
    dims(grid, (WARP_SIZE, SUM_AXIS_SPLIT))
}

/// One warp per row in blocks of `block` threads (`ATTN_BLOCK`,
/// [`ATTN_TC_BLOCK`]), rows visited by a warp-stride loop.
pub fn warp_rows(rows: usize, block: u32) -> Geom {
    geom(ceil_div(rows, (block / WARP_SIZE) as usize), block)
}
