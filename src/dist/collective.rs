//! Collectives as codelets of the task graph, run by the communication
//! worker (`Where::COMM`) on host replicas. A task covers one bucket: a few
//! tiles of one dtype, packed into one message.
//!
//! The sums are ours. A reduce-scatter is an all-to-all of the packed bucket
//! (rank r receives every rank's copy of its segment) followed by a sum in
//! rank order, in the dtype's accumulator (f32 for bf16, f16 and f32; f64 for
//! f64); an all-reduce adds an all-gather of the summed segments. The result
//! is the same bits on every rank, for every transport and for any
//! segmentation, which is what lets ZeRO-1 (segments = owners' tiles) equal
//! stage 0 (even segments) bit for bit. The traffic is a ring all-reduce's:
//! 2 (N-1)/N of the bucket per rank.

use super::Communicator;
use crate::dtype::{Accum, DType, Element};
use crate::error::{arg_err, Result};
use crate::runtime::{Buffers, Codelet, Where};
use crate::with_dtype;
use std::ops::Range;
use std::sync::Arc;

/// How a bucket's tiles go on the wire: the tiles in `order` concatenated,
/// cut into one contiguous segment per rank (`bounds[r]..bounds[r + 1]`,
/// in elements).
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    order: Vec<usize>,
    lens: Vec<usize>,
    bounds: Vec<usize>,
}

impl Layout {
    /// The tiles in operand order, in `n` near-equal segments: every rank
    /// reduces a share of every bucket (stage 0).
    pub fn even(lens: &[usize], n: usize) -> Layout {
        let total: usize = lens.iter().sum();
        let bounds = (0..=n).map(|r| total * r / n).collect();
        Layout {
            order: (0..lens.len()).collect(),
            lens: lens.to_vec(),
            bounds,
        }
    }

    /// The tiles grouped by owner (rank order, then operand order): each
    /// rank's segment is the tiles it owns (ZeRO-1).
    pub fn by_owner(lens: &[usize], owners: &[usize], n: usize) -> Layout {
        let mut order: Vec<usize> = (0..lens.len()).collect();
        order.sort_by_key(|&i| (owners[i], i));
        let mut bounds = vec![0; n + 1];
        for (&len, &o) in lens.iter().zip(owners) {
            bounds[o + 1] += len;
        }
        for r in 0..n {
            bounds[r + 1] += bounds[r];
        }
        Layout {
            order,
            lens: lens.to_vec(),
            bounds,
        }
    }

    pub fn nranks(&self) -> usize {
        self.bounds.len() - 1
    }

    pub fn total(&self) -> usize {
        self.bounds[self.nranks()]
    }

    pub fn segment(&self, r: usize) -> Range<usize> {
        self.bounds[r]..self.bounds[r + 1]
    }

    /// Calls `f(tile, range in the tile, range in the packed stream)` for
    /// every piece of the packed stream inside `range`.
    fn pieces(&self, range: Range<usize>, mut f: impl FnMut(usize, Range<usize>, Range<usize>)) {
        let mut at = 0;
        for &t in &self.order {
            let (a, b) = (at.max(range.start), (at + self.lens[t]).min(range.end));
            if a < b {
                f(t, a - at..b - at, a..b);
            }
            at += self.lens[t];
            if at >= range.end {
                break;
            }
        }
    }

    fn pack<T: Copy>(&self, tiles: &[&mut [T]], range: Range<usize>, out: &mut [T]) {
        let base = range.start;
        self.pieces(range, |t, tr, sr| {
            out[sr.start - base..sr.end - base].copy_from_slice(&tiles[t][tr]);
        });
    }

    fn unpack<T: Copy>(&self, tiles: &mut [&mut [T]], range: Range<usize>, src: &[T]) {
        let base = range.start;
        self.pieces(range, |t, tr, sr| {
            tiles[t][tr].copy_from_slice(&src[sr.start - base..sr.end - base]);
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectiveKind {
    /// Every rank ends with the sum of the bucket.
    AllReduce,
    /// Each rank ends with the sum of its segment (the rest untouched).
    ReduceScatter,
    /// Each rank's segment is copied to every rank.
    AllGather,
}

/// One collective over one bucket; the operands are the bucket's tiles (RW),
/// in the order `Layout` numbers them.
pub struct Collective {
    pub comm: Arc<dyn Communicator>,
    pub kind: CollectiveKind,
    pub layout: Layout,
    pub dtype: DType,
}

impl Collective {
    fn run<T: Element>(&self, b: &Buffers) -> Result<()> {
        let (n, me) = (self.comm.size(), self.comm.rank());
        if self.layout.nranks() != n || b.len() != self.layout.lens.len() {
            return Err(arg_err(
                self.name(),
                "layout does not match the group or the operands",
            ));
        }
        let mut tiles = (0..b.len())
            .map(|i| b.w::<T>(i))
            .collect::<Result<Vec<&mut [T]>>>()?;
        for (t, &len) in tiles.iter().zip(&self.layout.lens) {
            if t.len() != len {
                return Err(arg_err(self.name(), "an operand changed length"));
            }
        }
        let size = std::mem::size_of::<T>();
        let lay = &self.layout;
        let total = lay.total();
        let counts: Vec<usize> = (0..n).map(|r| lay.segment(r).len() * size).collect();
        let mine = lay.segment(me);
        let mut seg = vec![T::default(); mine.len()];
        if self.kind == CollectiveKind::AllGather {
            lay.pack(&tiles, mine.clone(), &mut seg);
        }
        // A bucket of one tile (the large ones) is its own packed stream:
        // the transport reads and writes the tile, with no copy in or out.
        let single = tiles.len() == 1;
        let mut own = Vec::new();
        let all: &mut [T] = if single {
            &mut *tiles[0]
        } else {
            own.resize(total, T::default());
            if self.kind != CollectiveKind::AllGather {
                lay.pack(&tiles, 0..total, &mut own);
            }
            &mut own
        };
        if self.kind != CollectiveKind::AllGather {
            let mut recv = vec![T::default(); n * mine.len()];
            self.comm.alltoallv(
                bytemuck::cast_slice(all),
                &counts,
                bytemuck::cast_slice_mut(&mut recv),
                &vec![mine.len() * size; n],
            )?;
            sum_in_rank_order(&recv, &mut seg);
            if self.kind == CollectiveKind::ReduceScatter {
                if single {
                    all[mine].copy_from_slice(&seg);
                } else {
                    lay.unpack(&mut tiles, mine, &seg);
                }
                return Ok(());
            }
        }
        self.comm.allgatherv(
            bytemuck::cast_slice(&seg),
            bytemuck::cast_slice_mut(all),
            &counts,
        )?;
        if !single {
            lay.unpack(&mut tiles, 0..total, &own);
        }
        Ok(())
    }
}

/// `out[i] = parts[0][i] + parts[1][i] + ...` (each part `out.len()` long),
/// added left to right in the accumulator type and rounded once.
fn sum_in_rank_order<T: Element>(parts: &[T], out: &mut [T]) {
    let m = out.len();
    if m == 0 {
        return;
    }
    for (i, o) in out.iter_mut().enumerate() {
        let mut s = <T::Acc as Accum>::ZERO;
        for p in parts[i..].iter().step_by(m) {
            s += p.to_acc();
        }
        *o = T::from_acc(s);
    }
}

impl Codelet for Collective {
    fn name(&self) -> &'static str {
        match self.kind {
            CollectiveKind::AllReduce => "all_reduce",
            CollectiveKind::ReduceScatter => "reduce_scatter",
            CollectiveKind::AllGather => "all_gather",
        }
    }
    fn flops(&self) -> f64 {
        match self.kind {
            CollectiveKind::AllGather => 0.0,
            _ => (self.layout.total() * (self.comm.size() - 1)) as f64 / self.comm.size() as f64,
        }
    }
    fn footprint(&self) -> u64 {
        self.layout.total() as u64
    }
    fn where_(&self) -> Where {
        Where::COMM
    }
    fn wire_bytes(&self) -> u64 {
        let n = self.comm.size();
        let me = self.comm.rank();
        let lay = &self.layout;
        let others = (lay.total() - lay.segment(me).len()) as u64;
        let mine = lay.segment(me).len() as u64;
        let elems = match self.kind {
            // Sent: the others' segments; received: N-1 copies of mine.
            CollectiveKind::ReduceScatter => others + (n as u64 - 1) * mine,
            // Sent: mine to N-1 ranks; received: the others' segments.
            CollectiveKind::AllGather => (n as u64 - 1) * mine + others,
            CollectiveKind::AllReduce => 2 * (others + (n as u64 - 1) * mine),
        };
        elems * self.dtype.size() as u64
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        with_dtype!(self.dtype, T, { self.run::<T>(b) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_cover_every_element_once() {
        let lens = [5, 0, 7, 3];
        for lay in [
            Layout::even(&lens, 3),
            Layout::by_owner(&lens, &[2, 0, 0, 2], 3),
        ] {
            assert_eq!(lay.total(), 15);
            let mut seen = [vec![0; 5], vec![], vec![0; 7], vec![0; 3]];
            for r in 0..3 {
                lay.pieces(lay.segment(r), |t, tr, _| {
                    for i in tr {
                        seen[t][i] += 1;
                    }
                });
            }
            assert!(seen.iter().flatten().all(|&c| c == 1), "{lay:?}");
        }
        let lay = Layout::by_owner(&lens, &[2, 0, 0, 2], 3);
        assert_eq!(lay.segment(0), 0..7);
        assert_eq!(lay.segment(1), 7..7);
        assert_eq!(lay.segment(2), 7..15);
    }

    #[test]
    fn pack_then_unpack_is_the_identity() {
        let mut a: Vec<f32> = (0..5).map(|x| x as f32).collect();
        let mut b: Vec<f32> = (10..13).map(|x| x as f32).collect();
        let lay = Layout::by_owner(&[5, 3], &[1, 0], 2);
        let mut packed = vec![0.0; 8];
        lay.pack(&[&mut a[..], &mut b[..]], 0..8, &mut packed);
        assert_eq!(packed, [10.0, 11.0, 12.0, 0.0, 1.0, 2.0, 3.0, 4.0]);
        let (mut a2, mut b2) = (vec![0.0f32; 5], vec![0.0f32; 3]);
        lay.unpack(&mut [&mut a2[..], &mut b2[..]], 2..6, &packed[2..6]);
        assert_eq!(a2, [0.0, 1.0, 2.0, 0.0, 0.0]);
        assert_eq!(b2, [0.0, 0.0, 12.0]);
    }

    #[test]
    fn sums_go_left_to_right_in_the_accumulator() {
        // bf16 parts summed in f32 and rounded once: 1 + 2^-9 + 2^-9 is
        // exact in f32 and rounds to 1 + 2^-8 in bf16 (one rounding), while
        // bf16 pairwise rounding would lose both halves.
        use half::bf16;
        let tiny = bf16::from_f32(2f32.powi(-9));
        let parts = [bf16::ONE, tiny, tiny];
        let mut out = [bf16::ZERO];
        sum_in_rank_order(&parts, &mut out);
        assert_eq!(out[0], bf16::from_f32(1.0 + 2f32.powi(-8)));
    }
}
