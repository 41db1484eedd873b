//! Dropout without stored masks: whether an element is kept is a pure
//! function of `(seed, stream, global index)`, so the backward pass (and the
//! attention kernels, and a GPU twin) recompute the same mask, and the mask
//! does not depend on how the tensor is tiled.
//!
//! ```text
//! keep(seed, stream, i, p) = u(seed, stream, i) >= p,   u uniform in [0, 1)
//! dropout_fwd: x[i] = keep ? x[i] / (1 - p) : 0          (in place)
//! dropout_bwd: dy[i] = keep ? dy[i] / (1 - p) : 0        (the same map)
//! ```
//!
//! The draw is a keyed hash of the index, cheap enough to vectorize: with
//! `key = mix64(seed ^ mix64(stream + phi))` (splitmix64's finalizer) and
//! the index split as `i = hi * 2^32 + lo`, the 32-bit keys `(ka, kb)` are
//! the halves of `mix64(key ^ (hi + 1) * phi)` and
//! `draw = mix32(mix32(lo ^ ka) ^ kb)`, `u = draw / 2^32`, where `mix32` is
//! Wellons' lowbias32 (a 32-bit bijection with near-ideal avalanche). Only
//! 32-bit multiplies occur per element, which AVX2 does 8 at a time (the
//! kernels run under `with_simd`); 32 bits resolve p to 2^-32. `index` is
//! the element's row-major position in the GLOBAL tensor (`dropout_fwd`
//! computes it from the tile's offset and the global shape). A dropped
//! element becomes exactly 0 (even NaN or inf).
//!
//! Gradient convention: `dropout_bwd` overwrites dy in place with dx (an
//! activation gradient).
//!
//! ```
//! use gpt2rs::kernels::cpu::dropout::{dropout_fwd, keep};
//! let mut x = [1.0f64; 4];
//! // The 2x2 tile at (0, 2) of a 2x4 tensor: global indices 2, 3, 6, 7.
//! dropout_fwd(7, 0, 0.5, &[0, 2], &[2, 2], &[2, 4], &mut x);
//! for (v, i) in x.iter().zip([2u64, 3, 6, 7]) {
//!     assert_eq!(*v, if keep(7, 0, i, 0.5) { 2.0 } else { 0.0 });
//! }
//! ```

use crate::dtype::{Accum, Element};
use crate::kernels::cpu::activation::with_simd;

/// Elements masked at once through the `T::Acc` buffer of `dropout_fwd`.
const CHUNK: usize = 256;

/// 2^64 / golden ratio, splitmix64's increment.
const PHI: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's finalizer: a bijection of u64 with full avalanche.
#[inline(always)]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// lowbias32 (C. Wellons, "Prospecting for hash functions"): a bijection of
/// u32 with low avalanche bias, two 32-bit multiplies.
#[inline(always)]
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// The 32-bit draw of index `lo` inside a block keyed by `(ka, kb)`.
#[inline(always)]
fn draw(lo: u32, ka: u32, kb: u32) -> u32 {
    mix32(mix32(lo ^ ka) ^ kb)
}

/// One dropout mask: the stream key and the keep threshold, computed once
/// per kernel call.
#[derive(Clone, Copy, Debug)]
pub struct DropoutMask {
    key: u64,
    /// Keep iff the 32-bit draw is >= this: `ceil(p * 2^32)` (saturated),
    /// so `p` of the 2^32 possible draws are dropped (to within 2^-32).
    threshold: u32,
    /// p >= 1: nothing is kept (which no 32-bit threshold can say).
    none: bool,
    /// `1 / (1 - p)` (0 for p >= 1, where nothing is kept).
    pub scale: f64,
}

impl DropoutMask {
    pub fn new(seed: u64, stream: u64, p: f64) -> Self {
        let threshold = if p <= 0.0 {
            0
        } else {
            (p * (1u64 << 32) as f64).ceil().min(u32::MAX as f64) as u32
        };
        DropoutMask {
            key: mix64(seed ^ mix64(stream.wrapping_add(PHI))),
            threshold,
            none: p >= 1.0,
            // 0, not inf, at p = 1, so that `keep * scale` stays finite.
            scale: if p >= 1.0 { 0.0 } else { 1.0 / (1.0 - p) },
        }
    }

    /// The keys of the block of 2^32 indices whose high half is `hi`.
    #[inline(always)]
    fn block_keys(&self, hi: u64) -> (u32, u32) {
        let k = mix64(self.key ^ hi.wrapping_add(1).wrapping_mul(PHI));
        (k as u32, (k >> 32) as u32)
    }

    /// Whether element `index` (global, row-major) is kept.
    #[inline(always)]
    pub fn keep(&self, index: u64) -> bool {
        let (ka, kb) = self.block_keys(index >> 32);
        !self.none && draw(index as u32, ka, kb) >= self.threshold
    }

    /// Splits `start..start + n` into runs that stay inside one block of
    /// 2^32 indices and calls `f(offset, lo, len, ka, kb)` for each.
    #[inline(always)]
    fn runs(&self, start: u64, n: usize, mut f: impl FnMut(usize, u32, usize, u32, u32)) {
        let mut off = 0;
        while off < n {
            let i = start + off as u64;
            let room = (1u64 << 32) - (i & 0xffff_ffff);
            let len = ((n - off) as u64).min(room) as usize;
            let (ka, kb) = self.block_keys(i >> 32);
            f(off, i as u32, len, ka, kb);
            off += len;
        }
    }

    /// `x[j] = keep(start + j) ? x[j] * scale : 0` (vectorizable: selects,
    /// not branches, which would mispredict on a fraction p of elements).
    #[inline(always)]
    pub fn apply<A: Accum>(&self, start: u64, scale: A, x: &mut [A]) {
        let (thr, none) = (self.threshold, self.none);
        self.runs(start, x.len(), |off, lo, len, ka, kb| {
            for (j, v) in x[off..off + len].iter_mut().enumerate() {
                let k = draw(lo.wrapping_add(j as u32), ka, kb) >= thr;
                *v = if k && !none { *v * scale } else { A::ZERO };
            }
        });
    }

    /// True when nothing is ever dropped (p <= 0).
    pub fn is_identity(&self) -> bool {
        self.threshold == 0 && !self.none
    }
}

/// Whether element `index` of the tensor masked under `(seed, stream)` is
/// kept when dropping with probability `p`.
pub fn keep(seed: u64, stream: u64, index: u64, p: f64) -> bool {
    DropoutMask::new(seed, stream, p).keep(index)
}

/// In place: each element of the tile is zeroed with probability `p`, else
/// scaled by `1/(1-p)`. The tile has shape `tile_shape` and sits at
/// `global_offset` in a tensor of shape `global_shape` (all of one rank,
/// possibly 0); element indices are row-major in the global tensor.
pub fn dropout_fwd<T: Element>(
    seed: u64,
    stream: u64,
    p: f64,
    global_offset: &[usize],
    tile_shape: &[usize],
    global_shape: &[usize],
    x: &mut [T],
) {
    let rank = tile_shape.len();
    assert!(
        global_offset.len() == rank && global_shape.len() == rank,
        "dropout_fwd: offset, tile and global shapes differ in rank"
    );
    assert!(
        (0..rank).all(|d| global_offset[d] + tile_shape[d] <= global_shape[d]),
        "dropout_fwd: tile {tile_shape:?} at {global_offset:?} outside {global_shape:?}"
    );
    assert_eq!(
        x.len(),
        tile_shape.iter().product::<usize>(),
        "dropout_fwd: x length"
    );
    let mask = DropoutMask::new(seed, stream, p);
    if mask.is_identity() || x.is_empty() {
        return;
    }
    let scale = T::Acc::of(mask.scale);
    let mut buf = [T::Acc::ZERO; CHUNK];
    // Global row-major strides.
    let mut gstride = vec![1usize; rank];
    for d in (0..rank.saturating_sub(1)).rev() {
        gstride[d] = gstride[d + 1] * global_shape[d + 1];
    }
    let inner = if rank == 0 { 1 } else { tile_shape[rank - 1] };
    let inner_off = if rank == 0 {
        0
    } else {
        global_offset[rank - 1]
    };
    let outer = rank.saturating_sub(1);
    // Odometer over the outer dims of the tile.
    let mut idx = vec![0usize; outer];
    // Compiled for AVX2 as well: the hash is 8 lanes of 32-bit multiplies.
    with_simd(
        #[inline(always)]
        || {
            for run in x.chunks_exact_mut(inner) {
                let base: usize = (0..outer)
                    .map(|d| (global_offset[d] + idx[d]) * gstride[d])
                    .sum::<usize>()
                    + inner_off;
                // Through a small T::Acc buffer, so one generic `apply` serves
                // every dtype.
                for (c, chunk) in run.chunks_mut(CHUNK).enumerate() {
                    let b = &mut buf[..chunk.len()];
                    for (bv, v) in b.iter_mut().zip(chunk.iter()) {
                        *bv = v.to_acc();
                    }
                    mask.apply(base as u64 + (c * CHUNK) as u64, scale, b);
                    for (v, bv) in chunk.iter_mut().zip(b.iter()) {
                        *v = T::from_acc(*bv);
                    }
                }
                for d in (0..outer).rev() {
                    idx[d] += 1;
                    if idx[d] < tile_shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
        },
    );
}

/// The backward of [`dropout_fwd`]: the same mask and scale applied to dy
/// (in place), given the same seed, stream, p and tile geometry.
pub fn dropout_bwd<T: Element>(
    seed: u64,
    stream: u64,
    p: f64,
    global_offset: &[usize],
    tile_shape: &[usize],
    global_shape: &[usize],
    dy: &mut [T],
) {
    dropout_fwd(seed, stream, p, global_offset, tile_shape, global_shape, dy);
}
