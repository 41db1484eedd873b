//! The kernel tables' grammar and the launcher generator.
//!
//! Each launcher file (`elementwise.rs`, `layernorm.rs`, ...) declares its
//! `.cu` module's kernels once, in a `#[macro_export]`ed table macro
//! `cuda_table_<module>!(consumer)` that hands the entries to `consumer!`.
//! [`launchers!`] (here) turns them into the cudarc launchers; the host
//! emulator (`tools/cuda-emu`) hands the same tables to its own consumer,
//! which declares the host symbols and launch functions with the same
//! argument lists, length checks and geometry. An entry:
//!
//! ```text
//! /// doc
//! name [as launcher_name] <T [, G]> [for class] (
//!     n: val usize,          // a scalar (usize, f64, i32, u64, P, BlockDims, ...)
//!     x: in T [n],           // const T*: a device input of n elements
//!     s: in A [rows * 2],    // A is the first dtype's accumulator, T::Acc
//!     y: out T [>= n],       // T*: an output of at least n elements
//!     r: opt_in T [n],       // nullable const T* (Option; None passes null)
//!     ix: in i64 [..],       // any length (a data-dependent contract)
//! ) @ geometry(args);        // a function of crate::kernels::cuda::geom
//! ```
//!
//! The kernel is `name_<dtype suffixes>` of the table's module, its
//! arguments pushed in the listed order; `class` names the dtype tuples the
//! host build instantiates (`tools/cuda-emu`; default: f32 and f64).

use crate::error::{shape_err, Result};

/// `got == want` for argument `arg` of kernel `op`.
pub fn check_len(op: &str, arg: &str, want: usize, got: usize) -> Result<()> {
    if want == got {
        return Ok(());
    }
    Err(shape_err(
        &format!("cuda.{op}"),
        format!("{arg} has {got} elements, expected {want}"),
    ))
}

/// `got >= want` for argument `arg` of kernel `op`.
pub fn check_min(op: &str, arg: &str, want: usize, got: usize) -> Result<()> {
    if got >= want {
        return Ok(());
    }
    Err(shape_err(
        &format!("cuda.{op}"),
        format!("{arg} has {got} elements, expected at least {want}"),
    ))
}

/// The element type of a table pointer: `A` is the accumulator of the
/// entry's first dtype, anything else itself.
#[macro_export]
#[doc(hidden)]
macro_rules! cuda_ety {
    ($t0:ident; A) => {
        <$t0 as $crate::dtype::Element>::Acc
    };
    ($t0:ident; $t:ty) => {
        $t
    };
}

/// The length check of one table argument (`Result<()>`), on anything with
/// `len()` (a device view, a host slice).
#[macro_export]
#[doc(hidden)]
macro_rules! cuda_check {
    ($op:expr, $an:ident, val, []) => { $crate::error::Result::Ok(()) };
    ($op:expr, $an:ident, opt_in, [$($l:tt)+]) => { $crate::cuda_check!(@opt $op, $an, [$($l)+]) };
    ($op:expr, $an:ident, opt_out, [$($l:tt)+]) => { $crate::cuda_check!(@opt $op, $an, [$($l)+]) };
    ($op:expr, $an:ident, $k:tt, [..]) => { $crate::error::Result::Ok(()) };
    ($op:expr, $an:ident, $k:tt, [>= $($l:tt)+]) => {
        $crate::kernels::cuda::table::check_min($op, stringify!($an), $($l)+, $an.len())
    };
    ($op:expr, $an:ident, $k:tt, [$($l:tt)+]) => {
        $crate::kernels::cuda::table::check_len($op, stringify!($an), $($l)+, $an.len())
    };
    (@opt $op:expr, $an:ident, [$($l:tt)+]) => {
        match &$an {
            Some($an) => $crate::cuda_check!($op, $an, in, [$($l)+]),
            None => $crate::error::Result::Ok(()),
        }
    };
}

/// A launcher's parameter type for one table argument.
macro_rules! launch_param {
    ($t0:ident; val $t:tt) => { $t };
    ($t0:ident; in $t:tt) => { &cudarc::driver::CudaView<'_, $crate::cuda_ety!($t0; $t)> };
    ($t0:ident; out $t:tt) => { &mut cudarc::driver::CudaViewMut<'_, $crate::cuda_ety!($t0; $t)> };
    ($t0:ident; opt_in $t:tt) => { Option<launch_param!($t0; in $t)> };
    ($t0:ident; opt_out $t:tt) => { Option<launch_param!($t0; out $t)> };
}

/// Pushes one table argument (scalars by reference, views as pointers, a
/// missing optional pointer as null).
macro_rules! launch_arg {
    ($b:ident, $null:ident, val, $an:ident) => {
        $b.arg(&$an)
    };
    ($b:ident, $null:ident, in, $an:ident) => {
        $b.arg($an)
    };
    ($b:ident, $null:ident, out, $an:ident) => {
        $b.arg($an)
    };
    ($b:ident, $null:ident, $k:tt, $an:ident) => {
        match $an {
            Some(p) => $b.arg(p),
            None => $b.arg(&$null),
        }
    };
}

/// The cudarc launchers of one kernel table (see the module doc): per entry
/// `pub fn name<T: DevElement, ...>(gpu: &Gpu, args...) -> Result<()>`,
/// which checks every pointer's length, picks `name_<dtypes>` of the module
/// and launches it on the GPU's stream with the entry's geometry.
macro_rules! launchers {
    ($module:ident; $(
        $(#[$meta:meta])*
        $kname:ident $(as $lname:ident)? <$t0:ident $(, $g:ident)*> $(for $cls:ident)?
        ($($an:ident : $ak:tt $at:tt $([$($al:tt)+])?),* $(,)?)
        @ $gf:ident ($($ga:expr),* $(,)?);
    )*) => { $(
        launchers!(@one $module; [$($lname)? $kname] $kname; [$(#[$meta])*]; $t0 [$($g)*];
            [$($an : $ak $at [$($($al)+)?]),*]; $gf ($($ga),*));
    )* };
    (@one $module:ident; [$fname:ident $($_k:ident)?] $kname:ident; [$($attr:tt)*];
        $t0:ident [$($g:ident)*]; [$($an:ident : $ak:tt $at:tt [$($al:tt)*]),*];
        $gf:ident ($($ga:expr),*)) => {
        $($attr)*
        #[allow(clippy::too_many_arguments)]
        pub fn $fname<$t0: $crate::kernels::cuda::context::DevElement
            $(, $g: $crate::kernels::cuda::context::DevElement)*>(
            gpu: &$crate::kernels::cuda::context::Gpu,
            $($an: launch_param!($t0; $ak $at)),*
        ) -> $crate::error::Result<()> {
            use cudarc::driver::PushKernelArg;
            let op = stringify!($kname);
            $($crate::cuda_check!(op, $an, $ak, [$($al)*])?;)*
            let name = $crate::kernels::cuda::kernel_name(
                op,
                &[<$t0 as $crate::dtype::Element>::DTYPE $(, <$g as $crate::dtype::Element>::DTYPE)*],
            );
            let f = gpu.kernels.func($crate::kernels::cuda::Module::$module, &name)?;
            let geom = $crate::kernels::cuda::geom::$gf($($ga),*);
            #[allow(unused_variables)]
            let null: u64 = 0;
            let mut b = gpu.stream.launch_builder(&f);
            $(launch_arg!(b, null, $ak, $an);)*
            // SAFETY: this entry of the kernel table is the kernel's C
            // signature: the arguments are pushed in its order with its
            // types (dtype parameters as the name's suffixes, `A` their
            // accumulator, optional pointers null), every pointer was
            // checked above to hold the elements the kernel may touch, and
            // the geometry is the one the kernel is written for. The host
            // emulator runs the kernel from the same table.
            unsafe { b.launch(geom.into()) }.map_err($crate::kernels::cuda::context::drv)?;
            Ok(())
        }
    };
}
