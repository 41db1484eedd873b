//! Incremental decoding: a key/value cache and the forward pass of new
//! positions over it.
//!
//! ```text
//! cache (per layer l):  kv_l [B, P, 2, NH, HS]   keys (0) and values (1) of positions 0..len
//! forward_cached(ids [B, n]):                     positions len..len + n
//!   x0 = wte[ids] + wpe[len..len + n]
//!   per block:  h1 = LN1(x);  qkv = h1 Wqkv + b;  kv_l[:, len..len + n] = (k, v) of qkv
//!               o = attention of the n queries (q0 = len) over kv_l[:, 0..len + n]
//!               then as in the full forward (projection, residual, MLP)
//!   logits of the n new positions (or of the last one only)
//!   len += n
//! ```
//!
//! The prefill (the whole prompt) and every decode step are the same call, and
//! each costs time linear in `len + n`: the new rows go through the
//! projections and the MLP, and attention reads only the `len + n` cached rows
//! (see `attention_fwd_cached`). The cache is cut like the model's
//! activations (batch tile, `seq_len_tile` on positions, `n_head_tile` on
//! heads) and its tiles get memory only when first written, so a long cache
//! costs nothing until it is used. A decode step submits one attention task
//! per cached position tile (per batch and head tile, per layer), so a small
//! `seq_len_tile` makes long decodes task-bound; untiled positions give one.
//! Every row of the batch has the same length (no padding).
//!
//! Inference only: dropout is off and nothing is kept for a backward pass.

use super::config::tile_of;
use super::gpt2::{Dims, Gpt2, GEMM};
use crate::error::{arg_err, Result};
use crate::ops::activation::activation_fwd;
use crate::ops::attention::attention_fwd_cached;
use crate::ops::embedding::embedding_fwd_at;
use crate::ops::layernorm::{acc_dtype, layernorm_fwd};
use crate::ops::slice::copy_region;
use crate::ops::{add, GemmSpec};
use crate::tensor::Tensor;

/// Keys and values of every position seen so far, per layer.
pub struct KvCache {
    /// Per layer: [B, P, 2, NH, HS], cut (tb, seq tile, 1, th, HS).
    pub(crate) kv: Vec<Tensor>,
    /// Positions cached (the same for every batch row).
    len: usize,
    b: usize,
    /// n_positions: the most positions the cache holds.
    capacity: usize,
    /// The id of the model's first parameter tile: a cache serves one model.
    owner: u64,
}

impl KvCache {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Batch rows (B).
    pub fn batch(&self) -> usize {
        self.b
    }
    /// The most positions it can hold (n_positions).
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Forgets every position; the memory stays allocated for reuse.
    pub fn reset(&mut self) {
        self.len = 0;
    }
    /// Keeps the first `len` positions (to reuse a common prefix).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(arg_err(
                "KvCache.truncate",
                format!("cannot truncate {} cached positions to {len}", self.len),
            ));
        }
        self.len = len;
        Ok(())
    }
}

impl Gpt2 {
    fn owner_id(&self) -> u64 {
        self.params.v(self.params.wte).tiles[0].id()
    }

    /// An empty cache for batches of `b` rows.
    pub fn new_cache(&self, b: usize) -> Result<KvCache> {
        if b == 0 {
            return Err(arg_err("KvCache", "batch size must be >= 1"));
        }
        let cfg = &self.cfg;
        let (p, nh, hs) = (cfg.n_positions, cfg.n_head, cfg.head_size());
        let tile = [
            tile_of(self.tiles.batch, b),
            tile_of(self.tiles.seq, p),
            1,
            self.th(),
            hs as isize,
        ];
        let kv = (0..cfg.n_layer)
            .map(|_| Tensor::zeros(&self.rt, &[b, p, 2, nh, hs], &tile, self.dtype()))
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            kv,
            len: 0,
            b,
            capacity: p,
            owner: self.owner_id(),
        })
    }

    /// Logits [B, n, V] of the `n` new positions `ids` (row-major [B, n]),
    /// which follow the `cache.len()` cached ones; appends their keys and
    /// values to the cache. Equals the full forward's logits at those
    /// positions (up to rounding: the tilings differ).
    pub fn forward_cached(
        &self,
        cache: &mut KvCache,
        ids: &[i64],
        b: usize,
        n: usize,
    ) -> Result<Tensor> {
        self.cached_graph(cache, ids, b, n, false)
    }

    /// [`Gpt2::forward_cached`] returning only the logits of the last new
    /// position, [B, 1, V]: what a sampler needs, and the LM head (the
    /// largest GEMM of a prefill) runs on one row per sequence.
    pub fn forward_cached_last(
        &self,
        cache: &mut KvCache,
        ids: &[i64],
        b: usize,
        n: usize,
    ) -> Result<Tensor> {
        self.cached_graph(cache, ids, b, n, true)
    }

    fn cached_graph(
        &self,
        cache: &mut KvCache,
        ids: &[i64],
        b: usize,
        n: usize,
        last_only: bool,
    ) -> Result<Tensor> {
        let op = "forward_cached";
        if cache.owner != self.owner_id() || cache.kv.len() != self.cfg.n_layer {
            return Err(arg_err(op, "this cache was made by another model"));
        }
        if b != cache.b {
            return Err(arg_err(
                op,
                format!("batch of {b} rows for a cache of {} rows", cache.b),
            ));
        }
        // The new rows are cut like the cache along the batch.
        let d = self.dims(ids, b, n)?;
        let tb = cache.kv[0].grid.tile[0];
        let d = Dims {
            tb: tb as isize,
            tt: self.seq_tile_for(tb, n) as isize,
            ..d
        };
        let len = cache.len;
        if len + n > cache.capacity {
            return Err(arg_err(
                op,
                format!(
                    "the KV cache is full: {len} cached + {n} new positions exceed \
                     n_positions = {}",
                    cache.capacity
                ),
            ));
        }
        let cfg = &self.cfg;
        let p = &self.params;
        let (nh, hs, f) = (cfg.n_head, cfg.head_size(), cfg.n_inner);
        let (tf, th, hs_t) = (self.tf(), self.th(), hs as isize);
        let mut x = self.hidden(d)?;
        embedding_fwd_at(ids, p.v(p.wte), self.pos(), len, &x)?;
        for (bp, kv) in p.blocks.iter().zip(&cache.kv) {
            let h1 = self.hidden(d)?;
            layernorm_fwd(
                &x,
                p.v(bp.ln1_g),
                p.v(bp.ln1_b),
                cfg.layer_norm_epsilon,
                &h1,
            )?;
            let qkv = self.act(d, &[3, nh, hs], &[1, th, hs_t])?;
            self.linear(&h1, bp.attn_w, bp.attn_b, 1, &qkv)?;
            copy_region(
                &qkv,
                &[0, 0, 1, 0, 0],
                kv,
                &[0, len, 0, 0, 0],
                &[b, n, 2, nh, hs],
            )?;
            let o = self.act(d, &[nh, hs], &[th, hs_t])?;
            let lse = self.act_dtype(d, &[nh], &[th], acc_dtype(self.dtype()))?;
            attention_fwd_cached(&qkv, kv, len, &o, &lse)?;
            let xm = self.hidden(d)?;
            self.linear(&o, bp.proj_w, bp.proj_b, 2, &xm)?;
            add(1.0, &x, 1.0, &xm)?;
            let h2 = self.hidden(d)?;
            layernorm_fwd(
                &xm,
                p.v(bp.ln2_g),
                p.v(bp.ln2_b),
                cfg.layer_norm_epsilon,
                &h2,
            )?;
            let fpre = self.act(d, &[f], &[tf])?;
            self.linear(&h2, bp.fc_w, bp.fc_b, 1, &fpre)?;
            let g = self.act(d, &[f], &[tf])?;
            activation_fwd(cfg.activation, &fpre, &g)?;
            let xn = self.hidden(d)?;
            self.linear(&g, bp.fc_proj_w, bp.fc_proj_b, 1, &xn)?;
            add(1.0, &xm, 1.0, &xn)?;
            x = xn;
        }
        // The head runs on the rows asked for: all n, or the last one.
        let (d, x) = if last_only && n > 1 {
            let d1 = Dims { t: 1, tt: 1, ..d };
            let x1 = self.hidden(d1)?;
            copy_region(&x, &[0, n - 1, 0], &x1, &[0, 0, 0], &[b, 1, cfg.n_embd])?;
            (d1, x1)
        } else {
            (d, x)
        };
        let hf = self.hidden(d)?;
        layernorm_fwd(&x, p.v(p.lnf_g), p.v(p.lnf_b), cfg.layer_norm_epsilon, &hf)?;
        let logits = self.act(d, &[cfg.vocab_size], &[self.tv()])?;
        self.gemm(
            &GemmSpec {
                trans_b: true,
                ..GEMM
            },
            &hf,
            p.v(p.wte),
            &logits,
        )?;
        // Every task reading or writing the cache is submitted: the new
        // positions count from here on.
        cache.len = len + n;
        Ok(logits)
    }
}
