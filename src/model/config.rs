//! GPT-2 configuration (HF's `GPT2Config` fields that shape the model) and
//! the tiling of each axis.

use crate::error::{arg_err, Result};
use crate::kernels::cpu::activation::Activation;

#[derive(Debug, Clone)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// MLP width (HF's `n_inner`, default 4 * n_embd).
    pub n_inner: usize,
    pub activation: Activation,
    pub layer_norm_epsilon: f64,
    pub resid_pdrop: f64,
    pub embd_pdrop: f64,
    pub attn_pdrop: f64,
    /// The fixed sinusoidal position encoding instead of the learned `wpe`.
    pub sinusoidal: bool,
}

impl Gpt2Config {
    pub fn validate(&self) -> Result<()> {
        let op = "GPT2Config";
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_inner", self.n_inner),
        ] {
            if v == 0 {
                return Err(arg_err(op, format!("{name} must be >= 1")));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(arg_err(
                op,
                format!(
                    "n_embd = {} is not divisible by n_head = {}",
                    self.n_embd, self.n_head
                ),
            ));
        }
        if self.sinusoidal && !self.n_embd.is_multiple_of(2) {
            return Err(arg_err(
                op,
                "the sinusoidal position encoding needs an even n_embd",
            ));
        }
        for (name, p) in [
            ("resid_pdrop", self.resid_pdrop),
            ("embd_pdrop", self.embd_pdrop),
            ("attn_pdrop", self.attn_pdrop),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(arg_err(op, format!("{name} = {p} must be in [0, 1)")));
            }
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon < 0.0 {
            return Err(arg_err(op, "layer_norm_epsilon must be >= 0"));
        }
        Ok(())
    }

    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// Tile size per axis; None = chosen from the shapes and the workers
/// (`autotile`); a size at least the axis length (such as [`WHOLE`]) = the
/// whole axis in one tile.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tiling {
    pub batch: Option<usize>,
    pub seq: Option<usize>,
    pub hidden: Option<usize>,
    pub inner: Option<usize>,
    pub heads: Option<usize>,
    pub vocab: Option<usize>,
}

impl Tiling {
    pub fn validate(&self) -> Result<()> {
        for (name, t) in [
            ("minibatch_size_tile", self.batch),
            ("seq_len_tile", self.seq),
            ("hidden_size_tile", self.hidden),
            ("intermediate_size_tile", self.inner),
            ("n_head_tile", self.heads),
            ("vocab_tile", self.vocab),
        ] {
            if t == Some(0) {
                return Err(arg_err("tiling", format!("{name} must be >= 1")));
            }
        }
        Ok(())
    }
}

/// The tile size that keeps an axis whole, whatever its length (NNTile's -1).
pub const WHOLE: usize = usize::MAX;

/// A tile size for an axis of length `n`: the requested one, or the whole axis.
pub(crate) fn tile_of(t: Option<usize>, n: usize) -> isize {
    t.unwrap_or(n).clamp(1, n.max(1)) as isize
}
