//! `cuda/activation.cu`: GELU (tanh and exact), ReLU and dropout.

use crate::kernels::cpu::activation::Activation;
use cudarc::driver::DeviceRepr;

/// Highest tile rank the dropout kernel takes (its `Dims8` arguments).
pub const DROPOUT_MAX_RANK: usize = 8;

/// `struct Dims8` of activation.cu: eight `usize`, by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dims8(pub [u64; DROPOUT_MAX_RANK]);

// SAFETY: `#[repr(C)]` eight u64, the layout of the CUDA struct.
unsafe impl DeviceRepr for Dims8 {}

cuda_table! { cuda_table_activation($) Activation;
    /// `y = act(x)`.
    activation_fwd<T> by act: Activation {
        GeluTanh: gelu_fwd, Gelu: gelu_exact_fwd, Relu: relu_fwd,
    } (n = y.len(), x: in T [n], y: out T [n]) @ elementwise(n);
    /// `dx = dy * act'(x)`.
    activation_bwd<T> by act: Activation {
        GeluTanh: gelu_bwd, Gelu: gelu_exact_bwd, Relu: relu_bwd,
    } (n = dx.len(), x: in T [n], dy: in T [n], dx: out T [n]) @ elementwise(n);
    /// `dxy = dxy * act'(x)` (dx overwrites dy).
    activation_bwd_inplace<T> by act: Activation {
        GeluTanh: gelu_bwd_inplace, Gelu: gelu_exact_bwd_inplace, Relu: relu_bwd_inplace,
    } (n = dxy.len(), x: in T [n], dxy: out T [n]) @ elementwise(n);
    /// In place: `x = keep ? x * scale : 0`, the CPU's mask at the global
    /// index `geo` gives element `i`.
    dropout<T>(
        n = geo.len, seed: val u64, stream: val u64, p: val f64, scale: val f64, rank = geo.rank,
        tshape: val Dims8 = geo.tile_shape, gstride: val Dims8 = geo.global_stride,
        base: val u64 = geo.base, x: out T [n], geo: host DropoutGeometry,
    ) @ elementwise(n);
}

/// One tile's shape and length, the global row-major strides, its first element's index.
#[derive(Clone, Copy, Debug)]
pub struct DropoutGeometry {
    pub rank: usize,
    pub tile_shape: Dims8,
    pub global_stride: Dims8,
    pub base: u64,
    pub len: usize,
}

impl DropoutGeometry {
    /// The tile of shape `tile_shape` at `offset` in the global array;
    /// `None` above [`DROPOUT_MAX_RANK`] axes.
    pub fn new(offset: &[usize], tile_shape: &[usize], global_shape: &[usize]) -> Option<Self> {
        let rank = tile_shape.len();
        if rank > DROPOUT_MAX_RANK || offset.len() != rank || global_shape.len() != rank {
            return None;
        }
        let mut g = DropoutGeometry {
            rank,
            tile_shape: Dims8([1; DROPOUT_MAX_RANK]),
            global_stride: Dims8([0; DROPOUT_MAX_RANK]),
            base: 0,
            len: tile_shape.iter().product(),
        };
        let mut stride = 1u64;
        for d in (0..rank).rev() {
            g.tile_shape.0[d] = tile_shape[d] as u64;
            g.global_stride.0[d] = stride;
            g.base += offset[d] as u64 * stride;
            stride *= global_shape[d] as u64;
        }
        Some(g)
    }
}
