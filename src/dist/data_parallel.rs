//! Data parallelism on the tile graph. Every rank holds the whole model;
//! after a step's last backward, the gradient tiles are summed over the
//! ranks by collectives submitted as tasks (one per bucket of tiles, in
//! reverse parameter order: the order backward finishes them), which the
//! dependency tracker starts as soon as a bucket's last accumulation ends.
//!
//! ZeRO-1 goes through tile ownership (NNTile's `tile_distr`): each
//! parameter tile has an owner rank, chosen once by balancing bytes. The
//! gradient is reduced to its owner only, only the owner steps the tile
//! (its optimizer state exists only there), and the updated tile is then
//! gathered by every rank. Since the collectives' sums do not depend on the
//! segmentation (see `collective`), and the gradient norm combines per-tile
//! partial sums in tile order, stage 1 computes stage 0's bits.
//!
//! When the runtime's communication worker runs on a GPU, the same tasks go
//! through an NCCL communicator of the same ranks, made here.

use super::collective::{Collective, CollectiveKind, Layout};
use super::nccl::Nccl;
use super::nccl_comm::NcclComm;
use super::sparse_rows::SparseRows;
use super::Communicator;
use crate::dtype::DType;
use crate::error::{arg_err, Result};
use crate::kernels::cpu::reduce::ssq_merge;
use crate::model::Gpt2;
use crate::runtime::{Access, DataHandle, WorkerKind};
use crate::tensor::Tensor;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// The most tiles one collective takes (a task's operand limit).
const MAX_BUCKET_TILES: usize = 64;

struct Bucket {
    /// (parameter index, tile index) of each tile, in operand order.
    tiles: Vec<(usize, usize)>,
    /// Gradient reduction: even segments (stage 0) or owners' (stage 1).
    reduce: Layout,
    /// Owners' segments, for gathering updated tiles (stage 1).
    gather: Layout,
}

pub struct DataParallel {
    comm: Arc<dyn Communicator>,
    /// Bands of whole wte row tiles whose embedding share is reduced by
    /// row (`sparse_rows`), when the model keeps that share apart.
    wte_bands: Vec<Range<usize>>,
    /// The ranks' NCCL communicator, when collectives run on a GPU.
    device: Option<Arc<NcclComm>>,
    zero_stage: u8,
    buckets: Vec<Bucket>,
    /// The owner rank of each tile, per parameter.
    owner: Vec<Vec<usize>>,
}

impl DataParallel {
    /// Plans the buckets (at most `bucket_bytes` of gradient each, or one
    /// tile when a tile is larger) and the tile owners for `model`, whose
    /// runtime must have a communication worker. If that worker runs on a
    /// GPU, the library `nccl` is loaded and a communicator of `comm`'s
    /// ranks made on it (collective over `comm`).
    pub fn new(
        model: &Gpt2,
        comm: Arc<dyn Communicator>,
        zero_stage: u8,
        bucket_bytes: usize,
        nccl: Option<&Path>,
    ) -> Result<DataParallel> {
        let op = "data_parallel";
        if zero_stage > 1 {
            return Err(arg_err(
                op,
                format!("ZeRO stage {zero_stage} is not supported (0 or 1)"),
            ));
        }
        if model.runtime().nworkers_of(WorkerKind::Comm) == 0 {
            return Err(arg_err(
                op,
                "the model's runtime has no communication worker (create it with comm=True)",
            ));
        }
        let n = comm.size();
        let params = &model.params.list;
        // The embedding's share of the tied wte gradient goes apart (host
        // collectives only; a band of whole row tiles must fit one task).
        let wte = &params[model.params.wte].grad.grid;
        let ncols = wte.grid[1];
        let split = model.runtime().comm_gpu().is_none() && 2 * ncols <= MAX_BUCKET_TILES;
        let wte_bands = if split {
            model.split_wte_grad()?;
            let per = MAX_BUCKET_TILES / (2 * ncols);
            (0..wte.grid[0])
                .step_by(per)
                .map(|r| r..(r + per).min(wte.grid[0]))
                .collect()
        } else {
            Vec::new()
        };
        let mut owner: Vec<Vec<usize>> =
            params.iter().map(|p| vec![0; p.grad.tiles.len()]).collect();
        let mut load = vec![0usize; n];
        let mut buckets = Vec::new();
        let mut cur: Vec<(usize, usize)> = Vec::new();
        let mut cur_bytes = 0;
        let close =
            |cur: &mut Vec<(usize, usize)>, buckets: &mut Vec<Bucket>, owner: &[Vec<usize>]| {
                if cur.is_empty() {
                    return;
                }
                let tiles = std::mem::take(cur);
                let lens: Vec<usize> = tiles
                    .iter()
                    .map(|&(p, t)| params[p].grad.tiles[t].len())
                    .collect();
                let owners: Vec<usize> = tiles.iter().map(|&(p, t)| owner[p][t]).collect();
                let gather = Layout::by_owner(&lens, &owners, n);
                let reduce = if zero_stage == 0 {
                    Layout::even(&lens, n)
                } else {
                    gather.clone()
                };
                buckets.push(Bucket {
                    tiles,
                    reduce,
                    gather,
                });
            };
        // Backward finishes the last parameters first, so their buckets go
        // first; but the LM head's share of wte is final before any of them
        // (the LM head is each row tile's first backward GEMM), so when the
        // embedding's share is apart, wte leads.
        let wte_first = split.then_some(model.params.wte);
        let order = wte_first
            .into_iter()
            .chain((0..params.len()).rev().filter(|&p| Some(p) != wte_first));
        for p in order {
            let prm = &params[p];
            for (t, h) in prm.grad.tiles.iter().enumerate().rev() {
                let bytes = h.bytes();
                if !cur.is_empty()
                    && (cur_bytes + bytes > bucket_bytes || cur.len() == MAX_BUCKET_TILES)
                {
                    close(&mut cur, &mut buckets, &owner);
                    cur_bytes = 0;
                }
                // The least loaded rank so far (lowest on ties): the same
                // answer on every rank.
                let r = (0..n).min_by_key(|&r| (load[r], r)).unwrap_or(0);
                load[r] += bytes;
                owner[p][t] = r;
                cur.push((p, t));
                cur_bytes += bytes;
            }
        }
        close(&mut cur, &mut buckets, &owner);
        let device = match model.runtime().comm_gpu() {
            None => None,
            Some(gpu) => {
                let path = nccl.ok_or_else(|| {
                    arg_err(
                        op,
                        "data-parallel training on a GPU needs NCCL: pip install 'gpt2rs[nccl]'",
                    )
                })?;
                let lib = Arc::new(Nccl::open(path)?);
                Some(Arc::new(NcclComm::init(lib, gpu, comm.as_ref())?))
            }
        };
        Ok(DataParallel {
            comm,
            wte_bands,
            device,
            zero_stage,
            buckets,
            owner,
        })
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }
    pub fn world_size(&self) -> usize {
        self.comm.size()
    }
    pub fn zero_stage(&self) -> u8 {
        self.zero_stage
    }
    pub fn nbuckets(&self) -> usize {
        self.buckets.len()
    }

    /// Whether this rank steps tile `t` of parameter `p` (every tile at stage 0).
    pub fn steps(&self, p: usize, t: usize) -> bool {
        self.zero_stage == 0 || self.owner[p][t] == self.comm.rank()
    }

    /// The tiles this rank steps, per parameter (for the optimizer).
    pub fn stepped_tiles(&self) -> Vec<Vec<bool>> {
        self.owner
            .iter()
            .enumerate()
            .map(|(p, o)| (0..o.len()).map(|t| self.steps(p, t)).collect())
            .collect()
    }

    /// Submits `kind` over every bucket of the tensors `of(p)` (cut like
    /// the parameters). A parameter without one (bf16 master copies of an
    /// fp32 model) means there is nothing to move.
    fn submit<'a>(
        &self,
        model: &Gpt2,
        kind: CollectiveKind,
        of: impl Fn(usize) -> Option<&'a Tensor>,
    ) -> Result<()> {
        for b in &self.buckets {
            let Some(xs) = b
                .tiles
                .iter()
                .map(|&(p, _)| of(p))
                .collect::<Option<Vec<_>>>()
            else {
                return Ok(());
            };
            let dtype = xs[0].dtype;
            if xs.iter().any(|x| x.dtype != dtype) {
                return Err(arg_err("data_parallel", "a bucket mixes dtypes"));
            }
            let ops = xs
                .iter()
                .zip(&b.tiles)
                .map(|(x, &(_, t))| (x.tiles[t].clone(), Access::RW))
                .collect();
            let layout = match kind {
                CollectiveKind::AllGather => b.gather.clone(),
                _ => b.reduce.clone(),
            };
            let cl = Collective {
                comm: self.comm.clone(),
                device: self.device.clone(),
                kind,
                layout,
                dtype,
            };
            model.runtime().submit(Box::new(cl), ops)?;
        }
        Ok(())
    }

    /// Submits the gradients' reduction: an all-reduce per bucket (stage
    /// 0), or a reduce-scatter to the owners (stage 1); then the rows of
    /// the embedding's share of wte the ranks' tokens touched, added in.
    pub fn reduce_grads(&self, model: &Gpt2) -> Result<()> {
        let kind = if self.zero_stage == 0 {
            CollectiveKind::AllReduce
        } else {
            CollectiveKind::ReduceScatter
        };
        self.submit(model, kind, |p| Some(&model.params.list[p].grad))?;
        let split = match model.split_wte.get() {
            Some(s) if !self.wte_bands.is_empty() => s,
            _ => return Ok(()),
        };
        let seen = split.take_seen();
        let g = &model.params.list[model.params.wte].grad;
        let ncols = g.grid.grid[1];
        let col_widths: Vec<usize> = (0..ncols).map(|j| g.grid.tile_shape(&[0, j])[1]).collect();
        // Every rank submits every band, in the same order, rows or not.
        for band in &self.wte_bands {
            let row_tiles: Vec<(usize, usize)> = band
                .clone()
                .map(|t| {
                    (
                        g.grid.tile_offset(&[t, 0])[0],
                        g.grid.tile_shape(&[t, 0])[0],
                    )
                })
                .collect();
            let (lo, last) = (row_tiles[0].0, row_tiles[row_tiles.len() - 1]);
            let hi = (last.0 + last.1) as u32;
            let ids = seen
                .iter()
                .copied()
                .filter(|&i| (lo as u32..hi).contains(&i))
                .collect();
            let tiles = |x: &Tensor| -> Vec<(DataHandle, Access)> {
                band.clone()
                    .flat_map(|t| (0..ncols).map(move |j| (t, j)))
                    .map(|(t, j)| (x.tile(&[t, j]).clone(), Access::RW))
                    .collect()
            };
            let mut ops = tiles(&split.grad);
            ops.extend(tiles(g));
            let cl = SparseRows {
                comm: self.comm.clone(),
                dtype: g.dtype,
                row_tiles,
                col_widths: col_widths.clone(),
                ids: Arc::new(ids),
            };
            model.runtime().submit(Box::new(cl), ops)?;
        }
        Ok(())
    }

    /// Whether the embedding's share of wte is reduced by row, apart.
    pub fn splits_wte(&self) -> bool {
        !self.wte_bands.is_empty()
    }

    /// Stage 1, after the owners' optimizer step: submits the gathering of
    /// the updated weights (the bf16 ones where there is a master copy).
    pub fn gather_params(&self, model: &Gpt2) -> Result<()> {
        if self.zero_stage == 0 {
            return Ok(());
        }
        self.submit(model, CollectiveKind::AllGather, |p| {
            Some(&model.params.list[p].value)
        })
    }

    /// Stage 1: gives back the memory of the master weights (bf16 models)
    /// of the tiles other ranks own; only an owner steps a tile's master,
    /// and `gather` brings them back when every rank needs them.
    pub fn release_masters(&self, model: &Gpt2) -> Result<()> {
        if self.zero_stage == 0 {
            return Ok(());
        }
        for (p, prm) in model.params.list.iter().enumerate() {
            let Some(master) = &prm.master else { continue };
            for (t, h) in master.tiles.iter().enumerate() {
                if !self.steps(p, t) {
                    model.runtime().discard(h)?;
                }
            }
        }
        Ok(())
    }

    /// Stage 1: submits the gathering of tensors cut like the parameters
    /// (`of(p)`: optimizer state, master weights), e.g. before a checkpoint.
    pub fn gather<'a>(&self, model: &Gpt2, of: impl Fn(usize) -> Option<&'a Tensor>) -> Result<()> {
        if self.zero_stage == 0 {
            return Ok(());
        }
        self.submit(model, CollectiveKind::AllGather, of)
    }

    /// The global gradient 2-norm of the reduced gradients, from per-tile
    /// scaled sums of squares merged in tile order (each rank computes those
    /// of the tiles it holds reduced; stage 1 exchanges them); when it
    /// exceeds `max_norm`, scales the gradients by max_norm / (norm + 1e-6).
    /// Waits for the gradients' reduction.
    pub fn clip_grad_norm(&self, model: &Gpt2, max_norm: f64) -> Result<f64> {
        if max_norm.is_nan() || max_norm < 0.0 {
            return Err(arg_err(
                "clip_grad_norm",
                format!("max_norm must be >= 0, got {max_norm}"),
            ));
        }
        let rt = model.runtime();
        let params = &model.params.list;
        let mut mine: Vec<(usize, DataHandle)> = Vec::new();
        let mut ntiles = 0;
        for (p, prm) in params.iter().enumerate() {
            for (t, h) in prm.grad.tiles.iter().enumerate() {
                if self.steps(p, t) {
                    let acc = rt.new_handle(DType::F64, 2)?;
                    crate::ops::reduce::ssq_init(rt, &acc)?;
                    crate::ops::reduce::ssq_update_tile(rt, prm.grad.dtype, h, &acc)?;
                    mine.push((ntiles, acc));
                }
                ntiles += 1;
            }
        }
        let mut parts = vec![[0f64; 2]; ntiles];
        let mut local = Vec::with_capacity(2 * mine.len());
        for (i, acc) in &mine {
            let v = rt.read_handle(acc, |b| {
                let v: &[f64] = bytemuck::cast_slice(b);
                [v[0], v[1]]
            })?;
            parts[*i] = v;
            local.extend_from_slice(&v);
        }
        if self.zero_stage == 1 {
            // Host-side exchange: no collective task may be in flight.
            rt.wait_all()?;
            let n = self.comm.size();
            let mut owned_by: Vec<Vec<usize>> = vec![Vec::new(); n];
            let mut g = 0;
            for o in &self.owner {
                for &r in o {
                    owned_by[r].push(g);
                    g += 1;
                }
            }
            let counts: Vec<usize> = owned_by.iter().map(|v| v.len() * 16).collect();
            let mut all = vec![0f64; 2 * ntiles];
            self.comm.allgatherv(
                bytemuck::cast_slice(&local),
                bytemuck::cast_slice_mut(&mut all),
                &counts,
            )?;
            let mut k = 0;
            for tiles in &owned_by {
                for &g in tiles {
                    parts[g] = [all[2 * k], all[2 * k + 1]];
                    k += 1;
                }
            }
        }
        let mut acc = [0f64; 2];
        for part in &parts {
            ssq_merge(part, &mut acc);
        }
        let norm = acc[0] * acc[1].sqrt();
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for p in params {
                crate::ops::scale(&p.grad, coef)?;
            }
        }
        Ok(norm)
    }
}

#[cfg(test)]
mod tests;
