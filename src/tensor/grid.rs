//! Tile grids (NNTile's TensorTraits): a shape cut by a base tile per axis into
//! `ceil(shape / tile)` tiles per axis, the last one possibly partial. Tiles
//! are numbered in row-major order, and each tile is stored row-major.

use crate::error::{Error, Result};

/// More tiles than this in one tensor is a mistake (a tile of 1 on a huge
/// axis), not a workload: each tile is a data handle.
const MAX_TILES: usize = 1 << 26;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileGrid {
    pub shape: Vec<usize>,
    /// Base tile per axis (clamped to the axis length, at least 1).
    pub tile: Vec<usize>,
    /// Tiles per axis.
    pub grid: Vec<usize>,
}

impl TileGrid {
    /// `tile` must have one entry per axis, each >= 1. A tile larger than its
    /// axis means one tile on that axis.
    pub fn new(shape: &[usize], tile: &[isize]) -> Result<TileGrid> {
        let bad = || Error::TileShape {
            op: "TileGrid".into(),
            shape: shape.to_vec(),
            tile: tile.to_vec(),
        };
        if tile.len() != shape.len() {
            return Err(Error::Shape {
                op: "TileGrid".into(),
                msg: format!(
                    "tile shape {tile:?} has {} entries but the tensor has {} axes (shape {shape:?})",
                    tile.len(),
                    shape.len()
                ),
            });
        }
        if tile.iter().any(|&t| t < 1) {
            return Err(bad());
        }
        // Element and tile counts must be addressable (and allocatable as a
        // list of handles): refuse what would overflow instead of aborting.
        let too_big = |what: &str| Error::Shape {
            op: "TileGrid".into(),
            msg: format!("shape {shape:?} with tiles {tile:?} has too many {what}"),
        };
        shape
            .iter()
            .try_fold(1usize, |a, &s| a.checked_mul(s))
            .filter(|&n| n <= isize::MAX as usize / 8)
            .ok_or_else(|| too_big("elements"))?;
        let tile: Vec<usize> = shape
            .iter()
            .zip(tile)
            .map(|(&s, &t)| (t as usize).min(s.max(1)))
            .collect();
        let grid: Vec<usize> = shape
            .iter()
            .zip(&tile)
            .map(|(&s, &t)| s.div_ceil(t))
            .collect();
        if grid.iter().product::<usize>() > MAX_TILES {
            return Err(too_big("tiles"));
        }
        Ok(TileGrid {
            shape: shape.to_vec(),
            tile,
            grid,
        })
    }

    /// One tile covering the whole shape.
    pub fn whole(shape: &[usize]) -> TileGrid {
        let t: Vec<isize> = shape.iter().map(|&s| s.max(1) as isize).collect();
        TileGrid::new(shape, &t).expect("whole-shape tiles are valid")
    }

    pub fn ndim(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn ntiles(&self) -> usize {
        self.grid.iter().product()
    }

    pub fn coords(&self, mut linear: usize) -> Vec<usize> {
        let mut c = vec![0; self.ndim()];
        for ax in (0..self.ndim()).rev() {
            c[ax] = linear % self.grid[ax];
            linear /= self.grid[ax];
        }
        c
    }

    pub fn linear(&self, coords: &[usize]) -> usize {
        coords
            .iter()
            .zip(&self.grid)
            .fold(0, |acc, (&c, &g)| acc * g + c)
    }

    pub fn tile_offset(&self, coords: &[usize]) -> Vec<usize> {
        coords
            .iter()
            .zip(&self.tile)
            .map(|(&c, &t)| c * t)
            .collect()
    }

    pub fn tile_shape(&self, coords: &[usize]) -> Vec<usize> {
        (0..self.ndim())
            .map(|ax| (self.shape[ax] - coords[ax] * self.tile[ax]).min(self.tile[ax]))
            .collect()
    }

    pub fn tile_len(&self, coords: &[usize]) -> usize {
        self.tile_shape(coords).iter().product()
    }

    /// Tile index range on `axis` that overlaps [lo, hi).
    pub fn tiles_overlapping(&self, axis: usize, lo: usize, hi: usize) -> std::ops::Range<usize> {
        let t = self.tile[axis];
        lo / t..hi.div_ceil(t)
    }

    /// Same shape and same cut on axes `self_axes` of self and `other_axes` of other.
    pub fn same_cut(&self, self_axes: &[usize], other: &TileGrid, other_axes: &[usize]) -> bool {
        self_axes.len() == other_axes.len()
            && self_axes.iter().zip(other_axes).all(|(&a, &b)| {
                self.shape[a] == other.shape[b]
                    && (self.tile[a] == other.tile[b] || self.grid[a] <= 1 && other.grid[b] <= 1)
            })
    }
}

/// Iterates all coordinates of a grid of extents `dims`, row-major.
pub fn for_each_index(dims: &[usize], mut f: impl FnMut(&[usize])) {
    if dims.contains(&0) {
        return;
    }
    let mut idx = vec![0; dims.len()];
    loop {
        f(&idx);
        let mut ax = dims.len();
        loop {
            if ax == 0 {
                return;
            }
            ax -= 1;
            idx[ax] += 1;
            if idx[ax] < dims[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
}
