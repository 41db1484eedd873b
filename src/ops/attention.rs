//! Causal multi-head attention on tiles, flash-attention style: for each
//! (batch tile, query tile, head tile) a chain of tasks folds in one key tile
//! at a time with an online softmax, so no more than one query-tile x
//! key-tile block of scores exists at once. Key tiles wholly in the future
//! of a query tile are skipped.
//!
//! Layouts: qkv [B, T, 3, NH, HS] with the "3" axis cut by 1 (so a tile is
//! [b, t, 1, h, hs]); o [B, T, NH, HS]; lse [B, T, NH] in the accumulation
//! dtype. Backward recomputes the probabilities from lse; dq is chained over
//! key tiles and dk, dv over query tiles (RW), so results are the same for
//! any schedule.

use super::footprint;
use super::layernorm::acc_dtype;
use crate::error::{shape_err, Result};
use crate::kernels::cpu::attention as k;
use crate::runtime::{codelet, Access, DataHandle, Runtime};
use crate::tensor::Tensor;
use crate::{with_acc_dtype, with_dtype, DType};

/// Dropout of attention probabilities: (seed, stream, p).
pub type AttnDropout = Option<(u64, u64, f64)>;

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
        let (mh, lh, ah) = (st.m.clone(), st.l.clone(), st.acc.clone());
        let drop = drop_arg(dropout, &dm, off[0], off[2]);
        for kj in 0..=c[1] {
            let k0 = kj * tt;
            let tk = g.tile_shape(&[c[0], kj, 0, c[2], 0])[1];
            let q = qkv.tile(&[c[0], c[1], 0, c[2], 0]).clone();
            let kk = qkv.tile(&[c[0], kj, 1, c[2], 0]).clone();
            let v = qkv.tile(&[c[0], kj, 2, c[2], 0]).clone();
            let flops = 4.0 * (b * h * tq * tk * hs) as f64;
            rt.submit(
                codelet(
                    "attn_fwd",
                    flops,
                    footprint(&[b as u64, tq as u64, tk as u64, h as u64, hs as u64]),
                    move |bf| {
                        with_dtype!(dt, T, {
                            k::attn_fwd_update::<T>(
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
                            )
                        });
                        Ok(())
                    },
                ),
                vec![
                    (q, Access::R),
                    (kk, Access::R),
                    (v, Access::R),
                    (mh.clone(), Access::RW),
                    (lh.clone(), Access::RW),
                    (ah.clone(), Access::RW),
                ],
            )?;
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
        let (b, tq, h, hs) = (ts[0], ts[1], ts[2], ts[3]);
        rt.submit(
            codelet(
                "attn_bwd_delta",
                (2 * b * tq * h * hs) as f64,
                footprint(&[(b * tq * h) as u64, hs as u64]),
                move |bf| {
                    with_dtype!(dt, T, {
                        k::attn_bwd_delta::<T>(bf.r(0)?, bf.r(1)?, b, tq, h, hs, bf.w(2)?)
                    });
                    Ok(())
                },
            ),
            vec![
                (oh.clone(), Access::R),
                (d_o.tiles[oi].clone(), Access::R),
                (delta.tile(&c[..3]).clone(), Access::W),
            ],
        )?;
    }
    for (oi, _) in o.tiles.iter().enumerate() {
        let c = o.grid.coords(oi);
        let ts = o.grid.tile_shape(&c);
        let off = o.grid.tile_offset(&c);
        let (b, tq, h, hs) = (ts[0], ts[1], ts[2], ts[3]);
        let q0 = off[1];
        let drop = drop_arg(dropout, &dm, off[0], off[2]);
        for kj in 0..=c[1] {
            let k0 = kj * tt;
            let tk = g.tile_shape(&[c[0], kj, 0, c[2], 0])[1];
            let flops = 10.0 * (b * h * tq * tk * hs) as f64;
            let t = |ti: usize, part: usize| qkv.tile(&[c[0], ti, part, c[2], 0]).clone();
            let dtile = |ti: usize, part: usize| dqkv.tile(&[c[0], ti, part, c[2], 0]).clone();
            rt.submit(
                codelet(
                    "attn_bwd",
                    flops,
                    footprint(&[b as u64, tq as u64, tk as u64, h as u64, hs as u64]),
                    move |bf| {
                        with_dtype!(dt, T, {
                            k::attn_bwd_update::<T>(
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
                            )
                        });
                        Ok(())
                    },
                ),
                vec![
                    (t(c[1], 0), Access::R),
                    (t(kj, 1), Access::R),
                    (t(kj, 2), Access::R),
                    (d_o.tiles[oi].clone(), Access::R),
                    (lse.tile(&c[..3]).clone(), Access::R),
                    (delta.tile(&c[..3]).clone(), Access::R),
                    (dtile(c[1], 0), Access::RW),
                    (dtile(kj, 1), Access::RW),
                    (dtile(kj, 2), Access::RW),
                ],
            )?;
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
/// Only the valid rows of each cache tile are handed to the kernel, one
/// batch row at a time (a prefix of the rows of one batch row is
/// contiguous), so a step costs time linear in `q0 + n` whatever the cache
/// tiling, and cache rows not yet written are never read.
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
        let (mh, lh, ah) = (st.m.clone(), st.l.clone(), st.acc.clone());
        // Key tiles up to the last query of this tile; every one holds at
        // least one key at or before that query.
        for kj in 0..(qa + tq).div_ceil(pt) {
            let k0 = kj * pt;
            let rows = kg.tile_shape(&[c[0], kj, 0, c[2], 0])[1];
            let tk = rows.min(qa + tq - k0);
            let q = qkv.tile(&[c[0], c[1], 0, c[2], 0]).clone();
            let kk = kv.tile(&[c[0], kj, 0, c[2], 0]).clone();
            let v = kv.tile(&[c[0], kj, 1, c[2], 0]).clone();
            let flops = 4.0 * (b * h * tq * tk * hs) as f64;
            rt.submit(
                codelet(
                    "attn_fwd_cached",
                    flops,
                    footprint(&[b as u64, tq as u64, tk as u64, h as u64, hs as u64]),
                    move |bf| {
                        with_dtype!(dt, T, {
                            let (q, kk, v) = (bf.r::<T>(0)?, bf.r::<T>(1)?, bf.r::<T>(2)?);
                            let (m, l, acc) = (bf.w(3)?, bf.w(4)?, bf.w(5)?);
                            // One batch row at a time: q, m, l, acc are cut
                            // evenly; k and v keep their first tk of `rows`.
                            let (qn, sn, kn) = (tq * h * hs, tq * h, rows * h * hs);
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
                                    qa,
                                    k0,
                                    scale,
                                    None,
                                    &mut m[r * sn..][..sn],
                                    &mut l[r * sn..][..sn],
                                    &mut acc[r * qn..][..qn],
                                );
                            }
                        });
                        Ok(())
                    },
                ),
                vec![
                    (q, Access::R),
                    (kk, Access::R),
                    (v, Access::R),
                    (mh.clone(), Access::RW),
                    (lh.clone(), Access::RW),
                    (ah.clone(), Access::RW),
                ],
            )?;
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
        rt.submit(
            codelet(
                "attn_init",
                0.0,
                footprint(&[(b * tq * h) as u64]),
                move |bf| {
                    with_acc_dtype!(ad, A, {
                        k::attn_fwd_init::<A>(bf.w(0)?, bf.w(1)?, bf.w(2)?)
                    });
                    Ok(())
                },
            ),
            vec![
                (st.m.clone(), Access::W),
                (st.l.clone(), Access::W),
                (st.acc.clone(), Access::W),
            ],
        )?;
        Ok(st)
    }

    /// o = acc / l and lse = m + ln l.
    fn finish(
        self,
        rt: &Runtime,
        dt: DType,
        (b, tq, h, hs): (usize, usize, usize, usize),
        o: &DataHandle,
        lse: &DataHandle,
    ) -> Result<()> {
        rt.submit(
            codelet(
                "attn_finalize",
                (b * tq * h * hs) as f64,
                footprint(&[(b * tq * h) as u64, hs as u64]),
                move |bf| {
                    with_dtype!(dt, T, {
                        k::attn_fwd_finalize::<T>(
                            bf.r(0)?,
                            bf.r(1)?,
                            bf.r(2)?,
                            b,
                            tq,
                            h,
                            hs,
                            bf.w(3)?,
                            bf.w(4)?,
                        )
                    });
                    Ok(())
                },
            ),
            vec![
                (self.m, Access::R),
                (self.l, Access::R),
                (self.acc, Access::R),
                (o.clone(), Access::W),
                (lse.clone(), Access::W),
            ],
        )?;
        Ok(())
    }
}
