//! Causal multi-head attention on tiles, flash-attention style: for each
//! (batch tile, query tile, head tile) a chain of tasks folds in one key tile
//! at a time with an online softmax, so no more than one query-tile x
//! key-tile block of scores exists at once per task. Key tiles wholly in
//! the future of a query tile are skipped.
//!
//! Layouts: qkv [B, T, 3, NH, HS] with the "3" axis cut by 1 (so a tile is
//! [b, t, 1, h, hs]); o [B, T, NH, HS]; lse [B, T, NH] in the accumulation
//! dtype. Backward recomputes the probabilities from lse; dq is chained over
//! key tiles and dk, dv over query tiles (RW), so results are the same for
//! any schedule. Gradient convention: dqkv is overwritten (zeroed here, then
//! every tile pair accumulates its terms).
//!
//! Every task runs on CUDA too (`cuda/attention.cu`, every dtype, attention
//! dropout included with the CPU's mask) when the head size is at most
//! [`ATTN_HS_MAX`]; larger heads stay on the CPU. The forward update and the
//! backward of a tile pair have two CUDA paths: the warp path
//! (`cuda/attention.cu`, one warp walks the keys of one query row on CUDA
//! cores) and the tensor-core path (`kernels::cuda::attention_tc`: QK^T, PV and the
//! backward products through cuBLAS, with one query-tile x key-tile block
//! of scores in a scratch buffer of the task, for f32/bf16/f16). The
//! tensor-core path is taken when the pair is big enough to pay
//! ([`TC_MIN_TILE`] queries and keys); `GPT2RS_ATTN=warp` or `blas` forces
//! one path (`blas` wherever it supports the dtype), read per task so tests
//! can switch it. The cached (KV-cache) update always takes the warp path.

use super::footprint;
use super::layernorm::acc_dtype;
use crate::error::{shape_err, Result};
use crate::kernels::cpu::attention as k;
use crate::kernels::cuda::attention::{self as cat, AttnDropArgs, ATTN_HS_MAX};
use crate::kernels::cuda::attention_tc::{attn_bwd_tc, attn_fwd_tc, attn_tc_supports};
use crate::runtime::DevBuffers;
use crate::runtime::{Access, Buffers, Codelet, DataHandle, Runtime, Where};
use crate::tensor::Tensor;
use crate::{with_acc_dtype, with_dtype, DType};

/// Dropout of attention probabilities: (seed, stream, p).
pub type AttnDropout = Option<(u64, u64, f64)>;

/// Query and key rows from which a tile pair takes the tensor-core path on
/// a GPU (below, the per-row warp kernels win: the cuBLAS calls and the
/// score round trip through memory do not pay).
pub const TC_MIN_TILE: usize = 64;

/// The environment variable that forces a CUDA attention path.
pub const ATTN_PATH_ENV: &str = "GPT2RS_ATTN";

struct Dims {
    bsz: usize,
    nh: usize,
    t: usize,
    hs: usize,
}

fn dims(qkv: &Tensor, o: &Tensor) -> Result<Dims> {
    let s = &qkv.grid.shape;
    let ok = qkv.ndim() == 5
        && s[2] == 3
        && qkv.grid.tile[2] == 1
        && qkv.grid.tile[4] == s[4]
        && o.grid.shape == [s[0], s[1], s[3], s[4]]
        && o.grid.tile
            == [
                qkv.grid.tile[0],
                qkv.grid.tile[1],
                qkv.grid.tile[3],
                qkv.grid.tile[4],
            ];
    if !ok {
        return Err(shape_err(
            "attention",
            format!(
                "qkv {:?} (tiles {:?}) must be [B, T, 3, NH, HS] cut by 1 on the 3 and whole on HS, \
                 and o {:?} (tiles {:?}) [B, T, NH, HS] cut alike",
                qkv.grid.shape, qkv.grid.tile, o.grid.shape, o.grid.tile
            ),
        ));
    }
    Ok(Dims {
        bsz: s[0],
        nh: s[3],
        t: s[1],
        hs: s[4],
    })
}

type DropArg = Option<(u64, u64, f64, [usize; 4], [usize; 2])>;

fn drop_arg(d: AttnDropout, dm: &Dims, b0: usize, h0: usize) -> DropArg {
    d.filter(|x| x.2 > 0.0)
        .map(|(seed, stream, p)| (seed, stream, p, [dm.bsz, dm.nh, dm.t, dm.t], [b0, h0]))
}

/// One attention task; operands (in submission order) per variant.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// (m W, l W, acc W), in the accumulation dtype.
    Init,
    /// (q R, k R, v R, m RW, l RW, acc RW). `ks` >= `tk`: key/value rows per
    /// batch row in the k and v tiles (a KV-cache tile: `cached`, whose
    /// first `tk` rows per batch row are used).
    Update {
        tk: usize,
        ks: usize,
        q0: usize,
        k0: usize,
        scale: f64,
        drop: DropArg,
        cached: bool,
    },
    /// (m R, l R, acc R, o W, lse W).
    Finalize,
    /// (o R, dO R, delta W).
    Delta,
    /// (q R, k R, v R, dO R, lse R, delta R, dq RW, dk RW, dv RW).
    Bwd {
        tk: usize,
        q0: usize,
        k0: usize,
        scale: f64,
        drop: DropArg,
    },
}

struct AttnTask {
    op: Op,
    /// Storage dtype of the q/k/v/o tiles (for `Init`, the accumulation dtype).
    dt: DType,
    /// Batch rows, query positions, heads and head size of the query tile.
    b: usize,
    tq: usize,
    h: usize,
    hs: usize,
}

impl AttnTask {
    /// Whether a non-cached update or backward of `tk` keys takes the
    /// tensor-core path: `GPT2RS_ATTN=warp` never, `blas` whenever it
    /// supports the dtype, otherwise (unset or any other value) for tile
    /// pairs of at least [`TC_MIN_TILE`] queries and keys.
    fn tensor_cores(&self, tk: usize) -> bool {
        if !attn_tc_supports(self.dt, self.hs) {
            return false;
        }
        match std::env::var(ATTN_PATH_ENV).as_deref() {
            Ok("warp") => false,
            Ok("blas") => true,
            _ => self.tq >= TC_MIN_TILE && tk >= TC_MIN_TILE,
        }
    }
}

impl Codelet for AttnTask {
    fn name(&self) -> &'static str {
        match self.op {
            Op::Init => "attn_init",
            Op::Update { cached: false, .. } => "attn_fwd",
            Op::Update { cached: true, .. } => "attn_fwd_cached",
            Op::Finalize => "attn_finalize",
            Op::Delta => "attn_bwd_delta",
            Op::Bwd { .. } => "attn_bwd",
        }
    }
    fn flops(&self) -> f64 {
        let (b, tq, h, hs) = (self.b, self.tq, self.h, self.hs);
        match self.op {
            Op::Init => 0.0,
            Op::Update { tk, .. } => 4.0 * (b * h * tq * tk * hs) as f64,
            Op::Finalize => (b * tq * h * hs) as f64,
            Op::Delta => (2 * b * tq * h * hs) as f64,
            Op::Bwd { tk, .. } => 10.0 * (b * h * tq * tk * hs) as f64,
        }
    }
    fn footprint(&self) -> u64 {
        let (b, tq, h, hs) = (self.b as u64, self.tq as u64, self.h as u64, self.hs as u64);
        match self.op {
            Op::Init => footprint(&[b * tq * h]),
            Op::Update { tk, .. } | Op::Bwd { tk, .. } => footprint(&[b, tq, tk as u64, h, hs]),
            Op::Finalize | Op::Delta => footprint(&[b * tq * h, hs]),
        }
    }
    fn where_(&self) -> Where {
        match self.op {
            // The update kernels keep a head row in registers.
            Op::Update { .. } | Op::Bwd { .. } if self.hs > ATTN_HS_MAX => Where::ANY_CPU,
            _ => Where::ANY,
        }
    }
    fn cpu(&self, bf: &Buffers) -> Result<()> {
        let (b, tq, h, hs) = (self.b, self.tq, self.h, self.hs);
        if let Op::Init = self.op {
            with_acc_dtype!(self.dt, A, {
                k::attn_fwd_init::<A>(bf.w(0)?, bf.w(1)?, bf.w(2)?)
            });
            return Ok(());
        }
        with_dtype!(self.dt, T, {
            match self.op {
                Op::Update {
                    tk,
                    q0,
                    k0,
                    scale,
                    drop,
                    cached: false,
                    ..
                } => k::attn_fwd_update::<T>(
                    bf.r(0)?,
                    bf.r(1)?,
                    bf.r(2)?,
                    b,
                    tq,
                    tk,
                    h,
                    hs,
                    q0,
                    k0,
                    scale,
                    drop,
                    bf.w(3)?,
                    bf.w(4)?,
                    bf.w(5)?,
                ),
                Op::Update {
                    tk,
                    ks,
                    q0,
                    k0,
                    scale,
                    cached: true,
                    ..
                } => {
                    let (q, kk, v) = (bf.r::<T>(0)?, bf.r::<T>(1)?, bf.r::<T>(2)?);
                    let (m, l, acc) = (bf.w(3)?, bf.w(4)?, bf.w(5)?);
                    // One batch row at a time: q, m, l, acc are cut
                    // evenly; k and v keep their first tk of `ks` rows.
                    let (qn, sn, kn) = (tq * h * hs, tq * h, ks * h * hs);
                    for r in 0..b {
                        k::attn_fwd_update::<T>(
                            &q[r * qn..][..qn],
                            &kk[r * kn..][..tk * h * hs],
                            &v[r * kn..][..tk * h * hs],
                            1,
                            tq,
                            tk,
                            h,
                            hs,
                            q0,
                            k0,
                            scale,
                            None,
                            &mut m[r * sn..][..sn],
                            &mut l[r * sn..][..sn],
                            &mut acc[r * qn..][..qn],
                        );
                    }
                }
                Op::Finalize => k::attn_fwd_finalize::<T>(
                    bf.r(0)?,
                    bf.r(1)?,
                    bf.r(2)?,
                    b,
                    tq,
                    h,
                    hs,
                    bf.w(3)?,
                    bf.w(4)?,
                ),
                Op::Delta => k::attn_bwd_delta::<T>(bf.r(0)?, bf.r(1)?, b, tq, h, hs, bf.w(2)?),
                Op::Bwd {
                    tk,
                    q0,
                    k0,
                    scale,
                    drop,
                } => k::attn_bwd_update::<T>(
                    bf.r(0)?,
                    bf.r(1)?,
                    bf.r(2)?,
                    bf.r(3)?,
                    bf.r(4)?,
                    bf.r(5)?,
                    b,
                    tq,
                    tk,
                    h,
                    hs,
                    q0,
                    k0,
                    scale,
                    drop,
                    bf.w(6)?,
                    bf.w(7)?,
                    bf.w(8)?,
                ),
                Op::Init => unreachable!("handled above"),
            }
        });
        Ok(())
    }
    fn cuda(&self, bf: &DevBuffers) -> Result<()> {
        let (b, tq, h, hs, g) = (self.b, self.tq, self.h, self.hs, bf.gpu());
        let rows = b * tq * h;
        if let Op::Init = self.op {
            return with_acc_dtype!(self.dt, A, {
                cat::attn_fwd_init::<A>(g, rows, hs, &mut bf.w(0)?, &mut bf.w(1)?, &mut bf.w(2)?)
            });
        }
        with_dtype!(self.dt, T, {
            match self.op {
                Op::Update {
                    tk,
                    ks,
                    q0,
                    k0,
                    scale,
                    drop,
                    cached,
                } => {
                    // The cached task has no dropout (inference).
                    let d = AttnDropArgs::new(if cached { None } else { drop });
                    if !cached && self.tensor_cores(tk) {
                        return attn_fwd_tc::<T>(
                            g,
                            [&bf.r(0)?, &bf.r(1)?, &bf.r(2)?],
                            [b, tq, tk, h, hs],
                            [q0, k0],
                            scale,
                            d,
                            [&mut bf.w(3)?, &mut bf.w(4)?, &mut bf.w(5)?],
                        );
                    }
                    let (q, k, v) = (bf.r(0)?, bf.r(1)?, bf.r(2)?);
                    let (mut m, mut l, mut acc) = (bf.w(3)?, bf.w(4)?, bf.w(5)?);
                    cat::flash_fwd::<T>(
                        g, &q, &k, &v, b, tq, tk, ks, h, hs, q0, k0, scale, d, &mut m, &mut l,
                        &mut acc,
                    )
                }
                Op::Finalize => cat::attn_fwd_finalize::<T>(
                    g,
                    &bf.r(0)?,
                    &bf.r(1)?,
                    &bf.r(2)?,
                    rows,
                    hs,
                    &mut bf.w(3)?,
                    &mut bf.w(4)?,
                ),
                Op::Delta => {
                    cat::attn_bwd_delta::<T>(g, &bf.r(0)?, &bf.r(1)?, rows, hs, &mut bf.w(2)?)
                }
                Op::Bwd {
                    tk,
                    q0,
                    k0,
                    scale,
                    drop,
                } if self.tensor_cores(tk) => attn_bwd_tc::<T>(
                    g,
                    [&bf.r(0)?, &bf.r(1)?, &bf.r(2)?, &bf.r(3)?],
                    [&bf.r(4)?, &bf.r(5)?],
                    [b, tq, tk, h, hs],
                    [q0, k0],
                    scale,
                    AttnDropArgs::new(drop),
                    [&mut bf.w(6)?, &mut bf.w(7)?, &mut bf.w(8)?],
                ),
                Op::Bwd {
                    tk,
                    q0,
                    k0,
                    scale,
                    drop,
                } => {
                    let (q, k, v, d_o) = (bf.r(0)?, bf.r(1)?, bf.r(2)?, bf.r(3)?);
                    let (lse, delta, d) = (bf.r(4)?, bf.r(5)?, AttnDropArgs::new(drop));
                    let (mut dq, mut dk, mut dv) = (bf.w(6)?, bf.w(7)?, bf.w(8)?);
                    cat::flash_bwd::<T>(
                        g, &q, &k, &v, &d_o, &lse, &delta, b, tq, tk, h, hs, q0, k0, scale, d,
                        &mut dq, &mut dk, &mut dv,
                    )
                }
                Op::Init => unreachable!("handled above"),
            }
        })
    }
}

fn submit(
    rt: &Runtime,
    op: Op,
    dt: DType,
    (b, tq, h, hs): (usize, usize, usize, usize),
    ops: Vec<(DataHandle, Access)>,
) -> Result<()> {
    rt.submit(
        Box::new(AttnTask {
            op,
            dt,
            b,
            tq,
            h,
            hs,
        }),
        ops,
    )?;
    Ok(())
}

/// o = softmax(q k^T * scale, causal) v per head; also writes lse.
pub fn attention_fwd(qkv: &Tensor, o: &Tensor, lse: &Tensor, dropout: AttnDropout) -> Result<()> {
    let dm = dims(qkv, o)?;
    let rt = qkv.runtime();
    let (dt, ad) = (qkv.dtype, acc_dtype(qkv.dtype));
    let scale = 1.0 / (dm.hs as f64).sqrt();
    let g = &qkv.grid;
    let tt = g.tile[1];
    for (oi, oh) in o.tiles.iter().enumerate() {
        let c = o.grid.coords(oi); // [bi, ti, hi, 0]
        let ts = o.grid.tile_shape(&c);
        let off = o.grid.tile_offset(&c);
        let (b, tq, h, hs) = (ts[0], ts[1], ts[2], ts[3]);
        let q0 = off[1];
        let st = OnlineSoftmax::start(rt, b, tq, h, hs, ad)?;
        let drop = drop_arg(dropout, &dm, off[0], off[2]);
        for kj in 0..=c[1] {
            let k0 = kj * tt;
            let tk = g.tile_shape(&[c[0], kj, 0, c[2], 0])[1];
            let op = Op::Update {
                tk,
                ks: tk,
                q0,
                k0,
                scale,
                drop,
                cached: false,
            };
            let ops = vec![
                (qkv.tile(&[c[0], c[1], 0, c[2], 0]).clone(), Access::R),
                (qkv.tile(&[c[0], kj, 1, c[2], 0]).clone(), Access::R),
                (qkv.tile(&[c[0], kj, 2, c[2], 0]).clone(), Access::R),
                (st.m.clone(), Access::RW),
                (st.l.clone(), Access::RW),
                (st.acc.clone(), Access::RW),
            ];
            submit(rt, op, dt, (b, tq, h, hs), ops)?;
        }
        st.finish(rt, dt, (b, tq, h, hs), oh, lse.tile(&c[..3]))?;
    }
    Ok(())
}

/// Backward of `attention_fwd`: dqkv = the gradient (overwritten).
pub fn attention_bwd(
    qkv: &Tensor,
    o: &Tensor,
    d_o: &Tensor,
    lse: &Tensor,
    dqkv: &Tensor,
    dropout: AttnDropout,
) -> Result<()> {
    let dm = dims(qkv, o)?;
    let rt = qkv.runtime();
    let (dt, ad) = (qkv.dtype, acc_dtype(qkv.dtype));
    let scale = 1.0 / (dm.hs as f64).sqrt();
    let g = &qkv.grid;
    let tt = g.tile[1];
    super::fill(dqkv, 0.0)?;
    let delta = Tensor::zeros(
        rt,
        &lse.grid.shape,
        &lse.grid
            .tile
            .iter()
            .map(|&t| t as isize)
            .collect::<Vec<_>>(),
        ad,
    )?;
    for (oi, oh) in o.tiles.iter().enumerate() {
        let c = o.grid.coords(oi);
        let ts = o.grid.tile_shape(&c);
        let ops = vec![
            (oh.clone(), Access::R),
            (d_o.tiles[oi].clone(), Access::R),
            (delta.tile(&c[..3]).clone(), Access::W),
        ];
        submit(rt, Op::Delta, dt, (ts[0], ts[1], ts[2], ts[3]), ops)?;
    }
    for (oi, _) in o.tiles.iter().enumerate() {
        let c = o.grid.coords(oi);
        let ts = o.grid.tile_shape(&c);
        let off = o.grid.tile_offset(&c);
        let q0 = off[1];
        let drop = drop_arg(dropout, &dm, off[0], off[2]);
        for kj in 0..=c[1] {
            let k0 = kj * tt;
            let tk = g.tile_shape(&[c[0], kj, 0, c[2], 0])[1];
            let t = |ti: usize, part: usize| qkv.tile(&[c[0], ti, part, c[2], 0]).clone();
            let dtile = |ti: usize, part: usize| dqkv.tile(&[c[0], ti, part, c[2], 0]).clone();
            let op = Op::Bwd {
                tk,
                q0,
                k0,
                scale,
                drop,
            };
            let ops = vec![
                (t(c[1], 0), Access::R),
                (t(kj, 1), Access::R),
                (t(kj, 2), Access::R),
                (d_o.tiles[oi].clone(), Access::R),
                (lse.tile(&c[..3]).clone(), Access::R),
                (delta.tile(&c[..3]).clone(), Access::R),
                (dtile(c[1], 0), Access::RW),
                (dtile(kj, 1), Access::RW),
                (dtile(kj, 2), Access::RW),
            ];
            submit(rt, op, dt, (ts[0], ts[1], ts[2], ts[3]), ops)?;
        }
    }
    Ok(())
}

/// Causal attention of new queries over a key/value cache (incremental
/// decoding, no dropout): `qkv` [B, n, 3, NH, HS] holds the new positions
/// `q0..q0 + n` (only its q part is read), `kv` [B, P, 2, NH, HS] the keys
/// (index 0) and values (index 1) of positions `0..q0 + n`, the new ones
/// included. Writes `o` [B, n, NH, HS] and `lse` [B, n, NH] as
/// [`attention_fwd`] does.
///
/// Only the valid rows of each cache tile are read by the kernel (on the
/// CPU one batch row at a time: a prefix of the rows of one batch row is
/// contiguous; on a GPU through a batch stride), so a step costs time
/// linear in `q0 + n` whatever the cache tiling, and cache rows not yet
/// written are never read.
pub fn attention_fwd_cached(
    qkv: &Tensor,
    kv: &Tensor,
    q0: usize,
    o: &Tensor,
    lse: &Tensor,
) -> Result<()> {
    let dm = dims(qkv, o)?;
    let (s, kg) = (&qkv.grid.shape, &kv.grid);
    let ok = kv.ndim() == 5
        && kg.shape == [s[0], kg.shape[1], 2, s[3], s[4]]
        && kg.tile == [qkv.grid.tile[0], kg.tile[1], 1, qkv.grid.tile[3], s[4]]
        && kv.dtype == qkv.dtype;
    if !ok {
        return Err(shape_err(
            "attention_cached",
            format!(
                "cache {:?} (tiles {:?}, {}) must be [B, P, 2, NH, HS] cut like qkv {:?} \
                 (tiles {:?}, {}) on B, NH and HS, and by 1 on the 2",
                kg.shape, kg.tile, kv.dtype, s, qkv.grid.tile, qkv.dtype
            ),
        ));
    }
    let total = q0 + dm.t;
    if total > kg.shape[1] {
        return Err(shape_err(
            "attention_cached",
            format!(
                "positions up to {total} do not fit a cache of {} positions",
                kg.shape[1]
            ),
        ));
    }
    let rt = qkv.runtime();
    let (dt, ad) = (qkv.dtype, acc_dtype(qkv.dtype));
    let scale = 1.0 / (dm.hs as f64).sqrt();
    let pt = kg.tile[1];
    for (oi, oh) in o.tiles.iter().enumerate() {
        let c = o.grid.coords(oi); // [bi, ti, hi, 0]
        let ts = o.grid.tile_shape(&c);
        let off = o.grid.tile_offset(&c);
        let (b, tq, h, hs) = (ts[0], ts[1], ts[2], ts[3]);
        let qa = q0 + off[1];
        let st = OnlineSoftmax::start(rt, b, tq, h, hs, ad)?;
        // Key tiles up to the last query of this tile; every one holds at
        // least one key at or before that query.
        for kj in 0..(qa + tq).div_ceil(pt) {
            let k0 = kj * pt;
            let rows = kg.tile_shape(&[c[0], kj, 0, c[2], 0])[1];
            let op = Op::Update {
                tk: rows.min(qa + tq - k0),
                ks: rows,
                q0: qa,
                k0,
                scale,
                drop: None,
                cached: true,
            };
            let ops = vec![
                (qkv.tile(&[c[0], c[1], 0, c[2], 0]).clone(), Access::R),
                (kv.tile(&[c[0], kj, 0, c[2], 0]).clone(), Access::R),
                (kv.tile(&[c[0], kj, 1, c[2], 0]).clone(), Access::R),
                (st.m.clone(), Access::RW),
                (st.l.clone(), Access::RW),
                (st.acc.clone(), Access::RW),
            ];
            submit(rt, op, dt, (b, tq, h, hs), ops)?;
        }
        st.finish(rt, dt, (b, tq, h, hs), oh, lse.tile(&c[..3]))?;
    }
    Ok(())
}

/// The running state of an online softmax over key tiles for one output
/// tile: row max m, row sum l and the unnormalised output acc.
struct OnlineSoftmax {
    m: DataHandle,
    l: DataHandle,
    acc: DataHandle,
}

impl OnlineSoftmax {
    /// Fresh state (m = -inf, l = 0, acc = 0) for [b, tq, h] rows of hs.
    fn start(
        rt: &Runtime,
        b: usize,
        tq: usize,
        h: usize,
        hs: usize,
        ad: DType,
    ) -> Result<OnlineSoftmax> {
        let st = OnlineSoftmax {
            m: rt.new_handle(ad, b * tq * h)?,
            l: rt.new_handle(ad, b * tq * h)?,
            acc: rt.new_handle(ad, b * tq * h * hs)?,
        };
        let ops = vec![
            (st.m.clone(), Access::W),
            (st.l.clone(), Access::W),
            (st.acc.clone(), Access::W),
        ];
        submit(rt, Op::Init, ad, (b, tq, h, hs), ops)?;
        Ok(st)
    }

    /// o = acc / l and lse = m + ln l.
    fn finish(
        self,
        rt: &Runtime,
        dt: DType,
        shape: (usize, usize, usize, usize),
        o: &DataHandle,
        lse: &DataHandle,
    ) -> Result<()> {
        let ops = vec![
            (self.m, Access::R),
            (self.l, Access::R),
            (self.acc, Access::R),
            (o.clone(), Access::W),
            (lse.clone(), Access::W),
        ];
        submit(rt, Op::Finalize, dt, shape, ops)
    }
}
