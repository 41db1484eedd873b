//! Forward and backward of GPT-2 on the tile ops.
//!
//! ```text
//! x0 = wte[ids] + wpe[pos]                      (dropout embd_pdrop)
//! per block:  h1 = LN1(x);  qkv = h1 Wqkv + b
//!             o  = causal attention(qkv)         (dropout attn_pdrop on probabilities)
//!             xm = x + drop(o Wproj + b)         (resid_pdrop)
//!             h2 = LN2(xm); f = h2 Wfc + b; g = act(f)
//!             x' = xm + drop(g Wfc_proj + b)
//! hf = LNf(x_L);  logits = hf wte^T (the LM head is tied to wte)
//! loss = mean cross-entropy over targets != -100
//! ```
//!
//! Backward walks the blocks in reverse. Parameter gradients accumulate
//! (+=, so gradient accumulation over minibatches is k calls); activation
//! gradients overwrite, except the residual stream `dx`, into which each
//! LayerNorm backward adds. Activations of a block are dropped as soon as
//! its backward is submitted, so the runtime frees them when those tasks end.

use super::autotile;
use super::config::{tile_of, Gpt2Config, Tiling};
use super::params::Params;
use crate::dtype::{DType, Precision};
use crate::error::{arg_err, Result};
use crate::ops::activation::{activation_bwd, activation_fwd, bias_fill, bias_grad, dropout};
use crate::ops::attention::{attention_bwd, attention_fwd};
use crate::ops::crossentropy::cross_entropy_fwd;
use crate::ops::embedding::{embedding_bwd, embedding_fwd, sinusoidal_fill};
use crate::ops::gemm::gemm_with;
use crate::ops::layernorm::{
    acc_dtype, add_layernorm, layernorm_apply, layernorm_bwd, layernorm_fwd,
};
use crate::ops::lm_head_ce::lm_head_ce;
use crate::ops::{copy, GemmSpec};
use crate::runtime::{Access, Runtime};
use crate::tensor::Tensor;
use std::sync::{Mutex, OnceLock};

pub struct Gpt2 {
    pub cfg: Gpt2Config,
    /// Parameter axes resolved (the user's or [`autotile`]'s); the row axes
    /// (batch, seq) as the user gave them, resolved per call.
    pub tiles: Tiling,
    /// The CPU workers that default row tiles are cut for (None: a GPU run).
    row_workers: Option<usize>,
    pub precision: Precision,
    pub params: Params,
    /// The fixed sinusoidal table [P, C] when the config asks for it.
    pub(crate) pos_table: Option<Tensor>,
    /// Recompute LayerNorm outputs and activations in backward instead of
    /// keeping them.
    pub recompute: bool,
    /// Scatter-add the embedding gradient in submission order (RW) instead
    /// of commutatively (ACC), so that runs repeat bit for bit.
    pub deterministic: bool,
    /// Data-parallel runs: the embedding's share of the tied wte gradient,
    /// kept apart from the LM head's (see `dist::sparse_rows`).
    pub split_wte: OnceLock<SplitWte>,
    pub(crate) rt: Runtime,
}

/// The embedding's share of `wte`'s gradient (cut like it) and the token
/// ids whose rows it holds since it was last taken.
pub struct SplitWte {
    pub grad: Tensor,
    seen: Mutex<Vec<u32>>,
}

impl SplitWte {
    /// The rows touched since the last call, sorted and distinct.
    pub fn take_seen(&self) -> Vec<u32> {
        let mut v = std::mem::take(&mut *self.seen.lock().unwrap());
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Options of one training step.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepOptions {
    /// Multiplies the gradients added by this step.
    pub grad_scale: f64,
    /// Seed of the dropout masks; None = dropout off.
    pub dropout_seed: Option<u64>,
}

struct BlockActs {
    x: Tensor,
    stats1: Tensor,
    h1: Option<Tensor>,
    qkv: Tensor,
    o: Tensor,
    lse: Tensor,
    xm: Tensor,
    stats2: Tensor,
    h2: Option<Tensor>,
    f: Tensor,
    g: Option<Tensor>,
}

struct Acts {
    blocks: Vec<BlockActs>,
    xl: Tensor,
    statsf: Tensor,
}

/// Tile sizes of one call's activations.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub b: usize,
    pub t: usize,
    pub tb: isize,
    pub tt: isize,
}

pub(crate) const GEMM: GemmSpec = GemmSpec {
    trans_a: false,
    trans_b: false,
    alpha: 1.0,
    beta: 0.0,
    ndim: 1,
    batch_ndim: 0,
};

impl Gpt2 {
    pub fn new(rt: &Runtime, cfg: Gpt2Config, tiles: Tiling, precision: Precision) -> Result<Gpt2> {
        cfg.validate()?;
        tiles.validate()?;
        let workers = autotile::cpu_workers(rt);
        let tiles = autotile::param_tiles(&tiles, &cfg, workers);
        let params = Params::new(rt, &cfg, &tiles, precision.storage())?;
        let pos_table = if cfg.sinusoidal {
            let (p, c) = (cfg.n_positions, cfg.n_embd);
            let t = Tensor::zeros(
                rt,
                &[p, c],
                &[tile_of(tiles.seq, p), tile_of(tiles.hidden, c)],
                precision.storage(),
            )?;
            sinusoidal_fill(&t)?;
            Some(t)
        } else {
            None
        };
        Ok(Gpt2 {
            cfg,
            tiles,
            row_workers: workers,
            precision,
            params,
            pos_table,
            recompute: false,
            deterministic: false,
            split_wte: OnceLock::new(),
            rt: rt.clone(),
        })
    }

    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    pub fn dtype(&self) -> DType {
        self.precision.storage()
    }

    pub(crate) fn dims(&self, ids: &[i64], b: usize, t: usize) -> Result<Dims> {
        let op = "GPT2LMHead";
        if b == 0 || t == 0 || ids.len() != b * t {
            return Err(arg_err(
                op,
                format!(
                    "input ids must be a non-empty [B, T] array, got {} ids for B={b}, T={t}",
                    ids.len()
                ),
            ));
        }
        if t > self.cfg.n_positions {
            return Err(arg_err(
                op,
                format!(
                    "sequence length {t} exceeds n_positions = {}",
                    self.cfg.n_positions
                ),
            ));
        }
        let v = self.cfg.vocab_size as i64;
        if let Some(bad) = ids.iter().find(|&&i| i < 0 || i >= v) {
            return Err(arg_err(
                op,
                format!("token id {bad} is outside the vocabulary [0, {v})"),
            ));
        }
        // A user's seq tile also cuts the position table, so every sequence
        // tile meets one table tile; default seq tiles meet the one table tile.
        let (tb, tt) = autotile::row_tiles(&self.tiles, b, t, self.row_workers);
        Ok(Dims {
            b,
            t,
            tb: tb as isize,
            tt: tt as isize,
        })
    }

    /// The seq tile of `t` new positions cut `tb` rows at a time.
    pub(crate) fn seq_tile_for(&self, tb: usize, t: usize) -> usize {
        autotile::seq_tile_for(&self.tiles, tb, t, self.row_workers)
    }

    pub(crate) fn act(&self, d: Dims, rest: &[usize], rest_tiles: &[isize]) -> Result<Tensor> {
        self.act_dtype(d, rest, rest_tiles, self.dtype())
    }

    pub(crate) fn act_dtype(
        &self,
        d: Dims,
        rest: &[usize],
        rest_tiles: &[isize],
        dtype: DType,
    ) -> Result<Tensor> {
        let mut shape = vec![d.b, d.t];
        shape.extend_from_slice(rest);
        let mut tile = vec![d.tb, d.tt];
        tile.extend_from_slice(rest_tiles);
        Tensor::zeros(&self.rt, &shape, &tile, dtype)
    }

    pub(crate) fn tc(&self) -> isize {
        tile_of(self.tiles.hidden, self.cfg.n_embd)
    }
    pub(crate) fn tf(&self) -> isize {
        tile_of(self.tiles.inner, self.cfg.n_inner)
    }
    pub(crate) fn th(&self) -> isize {
        tile_of(self.tiles.heads, self.cfg.n_head)
    }
    pub(crate) fn tv(&self) -> isize {
        tile_of(self.tiles.vocab, self.cfg.vocab_size)
    }

    pub(crate) fn hidden(&self, d: Dims) -> Result<Tensor> {
        self.act(d, &[self.cfg.n_embd], &[self.tc()])
    }

    pub(crate) fn pos(&self) -> Option<&Tensor> {
        match self.params.wpe {
            Some(i) => Some(self.params.v(i)),
            None => self.pos_table.as_ref(),
        }
    }

    /// A GEMM in the model's compute mode: on a GPU, tf32 and the
    /// fp32_fast_* precisions reach cuBLAS as its fast compute types (the
    /// CPU computes in f32 whatever the mode).
    pub(crate) fn gemm(&self, s: &GemmSpec, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<()> {
        gemm_with(s, self.precision.gemm_compute(), a, b, c)
    }

    /// y = x W + b through a bias broadcast and a GEMM that accumulates.
    pub(crate) fn linear(
        &self,
        x: &Tensor,
        w: usize,
        b: usize,
        ndim: usize,
        y: &Tensor,
    ) -> Result<()> {
        bias_fill(self.params.v(b), y)?;
        self.gemm(
            &GemmSpec {
                beta: 1.0,
                ndim,
                ..GEMM
            },
            x,
            self.params.v(w),
            y,
        )
    }

    /// Submits the forward pass up to the final LayerNorm's output `hf`
    /// (the LM head is the caller's); keeps what backward needs when `train`.
    fn forward_graph(
        &self,
        ids: &[i64],
        d: Dims,
        seed: Option<u64>,
        train: bool,
    ) -> Result<(Tensor, Option<Acts>)> {
        let cfg = &self.cfg;
        let p = &self.params;
        let (nh, hs, f) = (cfg.n_head, cfg.head_size(), cfg.n_inner);
        let (tf, th, hs_t) = (self.tf(), self.th(), hs as isize);
        let drop = |t: &Tensor, stream: u64, prob: f64| -> Result<()> {
            match seed {
                Some(s) if prob > 0.0 => dropout(t, s, stream, prob),
                _ => Ok(()),
            }
        };
        let mut x = self.hidden(d)?;
        embedding_fwd(ids, p.v(p.wte), self.pos(), &x)?;
        drop(&x, 0, cfg.embd_pdrop)?;
        let mut blocks = Vec::new();
        let eps = cfg.layer_norm_epsilon;
        // The LayerNorm that opens each block (and the final one) is fused
        // with the residual add that closes the block before it.
        let (g0, b0) = match p.blocks.first() {
            Some(bp) => (bp.ln1_g, bp.ln1_b),
            None => (p.lnf_g, p.lnf_b),
        };
        let mut ln_in = self.hidden(d)?;
        let mut ln_stats = layernorm_fwd(&x, p.v(g0), p.v(b0), eps, &ln_in)?;
        for (l, bp) in p.blocks.iter().enumerate() {
            let stream = 1 + 3 * l as u64;
            let (h1, stats1) = (ln_in, ln_stats);
            let qkv = self.act(d, &[3, nh, hs], &[1, th, hs_t])?;
            self.linear(&h1, bp.attn_w, bp.attn_b, 1, &qkv)?;
            let o = self.act(d, &[nh, hs], &[th, hs_t])?;
            let lse = self.act_dtype(d, &[nh], &[th], acc_dtype(self.dtype()))?;
            let attn_drop = seed
                .filter(|_| cfg.attn_pdrop > 0.0)
                .map(|s| (s, stream, cfg.attn_pdrop));
            attention_fwd(&qkv, &o, &lse, attn_drop)?;
            let xm = self.hidden(d)?;
            self.linear(&o, bp.proj_w, bp.proj_b, 2, &xm)?;
            drop(&xm, stream + 1, cfg.resid_pdrop)?;
            let h2 = self.hidden(d)?;
            let stats2 = add_layernorm(&x, &xm, p.v(bp.ln2_g), p.v(bp.ln2_b), eps, &xm, &h2)?;
            let fpre = self.act(d, &[f], &[tf])?;
            self.linear(&h2, bp.fc_w, bp.fc_b, 1, &fpre)?;
            let g = self.act(d, &[f], &[tf])?;
            activation_fwd(cfg.activation, &fpre, &g)?;
            let xn = self.hidden(d)?;
            self.linear(&g, bp.fc_proj_w, bp.fc_proj_b, 1, &xn)?;
            drop(&xn, stream + 2, cfg.resid_pdrop)?;
            let (gn, bn) = match p.blocks.get(l + 1) {
                Some(next) => (next.ln1_g, next.ln1_b),
                None => (p.lnf_g, p.lnf_b),
            };
            ln_in = self.hidden(d)?;
            ln_stats = add_layernorm(&xm, &xn, p.v(gn), p.v(bn), eps, &xn, &ln_in)?;
            if train {
                let keep = !self.recompute;
                blocks.push(BlockActs {
                    x,
                    stats1,
                    h1: keep.then_some(h1),
                    qkv,
                    o,
                    lse,
                    xm,
                    stats2,
                    h2: keep.then_some(h2),
                    f: fpre,
                    g: keep.then_some(g),
                });
            }
            x = xn;
        }
        let (hf, statsf) = (ln_in, ln_stats);
        let acts = train.then_some(Acts {
            blocks,
            xl: x,
            statsf,
        });
        Ok((hf, acts))
    }

    /// logits = hf wte^T (the tied LM head), [B, T, V].
    fn lm_head(&self, d: Dims, hf: &Tensor) -> Result<Tensor> {
        let logits = self.act(d, &[self.cfg.vocab_size], &[self.tv()])?;
        let s = GemmSpec {
            trans_b: true,
            ..GEMM
        };
        self.gemm(&s, hf, self.params.v(self.params.wte), &logits)?;
        Ok(logits)
    }

    /// Logits [B, T, V] of `ids` (row-major [B, T]), dropout off.
    pub fn forward(&self, ids: &[i64], b: usize, t: usize) -> Result<Tensor> {
        let d = self.dims(ids, b, t)?;
        let (hf, _) = self.forward_graph(ids, d, None, false)?;
        self.lm_head(d, &hf)
    }

    /// Mean cross-entropy of next-token `targets` (-100 ignored) without
    /// backward and without keeping activations (evaluation).
    pub fn loss(&self, ids: &[i64], targets: &[i64], b: usize, t: usize) -> Result<f64> {
        let d = self.dims(ids, b, t)?;
        if targets.len() != ids.len() {
            return Err(arg_err(
                "GPT2LMHead",
                "targets must have the shape of input_ids",
            ));
        }
        let (hf, _) = self.forward_graph(ids, d, None, false)?;
        let logits = self.lm_head(d, &hf)?;
        drop(hf);
        let loss = self.rt.new_handle(DType::F64, 1)?;
        cross_entropy_fwd(&logits, targets, &loss)?;
        drop(logits);
        let n_valid = targets.iter().filter(|&&t| t >= 0).count();
        let sum = self
            .rt
            .read_handle(&loss, |b| f64::from_le_bytes(b[..8].try_into().unwrap()))?;
        Ok(if n_valid > 0 {
            sum / n_valid as f64
        } else {
            f64::NAN
        })
    }

    /// Submits forward and backward for next-token `targets` (row-major
    /// [B, T], -100 ignored), adds `grad_scale` times the gradient of the mean
    /// loss into the gradients, and returns the loss.
    pub fn forward_backward(
        &self,
        ids: &[i64],
        targets: &[i64],
        b: usize,
        t: usize,
        opt: StepOptions,
    ) -> Result<f64> {
        let d = self.dims(ids, b, t)?;
        if targets.len() != ids.len() {
            return Err(arg_err(
                "GPT2LMHead",
                "targets must have the shape of input_ids",
            ));
        }
        let (hf, acts) = self.forward_graph(ids, d, opt.dropout_seed, true)?;
        let acts = acts.expect("training forward keeps activations");
        let loss = self.rt.new_handle(DType::F64, 1)?;
        let n_valid = targets.iter().filter(|&&t| t >= 0).count();
        let scale = if n_valid > 0 {
            opt.grad_scale / n_valid as f64
        } else {
            0.0
        };
        // The LM head, the loss and their backward in one op (fused into
        // the GEMM tasks on CPUs).
        let p = &self.params;
        let dhf = self.hidden(d)?;
        let compute = self.precision.gemm_compute();
        lm_head_ce(
            &loss,
            &dhf,
            p.g(p.wte),
            &hf,
            p.v(p.wte),
            targets,
            scale,
            compute,
        )?;
        drop(hf);
        self.backward_graph(ids, d, opt.dropout_seed, dhf, acts)?;
        let sum = self
            .rt
            .read_handle(&loss, |b| f64::from_le_bytes(b[..8].try_into().unwrap()))?;
        Ok(if n_valid > 0 {
            sum / n_valid as f64
        } else {
            f64::NAN
        })
    }

    fn backward_graph(
        &self,
        ids: &[i64],
        d: Dims,
        seed: Option<u64>,
        dhf: Tensor,
        acts: Acts,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let p = &self.params;
        let (nh, hs, f) = (cfg.n_head, cfg.head_size(), cfg.n_inner);
        let (tf, th, hs_t) = (self.tf(), self.th(), hs as isize);
        let grad_w = |ndim: usize| GemmSpec {
            trans_a: true,
            beta: 1.0,
            ndim,
            ..GEMM
        };
        let back = GemmSpec {
            trans_b: true,
            ..GEMM
        };
        // Dropout backward applies the forward's mask (same seed and stream) to a copy.
        let dropped = |dx: &Tensor, stream: u64, prob: f64| -> Result<Tensor> {
            match seed {
                Some(s) if prob > 0.0 => {
                    let t = dx.zeros_like()?;
                    copy(dx, &t)?;
                    dropout(&t, s, stream, prob)?;
                    Ok(t)
                }
                _ => Ok(dx.clone()),
            }
        };
        let Acts {
            mut blocks,
            xl,
            statsf,
        } = acts;
        let dx = self.hidden(d)?;
        layernorm_bwd(
            &xl,
            &dhf,
            &statsf,
            p.v(p.lnf_g),
            &dx,
            false,
            p.g(p.lnf_g),
            p.g(p.lnf_b),
        )?;
        drop((xl, dhf, statsf));
        for (l, bp) in p.blocks.iter().enumerate().rev() {
            let a = blocks.pop().expect("one set of activations per block");
            let stream = 1 + 3 * l as u64;
            // MLP: x' = xm + drop(act(LN2(xm) Wfc + b) Wfc_proj + b)
            let dmo = dropped(&dx, stream + 2, cfg.resid_pdrop)?;
            bias_grad(&dmo, p.g(bp.fc_proj_b))?;
            let g = match a.g {
                Some(g) => g,
                None => {
                    let g = self.act(d, &[f], &[tf])?;
                    activation_fwd(cfg.activation, &a.f, &g)?;
                    g
                }
            };
            self.gemm(&grad_w(2), &g, &dmo, p.g(bp.fc_proj_w))?;
            drop(g);
            let dg = self.act(d, &[f], &[tf])?;
            self.gemm(&back, &dmo, p.v(bp.fc_proj_w), &dg)?;
            drop(dmo);
            activation_bwd(cfg.activation, &a.f, &dg, &dg)?;
            bias_grad(&dg, p.g(bp.fc_b))?;
            let h2 = self.ln_output(d, a.h2, &a.xm, &a.stats2, bp.ln2_g, bp.ln2_b)?;
            self.gemm(&grad_w(2), &h2, &dg, p.g(bp.fc_w))?;
            drop(h2);
            let dh2 = self.hidden(d)?;
            self.gemm(&back, &dg, p.v(bp.fc_w), &dh2)?;
            drop(dg);
            layernorm_bwd(
                &a.xm,
                &dh2,
                &a.stats2,
                p.v(bp.ln2_g),
                &dx,
                true,
                p.g(bp.ln2_g),
                p.g(bp.ln2_b),
            )?;
            drop(dh2);
            // Attention: xm = x + drop(attn(LN1(x)) Wproj + b)
            let da = dropped(&dx, stream + 1, cfg.resid_pdrop)?;
            bias_grad(&da, p.g(bp.proj_b))?;
            self.gemm(&grad_w(2), &a.o, &da, p.g(bp.proj_w))?;
            let d_o = self.act(d, &[nh, hs], &[th, hs_t])?;
            self.gemm(&back, &da, p.v(bp.proj_w), &d_o)?;
            drop(da);
            let dqkv = self.act(d, &[3, nh, hs], &[1, th, hs_t])?;
            let attn_drop = seed
                .filter(|_| cfg.attn_pdrop > 0.0)
                .map(|s| (s, stream, cfg.attn_pdrop));
            attention_bwd(&a.qkv, &a.o, &d_o, &a.lse, &dqkv, attn_drop)?;
            drop(d_o);
            bias_grad(&dqkv, p.g(bp.attn_b))?;
            let h1 = self.ln_output(d, a.h1, &a.x, &a.stats1, bp.ln1_g, bp.ln1_b)?;
            self.gemm(&grad_w(2), &h1, &dqkv, p.g(bp.attn_w))?;
            drop(h1);
            let dh1 = self.hidden(d)?;
            self.gemm(&GemmSpec { ndim: 3, ..back }, &dqkv, p.v(bp.attn_w), &dh1)?;
            drop(dqkv);
            layernorm_bwd(
                &a.x,
                &dh1,
                &a.stats1,
                p.v(bp.ln1_g),
                &dx,
                true,
                p.g(bp.ln1_g),
                p.g(bp.ln1_b),
            )?;
        }
        if let Some(s) = seed.filter(|_| cfg.embd_pdrop > 0.0) {
            dropout(&dx, s, 0, cfg.embd_pdrop)?;
        }
        let mode = if self.deterministic {
            Access::RW
        } else {
            Access::ACC
        };
        let dwte = match self.split_wte.get() {
            Some(s) => {
                s.seen.lock().unwrap().extend(ids.iter().map(|&i| i as u32));
                &s.grad
            }
            None => p.g(p.wte),
        };
        embedding_bwd(ids, &dx, dwte, p.wpe.map(|i| p.g(i)), mode)
    }

    /// From now on the embedding's share of the tied wte gradient goes to
    /// `split_wte` (idempotent).
    pub fn split_wte_grad(&self) -> Result<&SplitWte> {
        if let Some(s) = self.split_wte.get() {
            return Ok(s);
        }
        let grad = self.params.list[self.params.wte].grad.zeros_like()?;
        let _ = self.split_wte.set(SplitWte {
            grad,
            seen: Mutex::new(Vec::new()),
        });
        Ok(self.split_wte.get().expect("set above"))
    }

    /// A LayerNorm output kept from forward, or recomputed from its input and
    /// statistics when forward did not keep it.
    fn ln_output(
        &self,
        d: Dims,
        kept: Option<Tensor>,
        x: &Tensor,
        stats: &Tensor,
        g: usize,
        b: usize,
    ) -> Result<Tensor> {
        match kept {
            Some(h) => Ok(h),
            None => {
                let h = self.hidden(d)?;
                layernorm_apply(x, stats, self.params.v(g), self.params.v(b), &h)?;
                Ok(h)
            }
        }
    }

    /// Zeroes every gradient.
    pub fn zero_grad(&self) -> Result<()> {
        for prm in &self.params.list {
            crate::ops::fill(&prm.grad, 0.0)?;
        }
        if let Some(s) = self.split_wte.get() {
            crate::ops::fill(&s.grad, 0.0)?;
            s.take_seen();
        }
        Ok(())
    }
}

/// Parameter import and export in HF shapes, and gradient clipping.
impl Gpt2 {
    fn param(&self, name: &str) -> Result<&super::params::Param> {
        self.params
            .find(name)
            .ok_or_else(|| arg_err("GPT2LMHead", format!("no parameter named {name:?}")))
    }

    /// The dtype parameters, gradients and state are exported in: f64 for
    /// fp64 models, f32 otherwise (bf16 models export their f32 masters).
    pub fn export_dtype(&self) -> DType {
        acc_dtype(self.dtype())
    }

    /// Overwrites parameter `name` with `data` (row-major, HF shape) given in
    /// the export dtype's bytes; bf16 models set the master and round it.
    pub fn set_param_bytes(&self, name: &str, data: Vec<u8>) -> Result<()> {
        let p = self.param(name)?;
        match &p.master {
            Some(m) => {
                m.write_bytes(data)?;
                crate::ops::cast(m, &p.value)
            }
            None => p.value.write_bytes(data),
        }
    }

    /// Parameter `name` in the export dtype's bytes (waits for its writers).
    pub fn param_bytes(&self, name: &str) -> Result<Vec<u8>> {
        self.export(self.param(name)?.updated())
    }

    /// The gradient of parameter `name` in the export dtype's bytes.
    pub fn grad_bytes(&self, name: &str) -> Result<Vec<u8>> {
        self.export(&self.param(name)?.grad)
    }

    fn export(&self, t: &Tensor) -> Result<Vec<u8>> {
        let want = self.export_dtype();
        if t.dtype == want {
            return t.to_bytes();
        }
        let tile: Vec<isize> = t.grid.tile.iter().map(|&x| x as isize).collect();
        let wide = Tensor::zeros(&self.rt, &t.grid.shape, &tile, want)?;
        crate::ops::cast(t, &wide)?;
        wide.to_bytes()
    }

    /// The global 2-norm of all gradients (f64, scaled so it cannot overflow);
    /// when it exceeds `max_norm`, scales every gradient by
    /// max_norm / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_.
    pub fn clip_grad_norm(&self, max_norm: f64) -> Result<f64> {
        if max_norm.is_nan() || max_norm < 0.0 {
            return Err(arg_err(
                "clip_grad_norm",
                format!("max_norm must be >= 0, got {max_norm}"),
            ));
        }
        let acc = self.rt.new_handle(DType::F64, 2)?;
        // The same scaled sum-of-squares chain as ops::norm, on whichever
        // worker holds the gradients (no gradient is copied to the host).
        crate::ops::reduce::ssq_init(&self.rt, &acc)?;
        for p in &self.params.list {
            crate::ops::reduce::ssq_update(&p.grad, &acc)?;
        }
        let (scale, ssq) = self.rt.read_handle(&acc, |b| {
            let v: &[f64] = bytemuck::cast_slice(b);
            (v[0], v[1])
        })?;
        let norm = scale * ssq.sqrt();
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for p in &self.params.list {
                crate::ops::scale(&p.grad, coef)?;
            }
        }
        Ok(norm)
    }
}
