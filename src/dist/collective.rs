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
//!
//! On a GPU the communication worker runs the same task through NCCL on a
//! stream of its own: one group per bucket, one call per tile (all-reduce;
//! reduce to the tile's owner; broadcast from it), in place. bf16 and f16
//! tiles are summed in f32 copies. NCCL's sums are the same bits on every
//! rank, but not the host path's: its order is NCCL's ring or tree.

use super::nccl_comm::{Call, NcclComm};
use super::Communicator;
use crate::dtype::{Accum, DType, Element};
use crate::error::{arg_err, Result};
use crate::kernels::cuda::context::{drv, DevElement};
use crate::kernels::cuda::elementwise::cast;
use crate::runtime::{Buffers, Codelet, DevBuffers, Where};
use crate::with_dtype;
use cudarc::driver::{CudaSlice, DevicePtrMut};
use std::ffi::c_void;
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

    /// The rank whose segment holds tile `t` whole (None: it is split, or
    /// empty).
    fn owner(&self, t: usize) -> Option<usize> {
        let at: usize = self
            .order
            .iter()
            .take_while(|&&o| o != t)
            .map(|&o| self.lens[o])
            .sum();
        let end = at + self.lens[t];
        (0..self.nranks()).find(|&r| self.bounds[r] <= at && end <= self.bounds[r + 1] && at < end)
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
    /// The same ranks' NCCL communicator, for runs on a GPU.
    pub device: Option<Arc<NcclComm>>,
    pub kind: CollectiveKind,
    pub layout: Layout,
    pub dtype: DType,
}

impl Collective {
    /// The NCCL call of each operand (None: an empty tile, nothing to do).
    /// Reduce-scatter and all-gather need each tile whole in one segment
    /// (the owners' layout).
    fn device_calls(&self) -> Result<Vec<Option<Call>>> {
        let lay = &self.layout;
        (0..lay.lens.len())
            .map(|t| {
                if lay.lens[t] == 0 {
                    return Ok(None);
                }
                let root = || {
                    lay.owner(t).ok_or_else(|| {
                        arg_err(
                            self.name(),
                            "a tile is split between ranks (not an owners' layout)",
                        )
                    })
                };
                Ok(Some(match self.kind {
                    CollectiveKind::AllReduce => Call::AllReduce,
                    CollectiveKind::ReduceScatter => Call::Reduce { root: root()? },
                    CollectiveKind::AllGather => Call::Broadcast { root: root()? },
                }))
            })
            .collect()
    }

    fn run_nccl<T: DevElement>(&self, nc: &NcclComm, b: &DevBuffers) -> Result<()> {
        let calls = self.device_calls()?;
        let gpu = b.gpu();
        let stream = gpu.stream.cu_stream() as super::nccl::RawStream;
        let mut tiles = (0..b.len())
            .map(|i| b.w::<T>(i))
            .collect::<Result<Vec<_>>>()?;
        let me = nc.rank();
        // bf16 and f16 sums go through f32 copies, narrowed back on the
        // ranks that receive a sum.
        let widen = T::DTYPE.size() < 4 && self.kind != CollectiveKind::AllGather;
        let mut wide: Vec<CudaSlice<f32>> = Vec::new();
        if widen {
            for t in &tiles {
                // SAFETY: the cast below writes every element before NCCL reads one.
                let mut w = unsafe { gpu.stream.alloc::<f32>(t.len().max(1)) }.map_err(drv)?;
                if !t.is_empty() {
                    cast::<T, f32>(gpu, &t.as_view(), &mut w.slice_mut(0..t.len()))?;
                }
                wide.push(w);
            }
        }
        let mut group = Vec::with_capacity(calls.len());
        for (i, call) in calls.iter().enumerate() {
            let Some(call) = *call else { continue };
            let ptr = if widen {
                wide[i].device_ptr_mut(&gpu.stream).0
            } else {
                tiles[i].device_ptr_mut(&gpu.stream).0
            };
            group.push((call, ptr as *mut c_void, tiles[i].len()));
        }
        let dtype = if widen { DType::F32 } else { T::DTYPE };
        // SAFETY: every pointer is an operand (pinned for the task) or one of
        // `wide` (freed stream-ordered, after this work), on the GPU of
        // `stream`, the communication worker's stream of nc's GPU.
        unsafe { nc.group(&group, dtype, stream)? };
        if widen {
            for (i, call) in calls.iter().enumerate() {
                let lands = match call {
                    Some(Call::AllReduce) => true,
                    Some(Call::Reduce { root }) => *root == me,
                    _ => false,
                };
                if lands {
                    let n = tiles[i].len();
                    cast::<f32, T>(gpu, &wide[i].slice(0..n), &mut tiles[i])?;
                }
            }
        }
        Ok(())
    }

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
        let lay = &self.layout;
        let total = lay.total();
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
            reduce_my_segment(&*self.comm, lay, all, &mut seg)?;
            if self.kind == CollectiveKind::ReduceScatter {
                if single {
                    all[mine].copy_from_slice(&seg);
                } else {
                    lay.unpack(&mut tiles, mine, &seg);
                }
                return Ok(());
            }
        }
        gather_segments(&*self.comm, lay, &seg, all)?;
        if !single {
            lay.unpack(&mut tiles, 0..total, &own);
        }
        Ok(())
    }
}

/// Byte counts of each rank's segment of `lay`, for elements of `T`.
fn segment_bytes<T>(lay: &Layout) -> Vec<usize> {
    let size = std::mem::size_of::<T>();
    (0..lay.nranks())
        .map(|r| lay.segment(r).len() * size)
        .collect()
}

/// `seg` = the sum over the ranks (in rank order) of their copies of this
/// rank's segment of `all`.
fn reduce_my_segment<T: Element>(
    comm: &dyn Communicator,
    lay: &Layout,
    all: &[T],
    seg: &mut [T],
) -> Result<()> {
    let n = comm.size();
    let mut recv = vec![T::default(); n * seg.len()];
    comm.alltoallv(
        bytemuck::cast_slice(all),
        &segment_bytes::<T>(lay),
        bytemuck::cast_slice_mut(&mut recv),
        &vec![std::mem::size_of_val(seg); n],
    )?;
    sum_in_rank_order(&recv, seg);
    Ok(())
}

/// Every rank's `seg` into its segment of `all`.
fn gather_segments<T: Element>(
    comm: &dyn Communicator,
    lay: &Layout,
    seg: &[T],
    all: &mut [T],
) -> Result<()> {
    comm.allgatherv(
        bytemuck::cast_slice(seg),
        bytemuck::cast_slice_mut(all),
        &segment_bytes::<T>(lay),
    )
}

/// `all` summed over the ranks, every rank's copy the same length: the
/// bucket all-reduce on one contiguous buffer (the same bits everywhere).
pub(crate) fn all_reduce_in_rank_order<T: Element>(
    comm: &dyn Communicator,
    all: &mut [T],
) -> Result<()> {
    let lay = Layout::even(&[all.len()], comm.size());
    let mut seg = vec![T::default(); lay.segment(comm.rank()).len()];
    reduce_my_segment(comm, &lay, all, &mut seg)?;
    gather_segments(comm, &lay, &seg, all)
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
    fn cuda(&self, b: &DevBuffers) -> Result<()> {
        let nc = self.device.as_ref().ok_or_else(|| {
            arg_err(
                self.name(),
                "a collective on a GPU needs an NCCL communicator (pass nccl to the data-parallel model)",
            )
        })?;
        if (nc.rank(), nc.size()) != (self.comm.rank(), self.comm.size()) {
            return Err(arg_err(
                self.name(),
                "the NCCL communicator and the host one disagree on the ranks",
            ));
        }
        with_dtype!(self.dtype, T, { self.run_nccl::<T>(nc, b) })
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
    fn nccl_calls_follow_the_owners() {
        let comm: Arc<dyn Communicator> = Arc::new(
            crate::dist::loopback::Loopback::group(3)
                .unwrap()
                .swap_remove(1),
        );
        let lens = [5, 0, 7, 3];
        let calls = |kind, layout| {
            Collective {
                comm: comm.clone(),
                device: None,
                kind,
                layout,
                dtype: DType::F32,
            }
            .device_calls()
        };
        let owners = Layout::by_owner(&lens, &[2, 1, 0, 2], 3);
        let rs = calls(CollectiveKind::ReduceScatter, owners.clone()).unwrap();
        let roots = [Some(2), None, Some(0), Some(2)];
        let want = |f: fn(usize) -> Call| roots.map(|r| r.map(f)).to_vec();
        assert_eq!(rs, want(|root| Call::Reduce { root }));
        let ag = calls(CollectiveKind::AllGather, owners).unwrap();
        assert_eq!(ag, want(|root| Call::Broadcast { root }));
        let even = Layout::even(&lens, 3);
        let ar = calls(CollectiveKind::AllReduce, even.clone()).unwrap();
        assert_eq!(ar, want(|_| Call::AllReduce));
        // Even segments cut tiles: fine for an all-reduce, not for owners.
        let e = calls(CollectiveKind::ReduceScatter, even).unwrap_err();
        assert!(e.to_string().contains("split"), "{e}");
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
