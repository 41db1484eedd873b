//! The CUDA kernels of `cuda/*.cu`, compiled as host C++ (f32/f64
//! instantiations; `cpp/emu.h` emulates the CUDA subset they use), launched
//! through bindings generated from gpt2rs's kernel tables (the ones its
//! cudarc launchers come from: same argument lists, length checks and
//! geometry) and compared with gpt2rs's CPU kernels. The comparisons are
//! this crate's tests (`src/tests`); the library is the launch function and
//! one module of bindings per `.cu` module (`elementwise::fill::<T>(n,
//! value, y)`, ...).
//!
//! What this checks: the kernels' index arithmetic, partial tiles, block and
//! warp reductions, argument order and struct layouts, and the rounding the
//! `.cu` headers promise, on a machine without a GPU. What it cannot check:
//! the 16-bit dtypes (their loads and stores are inline PTX), NVRTC's code
//! generation, libdevice's transcendental functions (the host's libm runs
//! instead) and real concurrency (threads run one at a time, see `emu.h`).

use std::cell::Cell;
use std::ffi::c_void;

pub use gpt2rs::kernels::cuda::activation::Dims8;
pub use gpt2rs::kernels::cuda::attention::AttnDropArgs;
pub use gpt2rs::kernels::cuda::elementwise::BlockDims;
pub use gpt2rs::kernels::cuda::geom::{self, Geom};

extern "C" {
    fn emu_launch(body: extern "C" fn(*mut c_void), arg: *mut c_void, grid: u32, bx: u32, by: u32);
}

thread_local! {
    static GRID: Cell<Option<u32>> = const { Cell::new(None) };
}

/// Runs `f` with every launch's grid replaced by `grid` (a small grid makes
/// the grid-stride kernels stride; the kernels must not depend on it).
pub fn with_grid<R>(grid: u32, f: impl FnOnce() -> R) -> R {
    let old = GRID.with(|g| g.replace(Some(grid)));
    let r = f();
    GRID.with(|g| g.set(old));
    r
}

/// Runs `f` as every thread of a launch of geometry `g` (each thread calls
/// the kernel with the same arguments, as a CUDA launch does), returning
/// when the whole grid is done.
pub fn launch<F: Fn()>(g: Geom, f: F) {
    extern "C" fn run<F: Fn()>(arg: *mut c_void) {
        // SAFETY: `arg` is the `&F` passed below, alive for the launch.
        unsafe { (*(arg as *const F))() }
    }
    assert_eq!(g.shared, 0, "the emulator has no dynamic shared memory");
    let grid = GRID.with(|c| c.get()).unwrap_or(g.grid);
    // SAFETY: emu_launch calls `run::<F>(&f)` from fibers of this thread
    // only, and returns after the last of them.
    unsafe {
        emu_launch(
            run::<F>,
            &f as *const F as *mut c_void,
            grid,
            g.block.0,
            g.block.1,
        )
    }
}

/// A host launch function's parameter type for one table argument: slices
/// for device pointers.
macro_rules! emu_param {
    ($t0:ident; val $t:tt) => { $t };
    ($t0:ident; in $t:tt) => { &[gpt2rs::cuda_ety!($t0; $t)] };
    ($t0:ident; out $t:tt) => { &mut [gpt2rs::cuda_ety!($t0; $t)] };
    ($t0:ident; opt_in $t:tt) => { Option<emu_param!($t0; in $t)> };
    ($t0:ident; opt_out $t:tt) => { Option<emu_param!($t0; out $t)> };
}

/// The C type of one table argument.
macro_rules! emu_raw {
    ($t0:ident; val $t:tt) => { $t };
    ($t0:ident; in $t:tt) => { *const gpt2rs::cuda_ety!($t0; $t) };
    ($t0:ident; out $t:tt) => { *mut gpt2rs::cuda_ety!($t0; $t) };
    ($t0:ident; opt_in $t:tt) => { *const gpt2rs::cuda_ety!($t0; $t) };
    ($t0:ident; opt_out $t:tt) => { *mut gpt2rs::cuda_ety!($t0; $t) };
}

/// The C value of one host argument.
macro_rules! emu_value {
    (val $an:ident) => {
        $an
    };
    (in $an:ident) => {
        $an.as_ptr()
    };
    (out $an:ident) => {
        $an.as_mut_ptr()
    };
    (opt_in $an:ident) => {
        $an.map_or(std::ptr::null(), |s| s.as_ptr())
    };
    (opt_out $an:ident) => {
        $an.map_or(std::ptr::null_mut(), |s| s.as_mut_ptr())
    };
}

/// The dtype tuples the host build instantiates (f32/f64 of
/// `FOR_ALL_DTYPES`, `FOR_GRAD_PAIRS`, the cast pairs, optim.cu's pairs,
/// attention_tc.cu's f32), as `(symbol, suffix, [DTypes])`.
macro_rules! emu_class {
    ([$cls:ident $($_d:ident)?] $($rest:tt)*) => { emu_class!(@$cls $($rest)*); };
    (@one $($rest:tt)*) => {
        emu_kernel!([(k_f32 "_f32" [F32]) (k_f64 "_f64" [F64])] $($rest)*);
    };
    (@tc $($rest:tt)*) => { emu_kernel!([(k_f32 "_f32" [F32])] $($rest)*); };
    (@grad $($rest:tt)*) => {
        emu_kernel!([(k_f32_f32 "_f32_f32" [F32 F32]) (k_f64_f64 "_f64_f64" [F64 F64])] $($rest)*);
    };
    (@pairs $($rest:tt)*) => {
        emu_kernel!([(k_f32_f32 "_f32_f32" [F32 F32]) (k_f32_f64 "_f32_f64" [F32 F64])
            (k_f64_f32 "_f64_f32" [F64 F32]) (k_f64_f64 "_f64_f64" [F64 F64])] $($rest)*);
    };
    (@optim $($rest:tt)*) => {
        emu_kernel!([(k_f32_f32 "_f32_f32" [F32 F32]) (k_f64_f64 "_f64_f64" [F64 F64])
            (k_f64_f32 "_f64_f32" [F64 F32])] $($rest)*);
    };
}

/// The host binding of one kernel table (gpt2rs's `cuda_table_<module>!`):
/// per entry, a module `name` holding the host symbols, and a function `name::<dtypes>(args...)` taking the
/// launcher's argument list (slices for pointers) that checks the same
/// lengths, takes the same geometry and runs the kernel.
macro_rules! emulate {
    ($module:ident; $(
        $(#[$meta:meta])*
        $kname:ident $(as $lname:ident)? <$t0:ident $(, $g:ident)*> $(for $cls:ident)?
        ($($an:ident : $ak:tt $at:tt $([$($al:tt)+])?),* $(,)?)
        @ $gf:ident ($($ga:expr),* $(,)?);
    )*) => { $(
        emu_class!([$($cls)? one] [$($lname)? $kname] $kname; $t0 [$($g)*];
            [$($an : $ak $at [$($($al)+)?]),*]; $gf ($($ga),*));
    )* };
}

macro_rules! emu_kernel {
    ([$(($sym:ident $sfx:literal [$($dt:ident)*]))*] [$fname:ident $($_k:ident)?] $kname:ident;
        $t0:ident [$($g:ident)*]; [$($an:ident : $ak:tt $at:tt [$($al:tt)*]),*];
        $gf:ident ($($ga:expr),*)) => {
        pub mod $fname {
            #[allow(unused_imports)]
            use super::*;
            extern "C" {
                // Symbols only: called through `Sig` of their dtypes.
                $( #[link_name = concat!(stringify!($kname), $sfx)] pub fn $sym(); )*
            }
        }
        #[allow(clippy::too_many_arguments)]
        pub fn $fname<$t0: gpt2rs::dtype::Element $(, $g: gpt2rs::dtype::Element)*>(
            $($an: emu_param!($t0; $ak $at)),*
        ) {
            #[allow(unused_imports)]
            use gpt2rs::dtype::{DType, Element};
            let op = stringify!($kname);
            $(gpt2rs::cuda_check!(op, $an, $ak, [$($al)*]).unwrap_or_else(|e| panic!("{e}"));)*
            let geom = gpt2rs::kernels::cuda::geom::$gf($($ga),*);
            let dtypes = (<$t0 as Element>::DTYPE, $(<$g as Element>::DTYPE,)*);
            let sym: unsafe extern "C" fn() = match dtypes {
                $( ($(DType::$dt,)*) => $fname::$sym, )*
                d => panic!("{op}: no host instantiation for {d:?}"),
            };
            // SAFETY: `sym` is `<kname>_<dtypes>`, whose C signature is the
            // table entry's for these dtypes.
            let f = unsafe {
                std::mem::transmute::<unsafe extern "C" fn(), unsafe extern "C" fn($(emu_raw!($t0; $ak $at)),*)>(sym)
            };
            $(let $an = emu_value!($ak $an);)*
            // SAFETY: the pointers come from slices checked above to hold
            // what the kernel touches; they outlive the launch.
            launch(geom, || unsafe { f($($an),*) });
        }
    };
}

/// The host bindings, one module per `.cu` module, from gpt2rs's tables.
pub mod elementwise {
    use super::*;
    gpt2rs::cuda_table_elementwise!(emulate);
}
/// activation.cu.
pub mod activation {
    use super::*;
    gpt2rs::cuda_table_activation!(emulate);
}
/// reduce.cu.
pub mod reduce {
    use super::*;
    gpt2rs::cuda_table_reduce!(emulate);
}
/// bias.cu.
pub mod bias {
    use super::*;
    gpt2rs::cuda_table_bias!(emulate);
}
/// layernorm.cu.
pub mod layernorm {
    use super::*;
    gpt2rs::cuda_table_layernorm!(emulate);
}
/// embedding.cu.
pub mod embedding {
    use super::*;
    gpt2rs::cuda_table_embedding!(emulate);
}
/// optim.cu.
pub mod optim {
    use super::*;
    gpt2rs::cuda_table_optim!(emulate);
}
/// attention.cu.
pub mod attention {
    use super::*;
    gpt2rs::cuda_table_attention!(emulate);
}
/// attention_tc.cu.
pub mod attention_tc {
    use super::*;
    gpt2rs::cuda_table_attention_tc!(emulate);
}
/// crossentropy.cu.
pub mod crossentropy {
    use super::*;
    gpt2rs::cuda_table_crossentropy!(emulate);
}

/// The modules build.rs compiled, in its order.
pub const MODULES: &str = env!("CUDA_EMU_MODULES");

#[cfg(test)]
mod tests;
