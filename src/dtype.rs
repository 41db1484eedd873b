//! Storage types of tiles and the `Element` trait the CPU kernels are generic over.
//!
//! Compute always happens in an accumulation type: `f64` for `f64` storage and
//! `f32` for everything narrower (bf16 and fp16 tiles are widened on load and
//! rounded to nearest-even on store), so a reduction inside one tile never
//! accumulates in 16 bits.

use crate::error::{Error, Result};
use half::{bf16, f16};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DType {
    F32,
    F64,
    BF16,
    F16,
}

impl DType {
    pub const ALL: [DType; 4] = [DType::F32, DType::F64, DType::BF16, DType::F16];

    pub fn size(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// The short name used everywhere in the API: `fp32`, `fp64`, `bf16`, `fp16`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "fp32",
            DType::F64 => "fp64",
            DType::BF16 => "bf16",
            DType::F16 => "fp16",
        }
    }

    /// Accepts our names and numpy's (`float32`, `bfloat16`, ...).
    pub fn parse(s: &str) -> Result<DType> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => DType::F32,
            "fp64" | "f64" | "float64" | "double" => DType::F64,
            "bf16" | "bfloat16" => DType::BF16,
            "fp16" | "f16" | "float16" | "half" => DType::F16,
            _ => return Err(Error::UnknownDType(s.to_string())),
        })
    }

    /// Machine epsilon of the storage type (for tolerances).
    pub fn epsilon(self) -> f64 {
        match self {
            DType::F64 => f64::EPSILON,
            DType::F32 => f32::EPSILON as f64,
            DType::BF16 => 0.0078125,
            DType::F16 => 0.0009765625,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A storage element. `Acc` is the type kernels compute in.
pub trait Element:
    Copy + Send + Sync + Default + bytemuck::Pod + PartialEq + fmt::Debug + 'static
{
    const DTYPE: DType;
    type Acc: Accum + Element;
    fn to_acc(self) -> Self::Acc;
    fn from_acc(v: Self::Acc) -> Self;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

/// The arithmetic type of kernels: f32 or f64.
pub trait Accum:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + std::ops::MulAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    fn of(v: f64) -> Self;
    fn f64(self) -> f64;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn tanh(self) -> Self;
    fn max(self, o: Self) -> Self;
    fn mul_add(self, a: Self, b: Self) -> Self;
}

macro_rules! impl_accum {
    ($t:ty) => {
        impl Accum for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn of(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
        }
    };
}
impl_accum!(f32);
impl_accum!(f64);

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    type Acc = f32;
    #[inline(always)]
    fn to_acc(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_acc(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    type Acc = f64;
    #[inline(always)]
    fn to_acc(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_acc(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
}

macro_rules! impl_half {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            type Acc = f32;
            #[inline(always)]
            fn to_acc(self) -> f32 {
                self.to_f32()
            }
            #[inline(always)]
            fn from_acc(v: f32) -> Self {
                <$t>::from_f32(v)
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                <$t>::from_f64(v)
            }
        }
    };
}
impl_half!(bf16, DType::BF16);
impl_half!(f16, DType::F16);

/// Calls `$body` with the type alias `$T` bound to the element type of `$dtype`.
#[macro_export]
macro_rules! with_dtype {
    ($dtype:expr, $T:ident, $body:block) => {
        match $dtype {
            $crate::dtype::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::dtype::DType::F64 => {
                type $T = f64;
                $body
            }
            $crate::dtype::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            $crate::dtype::DType::F16 => {
                type $T = half::f16;
                $body
            }
        }
    };
}

/// A model's precision mode (the CLI's `--dtype`): storage dtype plus how
/// GEMMs compute. On the CPU, tf32 and the fast modes compute in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Fp64,
    Tf32,
    Bf16,
    Fp32FastFp16,
    Fp32FastBf16,
    Fp32FastTf32,
}

impl Precision {
    pub const NAMES: [&'static str; 7] = [
        "fp32",
        "fp64",
        "tf32",
        "bf16",
        "fp32_fast_fp16",
        "fp32_fast_bf16",
        "fp32_fast_tf32",
    ];

    pub fn parse(s: &str) -> Result<Precision> {
        Ok(match s {
            "fp32" => Precision::Fp32,
            "fp64" => Precision::Fp64,
            "tf32" => Precision::Tf32,
            "bf16" => Precision::Bf16,
            "fp32_fast_fp16" => Precision::Fp32FastFp16,
            "fp32_fast_bf16" => Precision::Fp32FastBf16,
            "fp32_fast_tf32" => Precision::Fp32FastTf32,
            _ => {
                return Err(Error::Argument {
                    op: "dtype".into(),
                    msg: format!(
                        "unknown precision {s:?} (expected one of {})",
                        Precision::NAMES.join(", ")
                    ),
                })
            }
        })
    }

    pub fn name(self) -> &'static str {
        Precision::NAMES[self as usize]
    }

    /// The dtype of weights and activations.
    pub fn storage(self) -> DType {
        match self {
            Precision::Fp64 => DType::F64,
            Precision::Bf16 => DType::BF16,
            _ => DType::F32,
        }
    }
}

/// How a GEMM computes on a GPU. The CPU ignores it and computes in the
/// storage's accumulator type (f32, or f64), as DESIGN.md says of the fast
/// modes. Only f32 storage has fast modes: f64 computes in f64, and bf16/f16
/// multiply in tensor cores with f32 accumulation, whatever the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GemmCompute {
    /// The accumulator type throughout (true fp32 or fp64).
    #[default]
    Default,
    /// Inputs rounded to TF32 (10-bit mantissa), fp32 accumulation.
    Tf32,
    /// Inputs rounded to fp16, fp32 accumulation.
    Fp16,
    /// Inputs rounded to bf16, fp32 accumulation.
    Bf16,
}

impl Precision {
    /// The compute mode of this precision's GEMMs.
    pub fn gemm_compute(self) -> GemmCompute {
        match self {
            Precision::Fp32 | Precision::Fp64 | Precision::Bf16 => GemmCompute::Default,
            Precision::Tf32 | Precision::Fp32FastTf32 => GemmCompute::Tf32,
            Precision::Fp32FastFp16 => GemmCompute::Fp16,
            Precision::Fp32FastBf16 => GemmCompute::Bf16,
        }
    }
}

/// Like `with_dtype!` for an accumulation dtype (f32 or f64; anything else is
/// treated as f32, which is what accumulators of 16-bit tiles are).
#[macro_export]
macro_rules! with_acc_dtype {
    ($dtype:expr, $A:ident, $body:block) => {
        match $dtype {
            $crate::dtype::DType::F64 => {
                type $A = f64;
                $body
            }
            _ => {
                type $A = f32;
                $body
            }
        }
    };
}
