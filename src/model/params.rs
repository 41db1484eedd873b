//! GPT-2's parameters, in HF's names and order, each stored as a tiled tensor
//! whose shape is a reshape of HF's (row-major, so the bytes are the same):
//! the attention weights gain head axes so that tiles can cut along heads.
//!
//! ```text
//! wte             [V, C]            tiles (v, c)
//! wpe             [P, C]            tiles (t, c)     (absent when sinusoidal)
//! h.i.ln_1.*      [C]
//! h.i.attn.c_attn.weight  HF [C, 3C]  ->  [C, 3, NH, HS]  tiles (c, 1, h, HS)
//! h.i.attn.c_attn.bias    HF [3C]     ->  [3, NH, HS]
//! h.i.attn.c_proj.weight  HF [C, C]   ->  [NH, HS, C]     tiles (h, HS, c)
//! h.i.attn.c_proj.bias    [C]
//! h.i.ln_2.*      [C]
//! h.i.mlp.c_fc.weight     [C, F]    h.i.mlp.c_fc.bias [F]
//! h.i.mlp.c_proj.weight   [F, C]    h.i.mlp.c_proj.bias [C]
//! ln_f.*          [C]
//! ```
//!
//! Each parameter has a gradient of the same tiling and dtype, and, with
//! bf16 storage, an f32 master copy that optimizers update.

use super::config::{tile_of, Gpt2Config, Tiling};
use crate::error::Result;
use crate::runtime::Runtime;
use crate::tensor::Tensor;
use crate::DType;

pub struct Param {
    /// HF name without the `transformer.` prefix.
    pub name: String,
    pub hf_shape: Vec<usize>,
    pub value: Tensor,
    pub grad: Tensor,
    /// f32 master weights when `value` is bf16.
    pub master: Option<Tensor>,
}

impl Param {
    /// The tensor optimizers update: the master copy where there is one.
    pub fn updated(&self) -> &Tensor {
        self.master.as_ref().unwrap_or(&self.value)
    }
}

/// Indices into the parameter list for one transformer block.
#[derive(Debug, Clone, Copy)]
pub struct BlockParams {
    pub ln1_g: usize,
    pub ln1_b: usize,
    pub attn_w: usize,
    pub attn_b: usize,
    pub proj_w: usize,
    pub proj_b: usize,
    pub ln2_g: usize,
    pub ln2_b: usize,
    pub fc_w: usize,
    pub fc_b: usize,
    pub fc_proj_w: usize,
    pub fc_proj_b: usize,
}

pub struct Params {
    pub list: Vec<Param>,
    pub wte: usize,
    pub wpe: Option<usize>,
    pub blocks: Vec<BlockParams>,
    pub lnf_g: usize,
    pub lnf_b: usize,
}

struct Builder<'a> {
    rt: &'a Runtime,
    dtype: DType,
    list: Vec<Param>,
}

impl Builder<'_> {
    fn add(
        &mut self,
        name: String,
        hf_shape: &[usize],
        shape: &[usize],
        tile: &[isize],
    ) -> Result<usize> {
        let value = Tensor::zeros(self.rt, shape, tile, self.dtype)?;
        let grad = Tensor::zeros(self.rt, shape, tile, self.dtype)?;
        let master = if self.dtype == DType::BF16 {
            Some(Tensor::zeros(self.rt, shape, tile, DType::F32)?)
        } else {
            None
        };
        self.list.push(Param {
            name,
            hf_shape: hf_shape.to_vec(),
            value,
            grad,
            master,
        });
        Ok(self.list.len() - 1)
    }
}

impl Params {
    pub fn new(rt: &Runtime, cfg: &Gpt2Config, tiles: &Tiling, dtype: DType) -> Result<Params> {
        let (v, p, c, f, nh, hs) = (
            cfg.vocab_size,
            cfg.n_positions,
            cfg.n_embd,
            cfg.n_inner,
            cfg.n_head,
            cfg.head_size(),
        );
        let (tv, tt, tc, tf, th) = (
            tile_of(tiles.vocab, v),
            tile_of(tiles.seq, p),
            tile_of(tiles.hidden, c),
            tile_of(tiles.inner, f),
            tile_of(tiles.heads, nh),
        );
        let ths = hs as isize;
        let mut b = Builder {
            rt,
            dtype,
            list: Vec::new(),
        };
        let wte = b.add("wte.weight".into(), &[v, c], &[v, c], &[tv, tc])?;
        let wpe = if cfg.sinusoidal {
            None
        } else {
            Some(b.add("wpe.weight".into(), &[p, c], &[p, c], &[tt, tc])?)
        };
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let n = |s: &str| format!("h.{i}.{s}");
            let ln1_g = b.add(n("ln_1.weight"), &[c], &[c], &[tc])?;
            let ln1_b = b.add(n("ln_1.bias"), &[c], &[c], &[tc])?;
            let attn_w = b.add(
                n("attn.c_attn.weight"),
                &[c, 3 * c],
                &[c, 3, nh, hs],
                &[tc, 1, th, ths],
            )?;
            let attn_b = b.add(n("attn.c_attn.bias"), &[3 * c], &[3, nh, hs], &[1, th, ths])?;
            let proj_w = b.add(
                n("attn.c_proj.weight"),
                &[c, c],
                &[nh, hs, c],
                &[th, ths, tc],
            )?;
            let proj_b = b.add(n("attn.c_proj.bias"), &[c], &[c], &[tc])?;
            let ln2_g = b.add(n("ln_2.weight"), &[c], &[c], &[tc])?;
            let ln2_b = b.add(n("ln_2.bias"), &[c], &[c], &[tc])?;
            let fc_w = b.add(n("mlp.c_fc.weight"), &[c, f], &[c, f], &[tc, tf])?;
            let fc_b = b.add(n("mlp.c_fc.bias"), &[f], &[f], &[tf])?;
            let fc_proj_w = b.add(n("mlp.c_proj.weight"), &[f, c], &[f, c], &[tf, tc])?;
            let fc_proj_b = b.add(n("mlp.c_proj.bias"), &[c], &[c], &[tc])?;
            blocks.push(BlockParams {
                ln1_g,
                ln1_b,
                attn_w,
                attn_b,
                proj_w,
                proj_b,
                ln2_g,
                ln2_b,
                fc_w,
                fc_b,
                fc_proj_w,
                fc_proj_b,
            });
        }
        let lnf_g = b.add("ln_f.weight".into(), &[c], &[c], &[tc])?;
        let lnf_b = b.add("ln_f.bias".into(), &[c], &[c], &[tc])?;
        Ok(Params {
            list: b.list,
            wte,
            wpe,
            blocks,
            lnf_g,
            lnf_b,
        })
    }

    pub fn find(&self, name: &str) -> Option<&Param> {
        self.list.iter().find(|p| p.name == name)
    }

    /// Parameter `i`'s value, gradient tensors.
    pub fn v(&self, i: usize) -> &Tensor {
        &self.list[i].value
    }
    pub fn g(&self, i: usize) -> &Tensor {
        &self.list[i].grad
    }
}
