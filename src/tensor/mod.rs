//! Tiled tensors: a tile grid, a dtype, and one data handle per tile.

mod grid;
pub use grid::{for_each_index, TileGrid};

use crate::dtype::DType;
use crate::error::{arg_err, Result};
use crate::kernels::cpu::copy::copy_block;
use crate::runtime::{codelet, Access, DataHandle, Runtime};

#[derive(Clone)]
pub struct Tensor {
    pub grid: TileGrid,
    pub dtype: DType,
    pub tiles: Vec<DataHandle>,
    rt: Runtime,
}

/// Byte-level view of a row-major array: the last axis widened by the
/// element size, so that block copies can move bytes of any dtype.
fn byte_dims(dims: &[usize], size: usize) -> Vec<usize> {
    let mut d = dims.to_vec();
    match d.last_mut() {
        Some(last) => *last *= size,
        None => d.push(size),
    }
    d
}

impl Tensor {
    /// A tensor of zeros (no memory is allocated until a tile is used).
    pub fn zeros(rt: &Runtime, shape: &[usize], tile: &[isize], dtype: DType) -> Result<Tensor> {
        let grid = TileGrid::new(shape, tile)?;
        let mut tiles = Vec::with_capacity(grid.ntiles());
        for i in 0..grid.ntiles() {
            tiles.push(rt.new_handle(dtype, grid.tile_len(&grid.coords(i)))?);
        }
        Ok(Tensor {
            grid,
            dtype,
            tiles,
            rt: rt.clone(),
        })
    }

    /// A tensor of the same grid and dtype as `self`, holding zeros.
    pub fn zeros_like(&self) -> Result<Tensor> {
        let tile: Vec<isize> = self.grid.tile.iter().map(|&t| t as isize).collect();
        Tensor::zeros(&self.rt, &self.grid.shape, &tile, self.dtype)
    }

    /// Zeros with the grid of `self` in another dtype.
    pub fn zeros_like_dtype(&self, dtype: DType) -> Result<Tensor> {
        let tile: Vec<isize> = self.grid.tile.iter().map(|&t| t as isize).collect();
        Tensor::zeros(&self.rt, &self.grid.shape, &tile, dtype)
    }

    /// Cuts a row-major array (raw bytes of `dtype`) into tiles.
    pub fn from_bytes(
        rt: &Runtime,
        shape: &[usize],
        tile: &[isize],
        dtype: DType,
        data: &[u8],
    ) -> Result<Tensor> {
        let grid = TileGrid::new(shape, tile)?;
        if data.len() != grid.numel() * dtype.size() {
            return Err(arg_err(
                "Tensor.from_bytes",
                format!(
                    "{} bytes given for shape {:?} of {}",
                    data.len(),
                    shape,
                    dtype
                ),
            ));
        }
        let full = byte_dims(shape, dtype.size());
        let mut tiles = Vec::with_capacity(grid.ntiles());
        for i in 0..grid.ntiles() {
            let c = grid.coords(i);
            let tshape = grid.tile_shape(&c);
            let len = tshape.iter().product();
            let off = if shape.is_empty() {
                vec![0]
            } else {
                with_last_scaled(&grid.tile_offset(&c), dtype.size())
            };
            let tb = byte_dims(&tshape, dtype.size());
            let zero = vec![0; tb.len()];
            tiles.push(rt.handle_from_fn(dtype, len, |buf| {
                copy_block(data, &full, &off, buf, &tb, &zero, &tb);
            })?);
        }
        Ok(Tensor {
            grid,
            dtype,
            tiles,
            rt: rt.clone(),
        })
    }

    /// Waits for the tasks that write this tensor and gathers it row-major.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.grid.numel() * self.dtype.size()];
        self.read_into(&mut out)?;
        Ok(out)
    }

    pub fn read_into(&self, out: &mut [u8]) -> Result<()> {
        let size = self.dtype.size();
        if out.len() != self.grid.numel() * size {
            return Err(arg_err(
                "Tensor.read_into",
                "output buffer has the wrong size",
            ));
        }
        let full = byte_dims(&self.grid.shape, size);
        for (i, h) in self.tiles.iter().enumerate() {
            let c = self.grid.coords(i);
            let tb = byte_dims(&self.grid.tile_shape(&c), size);
            let off = if self.grid.shape.is_empty() {
                vec![0]
            } else {
                with_last_scaled(&self.grid.tile_offset(&c), size)
            };
            let zero = vec![0; tb.len()];
            self.rt
                .read_handle(h, |src| copy_block(src, &tb, &zero, out, &full, &off, &tb))?;
        }
        Ok(())
    }

    /// Overwrites the tensor with a row-major array of its dtype, through one
    /// W task per tile, so the write is ordered after every earlier use.
    pub fn write_bytes(&self, data: Vec<u8>) -> Result<()> {
        let size = self.dtype.size();
        if data.len() != self.grid.numel() * size {
            return Err(arg_err(
                "Tensor.write",
                format!(
                    "{} bytes given for shape {:?} of {}",
                    data.len(),
                    self.grid.shape,
                    self.dtype
                ),
            ));
        }
        let data = std::sync::Arc::new(data);
        let full = byte_dims(&self.grid.shape, size);
        let dt = self.dtype;
        for (i, h) in self.tiles.iter().enumerate() {
            let c = self.grid.coords(i);
            let tb = byte_dims(&self.grid.tile_shape(&c), size);
            let off = if self.grid.shape.is_empty() {
                vec![0]
            } else {
                with_last_scaled(&self.grid.tile_offset(&c), size)
            };
            let (data, full) = (data.clone(), full.clone());
            self.rt.submit(
                codelet("write_host", 0.0, 0, move |b| {
                    crate::with_dtype!(dt, T, {
                        let dst: &mut [u8] = bytemuck::cast_slice_mut(b.w::<T>(0)?);
                        let zero = vec![0; tb.len()];
                        copy_block(&data, &full, &off, dst, &tb, &zero, &tb);
                    });
                    Ok(())
                }),
                vec![(h.clone(), Access::W)],
            )?;
        }
        Ok(())
    }

    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }
    pub fn shape(&self) -> &[usize] {
        &self.grid.shape
    }
    pub fn ndim(&self) -> usize {
        self.grid.ndim()
    }
    pub fn tile(&self, coords: &[usize]) -> &DataHandle {
        &self.tiles[self.grid.linear(coords)]
    }
}

fn with_last_scaled(off: &[usize], size: usize) -> Vec<usize> {
    let mut o = off.to_vec();
    if let Some(l) = o.last_mut() {
        *l *= size;
    }
    o
}
