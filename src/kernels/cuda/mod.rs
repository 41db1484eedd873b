//! CUDA kernels: sources in `cuda/*.cu` (one module per op family, embedded
//! with `include_str!`), compiled at run time by NVRTC for the device's
//! architecture and cached on disk.
//!
//! CUDA is loaded dynamically (cudarc `dynamic-loading`, bindings pinned to
//! CUDA 13.0): the crate builds and every CPU path runs with no CUDA
//! installed. cudarc panics on the first call into a library it cannot
//! load, so every entry point here probes the library first
//! ([`nvrtc_available`], cudarc's `is_culib_present`) and turns its absence
//! into [`Error::Cuda`] values; the calls themselves run
//! under `catch_unwind` as a second guard (a missing *symbol* also panics in
//! cudarc). The Python layer preloads `libnvrtc.so.13` from the pip wheel
//! with `RTLD_GLOBAL`, so cudarc's `dlopen("libnvrtc.so.13")` finds it
//! without `LD_LIBRARY_PATH`.
//!
//! The sources need no CUDA headers (see `cuda/prelude.cu`): bf16/f16 are
//! 16-bit storage structs with load/store helpers written in inline PTX, so
//! NVRTC needs no include path and the `nvidia-cuda-nvrtc` wheel alone
//! compiles every module.

#[macro_use]
pub mod table;
pub mod activation;
pub mod attention;
pub mod attention_tc;
pub mod bias;
pub mod blas;
pub mod context;
pub mod crossentropy;
pub mod elementwise;
pub mod embedding;
pub mod geom;
pub mod layernorm;
pub mod optim;
pub mod reduce;

use crate::error::{Error, Result};
use cudarc::nvrtc::{self, CompileError, CompileOptions};
use std::path::PathBuf;

/// Threads per warp.
pub const WARP_SIZE: u32 = 32;
/// Block size of the elementwise launchers (grid-stride loops).
pub const ELEMENTWISE_BLOCK: u32 = 256;
/// Block size of the row-wise launchers (one block per row, block reduction).
pub const ROW_BLOCK: u32 = 256;
/// Block size of the attention launchers (one warp per query row).
pub const ATTN_BLOCK: u32 = 128;
/// Cap on the grid of grid-stride launchers.
pub const MAX_GRID: u32 = 65_535;

/// `ceil(a / b)`.
pub const fn ceil_div(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// Blocks for a grid-stride loop over `n` elements with `block` threads.
pub fn grid_for(n: usize, block: u32) -> u32 {
    ceil_div(n.max(1), block as usize).min(MAX_GRID as usize) as u32
}

/// The prelude prepended to every module (types, load/store, reductions).
pub const PRELUDE: &str = include_str!("../../../cuda/prelude.cu");

/// One kernel module (a `.cu` file under `cuda/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    Elementwise,
    Reduce,
    Activation,
    Bias,
    Embedding,
    LayerNorm,
    CrossEntropy,
    Optim,
    Attention,
    AttentionTc,
}

impl Module {
    /// Every module, in a fixed order (its index is the per-device cache slot).
    pub const ALL: [Module; 10] = [
        Module::Elementwise,
        Module::Reduce,
        Module::Activation,
        Module::Bias,
        Module::Embedding,
        Module::LayerNorm,
        Module::CrossEntropy,
        Module::Optim,
        Module::Attention,
        Module::AttentionTc,
    ];

    /// The file name under `cuda/`.
    pub fn file(self) -> &'static str {
        match self {
            Module::Elementwise => "elementwise.cu",
            Module::Reduce => "reduce.cu",
            Module::Activation => "activation.cu",
            Module::Bias => "bias.cu",
            Module::Embedding => "embedding.cu",
            Module::LayerNorm => "layernorm.cu",
            Module::CrossEntropy => "crossentropy.cu",
            Module::Optim => "optim.cu",
            Module::Attention => "attention.cu",
            Module::AttentionTc => "attention_tc.cu",
        }
    }

    /// The module's own source (without the prelude).
    pub fn source(self) -> &'static str {
        match self {
            Module::Elementwise => include_str!("../../../cuda/elementwise.cu"),
            Module::Reduce => include_str!("../../../cuda/reduce.cu"),
            Module::Activation => include_str!("../../../cuda/activation.cu"),
            Module::Bias => include_str!("../../../cuda/bias.cu"),
            Module::Embedding => include_str!("../../../cuda/embedding.cu"),
            Module::LayerNorm => include_str!("../../../cuda/layernorm.cu"),
            Module::CrossEntropy => include_str!("../../../cuda/crossentropy.cu"),
            Module::Optim => include_str!("../../../cuda/optim.cu"),
            Module::Attention => include_str!("../../../cuda/attention.cu"),
            Module::AttentionTc => include_str!("../../../cuda/attention_tc.cu"),
        }
    }

    /// The module by file name (`"layernorm.cu"` or `"layernorm"`).
    pub fn from_name(name: &str) -> Option<Module> {
        let name = name.strip_suffix(".cu").unwrap_or(name);
        Module::ALL
            .into_iter()
            .find(|m| m.file().strip_suffix(".cu") == Some(name))
    }
}

/// Whether `(T, G)` is a (storage, gradient) dtype pair the `_grad` and
/// `_part` kernels are instantiated for (`FOR_GRAD_PAIRS` in
/// `cuda/prelude.cu`): the same dtype, or f32 gradients of 16-bit storage.
pub fn grad_pair_supported(t: crate::DType, g: crate::DType) -> bool {
    use crate::DType::*;
    t == g || (matches!(t, BF16 | F16) && g == F32)
}

/// The dtype suffix of a kernel name (`f32`, `f64`, `bf16`, `f16`).
pub fn dtype_suffix(dtype: crate::dtype::DType) -> &'static str {
    use crate::dtype::DType;
    match dtype {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
    }
}

/// The kernel name `base_suffix...` for the given dtypes (`kernel_name("cast",
/// &[F32, BF16])` is `cast_f32_bf16`): the one place names are built.
pub fn kernel_name(base: &str, dtypes: &[crate::dtype::DType]) -> String {
    let mut s = base.to_string();
    for d in dtypes {
        s.push('_');
        s.push_str(dtype_suffix(*d));
    }
    s
}

/// The full translation unit of a module: prelude, then the module, with
/// `#line` directives so NVRTC's log names the right file and line.
pub fn full_source(module_file: &str, module_src: &str) -> String {
    format!("#line 1 \"prelude.cu\"\n{PRELUDE}\n#line 1 \"{module_file}\"\n{module_src}\n")
}

pub(crate) fn cuda_err(msg: impl Into<String>) -> Error {
    Error::Cuda(msg.into())
}

/// Runs `f` (a call into cudarc) turning a panic (cudarc panics on a missing
/// library or symbol) into an error.
fn guarded<R>(what: &str, f: impl FnOnce() -> R) -> Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        cuda_err(format!("{what}: {msg}"))
    })
}

/// Whether NVRTC can be loaded (`Err` says why not). Never panics.
pub fn nvrtc_available() -> Result<()> {
    // SAFETY: only dlopen()s candidate names and drops the handle.
    let present = guarded("probing NVRTC", || unsafe {
        cudarc::nvrtc::sys::is_culib_present()
    })?;
    if present {
        Ok(())
    } else {
        Err(cuda_err(
            "NVRTC (libnvrtc.so.13) not found: install the `nvidia-cuda-nvrtc` 13.x wheel \
             (pip install 'gpt2rs[cuda]') and import gpt2rs.cuda, or put libnvrtc on LD_LIBRARY_PATH",
        ))
    }
}

/// Whether the CUDA driver (libcuda) can be loaded (`Err` says why not).
pub fn driver_available() -> Result<()> {
    // SAFETY: as in `nvrtc_available`.
    let present = guarded("probing the CUDA driver", || unsafe {
        cudarc::driver::sys::is_culib_present()
    })?;
    if present {
        Ok(())
    } else {
        Err(cuda_err(
            "the CUDA driver (libcuda.so) was not found: this machine has no NVIDIA driver/GPU",
        ))
    }
}

/// The NVRTC version `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    nvrtc_available()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-pointers to live ints.
    let rc = guarded("nvrtcVersion", || unsafe {
        nvrtc::sys::nvrtcVersion(&mut major, &mut minor)
    })?;
    if rc != nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(cuda_err(format!("nvrtcVersion failed: {rc:?}")));
    }
    Ok((major, minor))
}

/// The compile cache directory: `$GPT2RS_CUDA_CACHE`, else
/// `~/.cache/gpt2rs/cuda` (`None` when neither can be determined).
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("GPT2RS_CUDA_CACHE") {
        return Some(PathBuf::from(d));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/gpt2rs/cuda"))
}

/// FNV-1a 64 (stable across runs and builds, unlike `DefaultHasher`).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(&[0xff]) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The NVRTC options for `arch` (`sm_80`, `sm_90`, ...).
fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "-std=c++17".into(),
        "--fmad=false".into(),
    ]
}

fn check_arch(arch: &str) -> Result<()> {
    let ok = arch
        .strip_prefix("sm_")
        .or_else(|| arch.strip_prefix("compute_"))
        .is_some_and(|n| n.len() >= 2 && n.chars().all(|c| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(crate::error::arg_err(
            "cuda.compile",
            format!("architecture {arch:?}: expected sm_XY, e.g. sm_80 or sm_90"),
        ))
    }
}

/// The outcome of one module compile.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The PTX text.
    pub ptx: String,
    /// Whether it came from the disk cache.
    pub cached: bool,
}

/// Compiles one translation unit named `file` for `arch`, through the disk
/// cache (keyed by source hash, architecture, options and NVRTC version). A
/// compile error names the file and carries NVRTC's log.
pub fn compile_source(file: &str, source: &str, arch: &str) -> Result<Compiled> {
    check_arch(arch)?;
    let (major, minor) = nvrtc_version()?;
    let opts = options(arch);
    let key = fnv1a(&[
        source.as_bytes(),
        arch.as_bytes(),
        opts.join(" ").as_bytes(),
        format!("nvrtc-{major}.{minor}").as_bytes(),
    ]);
    let stem = file.strip_suffix(".cu").unwrap_or(file);
    let cache_path = cache_dir().map(|d| d.join(format!("{stem}-{arch}-{key:016x}.ptx")));
    if let Some(p) = &cache_path {
        if let Ok(ptx) = std::fs::read_to_string(p) {
            return Ok(Compiled { ptx, cached: true });
        }
    }
    let copts = CompileOptions {
        options: opts,
        name: Some(file.to_string()),
        ..Default::default()
    };
    let res = guarded(&format!("compiling {file}"), || {
        nvrtc::compile_ptx_with_opts(source, copts)
    })?;
    let ptx = match res {
        Ok(ptx) => ptx.to_src(),
        Err(CompileError::CompileError { log, .. }) => {
            return Err(cuda_err(format!(
                "NVRTC failed to compile {file} for {arch}:\n{}",
                log.to_string_lossy().trim_end()
            )))
        }
        Err(e) => return Err(cuda_err(format!("NVRTC error on {file}: {e}"))),
    };
    if let Some(p) = &cache_path {
        // Best effort: a read-only cache only costs a recompile. Write to a
        // temporary name and rename, so readers never see half a file.
        if let Some(dir) = p.parent() {
            if std::fs::create_dir_all(dir).is_ok() {
                let tmp = p.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, &ptx).is_ok() && std::fs::rename(&tmp, p).is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
    }
    Ok(Compiled { ptx, cached: false })
}

/// Compiles one module (prelude + its `.cu`) for `arch`.
pub fn compile_module(module: Module, arch: &str) -> Result<Compiled> {
    compile_source(
        module.file(),
        &full_source(module.file(), module.source()),
        arch,
    )
}

/// Compiles every module for `arch` (e.g. `sm_80`, `sm_90`), returning
/// `(file, PTX size in bytes)` per module, in [`Module::ALL`] order.
pub fn compile_all(arch: &str) -> Result<Vec<(String, usize)>> {
    Module::ALL
        .into_iter()
        .map(|m| compile_module(m, arch).map(|c| (m.file().to_string(), c.ptx.len())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_geometry() {
        use crate::dtype::DType;
        assert_eq!(
            kernel_name("cast", &[DType::F32, DType::BF16]),
            "cast_f32_bf16"
        );
        assert_eq!(kernel_name("fill", &[DType::F16]), "fill_f16");
        assert_eq!(ceil_div(10, 4), 3);
        assert_eq!(grid_for(0, 256), 1);
        assert_eq!(grid_for(1 << 40, 256), MAX_GRID);
        assert_eq!(Module::from_name("layernorm.cu"), Some(Module::LayerNorm));
        assert_eq!(Module::from_name("attention"), Some(Module::Attention));
        assert!(check_arch("sm_90").is_ok() && check_arch("90").is_err());
    }

    #[test]
    fn missing_cuda_is_an_error_not_a_panic() {
        // Either present (a CUDA machine) or a clean error: never a panic.
        let _ = nvrtc_available();
        let _ = driver_available();
        match nvrtc_available() {
            Err(_) => assert!(compile_all("sm_80").is_err()),
            Ok(()) => {
                let out = compile_all("sm_80").unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(out.len(), Module::ALL.len());
            }
        }
    }
}
