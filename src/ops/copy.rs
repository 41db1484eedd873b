//! Copy between tensors of one shape, with any two tilings (re-tiling) and,
//! for `cast`, any two dtypes. Each destination tile is one task (or a few,
//! when many source tiles overlap it) reading the source tiles it overlaps.
//! Every pair of dtypes runs on the CPU and on CUDA (one `copy_block_*`
//! launch per source piece; a bit copy when the dtypes match, else the
//! rounding of `cast`).

use super::footprint;
use crate::error::{arg_err, shape_err, Result};
use crate::kernels::cpu::copy::{cast_block, copy_block};
use crate::kernels::cuda::elementwise::COPY_MAX_DIMS;
use crate::runtime::DevBuffers;
use crate::runtime::{Access, Buffers, Codelet, DataHandle, Where};
use crate::tensor::{for_each_index, Tensor};
use crate::{with_dtype, DType, Element};

/// Source tiles per task at most (a task takes at most 64 operands).
const MAX_SOURCES: usize = 32;

struct Piece {
    src_shape: Vec<usize>,
    src_off: Vec<usize>,
    dst_off: Vec<usize>,
    block: Vec<usize>,
}

struct CopyCl {
    src_dtype: DType,
    dst_dtype: DType,
    dst_shape: Vec<usize>,
    pieces: Vec<Piece>,
}

impl Codelet for CopyCl {
    fn name(&self) -> &'static str {
        if self.src_dtype == self.dst_dtype {
            "copy"
        } else {
            "cast"
        }
    }
    fn footprint(&self) -> u64 {
        footprint(&[
            self.pieces.len() as u64,
            self.dst_shape.iter().product::<usize>() as u64,
        ])
    }
    fn where_(&self) -> Where {
        // The kernel takes at most COPY_MAX_DIMS loop dims; no tensor here
        // has more axes, but a wider one stays on the CPU.
        if self.dst_shape.len() <= COPY_MAX_DIMS {
            Where::ANY
        } else {
            Where::ANY_CPU
        }
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        let n = self.pieces.len();
        with_dtype!(self.src_dtype, S, {
            with_dtype!(self.dst_dtype, D, {
                let dst = b.w::<D>(n)?;
                for (i, p) in self.pieces.iter().enumerate() {
                    let src = b.r::<S>(i)?;
                    if S::DTYPE == D::DTYPE {
                        let src: &[D] = bytemuck::cast_slice(src);
                        copy_block(
                            src,
                            &p.src_shape,
                            &p.src_off,
                            dst,
                            &self.dst_shape,
                            &p.dst_off,
                            &p.block,
                        );
                    } else {
                        cast_block(
                            src,
                            &p.src_shape,
                            &p.src_off,
                            dst,
                            &self.dst_shape,
                            &p.dst_off,
                            &p.block,
                        );
                    }
                }
            })
        });
        Ok(())
    }
    fn cuda(&self, b: &DevBuffers) -> Result<()> {
        let n = self.pieces.len();
        with_dtype!(self.src_dtype, S, {
            with_dtype!(self.dst_dtype, D, {
                let mut dst = b.w::<D>(n)?;
                for (i, p) in self.pieces.iter().enumerate() {
                    crate::kernels::cuda::elementwise::copy_block::<S, D>(
                        b.gpu(),
                        &b.r(i)?,
                        &p.src_shape,
                        &p.src_off,
                        &mut dst,
                        &self.dst_shape,
                        &p.dst_off,
                        &p.block,
                    )?;
                }
            })
        });
        Ok(())
    }
}

/// dst = src, re-tiling as needed (dtypes must match).
pub fn copy(src: &Tensor, dst: &Tensor) -> Result<()> {
    if src.dtype != dst.dtype {
        return Err(crate::error::Error::DType {
            op: "copy".into(),
            expected: dst.dtype,
            got: src.dtype,
        });
    }
    cast(src, dst)
}

/// dst = src converted to dst's dtype, re-tiling as needed.
pub fn cast(src: &Tensor, dst: &Tensor) -> Result<()> {
    if !src.runtime().same(dst.runtime()) {
        return Err(arg_err("copy", "tensors belong to different runtimes"));
    }
    if src.grid.shape != dst.grid.shape {
        return Err(shape_err(
            "copy",
            format!(
                "shapes {:?} and {:?} differ",
                src.grid.shape, dst.grid.shape
            ),
        ));
    }
    let (sg, dg) = (&src.grid, &dst.grid);
    let nd = dg.ndim();
    for (di, dh) in dst.tiles.iter().enumerate() {
        let dc = dg.coords(di);
        let doff = dg.tile_offset(&dc);
        let dshape = dg.tile_shape(&dc);
        let ranges: Vec<_> = (0..nd)
            .map(|ax| sg.tiles_overlapping(ax, doff[ax], doff[ax] + dshape[ax]))
            .collect();
        let extents: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
        let mut sources: Vec<(DataHandle, Piece)> = Vec::new();
        for_each_index(&extents, |rel| {
            let sc: Vec<usize> = (0..nd).map(|ax| ranges[ax].start + rel[ax]).collect();
            let soff = sg.tile_offset(&sc);
            let sshape = sg.tile_shape(&sc);
            let mut piece = Piece {
                src_shape: sshape.clone(),
                src_off: vec![0; nd],
                dst_off: vec![0; nd],
                block: vec![0; nd],
            };
            for ax in 0..nd {
                let lo = soff[ax].max(doff[ax]);
                let hi = (soff[ax] + sshape[ax]).min(doff[ax] + dshape[ax]);
                piece.src_off[ax] = lo - soff[ax];
                piece.dst_off[ax] = lo - doff[ax];
                piece.block[ax] = hi - lo;
            }
            sources.push((src.tiles[sg.linear(&sc)].clone(), piece));
        });
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
            acc.push((dh.clone(), if first { Access::W } else { Access::RW }));
            first = false;
            let cl = CopyCl {
                src_dtype: src.dtype,
                dst_dtype: dst.dtype,
                dst_shape: dshape.clone(),
                pieces,
            };
            src.runtime().submit(Box::new(cl), acc)?;
        }
    }
    Ok(())
}
