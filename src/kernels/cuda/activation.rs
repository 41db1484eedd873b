//! `cuda/activation.cu`: GELU (tanh and exact), ReLU and dropout,
//! elementwise (semantics in the `.cu` header, bit-compatible with
//! `kernels::cpu::{activation, dropout}` where it says so).

use super::context::{DevElement, Gpu};
use crate::error::Result;
use crate::kernels::cpu::activation::Activation;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr};

/// Highest tile rank the dropout kernel takes (its `Dims8` arguments).
pub const DROPOUT_MAX_RANK: usize = 8;

/// `struct Dims8` of activation.cu: eight `usize`, by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dims8(pub [u64; DROPOUT_MAX_RANK]);

// SAFETY: `#[repr(C)]` eight u64, the layout of the CUDA struct.
unsafe impl DeviceRepr for Dims8 {}

#[macro_export]
#[doc(hidden)]
macro_rules! cuda_table_activation {
    ($cb:ident) => {
        $cb! { Activation;
            /// `y = gelu(x)` (tanh form).
            gelu_fwd<T>(n: val usize, x: in T [n], y: out T [n]) @ elementwise(n);
            /// `dx = dy * gelu'(x)`.
            gelu_bwd<T>(n: val usize, x: in T [n], dy: in T [n], dx: out T [n]) @ elementwise(n);
            /// `dxy = dxy * gelu'(x)` (dx overwrites dy).
            gelu_bwd_inplace<T>(n: val usize, x: in T [n], dxy: out T [n]) @ elementwise(n);
            /// `y = gelu(x)` (erfc form).
            gelu_exact_fwd<T>(n: val usize, x: in T [n], y: out T [n]) @ elementwise(n);
            gelu_exact_bwd<T>(n: val usize, x: in T [n], dy: in T [n], dx: out T [n])
                @ elementwise(n);
            gelu_exact_bwd_inplace<T>(n: val usize, x: in T [n], dxy: out T [n]) @ elementwise(n);
            /// `y = max(x, 0)`.
            relu_fwd<T>(n: val usize, x: in T [n], y: out T [n]) @ elementwise(n);
            relu_bwd<T>(n: val usize, x: in T [n], dy: in T [n], dx: out T [n]) @ elementwise(n);
            relu_bwd_inplace<T>(n: val usize, x: in T [n], dxy: out T [n]) @ elementwise(n);
            /// In place: `x = keep ? x * scale : 0`, the mask of element `i` that
            /// of its global index `base + sum_d i_d gstride[d]` (i_d its index
            /// in a tile of shape `tshape[..rank]`).
            dropout as dropout_raw<T>(
                n: val usize, seed: val u64, stream: val u64, p: val f64, scale: val f64,
                rank: val usize, tshape: val Dims8, gstride: val Dims8, base: val u64,
                x: out T [n],
            ) @ elementwise(n);
        }
    };
}
crate::cuda_table_activation!(launchers);

/// `y = act(x)` on `n` elements.
pub fn activation_fwd<T: DevElement>(
    gpu: &Gpu,
    act: Activation,
    n: usize,
    x: &CudaView<T>,
    y: &mut CudaViewMut<T>,
) -> Result<()> {
    match act {
        Activation::GeluTanh => gelu_fwd(gpu, n, x, y),
        Activation::Gelu => gelu_exact_fwd(gpu, n, x, y),
        Activation::Relu => relu_fwd(gpu, n, x, y),
    }
}

/// `dx = dy * act'(x)`; `dy = None`: in place, dy read from `dx`.
pub fn activation_bwd<T: DevElement>(
    gpu: &Gpu,
    act: Activation,
    n: usize,
    x: &CudaView<T>,
    dy: Option<&CudaView<T>>,
    dx: &mut CudaViewMut<T>,
) -> Result<()> {
    match (act, dy) {
        (Activation::GeluTanh, Some(dy)) => gelu_bwd(gpu, n, x, dy, dx),
        (Activation::Gelu, Some(dy)) => gelu_exact_bwd(gpu, n, x, dy, dx),
        (Activation::Relu, Some(dy)) => relu_bwd(gpu, n, x, dy, dx),
        (Activation::GeluTanh, None) => gelu_bwd_inplace(gpu, n, x, dx),
        (Activation::Gelu, None) => gelu_exact_bwd_inplace(gpu, n, x, dx),
        (Activation::Relu, None) => relu_bwd_inplace(gpu, n, x, dx),
    }
}

/// Dropout geometry of one tile: its shape and the global row-major strides
/// (padded to [`DROPOUT_MAX_RANK`]), and the global index of its first element.
#[derive(Clone, Copy, Debug)]
pub struct DropoutGeometry {
    pub rank: usize,
    pub tile_shape: Dims8,
    pub global_stride: Dims8,
    pub base: u64,
}

impl DropoutGeometry {
    /// The tile of shape `tile_shape` at `global_offset` in a tensor of
    /// `global_shape` (`None` above [`DROPOUT_MAX_RANK`] axes).
    pub fn new(
        global_offset: &[usize],
        tile_shape: &[usize],
        global_shape: &[usize],
    ) -> Option<Self> {
        let rank = tile_shape.len();
        if rank > DROPOUT_MAX_RANK || global_offset.len() != rank || global_shape.len() != rank {
            return None;
        }
        let mut g = DropoutGeometry {
            rank,
            tile_shape: Dims8([1; DROPOUT_MAX_RANK]),
            global_stride: Dims8([0; DROPOUT_MAX_RANK]),
            base: 0,
        };
        let mut stride = 1u64;
        for d in (0..rank).rev() {
            g.tile_shape.0[d] = tile_shape[d] as u64;
            g.global_stride.0[d] = stride;
            g.base += global_offset[d] as u64 * stride;
            stride *= global_shape[d] as u64;
        }
        Some(g)
    }

    /// Elements of the tile.
    pub fn len(&self) -> usize {
        self.tile_shape.0[..self.rank].iter().product::<u64>() as usize
    }

    /// Whether the tile is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// In place: `x = keep ? x * scale : 0` with the mask of
/// `src/kernels/cpu/dropout.rs` for `(seed, stream, p)`; `scale` is
/// `DropoutMask::new(seed, stream, p).scale`.
pub fn dropout<T: DevElement>(
    gpu: &Gpu,
    [seed, stream]: [u64; 2],
    [p, scale]: [f64; 2],
    geo: &DropoutGeometry,
    x: &mut CudaViewMut<T>,
) -> Result<()> {
    let (n, rank) = (geo.len(), geo.rank);
    let (ts, gs, base) = (geo.tile_shape, geo.global_stride, geo.base);
    dropout_raw(gpu, n, seed, stream, p, scale, rank, ts, gs, base, x)
}
