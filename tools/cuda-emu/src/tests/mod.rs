//! The emulated kernels against the CPU kernels, one module per `.cu` file.
//! Every kernel of every module is launched here, with the launcher's
//! geometry and argument structs. Shapes are small, with partial blocks,
//! partial warps of columns and partial tiles.
//!
//! Comparisons: [`exact`] where the `.cu` header promises the CPU's result
//! bit for bit (same operations in the same order), [`close`] with a stated
//! tolerance where it does not (different summation order, or a
//! transcendental function that libdevice computes differently from the
//! CPU's libm).

use gpt2rs::dtype::{Accum, Element};
use gpt2rs::kernels::cuda::geom::COL_ROW_BLOCK;
use std::fmt::Debug;

mod activation;
mod attention;
mod attention_tc;
mod bias;
mod crossentropy;
mod elementwise;
mod embedding;
mod layernorm;
mod optim;
mod reduce;

/// f32 or f64: its own accumulator type (the host build's dtypes).
pub trait Dev: Element<Acc = Self> + Accum + Debug {}
impl Dev for f32 {}
impl Dev for f64 {}

/// Machine epsilon of `T`.
pub fn eps<T: Element>() -> f64 {
    T::DTYPE.epsilon()
}

/// Deterministic inputs (SplitMix64), uniform in `[-1, 1)`.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    /// `n` values `off + scale * u`, rounded to T.
    pub fn vec<T: Element>(&mut self, n: usize, off: f64, scale: f64) -> Vec<T> {
        (0..n)
            .map(|_| T::from_f64(off + scale * self.next()))
            .collect()
    }
    /// A value in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next() + 1.0) * 0.5 * n as f64) as usize % n.max(1)
    }
}

/// Elements of padding on each side of a [`Buf`].
const PAD: usize = 8;

/// A buffer a kernel writes, with a sentinel-filled margin on each side that
/// [`Buf::get`] checks, so a write outside the buffer fails the test
/// instead of corrupting the heap.
pub struct Buf<T: Element> {
    v: Vec<T>,
}

impl<T: Element + Debug> Buf<T> {
    fn sentinel() -> T {
        T::from_f64(-1.25e30)
    }
    pub fn new(data: &[T]) -> Self {
        let mut v = vec![Self::sentinel(); data.len() + 2 * PAD];
        v[PAD..PAD + data.len()].copy_from_slice(data);
        Buf { v }
    }
    pub fn zeros(n: usize) -> Self {
        Self::new(&vec![T::from_f64(0.0); n])
    }
    pub fn filled(n: usize, value: f64) -> Self {
        Self::new(&vec![T::from_f64(value); n])
    }
    /// The contents, after checking that nothing was written around them.
    pub fn get(&self) -> &[T] {
        let n = self.v.len() - 2 * PAD;
        let s = Self::sentinel().to_f64().to_bits();
        let outside = self.v[..PAD].iter().chain(&self.v[PAD + n..]);
        assert!(
            outside.clone().all(|v| v.to_f64().to_bits() == s),
            "a kernel wrote outside its buffer: {:?}",
            outside.collect::<Vec<_>>()
        );
        &self.v[PAD..PAD + n]
    }
    /// [`Buf::get`], mutable (for host steps between launches).
    pub fn get_mut(&mut self) -> &mut [T] {
        let n = self.get().len();
        &mut self.v[PAD..PAD + n]
    }
}

fn same_bits(a: f64, b: f64) -> bool {
    // NaN payloads are not part of any promise (the GPU's canonical NaN differs from x86's).
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// `got == want` bit for bit (any NaN equals any NaN).
#[track_caller]
pub fn exact<T: Element + Debug>(what: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (a, b))| !same_bits(a.to_f64(), b.to_f64()))
        .take(8)
        .map(|(i, (a, b))| format!("[{i}] got {a:?} want {b:?}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{what} ({:?}): not bit-identical: {}",
        T::DTYPE,
        bad.join(", ")
    );
}

/// `|got - want| <= rtol * |want| + atol` element by element, NaN where and
/// only where `want` has NaN, infinities equal.
#[track_caller]
pub fn close<T: Element + Debug>(what: &str, got: &[T], want: &[T], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (a, b))| {
            let (a, b) = (a.to_f64(), b.to_f64());
            !(same_bits(a, b) || (a - b).abs() <= rtol * b.abs() + atol)
        })
        .take(8)
        .map(|(i, (a, b))| format!("[{i}] got {a:?} want {b:?}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{what} ({:?}): beyond rtol {rtol:e} atol {atol:e}: {}",
        T::DTYPE,
        bad.join(", ")
    );
}

/// Scratch as the launchers allocate it, not cleared: NaN, so an element
/// that a first pass fails to write poisons the result it feeds.
pub fn scratch(n: usize) -> Buf<f64> {
    Buf::filled(n, f64::NAN)
}

/// The first pass of a column reduction (`bias_grad_part`,
/// `layernorm_param_grad_part`): `nout` sums of `rows` rows of `cols`
/// columns into fresh scratch `part [nout, nblk, cols]`, by `pass` (given
/// the scratch; the grid replaced by `grid`, if given: a small grid makes
/// blocks stride), and the row block count `nblk` (of the table's
/// `rblk = COL_ROW_BLOCK` rows).
pub fn col_parts(
    rows: usize,
    cols: usize,
    nout: usize,
    grid: Option<u32>,
    pass: impl FnOnce(&mut [f64]),
) -> (Buf<f64>, usize) {
    let nblk = rows.div_ceil(COL_ROW_BLOCK);
    let mut part = scratch(nout * nblk * cols);
    let p = part.get_mut();
    match grid {
        Some(g) => crate::with_grid(g, || pass(p)),
        None => pass(p),
    }
    (part, nblk)
}

/// The second pass (`add_col_parts` of the launchers): `y0 (, y1) +=` the
/// block sums of `part [nout, nblk, cols]`, nout = 1 + `y1.is_some()`.
pub fn add_col_parts<T: Dev>(
    part: &Buf<f64>,
    nblk: usize,
    cols: usize,
    y0: &mut Buf<T>,
    y1: Option<&mut Buf<T>>,
) {
    let y1 = y1.map(|y| y.get_mut());
    crate::reduce::add_col_parts::<T>(nblk, cols, part.get(), y0.get_mut(), y1);
}

/// Columns `lo..lo + n` of a `[rows, c]` array (a tile of a split axis).
pub fn cols_of<T: Copy>(x: &[T], rows: usize, c: usize, lo: usize, n: usize) -> Vec<T> {
    (0..rows)
        .flat_map(|r| x[r * c + lo..r * c + lo + n].to_vec())
        .collect()
}

/// The emulator compiled exactly the modules gpt2rs compiles with NVRTC.
#[test]
fn every_module_is_emulated() {
    use gpt2rs::kernels::cuda::Module;
    let ours: Vec<&str> = crate::MODULES.split(',').collect();
    let theirs: Vec<&str> = Module::ALL
        .iter()
        .map(|m| m.file().strip_suffix(".cu").unwrap())
        .collect();
    assert_eq!(ours, theirs, "update MODULES in tools/cuda-emu/build.rs");
}
