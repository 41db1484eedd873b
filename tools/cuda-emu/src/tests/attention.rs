//! attention.cu: flash forward (with dropout, with a KV-cache stride) and
//! backward, init, finalize and delta, over T = 11 positions in tiles
//! of 4 (the last of 3), causal, against the CPU's tiled attention.
//!
//! A warp reduces each dot product in a tree where the CPU adds in order, and
//! exp differs by an ulp between libdevice and the CPU: a score s = scale q.k
//! (|q|, |k| <= 1 per component) may differ by about hs^1.5 eps(T) / 3 in the
//! worst case, and the softmax weights and outputs relatively by as much
//! (the tolerance below is twice that, floored at 64 eps for the exp and the
//! accumulation). Init, the output of finalize and the mask are exact.

use super::{close, eps, exact, Buf, Dev, Rng};
use crate::attention as emu;
use crate::AttnDropArgs;
use gpt2rs::dtype::Element;
use gpt2rs::kernels::cpu::attention::{self as kt, AttnDropout};

const B: usize = 2;
const NH: usize = 3;
const T_: usize = 11;
const TILE: usize = 4;

/// Positions `t0..t0 + n` of a `[B, T, NH, hs]` tensor (whole B and NH).
fn tile<X: Copy>(x: &[X], hs: usize, t0: usize, n: usize) -> Vec<X> {
    let row = NH * hs;
    (0..B)
        .flat_map(|b| x[(b * T_ + t0) * row..(b * T_ + t0 + n) * row].to_vec())
        .collect()
}

fn zeros<T: Element>(n: usize) -> Vec<T> {
    vec![T::from_f64(0.0); n]
}

fn attention<T: Dev>(hs: usize, drop: AttnDropout) {
    let scale = 1.0 / (hs as f64).sqrt();
    let full = B * T_ * NH * hs;
    let mut rng = Rng(70 + hs as u64);
    let (q, kk, v, d_o): (Vec<T>, Vec<T>, Vec<T>, Vec<T>) = (
        rng.vec(full, 0.0, 1.0),
        rng.vec(full, 0.0, 1.0),
        rng.vec(full, 0.0, 1.0),
        rng.vec(full, 0.0, 1.0),
    );
    let tiles: Vec<(usize, usize)> = (0..T_)
        .step_by(TILE)
        .map(|s| (s, TILE.min(T_ - s)))
        .collect();
    // The launcher's own conversion of the CPU's dropout tuple.
    let dev_drop = AttnDropArgs::new(drop);
    let tag = format!("hs {hs} dropout {drop:?}");
    let tol = (2.0 * (hs as f64).powf(1.5) / 3.0).max(64.0) * eps::<T>();

    // Forward, one query tile at a time, over the visible key tiles.
    let (mut lses, mut outs) = (vec![], vec![]);
    for &(q0, tq) in &tiles {
        let qt = tile(&q, hs, q0, tq);
        let rows = B * tq * NH;
        let (mut mw, mut lw, mut aw) = (zeros::<T>(rows), zeros::<T>(rows), zeros::<T>(rows * hs));
        kt::attn_fwd_init::<T>(&mut mw, &mut lw, &mut aw);
        let (mut m, mut l, mut a) = (
            Buf::<T>::filled(rows, 9.0),
            Buf::<T>::filled(rows, 9.0),
            Buf::<T>::filled(rows * hs, 9.0),
        );
        emu::attn_fwd_init::<T>(rows, hs, m.get_mut(), l.get_mut(), a.get_mut());
        exact(&format!("attn_fwd_init m {tag}"), m.get(), &mw);
        exact(&format!("attn_fwd_init l {tag}"), l.get(), &lw);
        exact(&format!("attn_fwd_init acc {tag}"), a.get(), &aw);
        // Key tiles left of the diagonal, the diagonal one, and one right
        // of it (no visible key: rows untouched).
        let visible = tiles.iter().filter(|&&(k0, _)| k0 <= q0 + TILE);
        for &(k0, tk) in visible {
            let (kt_, vt) = (tile(&kk, hs, k0, tk), tile(&v, hs, k0, tk));
            kt::attn_fwd_update::<T>(
                &qt, &kt_, &vt, B, tq, tk, NH, hs, q0, k0, scale, drop, &mut mw, &mut lw, &mut aw,
            );
            let (mp, lp, ap) = (m.get_mut(), l.get_mut(), a.get_mut());
            #[rustfmt::skip]
            emu::flash_fwd::<T>(
                &qt, &kt_, &vt, B, tq, tk, tk, NH, hs, q0, k0, scale, dev_drop, mp, lp, ap,
            );
        }
        let at = format!("q0={q0} {tag}");
        close(&format!("flash_fwd m {at}"), m.get(), &mw, tol, tol);
        close(&format!("flash_fwd l {at}"), l.get(), &lw, tol, tol);
        close(&format!("flash_fwd acc {at}"), a.get(), &aw, tol, tol);
        // Finalize from the CPU's state: o = acc * (1 / l) exactly; lse
        // through log (libdevice's on the GPU).
        let (mut ow, mut lsew) = (zeros::<T>(rows * hs), zeros::<T>(rows));
        kt::attn_fwd_finalize::<T>(&mw, &lw, &aw, B, tq, NH, hs, &mut ow, &mut lsew);
        let (mut o, mut lse) = (Buf::<T>::zeros(rows * hs), Buf::<T>::zeros(rows));
        emu::attn_fwd_finalize::<T>(&mw, &lw, &aw, rows, hs, o.get_mut(), lse.get_mut());
        exact(&format!("attn_fwd_finalize o {at}"), o.get(), &ow);
        close(
            &format!("attn_fwd_finalize lse {at}"),
            lse.get(),
            &lsew,
            2.0 * eps::<T>(),
            0.0,
        );
        lses.push(lsew);
        outs.push(ow);
    }

    // Backward: delta per query tile, then every visible pair.
    let mut deltas = vec![];
    for (i, &(q0, tq)) in tiles.iter().enumerate() {
        let rows = B * tq * NH;
        let dot = tile(&d_o, hs, q0, tq);
        let mut want = zeros::<T>(rows);
        kt::attn_bwd_delta::<T>(&outs[i], &dot, B, tq, NH, hs, &mut want);
        let mut delta = Buf::<T>::zeros(rows);
        emu::attn_bwd_delta::<T>(&outs[i], &dot, rows, hs, delta.get_mut());
        close(
            &format!("attn_bwd_delta q0={q0} {tag}"),
            delta.get(),
            &want,
            tol,
            tol,
        );
        deltas.push(want);
    }
    let grads = || -> Vec<Vec<T>> {
        tiles
            .iter()
            .map(|&(_, n)| zeros::<T>(B * n * NH * hs))
            .collect()
    };
    let bufs = || -> Vec<Buf<T>> {
        tiles
            .iter()
            .map(|&(_, n)| Buf::zeros(B * n * NH * hs))
            .collect()
    };
    let (mut dqw, mut dkw, mut dvw) = (grads(), grads(), grads());
    let (mut dq, mut dk, mut dv) = (bufs(), bufs(), bufs());
    for (i, &(q0, tq)) in tiles.iter().enumerate() {
        let (qt, dot) = (tile(&q, hs, q0, tq), tile(&d_o, hs, q0, tq));
        for (j, &(k0, tk)) in tiles
            .iter()
            .enumerate()
            .filter(|&(_, &(k0, _))| k0 <= q0 + TILE)
        {
            let (kt_, vt) = (tile(&kk, hs, k0, tk), tile(&v, hs, k0, tk));
            kt::attn_bwd_update::<T>(
                &qt,
                &kt_,
                &vt,
                &dot,
                &lses[i],
                &deltas[i],
                B,
                tq,
                tk,
                NH,
                hs,
                q0,
                k0,
                scale,
                drop,
                &mut dqw[i],
                &mut dkw[j],
                &mut dvw[j],
            );
            let (a, b, c) = (dq[i].get_mut(), dk[j].get_mut(), dv[j].get_mut());
            let (lp, dp) = (&lses[i], &deltas[i]);
            #[rustfmt::skip]
            emu::flash_bwd::<T>(
                &qt, &kt_, &vt, &dot, lp, dp, B, tq, tk, NH, hs, q0, k0, scale, dev_drop, a, b, c,
            );
        }
    }
    for i in 0..tiles.len() {
        let at = format!("tile {i} {tag}");
        close(
            &format!("flash_bwd dq {at}"),
            dq[i].get(),
            &dqw[i],
            tol,
            tol,
        );
        close(
            &format!("flash_bwd dk {at}"),
            dk[i].get(),
            &dkw[i],
            tol,
            tol,
        );
        close(
            &format!("flash_bwd dv {at}"),
            dv[i].get(),
            &dvw[i],
            tol,
            tol,
        );
    }

    // KV-cache tile: ks = 5 positions per batch row, the first tk = 4 used.
    let (q0, tq, k0, ks, tk) = (6usize, 3usize, 4usize, 5usize, 4usize);
    let qt = tile(&q, hs, q0, tq);
    let (kt_, vt) = (tile(&kk, hs, k0, ks), tile(&v, hs, k0, ks));
    let rows = B * tq * NH;
    let (mut mw, mut lw, mut aw) = (zeros::<T>(rows), zeros::<T>(rows), zeros::<T>(rows * hs));
    kt::attn_fwd_init::<T>(&mut mw, &mut lw, &mut aw);
    let (mut m, mut l, mut a) = (Buf::new(&mw), Buf::new(&lw), Buf::new(&aw));
    let (qn, sn, kn) = (tq * NH * hs, tq * NH, ks * NH * hs);
    for r in 0..B {
        // The CPU sees one batch row at a time, its first tk positions.
        let d = drop.map(|(s, st, p, shape, [b0, h0])| (s, st, p, shape, [b0 + r, h0]));
        kt::attn_fwd_update::<T>(
            &qt[r * qn..][..qn],
            &kt_[r * kn..][..tk * NH * hs],
            &vt[r * kn..][..tk * NH * hs],
            1,
            tq,
            tk,
            NH,
            hs,
            q0,
            k0,
            scale,
            d,
            &mut mw[r * sn..][..sn],
            &mut lw[r * sn..][..sn],
            &mut aw[r * qn..][..qn],
        );
    }
    let (mp, lp, ap) = (m.get_mut(), l.get_mut(), a.get_mut());
    #[rustfmt::skip]
    emu::flash_fwd::<T>(
        &qt, &kt_, &vt, B, tq, tk, ks, NH, hs, q0, k0, scale, dev_drop, mp, lp, ap,
    );
    close(
        &format!("flash_fwd cached (ks > tk) m {tag}"),
        m.get(),
        &mw,
        tol,
        tol,
    );
    close(
        &format!("flash_fwd cached (ks > tk) l {tag}"),
        l.get(),
        &lw,
        tol,
        tol,
    );
    close(
        &format!("flash_fwd cached (ks > tk) acc {tag}"),
        a.get(),
        &aw,
        tol,
        tol,
    );
}

/// Dropout over a tensor of B + 1 batch rows and NH + 2 heads, this tile at
/// batch row 1 and head 2 (the global index of each probability).
fn with_dropout() -> AttnDropout {
    Some((42, 5, 0.3, [B + 1, NH + 2, T_, T_], [1, 2]))
}

#[test]
fn attention_f32() {
    for hs in [8, 40, 64] {
        attention::<f32>(hs, None);
        attention::<f32>(hs, with_dropout());
    }
}
#[test]
fn attention_f64() {
    for hs in [8, 40, 64] {
        attention::<f64>(hs, None);
        attention::<f64>(hs, with_dropout());
    }
}
