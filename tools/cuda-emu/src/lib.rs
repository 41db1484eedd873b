//! The CUDA kernels of `cuda/*.cu`, compiled as host C++ (f32/f64
//! instantiations; `cpp/emu.h` emulates the CUDA subset they use), launched
//! with the geometry and arguments of gpt2rs's launchers and compared with
//! gpt2rs's CPU kernels. The comparisons are this crate's tests (`src/tests`);
//! the library is the launch function, the launchers' geometry and the
//! kernels' signatures.
//!
//! What this checks: the kernels' index arithmetic, partial tiles, block and
//! warp reductions, argument order and struct layouts, and the rounding the
//! `.cu` headers promise, on a machine without a GPU. What it cannot check:
//! the 16-bit dtypes (their loads and stores are inline PTX), NVRTC's code
//! generation, libdevice's transcendental functions (the host's libm runs
//! instead) and real concurrency (threads run one at a time, see `emu.h`).

use std::ffi::c_void;

pub use gpt2rs::kernels::cuda::launch_attn::AttnDropArgs;
pub use gpt2rs::kernels::cuda::launch_copy::BlockDims;

extern "C" {
    fn emu_launch(body: extern "C" fn(*mut c_void), arg: *mut c_void, grid: u32, bx: u32, by: u32);
}

/// A launch geometry as the launchers build it: a 1-D grid of 2-D blocks
/// (`block.1` > 1 only for `sum_axis`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    pub grid: u32,
    pub block: (u32, u32),
}

/// Runs `f` as every thread of a launch of geometry `g` (each thread calls
/// the kernel with the same arguments, as a CUDA launch does), returning
/// when the whole grid is done.
pub fn launch<F: Fn()>(g: Geom, f: F) {
    extern "C" fn run<F: Fn()>(arg: *mut c_void) {
        // SAFETY: `arg` is the `&F` passed below, alive for the launch.
        unsafe { (*(arg as *const F))() }
    }
    // SAFETY: emu_launch calls `run::<F>(&f)` from fibers of this thread
    // only, and returns after the last of them.
    unsafe {
        emu_launch(
            run::<F>,
            &f as *const F as *mut c_void,
            g.grid,
            g.block.0,
            g.block.1,
        )
    }
}

/// The launchers' geometries. Their `LaunchConfig` builders are private to
/// gpt2rs (`elementwise`, `per_row`, ... in each `src/kernels/cuda/launch*.rs`),
/// so they are restated here from the same public constants.
pub mod geom {
    use super::Geom;
    pub use gpt2rs::kernels::cuda::launch::{COL_BLOCK, COL_ROW_BLOCK};
    use gpt2rs::kernels::cuda::{
        ceil_div, grid_for, ATTN_BLOCK, ELEMENTWISE_BLOCK, MAX_GRID, ROW_BLOCK, WARP_SIZE,
    };

    /// Grid-stride over `n` elements (every launch*.rs `elementwise`).
    pub fn elementwise(n: usize) -> Geom {
        Geom {
            grid: grid_for(n, ELEMENTWISE_BLOCK),
            block: (ELEMENTWISE_BLOCK, 1),
        }
    }

    /// One block per row (`per_row` of launch.rs / launch_layers.rs).
    pub fn per_row(rows: usize) -> Geom {
        Geom {
            grid: rows.max(1) as u32,
            block: (ROW_BLOCK, 1),
        }
    }

    /// One block per row, grid capped (`per_row` of launch_copy.rs).
    pub fn per_row_capped(rows: usize) -> Geom {
        Geom {
            grid: rows.clamp(1, MAX_GRID as usize) as u32,
            block: (ROW_BLOCK, 1),
        }
    }

    /// One warp per row (`warp_per_row` of launch.rs; launch_attn.rs's
    /// `warp_rows` is the same with the grid capped).
    pub fn warp_rows(rows: usize) -> Geom {
        let per_block = (ATTN_BLOCK / WARP_SIZE) as usize;
        Geom {
            grid: ceil_div(rows.max(1), per_block).min(MAX_GRID as usize) as u32,
            block: (ATTN_BLOCK, 1),
        }
    }

    /// One block (`one_block` of launch_layers.rs, `per_row(1)` of sum_all).
    pub fn one_block() -> Geom {
        Geom {
            grid: 1,
            block: (ROW_BLOCK, 1),
        }
    }

    /// Column strips (`col_strips` of launch.rs): `items` x
    /// `ceil(cols / COL_BLOCK)` blocks of `COL_BLOCK` threads, grid capped.
    pub fn col_strips(items: usize, cols: usize) -> Geom {
        let blocks = items * ceil_div(cols, COL_BLOCK as usize);
        Geom {
            grid: blocks.clamp(1, MAX_GRID as usize) as u32,
            block: (COL_BLOCK, 1),
        }
    }

    /// One thread (`single` of launch_copy.rs).
    pub fn single() -> Geom {
        Geom {
            grid: 1,
            block: (1, 1),
        }
    }

    /// Thread rows per block of `sum_axis` (`SUM_AXIS_SPLIT`, launch_copy.rs).
    pub const SUM_AXIS_SPLIT: u32 = 8;

    /// `sum_axis` for `inner > 1`: WARP_SIZE x SUM_AXIS_SPLIT blocks.
    pub fn sum_axis(outer: usize, inner: usize) -> Geom {
        let blocks = outer * ceil_div(inner, WARP_SIZE as usize);
        Geom {
            grid: blocks.min(MAX_GRID as usize) as u32,
            block: (WARP_SIZE, SUM_AXIS_SPLIT),
        }
    }

    /// Partial sums of the two-pass reductions (`reduce_parts` of
    /// launch_copy.rs; its cap `REDUCE_PARTS` is 1024).
    pub fn reduce_parts(n: usize) -> usize {
        ceil_div(n.max(1), ROW_BLOCK as usize).min(1024)
    }

    /// The first pass of `sum_all` / `ssq_update`: one block per part.
    pub fn first_pass(n: usize) -> Geom {
        Geom {
            grid: reduce_parts(n) as u32,
            block: (ROW_BLOCK, 1),
        }
    }
}

/// `struct Dims8` of activation.cu: eight `usize` by value. The launcher
/// passes `[u64; 8]` (`DropoutGeometry`'s fields), which has this layout;
/// the wrapper makes the by-value argument FFI-safe.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Dims8(pub [u64; 8]);

macro_rules! kernel_tables {
    (
        same { $( $n1:ident ( $($a1:ty),* $(,)? ); )* }
        pair { $( $n2:ident ( $($a2:ty),* $(,)? ); )* }
    ) => {
        /// Every single-dtype kernel of one instantiation: `T` the storage
        /// dtype, `A` its accumulator (`ACC(T)`, which is `T` for f32/f64).
        /// The `pair` kernels are the `_T_G` ones with `G = T`.
        pub struct Kernels<T: 'static, A: 'static> {
            $( pub $n1: unsafe extern "C" fn($($a1),*), )*
            $( pub $n2: unsafe extern "C" fn($($a2),*), )*
        }
        kernel_tables!(@one f32_kernels, F32, f32, "_f32", "_f32_f32";
            $( $n1 ( $($a1),* ); )* ; $( $n2 ( $($a2),* ); )*);
        kernel_tables!(@one f64_kernels, F64, f64, "_f64", "_f64_f64";
            $( $n1 ( $($a1),* ); )* ; $( $n2 ( $($a2),* ); )*);
    };
    (@one $m:ident, $c:ident, $t:ty, $s1:literal, $s2:literal;
        $( $n1:ident ( $($a1:ty),* ); )* ; $( $n2:ident ( $($a2:ty),* ); )*) => {
        mod $m {
            use super::*;
            type T = $t;
            type A = $t;
            extern "C" {
                $( #[link_name = concat!(stringify!($n1), $s1)] pub fn $n1($(_: $a1),*); )*
                $( #[link_name = concat!(stringify!($n2), $s2)] pub fn $n2($(_: $a2),*); )*
            }
        }
        /// The kernels instantiated for this dtype.
        pub const $c: Kernels<$t, $t> = Kernels {
            $( $n1: $m::$n1, )*
            $( $n2: $m::$n2, )*
        };
    };
}

// The signatures of cuda/*.cu (usize = u64 = `usize`, int = i32).
kernel_tables! {
    same {
        // elementwise.cu
        fill(usize, f64, *mut T);
        scale(usize, f64, *mut T);
        axpy(usize, f64, *const T, *mut T);
        add(usize, f64, *const T, f64, *mut T);
        // reduce.cu
        sum_axis(usize, usize, usize, f64, *const T, f64, *mut T);
        sum_rows(usize, usize, f64, *const T, f64, *mut T);
        sum_partial(usize, *const T, *mut f64);
        sum_all(usize, *const f64, f64, f64, *mut T);
        ssq_partial(usize, *const T, *mut f64);
        ssq_update(usize, *const f64, *mut f64);
        norm_from_ssq(*const f64, f64, f64, *mut T);
        add_col_parts(usize, usize, *const f64, *mut T, *mut T);
        // activation.cu
        gelu_fwd(usize, *const T, *mut T);
        gelu_bwd(usize, *const T, *const T, *mut T);
        gelu_bwd_inplace(usize, *const T, *mut T);
        gelu_exact_fwd(usize, *const T, *mut T);
        gelu_exact_bwd(usize, *const T, *const T, *mut T);
        gelu_exact_bwd_inplace(usize, *const T, *mut T);
        relu_fwd(usize, *const T, *mut T);
        relu_bwd(usize, *const T, *const T, *mut T);
        relu_bwd_inplace(usize, *const T, *mut T);
        dropout(usize, u64, u64, f64, f64, usize, Dims8, Dims8, usize, *mut T);
        // bias.cu
        bias_fill(*const T, usize, usize, *mut T);
        bias_add(*const T, usize, usize, *mut T);
        bias_grad_part(*const T, usize, usize, usize, *mut f64);
        // embedding.cu
        embedding_rows_fwd(usize, *const i64, usize, *const T, usize, usize, *mut T);
        add_rows(*const T, usize, usize, usize, usize, *mut T);
        sinusoidal(usize, usize, usize, usize, usize, f64, *mut T);
        // layernorm.cu
        layernorm_stats_update(*const T, usize, usize, *mut A);
        layernorm_stats_finalize(*const A, usize, f64, *mut A);
        layernorm_fwd(*const T, *const A, *const T, *const T, usize, usize, *mut T);
        layernorm_bwd_reduce(*const T, *const T, *const A, *const T, usize, usize, *mut A);
        layernorm_bwd(
            *const T, *const T, *const A, *const T, *const A, usize, usize, usize, i32, *mut T,
        );
        layernorm_param_grad_part(*const T, *const T, *const A, usize, usize, usize, *mut f64);
        add_layernorm_stats_update(*const T, *const T, usize, usize, *mut T, *mut A);
        add_layernorm_fwd(
            *const T, *const T, *const T, *const T, usize, usize, f64, *mut T, *mut A, *mut T,
        );
        // crossentropy.cu
        maxsumexp_init(usize, *mut A);
        maxsumexp_update(*const T, usize, usize, *mut A);
        ce_loss_target(*const T, usize, usize, usize, *const i64, *mut f64);
        ce_loss_lse(*const A, usize, *const i64, *mut f64);
        ce_bwd(*const A, usize, usize, usize, *const i64, f64, *mut T);
        // attention.cu: (q, k, v, b, tq, tk, [ks,] h, hs, q0, k0, scale, ...)
        attn_fwd_init(usize, usize, *mut A, *mut A, *mut A);
        flash_fwd(
            *const T, *const T, *const T, usize, usize, usize, usize, usize, usize, usize, usize,
            f64, AttnDropArgs, *mut A, *mut A, *mut A,
        );
        attn_fwd_update(
            *const T, *const T, *const T, usize, usize, usize, usize, usize, usize, usize, f64,
            *mut A, *mut A, *mut A,
        );
        attn_fwd_finalize(*const A, *const A, *const A, usize, usize, *mut T, *mut A);
        attn_bwd_delta(*const T, *const T, usize, usize, *mut A);
        flash_bwd(
            *const T, *const T, *const T, *const T, *const A, *const A, usize, usize, usize,
            usize, usize, usize, usize, f64, AttnDropArgs, *mut T, *mut T, *mut T,
        );
        attn_bwd_update(
            *const T, *const T, *const T, *const T, *const A, *const A, usize, usize, usize,
            usize, usize, usize, usize, f64, *mut T, *mut T, *mut T,
        );
    }
    pair {
        embedding_bwd_sorted(
            usize, *const i64, *const i64, *const i64, usize, *const T, usize, usize, *mut T,
        );
        add_rows_bwd(*const T, usize, usize, usize, usize, *mut T);
    }
}

/// The kernels converting `S` to `D` (elementwise.cu).
pub struct Conv<S: 'static, D: 'static> {
    pub cast: unsafe extern "C" fn(usize, *const S, *mut D),
    pub copy_block: unsafe extern "C" fn(BlockDims, usize, *const S, *mut D),
}

/// The optimizer steps for masters `P` and gradients `G` (optim.cu).
#[allow(clippy::type_complexity)]
pub struct Optim<P: 'static, G: 'static> {
    pub sgd_step:
        unsafe extern "C" fn(usize, *mut P, *const G, *mut P, P, P, i32, i32, P, P, i32, i32),
    pub adam_step: unsafe extern "C" fn(
        usize,
        *mut P,
        *const G,
        *mut P,
        *mut P,
        P,
        P,
        P,
        P,
        P,
        i32,
        P,
        P,
        P,
        P,
        i32,
        i32,
    ),
}

macro_rules! conv {
    ($c:ident, $s:ty, $d:ty, $cast:literal, $copy:literal) => {
        /// `cast` and `copy_block` of this dtype pair.
        pub const $c: Conv<$s, $d> = {
            extern "C" {
                #[link_name = $cast]
                fn cast(n: usize, x: *const $s, y: *mut $d);
                #[link_name = $copy]
                fn copy_block(d: BlockDims, total: usize, x: *const $s, y: *mut $d);
            }
            Conv { cast, copy_block }
        };
    };
}
conv!(CONV_F32_F32, f32, f32, "cast_f32_f32", "copy_block_f32_f32");
conv!(CONV_F32_F64, f32, f64, "cast_f32_f64", "copy_block_f32_f64");
conv!(CONV_F64_F32, f64, f32, "cast_f64_f32", "copy_block_f64_f32");
conv!(CONV_F64_F64, f64, f64, "cast_f64_f64", "copy_block_f64_f64");

macro_rules! optim {
    ($c:ident, $p:ty, $g:ty, $sgd:literal, $adam:literal) => {
        /// `sgd_step` and `adam_step` of this (master, gradient) pair.
        pub const $c: Optim<$p, $g> = {
            type P = $p;
            type G = $g;
            extern "C" {
                #[link_name = $sgd]
                fn sgd(
                    n: usize,
                    p: *mut P,
                    g: *const G,
                    buf: *mut P,
                    neg_lr: P,
                    wd: P,
                    decay: i32,
                    has_momentum: i32,
                    mom: P,
                    one_m_damp: P,
                    nesterov: i32,
                    first_step: i32,
                );
                #[link_name = $adam]
                fn adam(
                    n: usize,
                    p: *mut P,
                    g: *const G,
                    m: *mut P,
                    v: *mut P,
                    neg_step_size: P,
                    bc2_sqrt: P,
                    eps: P,
                    w: P,
                    one_m_w: P,
                    lerp_lo: i32,
                    b2: P,
                    one_m_b2: P,
                    wd: P,
                    decay_p: P,
                    couple: i32,
                    decouple: i32,
                );
            }
            Optim {
                sgd_step: sgd,
                adam_step: adam,
            }
        };
    };
}
optim!(
    OPTIM_F32_F32,
    f32,
    f32,
    "sgd_step_f32_f32",
    "adam_step_f32_f32"
);
optim!(
    OPTIM_F64_F64,
    f64,
    f64,
    "sgd_step_f64_f64",
    "adam_step_f64_f64"
);
optim!(
    OPTIM_F64_F32,
    f64,
    f32,
    "sgd_step_f64_f32",
    "adam_step_f64_f32"
);

/// The row kernels of attention_tc.cu (f32/bf16/f16 storage, f32 scores and
/// statistics; the host build has f32): `T` is the storage dtype.
#[allow(clippy::type_complexity)]
pub struct AttnTc<T: 'static> {
    /// `(s, rows, nr, tk, tq, h, hs, first, q0, k0, b0, drop, m, l, acc, p)`.
    pub fwd_rows: unsafe extern "C" fn(
        *const f32,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        AttnDropArgs,
        *mut f32,
        *mut f32,
        *mut f32,
        *mut T,
    ),
    /// `(s, dp, lse, delta, rows, nr, tk, tq, h, first, q0, k0, b0, drop, pd, ds)`.
    pub bwd_rows: unsafe extern "C" fn(
        *const f32,
        *const f32,
        *const f32,
        *const f32,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        AttnDropArgs,
        *mut T,
        *mut T,
    ),
}

/// attention_tc.cu's kernels for f32 storage.
pub const ATTN_TC_F32: AttnTc<f32> = {
    extern "C" {
        #[link_name = "attn_tc_fwd_rows_f32"]
        fn fwd(
            s: *const f32,
            rows: usize,
            nr: usize,
            tk: usize,
            tq: usize,
            h: usize,
            hs: usize,
            first: usize,
            q0: usize,
            k0: usize,
            b0: usize,
            drop: AttnDropArgs,
            m: *mut f32,
            l: *mut f32,
            acc: *mut f32,
            p: *mut f32,
        );
        #[link_name = "attn_tc_bwd_rows_f32"]
        fn bwd(
            s: *const f32,
            dp: *const f32,
            lse: *const f32,
            delta: *const f32,
            rows: usize,
            nr: usize,
            tk: usize,
            tq: usize,
            h: usize,
            first: usize,
            q0: usize,
            k0: usize,
            b0: usize,
            drop: AttnDropArgs,
            pd: *mut f32,
            ds: *mut f32,
        );
    }
    AttnTc {
        fwd_rows: fwd,
        bwd_rows: bwd,
    }
};

/// The modules build.rs compiled, in its order.
pub const MODULES: &str = env!("CUDA_EMU_MODULES");

#[cfg(test)]
mod tests;
