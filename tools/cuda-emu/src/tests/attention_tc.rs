//! attention_tc.cu: the softmax steps of the tensor-core attention path
//! (attention_tc.rs), which run between cuBLAS products. The products are
//! done here on the host, as the launcher lays them out (score blocks
//! `[bc, h, nr, tk]`, query rows from `first`), in f64 rounded to f32 where
//! cuBLAS's fp32 products round in their own order; the whole path is
//! compared with the CPU's attention within the flash kernels' tolerance
//! (see attention.rs). f32 only: the kernels have no f64 instantiation.
//!
//! Query and key tiles are cut differently (36 + 4 and 20 + 20 positions of
//! T = 40), so some pairs start at a query row `first > 0`, and tiles of
//! more than 32 keys make the lanes stride; batch rows go in one chunk or
//! one at a time (`b0 > 0`).

use super::{close, eps, Buf, Rng};
use crate::attention_tc as emu;
use crate::AttnDropArgs;
use gpt2rs::kernels::cpu::attention::{self as kt, AttnDropout};
use gpt2rs::kernels::cuda::attention_tc::Geo;
use gpt2rs::kernels::cuda::blas::Strided;

const B: usize = 2;
const NH: usize = 3;
const T_: usize = 40;
const Q_TILES: [(usize, usize); 2] = [(0, 36), (36, 4)];
const K_TILES: [(usize, usize); 2] = [(0, 20), (20, 20)];

/// Positions `t0..t0 + n` of a `[B, T, NH, hs]` tensor.
fn tile(x: &[f32], hs: usize, t0: usize, n: usize) -> Vec<f32> {
    let row = NH * hs;
    (0..B)
        .flat_map(|b| x[(b * T_ + t0) * row..(b * T_ + t0 + n) * row].to_vec())
        .collect()
}

/// Element (row `r`, head `hd`) of an operand laid out as `s`.
fn at(s: Strided, hd: usize, r: usize) -> usize {
    s.offset + hd * s.stride + r * s.ld
}

/// One (query tile, key tile) pair: the operands and the launcher's
/// geometry of it (`Geo`: rows from `first`, score blocks `[bc, h, nr, tk]`).
struct Pair<'a> {
    g: Geo,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

impl Pair<'_> {
    /// Offset of query row `first + r` of batch row `bi`, head `hd`.
    fn qi(&self, bi: usize, hd: usize, r: usize) -> usize {
        at(self.g.q_heads(bi), hd, r)
    }
    /// Offset of key row `j` of batch row `bi`, head `hd`.
    fn ki(&self, bi: usize, hd: usize, j: usize) -> usize {
        at(self.g.k_heads(bi), hd, j)
    }
    /// Index in the chunk's score block of (bi, hd, r, j).
    fn si(&self, bi: usize, b0: usize, hd: usize, r: usize, j: usize) -> usize {
        at(self.g.s_heads(bi, b0), hd, r) + j
    }
    /// `alpha a_i . b_j` for every score of the chunk (a query-shaped, b
    /// key-shaped): the launcher's score GEMMs.
    fn scores(&self, a: &[f32], b: &[f32], alpha: f64, b0: usize, nb: usize) -> Vec<f32> {
        let g = &self.g;
        let mut s = vec![0.0f32; nb * g.blk()];
        for bi in b0..b0 + nb {
            for hd in 0..NH {
                for r in 0..g.nr {
                    for j in 0..g.tk {
                        let (x, y) = (self.qi(bi, hd, r), self.ki(bi, hd, j));
                        let dot: f64 = (0..g.hs).map(|d| a[x + d] as f64 * b[y + d] as f64).sum();
                        s[self.si(bi, b0, hd, r, j)] = (alpha * dot) as f32;
                    }
                }
            }
        }
        s
    }
}

/// The pair's geometry with chunks of `bc` batch rows (`None`: nothing to do).
fn geo(hs: usize, (q0, tq): (usize, usize), (k0, tk): (usize, usize), bc: usize) -> Option<Geo> {
    Geo::new([B, tq, tk, NH, hs], [q0, k0]).map(|g| Geo { bc, ..g })
}

fn run(hs: usize, drop: AttnDropout, bc: usize) {
    let scale = 1.0 / (hs as f64).sqrt();
    let full = B * T_ * NH * hs;
    let mut rng = Rng(90 + hs as u64);
    let (q, kk, v, d_o): (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) = (
        rng.vec(full, 0.0, 1.0),
        rng.vec(full, 0.0, 1.0),
        rng.vec(full, 0.0, 1.0),
        rng.vec(full, 0.0, 1.0),
    );
    let dev_drop = AttnDropArgs::new(drop);
    let tag = format!("hs {hs} dropout {drop:?} chunks of {bc}");
    let tol = (2.0 * (hs as f64).powf(1.5) / 3.0).max(64.0) * eps::<f32>();
    let zeros = |n: usize| vec![0.0f32; n];

    for &(q0, tq) in &Q_TILES {
        let (qt, dot) = (tile(&q, hs, q0, tq), tile(&d_o, hs, q0, tq));
        let rows = B * tq * NH;
        // Forward over the key tiles, the CPU's and the tensor-core path's.
        let (mut mw, mut lw, mut aw) = (zeros(rows), zeros(rows), zeros(rows * hs));
        kt::attn_fwd_init::<f32>(&mut mw, &mut lw, &mut aw);
        let (mut m, mut l, mut acc) = (Buf::new(&mw), Buf::new(&lw), Buf::new(&aw));
        for &(k0, tk) in &K_TILES {
            let (kt_, vt) = (tile(&kk, hs, k0, tk), tile(&v, hs, k0, tk));
            kt::attn_fwd_update::<f32>(
                &qt, &kt_, &vt, B, tq, tk, NH, hs, q0, k0, scale, drop, &mut mw, &mut lw, &mut aw,
            );
            let Some(g) = geo(hs, (q0, tq), (k0, tk), bc) else {
                continue;
            };
            let pr = Pair {
                g,
                q: &qt,
                k: &kt_,
                v: &vt,
            };
            for (b0, nb) in g.chunks() {
                let s = pr.scores(pr.q, pr.k, scale, b0, nb);
                let mut p = Buf::<f32>::filled(s.len(), f64::NAN); // the kernel writes every entry
                let (mp, lp, ap, pp) = (m.get_mut(), l.get_mut(), acc.get_mut(), p.get_mut());
                emu::attn_tc_fwd_rows::<f32>(&s, g, b0, dev_drop, mp, lp, ap, pp, nb);
                // acc += Pd V.
                let (p, a) = (p.get(), acc.get_mut());
                for bi in b0..b0 + nb {
                    for hd in 0..NH {
                        for r in 0..g.nr {
                            for d in 0..hs {
                                let sum: f64 = (0..tk)
                                    .map(|j| {
                                        p[pr.si(bi, b0, hd, r, j)] as f64
                                            * pr.v[pr.ki(bi, hd, j) + d] as f64
                                    })
                                    .sum();
                                let o = &mut a[pr.qi(bi, hd, r) + d];
                                *o = (*o as f64 + sum) as f32;
                            }
                        }
                    }
                }
            }
        }
        let at = format!("q tile {q0}+{tq} {tag}");
        close(&format!("attn_tc fwd m {at}"), m.get(), &mw, tol, tol);
        close(&format!("attn_tc fwd l {at}"), l.get(), &lw, tol, tol);
        close(&format!("attn_tc fwd acc {at}"), acc.get(), &aw, tol, tol);

        // Backward from the CPU's statistics.
        let (mut o, mut lse, mut delta) = (zeros(rows * hs), zeros(rows), zeros(rows));
        kt::attn_fwd_finalize::<f32>(&mw, &lw, &aw, B, tq, NH, hs, &mut o, &mut lse);
        kt::attn_bwd_delta::<f32>(&o, &dot, B, tq, NH, hs, &mut delta);
        for &(k0, tk) in &K_TILES {
            let (kt_, vt) = (tile(&kk, hs, k0, tk), tile(&v, hs, k0, tk));
            let (mut dqw, mut dkw, mut dvw) = (
                zeros(rows * hs),
                zeros(B * tk * NH * hs),
                zeros(B * tk * NH * hs),
            );
            kt::attn_bwd_update::<f32>(
                &qt, &kt_, &vt, &dot, &lse, &delta, B, tq, tk, NH, hs, q0, k0, scale, drop,
                &mut dqw, &mut dkw, &mut dvw,
            );
            let (mut dq, mut dk, mut dv) = (
                zeros(rows * hs),
                zeros(B * tk * NH * hs),
                zeros(B * tk * NH * hs),
            );
            if let Some(g) = geo(hs, (q0, tq), (k0, tk), bc) {
                let pr = Pair {
                    g,
                    q: &qt,
                    k: &kt_,
                    v: &vt,
                };
                for (b0, nb) in g.chunks() {
                    let s = pr.scores(pr.q, pr.k, scale, b0, nb);
                    let dp = pr.scores(&dot, pr.v, 1.0, b0, nb);
                    let (mut pd, mut ds) = (
                        Buf::<f32>::filled(s.len(), f64::NAN),
                        Buf::<f32>::filled(s.len(), f64::NAN),
                    );
                    let (pdp, dsp) = (pd.get_mut(), ds.get_mut());
                    emu::attn_tc_bwd_rows::<f32>(
                        &s, &dp, &lse, &delta, g, b0, dev_drop, pdp, dsp, nb,
                    );
                    let (pd, ds) = (pd.get(), ds.get());
                    // dV += Pd^T dO, dQ += scale dS K, dK += scale dS^T Q.
                    for bi in b0..b0 + nb {
                        for hd in 0..NH {
                            for d in 0..hs {
                                for j in 0..tk {
                                    let (gv, gk): (f64, f64) = (0..g.nr)
                                        .map(|r| {
                                            let (x, y) =
                                                (pr.si(bi, b0, hd, r, j), pr.qi(bi, hd, r) + d);
                                            (
                                                pd[x] as f64 * dot[y] as f64,
                                                ds[x] as f64 * qt[y] as f64,
                                            )
                                        })
                                        .fold((0.0, 0.0), |(a, b), (c, e)| (a + c, b + e));
                                    let y = pr.ki(bi, hd, j) + d;
                                    dv[y] = (dv[y] as f64 + gv) as f32;
                                    dk[y] = (dk[y] as f64 + scale * gk) as f32;
                                }
                                for r in 0..g.nr {
                                    let g: f64 = (0..tk)
                                        .map(|j| {
                                            ds[pr.si(bi, b0, hd, r, j)] as f64
                                                * kt_[pr.ki(bi, hd, j) + d] as f64
                                        })
                                        .sum();
                                    let y = pr.qi(bi, hd, r) + d;
                                    dq[y] = (dq[y] as f64 + scale * g) as f32;
                                }
                            }
                        }
                    }
                }
            }
            let at = format!("q tile {q0}+{tq} k tile {k0}+{tk} {tag}");
            close(&format!("attn_tc bwd dq {at}"), &dq, &dqw, tol, tol);
            close(&format!("attn_tc bwd dk {at}"), &dk, &dkw, tol, tol);
            close(&format!("attn_tc bwd dv {at}"), &dv, &dvw, tol, tol);
        }
    }
}

/// Dropout over a tensor of B + 1 batch rows and NH + 2 heads, this tile at
/// batch row 1 and head 2.
const DROP: AttnDropout = Some((42, 5, 0.3, [B + 1, NH + 2, T_, T_], [1, 2]));

#[test]
fn attention_tc_f32() {
    for hs in [8, 40] {
        for drop in [None, DROP] {
            for bc in [B, 1] {
                run(hs, drop, bc);
            }
        }
    }
}
