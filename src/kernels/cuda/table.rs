//! The kernel tables' grammar and the launcher generator. Each launcher file
//! declares its `.cu` module's kernels once, in `cuda_table!`, which expands
//! them by `launchers!` (cudarc) and exports `cuda_table_<module>!(consumer)`
//! for `emulate!` (`tools/cuda-emu`), so both take the same arguments, check
//! the same lengths and launch with the same geometry. An entry:
//!
//! ```text
//! /// doc
//! name [as launcher] <T [, G]> [for class] [by sel: Enum { Variant: kernel, .. }] (
//!     alpha: val f64,          // a scalar parameter, pushed
//!     rows,                    // a usize one (`rows: val usize`)
//!     n = y.len(),             // a usize derived from the parameters, pushed
//!     g: host Geo,             // a parameter that is not pushed
//!     s: host S { a: f64, b }, // one whose fields s.a, s.b (usize) are pushed
//!     x: in T [n],             // const T*: a device input of n elements
//!     s: in T::Acc [n * 2],    // the first dtype's accumulator
//!     y: out T [>= n],         // T*: an output of at least n elements
//!     r: opt_in T [n],         // nullable (Option; None passes null)
//!     ix: in i64 [..],         // any length (a data-dependent contract)
//! ) [if (condition)] @ geometry(args); // a function of crate::kernels::cuda::geom
//! ```
//!
//! The kernel is `name_<dtype suffixes>` (with `by`: the one `sel` picks);
//! `class` names the dtype tuples the emulator instantiates (default: f32
//! and f64).

use crate::error::{arg_err, shape_err, Result};

/// `cuda_table! { cuda_table_<module>($) Module; entries }`: the launchers of
/// the entries, and the exported `cuda_table_<module>!(consumer)` that hands
/// them to `consumer!` (`$` is passed in to spell that macro's parameter).
macro_rules! cuda_table {
    ($table:ident($d:tt) $module:ident; $($e:tt)*) => {
        #[macro_export]
        #[doc(hidden)]
        macro_rules! $table {
            ($d cb:ident) => { $crate::cuda_entries!($d cb $module; $($e)*); };
        }
        $crate::cuda_entries!(launchers $module; $($e)*);
    };
}

pub fn check_len(op: &str, arg: &str, want: usize, got: usize, at_least: bool) -> Result<()> {
    if got == want || (at_least && got > want) {
        return Ok(());
    }
    let least = if at_least { "at least " } else { "" };
    let msg = format!("{arg} has {got} elements, expected {least}{want}");
    Err(shape_err(&format!("cuda.{op}"), msg))
}

pub fn require(op: &str, ok: bool, condition: &str) -> Result<()> {
    ok.then_some(())
        .ok_or_else(|| arg_err(&format!("cuda.{op}"), format!("needs {condition}")))
}

/// Per entry, `consumer!(@emit ...)` with all arguments spelled out (`name:
/// kind type [length] [derivation]`), the parameters (less the derived ones)
/// and the pushed arguments (less the host ones); the consumers' `@checks`
/// and `@kernel` below.
#[macro_export]
#[doc(hidden)]
macro_rules! cuda_entries {
    ($cb:ident $module:ident; $(
        $(#[$meta:meta])*
        $name:ident $(as $lname:ident)? <$t0:ident $(, $g:ident)*> $(for $cls:ident)?
        $(by $sel:ident : $sty:ident { $($v:ident : $kn:ident),* $(,)? })?
        ($($args:tt)*) $(if ($($req:tt)+))? @ $gf:ident ($($ga:expr),* $(,)?);
    )*) => { $(
        $crate::cuda_entries!(@arg $cb {
            $module; [$(#[$meta])*]; [$($lname)? $name] $name; [$($cls)? one]; $t0 [$($g)*];
            [$($sel $sty [$($v $kn)*])?]; [$($($req)+)?]; $gf ($($ga),*);
        } [] [] [] $($sel: host $sty,)? $($args)*);
    )* };
    // `@arg`: one argument into all arguments, the parameters, the pushed ones.
    (@arg $cb:ident {$($e:tt)*} $a:tt $p:tt $k:tt) => { $cb!(@emit $($e)* $a $p $k); };
    (@arg $cb:ident $e:tt $a:tt $p:tt $k:tt $an:ident $(= $ad:expr)? $(, $($r:tt)*)?) => {
        $crate::cuda_entries!(@arg $cb $e $a $p $k $an: val usize $(= $ad)?, $($($r)*)?);
    };
    (@arg $cb:ident $e:tt [$($a:tt)*] [$($p:tt)*] $k:tt $an:ident : host $at:ty
        $({$($f:ident $(: $ft:ty)?),* $(,)?})? $(, $($r:tt)*)?) => {
        $crate::cuda_entries!(@arg $cb $e [$($a)* $an: host $at [] [],] [$($p)* $an: host $at,] $k
            $($($f $(: val $ft)? = $an.$f,)*)? $($($r)*)?);
    };
    (@arg $cb:ident $e:tt [$($a:tt)*] $p:tt [$($k:tt)*]
        $an:ident : $ak:tt $at:ty $([$($al:tt)*])? = $ad:expr $(, $($r:tt)*)?) => {
        $crate::cuda_entries!(@arg $cb $e [$($a)* $an: $ak $at [$($($al)*)?] [$ad],] $p
            [$($k)* $an: $ak $at,] $($($r)*)?);
    };
    (@arg $cb:ident $e:tt [$($a:tt)*] [$($p:tt)*] [$($k:tt)*]
        $an:ident : $ak:tt $at:ty $([$($al:tt)*])? $(, $($r:tt)*)?) => {
        $crate::cuda_entries!(@arg $cb $e [$($a)* $an: $ak $at [$($($al)*)?] [],]
            [$($p)* $an: $ak $at,] [$($k)* $an: $ak $at,] $($($r)*)?);
    };
    // `@checks`: binds the derived scalars, then `$checked` = the entry's
    // condition and every pointer's length (the first failure).
    (@checks $checked:ident = $op:ident; [$($req:tt)*];
        [$($an:ident : $ak:tt $at:ty [$($al:tt)*] [$($ad:expr)?],)*]) => {
        $($(let $an: $at = $ad;)?)*
        let $checked = $crate::cuda_entries!(@req $op [$($req)*])
            $(.and_then(|()| $crate::cuda_entries!(@check $op, $an, $ak, [$($al)*])))*;
    };
    (@req $op:ident []) => { $crate::error::Result::Ok(()) };
    (@req $op:ident [$($req:tt)+]) => {
        $crate::kernels::cuda::table::require($op, $($req)+, stringify!($($req)+))
    };
    // `@check`: the length check of one argument, on anything with `len()`.
    (@check $op:expr, $an:ident, opt_in, $l:tt) => { $crate::cuda_entries!(@opt $op, $an, $l) };
    (@check $op:expr, $an:ident, opt_out, $l:tt) => { $crate::cuda_entries!(@opt $op, $an, $l) };
    (@check $op:expr, $an:ident, $k:tt, [$(..)?]) => { $crate::error::Result::Ok(()) };
    (@check $op:expr, $an:ident, $k:tt, [>= $($l:tt)+]) => {
        $crate::kernels::cuda::table::check_len($op, stringify!($an), $($l)+, $an.len(), true)
    };
    (@check $op:expr, $an:ident, $k:tt, [$($l:tt)+]) => {
        $crate::kernels::cuda::table::check_len($op, stringify!($an), $($l)+, $an.len(), false)
    };
    (@opt $op:expr, $an:ident, $l:tt) => {
        $an.as_ref().map_or(Ok(()), |$an| $crate::cuda_entries!(@check $op, $an, in, $l))
    };
    // `@kernel`: the kernel's name (with a selector, the one it picks).
    (@kernel [] $name:ident) => { stringify!($name) };
    (@kernel [$sel:ident $sty:ident [$($v:ident $kn:ident)*]] $name:ident) => {
        match $sel { $($sty::$v => stringify!($kn),)* }
    };
}

/// Per entry `pub fn name<T: DevElement, ..>(gpu: &Gpu, params..) -> Result<()>`;
/// `@param`: a kind's parameter type; `@push`: one argument (None as null).
macro_rules! launchers {
    (@emit $module:ident; [$($attr:tt)*]; [$fname:ident $($_n:ident)?] $name:ident; $cls:tt;
        $t0:ident [$($g:ident)*]; $sel:tt; $req:tt; $gf:ident ($($ga:expr),*); $args:tt
        [$($pn:ident : $pk:tt $pt:ty,)*] [$($kn:ident : $kk:tt $kt:ty,)*]) => {
        $($attr)*
        #[allow(clippy::too_many_arguments)]
        pub fn $fname<$t0: $crate::kernels::cuda::context::DevElement
            $(, $g: $crate::kernels::cuda::context::DevElement)*>(
            gpu: &$crate::kernels::cuda::context::Gpu,
            $($pn: launchers!(@param $pk $pt)),*
        ) -> $crate::error::Result<()> {
            use cudarc::driver::PushKernelArg;
            let op = $crate::cuda_entries!(@kernel $sel $name);
            $crate::cuda_entries!(@checks checked = op; $req; $args);
            checked?;
            let name = $crate::kernels::cuda::kernel_name(op, &[$t0::DTYPE $(, $g::DTYPE)*]);
            let f = gpu.kernels.func($crate::kernels::cuda::Module::$module, &name)?;
            let geom = $crate::kernels::cuda::geom::$gf($($ga),*);
            let mut b = gpu.stream.launch_builder(&f);
            $(launchers!(@push b, $kk, $kn);)*
            // SAFETY: the table entry is the kernel's C signature (the
            // emulator runs the kernel from the same table): the arguments
            // are pushed in its order with its types, every pointer was
            // checked to hold what the kernel may touch, and the geometry
            // is the one the kernel is written for.
            unsafe { b.launch(geom) }.map_err($crate::kernels::cuda::context::drv)?;
            Ok(())
        }
    };
    (@param in $t:ty) => { &cudarc::driver::CudaView<'_, $t> };
    (@param out $t:ty) => { &mut cudarc::driver::CudaViewMut<'_, $t> };
    (@param opt_in $t:ty) => { Option<launchers!(@param in $t)> };
    (@param opt_out $t:ty) => { Option<launchers!(@param out $t)> };
    (@param $val_or_host:tt $t:ty) => { $t };
    (@push $b:ident, val, $an:ident) => { $b.arg(&$an) };
    (@push $b:ident, in, $an:ident) => { $b.arg($an) };
    (@push $b:ident, out, $an:ident) => { $b.arg($an) };
    (@push $b:ident, $opt:tt, $an:ident) => {
        match $an { Some(p) => $b.arg(p), None => $b.arg(&0u64) }
    };
}
