//! The CUDA kernels of `cuda/*.cu`, compiled as host C++ (f32/f64
//! instantiations; `cpp/emu.h` emulates the CUDA subset they use), launched
//! through bindings generated from gpt2rs's kernel tables (the ones its
//! cudarc launchers come from: same argument lists, length checks and
//! geometry) and compared with gpt2rs's CPU kernels. The comparisons are
//! this crate's tests (`src/tests`); the library is the launch function and
//! one module of bindings per `.cu` module (`elementwise::fill::<T>(value,
//! y)`, ...).
//!
//! What this checks: the kernels' index arithmetic, partial tiles, block and
//! warp reductions, argument order and struct layouts, and the rounding the
//! `.cu` headers promise, on a machine without a GPU. What it cannot check:
//! the 16-bit dtypes (their loads and stores are inline PTX), NVRTC's code
//! generation, libdevice's transcendental functions (the host's libm runs
//! instead) and real concurrency (threads run one at a time, see `emu.h`).

use std::cell::Cell;
use std::ffi::c_void;

pub use gpt2rs::kernels::cpu::activation::Activation;
pub use gpt2rs::kernels::cuda::activation::{Dims8, DropoutGeometry};
pub use gpt2rs::kernels::cuda::attention::{AttnDropArgs, ATTN_HS_MAX};
pub use gpt2rs::kernels::cuda::attention_tc::Geo;
pub use gpt2rs::kernels::cuda::elementwise::BlockDims;
pub use gpt2rs::kernels::cuda::geom::{self, Geom, ATTN_TC_BLOCK};
pub use gpt2rs::kernels::cuda::optim::{AdamScalars, SgdScalars};
pub use gpt2rs::kernels::cuda::ATTN_BLOCK;

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
/// when the whole grid is done. Grids are 1-D, blocks at most 2-D, and no
/// kernel takes dynamic shared memory (geom.rs), which `emu.h` relies on.
pub fn launch<F: Fn()>(g: Geom, f: F) {
    extern "C" fn run<F: Fn()>(arg: *mut c_void) {
        // SAFETY: `arg` is the `&F` passed below, alive for the launch.
        unsafe { (*(arg as *const F))() }
    }
    let flat = (g.grid_dim.1, g.grid_dim.2, g.block_dim.2);
    assert!(
        flat == (1, 1, 1) && g.shared_mem_bytes == 0,
        "not a geom.rs geometry"
    );
    let grid = GRID.with(|c| c.get()).unwrap_or(g.grid_dim.0);
    // SAFETY: emu_launch calls `run::<F>(&f)` from fibers of this thread
    // only, and returns after the last of them.
    unsafe {
        emu_launch(
            run::<F>,
            &f as *const F as *mut c_void,
            grid,
            g.block_dim.0,
            g.block_dim.1,
        )
    }
}

/// A host launch function's parameter type: slices for device pointers.
macro_rules! emu_param {
    (val $t:ty) => { $t };
    (host $t:ty) => { $t };
    (in $t:ty) => { &[$t] };
    (out $t:ty) => { &mut [$t] };
    (opt_in $t:ty) => { Option<&[$t]> };
    (opt_out $t:ty) => { Option<&mut [$t]> };
}

/// The C type of one pushed argument.
macro_rules! emu_raw {
    (val $t:ty) => { $t };
    (in $t:ty) => { *const $t };
    (out $t:ty) => { *mut $t };
    (opt_in $t:ty) => { *const $t };
    (opt_out $t:ty) => { *mut $t };
}

/// The C value of one pushed argument.
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
    (one $($rest:tt)*) => {
        emu_kernel!([(k_f32 "_f32" [F32]) (k_f64 "_f64" [F64])] $($rest)*);
    };
    (tc $($rest:tt)*) => { emu_kernel!([(k_f32 "_f32" [F32])] $($rest)*); };
    (grad $($rest:tt)*) => {
        emu_kernel!([(k_f32_f32 "_f32_f32" [F32 F32]) (k_f64_f64 "_f64_f64" [F64 F64])] $($rest)*);
    };
    (pairs $($rest:tt)*) => {
        emu_kernel!([(k_f32_f32 "_f32_f32" [F32 F32]) (k_f32_f64 "_f32_f64" [F32 F64])
            (k_f64_f32 "_f64_f32" [F64 F32]) (k_f64_f64 "_f64_f64" [F64 F64])] $($rest)*);
    };
    (optim $($rest:tt)*) => {
        emu_kernel!([(k_f32_f32 "_f32_f32" [F32 F32]) (k_f64_f64 "_f64_f64" [F64 F64])
            (k_f64_f32 "_f64_f32" [F64 F32])] $($rest)*);
    };
}

/// The host binding of one kernel table (gpt2rs's `cuda_table_<module>!`):
/// per entry, a function `name::<dtypes>(params...)` taking the launcher's
/// parameters (slices for pointers) that checks the same conditions and
/// lengths, takes the same geometry and runs the kernel; per kernel, a
/// module of its host symbols.
macro_rules! emulate {
    (@emit $module:ident; [$($attr:tt)*]; $names:tt $name:ident; [$cls:ident $($_c:ident)?];
        $($rest:tt)*) => {
        emu_class!($cls $names $name; $($rest)*);
    };
}

/// The host symbols of kernel `kn` (a module) and their choice by dtypes.
macro_rules! emu_syms {
    ($dts:tt [] $name:ident) => { emu_syms!(@one $dts $name); };
    ($dts:tt [$sel:ident $sty:ident [$($v:ident $kn:ident)*]] $name:ident) => {
        $(emu_syms!(@one $dts $kn);)*
    };
    (@one [$(($sym:ident $sfx:literal [$($dt:ident)*]))*] $kn:ident) => {
        pub mod $kn {
            use gpt2rs::dtype::DType;
            extern "C" {
                // Symbols only: called through the signature of their dtypes.
                $( #[link_name = concat!(stringify!($kn), $sfx)] fn $sym(); )*
            }
            pub fn sym(d: &[DType]) -> unsafe extern "C" fn() {
                match d {
                    $( [$(DType::$dt),*] => $sym, )*
                    _ => panic!("{}: no host instantiation for {d:?}", stringify!($kn)),
                }
            }
        }
    };
}

/// The symbol lookup of an entry's kernel (the one its selector picks).
macro_rules! emu_pick {
    ([] $name:ident) => { $name::sym };
    ([$sel:ident $sty:ident [$($v:ident $kn:ident)*]] $name:ident) => {
        match $sel { $($sty::$v => $kn::sym,)* }
    };
}

macro_rules! emu_kernel {
    ($dts:tt [$fname:ident $($_n:ident)?] $name:ident; $t0:ident [$($g:ident)*]; $sel:tt;
        $req:tt; $gf:ident ($($ga:expr),*); $args:tt
        [$($pn:ident : $pk:tt $pt:ty,)*] [$($kn:ident : $kk:tt $kt:ty,)*]) => {
        emu_syms!($dts $sel $name);
        #[allow(clippy::too_many_arguments)]
        pub fn $fname<$t0: gpt2rs::dtype::Element $(, $g: gpt2rs::dtype::Element)*>(
            $($pn: emu_param!($pk $pt)),*
        ) {
            let op = gpt2rs::cuda_entries!(@kernel $sel $name);
            gpt2rs::cuda_entries!(@checks checked = op; $req; $args);
            checked.unwrap_or_else(|e| panic!("{e}"));
            let geom = gpt2rs::kernels::cuda::geom::$gf($($ga),*);
            let sym = emu_pick!($sel $name)(&[$t0::DTYPE $(, $g::DTYPE)*]);
            // SAFETY: `sym` is `<kernel>_<dtypes>`, whose C signature is the
            // table entry's for these dtypes.
            let f: unsafe extern "C" fn($(emu_raw!($kk $kt)),*) =
                unsafe { std::mem::transmute(sym) };
            $(let $kn = emu_value!($kk $kn);)*
            // SAFETY: the pointers come from slices checked above to hold
            // what the kernel touches; they outlive the launch.
            launch(geom, || unsafe { f($($kn),*) });
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
