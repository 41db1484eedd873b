//! Copy of a box of one tensor into a box of another: the two tensors may
//! differ in shape and tiling, only the box extent is shared (the KV cache
//! writes the keys and values of new positions into rows `len..len + n`).
//!
//! ```text
//! dst[dst_off + j] = src[src_off + j]   for every multi-index j < extent
//! ```
//!
//! Each destination tile the box touches is one task (or a few, when many
//! source tiles overlap it) reading the source tiles it needs. A destination
//! tile wholly inside the box is written (W); one only partly inside keeps
//! its other elements (RW). Every dtype runs on the CPU and on CUDA (one
//! `copy_block_*` launch per source piece).

use super::footprint;
use crate::error::{arg_err, shape_err, Result};
use crate::kernels::cpu::copy::copy_block;
use crate::kernels::cuda::elementwise::COPY_MAX_DIMS;
use crate::runtime::DevBuffers;
use crate::runtime::{Access, Buffers, Codelet, DataHandle, Where};
use crate::tensor::{for_each_index, Tensor};
use crate::{with_dtype, DType};
use std::sync::Arc;

/// Source tiles per task at most (a task takes at most 64 operands).
const MAX_SOURCES: usize = 32;

/// One block copy: from a source tile (its shape, the block's offset in it)
/// to the destination tile (the block's offset in it), of extent `block`.
struct Piece {
    src_shape: Vec<usize>,
    src_off: Vec<usize>,
    dst_off: Vec<usize>,
    block: Vec<usize>,
}

/// The pieces of one task: operands `0..n` are the source tiles, operand
/// `n` the destination tile (of shape `tshape`).
struct RegionCl {
    dtype: DType,
    tshape: Arc<Vec<usize>>,
    pieces: Vec<Piece>,
    numel: usize,
}

impl Codelet for RegionCl {
    fn name(&self) -> &'static str {
        "copy_region"
    }
    fn footprint(&self) -> u64 {
        footprint(&[self.pieces.len() as u64, self.numel as u64])
    }
    fn where_(&self) -> Where {
        if self.tshape.len() <= COPY_MAX_DIMS {
            Where::ANY
        } else {
            Where::ANY_CPU
        }
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        let n = self.pieces.len();
        with_dtype!(self.dtype, T, {
            let out = b.w::<T>(n)?;
            for (i, p) in self.pieces.iter().enumerate() {
                copy_block(
                    b.r::<T>(i)?,
                    &p.src_shape,
                    &p.src_off,
                    out,
                    &self.tshape,
                    &p.dst_off,
                    &p.block,
                );
            }
        });
        Ok(())
    }
    fn cuda(&self, b: &DevBuffers) -> Result<()> {
        let n = self.pieces.len();
        with_dtype!(self.dtype, T, {
            let mut out = b.w::<T>(n)?;
            for (i, p) in self.pieces.iter().enumerate() {
                crate::kernels::cuda::elementwise::copy_block::<T, T>(
                    b.gpu(),
                    &b.r(i)?,
                    &p.src_shape,
                    &p.src_off,
                    &mut out,
                    &self.tshape,
                    &p.dst_off,
                    &p.block,
                )?;
            }
        });
        Ok(())
    }
}

fn check(
    src: &Tensor,
    src_off: &[usize],
    dst: &Tensor,
    dst_off: &[usize],
    extent: &[usize],
) -> Result<()> {
    let op = "copy_region";
    if !src.runtime().same(dst.runtime()) {
        return Err(arg_err(op, "tensors belong to different runtimes"));
    }
    if src.dtype != dst.dtype {
        return Err(crate::error::Error::DType {
            op: op.into(),
            expected: dst.dtype,
            got: src.dtype,
        });
    }
    let nd = extent.len();
    let fits = |t: &Tensor, off: &[usize]| {
        t.ndim() == nd && off.len() == nd && (0..nd).all(|a| off[a] + extent[a] <= t.grid.shape[a])
    };
    if !fits(src, src_off) || !fits(dst, dst_off) {
        return Err(shape_err(
            op,
            format!(
                "box of extent {extent:?} at {src_off:?} in {:?} -> at {dst_off:?} in {:?} \
                 does not fit",
                src.grid.shape, dst.grid.shape
            ),
        ));
    }
    Ok(())
}

/// `dst[dst_off .. dst_off + extent] = src[src_off .. src_off + extent]`
/// (same dtype; any tilings). An empty box submits nothing.
pub fn copy_region(
    src: &Tensor,
    src_off: &[usize],
    dst: &Tensor,
    dst_off: &[usize],
    extent: &[usize],
) -> Result<()> {
    check(src, src_off, dst, dst_off, extent)?;
    if extent.contains(&0) {
        return Ok(());
    }
    let dg = &dst.grid;
    let nd = extent.len();
    let dt = dst.dtype;
    // Destination tiles the box touches.
    let dranges: Vec<_> = (0..nd)
        .map(|a| dg.tiles_overlapping(a, dst_off[a], dst_off[a] + extent[a]))
        .collect();
    let dext: Vec<usize> = dranges.iter().map(|r| r.len()).collect();
    let mut result = Ok(());
    for_each_index(&dext, |rel| {
        if result.is_err() {
            return;
        }
        let dc: Vec<usize> = (0..nd).map(|a| dranges[a].start + rel[a]).collect();
        result = copy_into_tile(src, src_off, dst, dst_off, extent, &dc, dt);
    });
    result
}

/// The tasks writing destination tile `dc`: its part of the box, gathered
/// from the source tiles that hold it.
fn copy_into_tile(
    src: &Tensor,
    src_off: &[usize],
    dst: &Tensor,
    dst_off: &[usize],
    extent: &[usize],
    dc: &[usize],
    dt: crate::DType,
) -> Result<()> {
    let (sg, dg) = (&src.grid, &dst.grid);
    let nd = extent.len();
    let toff = dg.tile_offset(dc);
    let tshape = dg.tile_shape(dc);
    // The box inside this destination tile, in destination coordinates.
    let lo: Vec<usize> = (0..nd).map(|a| toff[a].max(dst_off[a])).collect();
    let hi: Vec<usize> = (0..nd)
        .map(|a| (toff[a] + tshape[a]).min(dst_off[a] + extent[a]))
        .collect();
    let whole = (0..nd).all(|a| lo[a] == toff[a] && hi[a] == toff[a] + tshape[a]);
    // The same block in source coordinates, and the source tiles over it.
    let slo: Vec<usize> = (0..nd).map(|a| lo[a] - dst_off[a] + src_off[a]).collect();
    let shi: Vec<usize> = (0..nd).map(|a| hi[a] - dst_off[a] + src_off[a]).collect();
    let sranges: Vec<_> = (0..nd)
        .map(|a| sg.tiles_overlapping(a, slo[a], shi[a]))
        .collect();
    let sext: Vec<usize> = sranges.iter().map(|r| r.len()).collect();
    let mut sources: Vec<(DataHandle, Piece)> = Vec::new();
    for_each_index(&sext, |rel| {
        let sc: Vec<usize> = (0..nd).map(|a| sranges[a].start + rel[a]).collect();
        let soff = sg.tile_offset(&sc);
        let sshape = sg.tile_shape(&sc);
        let mut p = Piece {
            src_shape: sshape.clone(),
            src_off: vec![0; nd],
            dst_off: vec![0; nd],
            block: vec![0; nd],
        };
        for a in 0..nd {
            let a_lo = soff[a].max(slo[a]);
            let a_hi = (soff[a] + sshape[a]).min(shi[a]);
            p.src_off[a] = a_lo - soff[a];
            // Source coordinate a_lo is destination coordinate a_lo - src_off + dst_off.
            p.dst_off[a] = a_lo + dst_off[a] - src_off[a] - toff[a];
            p.block[a] = a_hi - a_lo;
        }
        sources.push((src.tiles[sg.linear(&sc)].clone(), p));
    });
    let dh = dst.tiles[dg.linear(dc)].clone();
    let tshape = Arc::new(tshape);
    let mut first = true;
    while !sources.is_empty() {
        let rest = sources.split_off(sources.len().min(MAX_SOURCES));
        let chunk = std::mem::replace(&mut sources, rest);
        let mut acc: Vec<(DataHandle, Access)> = Vec::with_capacity(chunk.len() + 1);
        let mut pieces = Vec::with_capacity(chunk.len());
        for (h, p) in chunk {
            acc.push((h, Access::R));
            pieces.push(p);
        }
        let mode = if first && whole {
            Access::W
        } else {
            Access::RW
        };
        acc.push((dh.clone(), mode));
        first = false;
        let numel: usize = pieces
            .iter()
            .map(|p| p.block.iter().product::<usize>())
            .sum();
        let cl = RegionCl {
            dtype: dt,
            tshape: tshape.clone(),
            pieces,
            numel,
        };
        src.runtime().submit(Box::new(cl), acc)?;
    }
    Ok(())
}
