//! Pointwise activations of the GPT-2 MLP, forward and backward, on one tile
//! of any shape (the kernels see flat slices of equal length).
//!
//! ```text
//! GeluTanh (HF "gelu_new", "gelu_pytorch_tanh"):
//!     y = 0.5 x (1 + tanh(u)),   u = sqrt(2/pi) (x + 0.044715 x^3)
//!       = x * sigmoid(2u)                                   (how it is computed)
//!     y' = s + 2 x s (1 - s) u',  s = sigmoid(2u),  u' = sqrt(2/pi) (1 + 3*0.044715 x^2)
//! Gelu (HF "gelu", exact):
//!     y = 0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(-x / sqrt 2)
//!     y' = Phi(x) + x phi(x),     phi(x) = exp(-x^2/2) / sqrt(2 pi)
//! Relu:
//!     y = max(x, 0),              y' = [x > 0]   (relu'(0) = 0, as torch)
//! ```
//!
//! Gradient convention: `activation_bwd` OVERWRITES dx (`dx = dy * act'(x)`);
//! it is an activation gradient, never accumulated.
//!
//! Why the sigmoid form: `0.5 (1 + tanh u)` equals `sigmoid(2u)` exactly, and
//! the latter keeps full relative precision for very negative x, where
//! `1 + tanh u` cancels; likewise `erfc` instead of `1 + erf`. The f32 path
//! uses [`exp_acc`], a branch-free exp that vectorizes, because the std/libm
//! `expf`/`tanhf` are scalar calls that would dominate these
//! memory-bound loops (GPT-2 small: B*T x 3072 elements per layer). The
//! exact GELU still calls libm's scalar `erfc` (about 4x slower than
//! GeluTanh); it is not GPT-2's activation.
//!
//! The module also holds the helpers the softmax kernels share: [`exp_acc`]
//! / [`expf_vec`] and [`with_simd`], which runs a loop nest compiled for
//! AVX2 + FMA when the CPU has them (the crate itself targets SSE2).
//!
//! ```
//! use gpt2rs::kernels::cpu::activation::{activation_fwd, Activation};
//! let mut y = [0.0f64; 3];
//! activation_fwd(Activation::Relu, &[-1.0f64, 0.0, 2.0], &mut y);
//! assert_eq!(y, [0.0, 0.0, 2.0]);
//! assert_eq!(Activation::parse("gelu_new"), Some(Activation::GeluTanh));
//! ```

use crate::dtype::{Accum, Element};

/// The activation function of the MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, GPT-2's default.
    GeluTanh,
    /// Exact `0.5 x (1 + erf(x / sqrt 2))`.
    Gelu,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// Accepts HF `activation_function` names: `gelu_new` and
    /// `gelu_pytorch_tanh` (tanh approximation), `gelu` (exact), `relu`.
    pub fn parse(name: &str) -> Option<Activation> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" => Some(Activation::GeluTanh),
            "gelu" => Some(Activation::Gelu),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }

    /// The canonical HF name.
    pub fn name(self) -> &'static str {
        match self {
            Activation::GeluTanh => "gelu_new",
            Activation::Gelu => "gelu",
            Activation::Relu => "relu",
        }
    }
}

/// `y = act(x)`, elementwise (x and y of equal length).
pub fn activation_fwd<T: Element>(act: Activation, x: &[T], y: &mut [T]) {
    assert_eq!(x.len(), y.len(), "activation_fwd: x and y lengths differ");
    with_simd(
        #[inline(always)]
        || fwd_body(act, x, y),
    )
}

/// `dx = dy * act'(x)` (overwrites dx).
pub fn activation_bwd<T: Element>(act: Activation, x: &[T], dy: &[T], dx: &mut [T]) {
    assert_eq!(x.len(), dx.len(), "activation_bwd: x and dx lengths differ");
    assert_eq!(
        dy.len(),
        dx.len(),
        "activation_bwd: dy and dx lengths differ"
    );
    with_simd(
        #[inline(always)]
        || bwd_body(act, x, dy, dx),
    )
}

#[inline(always)]
fn fwd_body<T: Element>(act: Activation, x: &[T], y: &mut [T]) {
    // The match sits outside the loops so each loop is straight-line code.
    match act {
        Activation::GeluTanh => map(x, y, gelu_tanh::<T::Acc>),
        Activation::Gelu => map(x, y, gelu_erf::<T::Acc>),
        Activation::Relu => map(x, y, relu::<T::Acc>),
    }
}

#[inline(always)]
fn bwd_body<T: Element>(act: Activation, x: &[T], dy: &[T], dx: &mut [T]) {
    match act {
        Activation::GeluTanh => map2(x, dy, dx, |v, g| g * gelu_tanh_grad(v)),
        Activation::Gelu => map2(x, dy, dx, |v, g| g * gelu_erf_grad(v)),
        Activation::Relu => map2(x, dy, dx, relu_grad::<T::Acc>),
    }
}

/// `max(x, 0)`, NaN kept (as torch).
#[inline(always)]
fn relu<A: Accum>(v: A) -> A {
    if v <= A::ZERO {
        A::ZERO
    } else {
        v
    }
}

/// `dy * [x > 0]`.
#[inline(always)]
fn relu_grad<A: Accum>(v: A, g: A) -> A {
    if v > A::ZERO {
        g
    } else {
        A::ZERO
    }
}

#[inline(always)]
fn map<T: Element>(x: &[T], y: &mut [T], f: impl Fn(T::Acc) -> T::Acc) {
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv = T::from_acc(f(xv.to_acc()));
    }
}

#[inline(always)]
fn map2<T: Element>(x: &[T], dy: &[T], dx: &mut [T], f: impl Fn(T::Acc, T::Acc) -> T::Acc) {
    for ((d, xv), g) in dx.iter_mut().zip(x).zip(dy) {
        *d = T::from_acc(f(xv.to_acc(), g.to_acc()));
    }
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044715;

/// `x * sigmoid(2u)` (= `0.5 x (1 + tanh u)`).
#[inline(always)]
fn gelu_tanh<A: Accum>(x: A) -> A {
    let u = A::of(SQRT_2_OVER_PI) * (x + A::of(GELU_C) * x * x * x);
    x / (A::ONE + exp_acc(A::of(-2.0) * u))
}

/// `s + 2 x s (1 - s) u'` with `s = sigmoid(2u)`.
#[inline(always)]
fn gelu_tanh_grad<A: Accum>(x: A) -> A {
    let x2 = x * x;
    let u = A::of(SQRT_2_OVER_PI) * (x + A::of(GELU_C) * x2 * x);
    let du = A::of(SQRT_2_OVER_PI) + A::of(3.0 * GELU_C * SQRT_2_OVER_PI) * x2;
    let s = A::ONE / (A::ONE + exp_acc(A::of(-2.0) * u));
    s + A::of(2.0) * x * s * (A::ONE - s) * du
}

/// `0.5 x erfc(-x / sqrt 2)`.
#[inline(always)]
fn gelu_erf<A: Accum>(x: A) -> A {
    A::of(0.5) * x * erfc_acc(x * A::of(-std::f64::consts::FRAC_1_SQRT_2))
}

/// `Phi(x) + x phi(x)`.
#[inline(always)]
fn gelu_erf_grad<A: Accum>(x: A) -> A {
    let cdf = A::of(0.5) * erfc_acc(x * A::of(-std::f64::consts::FRAC_1_SQRT_2));
    // 1 / sqrt(2 pi)
    let pdf = A::of(0.398_942_280_401_432_7) * exp_acc(A::of(-0.5) * x * x);
    cdf + x * pdf
}

/// Runs `f` compiled for AVX-512 (F, BW, DQ, VL) or else AVX2 + FMA when
/// the CPU has them, else as is.
///
/// The crate targets baseline x86-64 (SSE2, 4 f32 lanes); the exp-heavy
/// loops (activations, softmax in attention and cross-entropy) run 2-4
/// times as wide, with FMA instructions for their `mul_add`s. For the loops
/// to be compiled inside the wide function, `f` must be an
/// `#[inline(always)]` closure and everything it calls in its loops
/// `#[inline(always)]` too (calls that stay calls, like the gemm crate,
/// keep their own dispatch). Results are bit-identical on every path: Rust
/// never contracts `a * b + c` into an FMA by itself, `mul_add` rounds once
/// wherever it runs, and the lane-parallel sums are written out
/// explicitly, so only the vector width changes.
#[inline(always)]
pub fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // std caches the CPUID result: a load and a test per call.
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU supports AVX-512 F/BW/DQ/VL (and so AVX2 and FMA).
            return unsafe { avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// True when the accumulation type is f32 (the only 4-byte `Accum`); a
/// compile-time constant, so the branches on it fold away.
#[inline(always)]
fn is_f32<A: Accum>() -> bool {
    std::mem::size_of::<A>() == 4
}

/// `erfc` in A: libm's `erfcf` for f32, `erfc` for f64.
#[inline(always)]
fn erfc_acc<A: Accum>(x: A) -> A {
    if is_f32::<A>() {
        A::of(libm::erfcf(x.f64() as f32) as f64)
    } else {
        A::of(libm::erfc(x.f64()))
    }
}

/// `exp(x)` in the accumulation type: the std (correctly rounded-ish) `exp`
/// for f64, and for f32 [`expf_vec`], which is branch-free so loops calling
/// it vectorize (std's `expf` is an opaque libm call). Shared by the softmax
/// kernels (attention, cross-entropy).
#[inline(always)]
pub fn exp_acc<A: Accum>(x: A) -> A {
    if is_f32::<A>() {
        // For A = f32 the f64 round trips are exact and fold away.
        A::of(expf_vec(x.f64() as f32) as f64)
    } else {
        x.exp()
    }
}

/// `exp(x)` for the softmax kernels, whose arguments are `z - max <= 0`:
/// [`expf_nonpos`] for f32, std's `exp` for f64.
#[inline(always)]
pub fn exp_nonpos_acc<A: Accum>(x: A) -> A {
    if is_f32::<A>() {
        A::of(expf_nonpos(x.f64() as f32) as f64)
    } else {
        x.exp()
    }
}

/// f32 `exp` for `x <= 88` (softmax arguments are `<= 0`), the reduction and
/// polynomial of [`expf_vec`] with a cheaper tail: results below 2.2e-38
/// (x < -86.6, near the end of f32's normal range) are 0, so `2^n` is one
/// normal power of two.
/// About 30 % fewer vector instructions than [`expf_vec`], which is what
/// the cross-entropy and attention softmax loops spend their time on.
/// exp(-inf) = 0, NaN propagates.
#[inline(always)]
pub fn expf_nonpos(x: f32) -> f32 {
    // n >= -125 from here on, so 2^n is a normal number (the select keeps NaN).
    const LO: f32 = -86.6;
    let (ni, r) = exp_reduce(if x < LO { LO } else { x });
    let e = exp_poly(r) * f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    if x < LO {
        0.0
    } else {
        e
    }
}

/// Cody-Waite reduction `x = n ln2 + r`, |r| <= ln2/2, for |x| < 2^22:
/// (n, r), without `floor` or a float-to-int conversion, so it vectorizes.
#[inline(always)]
fn exp_reduce(x: f32) -> (i32, f32) {
    // 1.5 * 2^23: adding it rounds x*log2(e) to an integer, held in the low
    // mantissa bits of the sum.
    const MAGIC: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4; // exactly 0.693359375 (9 bits): n * LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let t = x.mul_add(std::f32::consts::LOG2_E, MAGIC);
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    (ni, (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x)))
}

/// `e^r` for |r| <= ln2/2: Cephes' degree-6 polynomial (about 1 ulp).
#[inline(always)]
fn exp_poly(r: f32) -> f32 {
    let p = 1.987_569_2e-4f32.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 0.5); // Cephes' 5.0000001201e-1, which rounds to 0.5 in f32
    p.mul_add(r * r, r) + 1.0
}

/// f32 `exp` with about 1 ulp error, written with selects, FMAs and integer
/// bit tricks only, so loops calling it vectorize: Cody-Waite reduction
/// `x = n ln2 + r`, |r| <= ln2/2, Cephes' degree-6 polynomial for `e^r`,
/// and `2^n` applied as two exact power-of-two factors so that n in
/// [-151, 129] stays within the normal exponent range. The `mul_add`s are
/// FMA instructions inside [`with_simd`]; on a CPU without FMA (x86-64
/// before 2013) they are libm calls, slow but with the same results.
/// exp(-inf) = 0, exp(+inf) = +inf, NaN propagates.
#[inline(always)]
pub fn expf_vec(x: f32) -> f32 {
    // Clamp where e^x is already 0 or inf in f32 (clamp keeps NaN).
    let (ni, r) = exp_reduce(x.clamp(-104.0, 89.0));
    let y = exp_poly(r);
    let n1 = ni >> 1;
    let n2 = ni.wrapping_sub(n1);
    let s1 = f32::from_bits((n1.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((n2.wrapping_add(127) as u32) << 23);
    y * s1 * s2
}
