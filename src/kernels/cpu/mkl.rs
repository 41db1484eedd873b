//! oneMKL's bf16 GEMM (`cblas_gemm_bf16bf16f32`: bf16 inputs, f32
//! accumulation and output), loaded at run time from the `mkl` pip wheel
//! (`pip install 'gpt2rs[mkl]'`), never linked at build time: the wheel
//! stays one abi3 wheel, and a missing MKL is one line of
//! [`bf16_gemm_choice`], not a failure.
//!
//! Where it runs: on CPUs with AMX-BF16 (Intel Sapphire Rapids and later)
//! MKL drives the tile units at several times the f32 GEMM's rate. With
//! AVX512-BF16 alone it is slower than widening to f32 and running the
//! `gemm` crate (74-85 against 131-168 GF/s per core on an Emerald Rapids
//! VM without AMX, benches/RESULTS.md), so by default it is chosen only
//! where AMX-BF16 is present. `GPT2RS_BF16_GEMM=mkl|f32|auto` overrides.
//! The choice follows CPU features, not timings, so that a run computes the
//! same bits every time (resume after a kill is bit-exact).

use libloading::Library;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// `cblas_gemm_bf16bf16f32` (LP64: 32-bit MKL_INT; bf16 passed as u16).
type GemmBf16 = unsafe extern "C" fn(
    layout: i32,
    trans_a: i32,
    trans_b: i32,
    m: i32,
    n: i32,
    k: i32,
    alpha: f32,
    a: *const u16,
    lda: i32,
    b: *const u16,
    ldb: i32,
    beta: f32,
    c: *mut f32,
    ldc: i32,
);
/// `MKL_Set_Threading_Layer` and `MKL_Set_Interface_Layer`.
type SetLayer = unsafe extern "C" fn(i32) -> i32;

const CBLAS_ROW_MAJOR: i32 = 101;
const CBLAS_NO_TRANS: i32 = 111;
const CBLAS_TRANS: i32 = 112;
const MKL_THREADING_SEQUENTIAL: i32 = 1;
const MKL_INTERFACE_LP64: i32 = 0;

/// The loaded library and the one entry point gpt2rs calls.
pub struct Mkl {
    _lib: Library,
    gemm_bf16: GemmBf16,
    /// What was loaded, for the run summary.
    pub path: String,
}

/// The path Python found in the `mkl` wheel (set before the first GEMM).
static HINT: Mutex<Option<PathBuf>> = Mutex::new(None);
static MKL: OnceLock<Result<Mkl, String>> = OnceLock::new();

/// Tells the loader where the `mkl` wheel's `libmkl_rt.so` is; without a
/// hint it tries the dynamic loader's search path.
pub fn set_library_hint(path: PathBuf) {
    *HINT.lock().unwrap() = Some(path);
}

/// oneMKL, loaded once (`Err` says why it is not there).
pub fn mkl() -> Result<&'static Mkl, &'static str> {
    MKL.get_or_init(load).as_ref().map_err(|e| e.as_str())
}

fn load() -> Result<Mkl, String> {
    let mut tried = Vec::new();
    let hint = HINT.lock().unwrap().clone();
    let names = hint
        .into_iter()
        .chain(["libmkl_rt.so.3", "libmkl_rt.so.2"].map(PathBuf::from));
    for name in names {
        // SAFETY: loading runs MKL's initializers, which have no
        // preconditions; the symbols are read with the C signatures of
        // mkl_cblas.h and mkl_service.h.
        let got = unsafe {
            Library::new(&name).and_then(|lib| {
                let gemm_bf16 = *lib.get::<GemmBf16>(b"cblas_gemm_bf16bf16f32\0")?;
                let threading = *lib.get::<SetLayer>(b"MKL_Set_Threading_Layer\0")?;
                let interface = *lib.get::<SetLayer>(b"MKL_Set_Interface_Layer\0")?;
                // Before any other MKL call: one task is one thread (the
                // runtime owns the parallelism), 32-bit integers.
                interface(MKL_INTERFACE_LP64);
                threading(MKL_THREADING_SEQUENTIAL);
                Ok((lib, gemm_bf16))
            })
        };
        match got {
            Ok((lib, gemm_bf16)) => {
                return Ok(Mkl {
                    _lib: lib,
                    gemm_bf16,
                    path: name.display().to_string(),
                })
            }
            Err(e) => tried.push(format!("{}: {e}", name.display())),
        }
    }
    Err(format!(
        "oneMKL not found (pip install 'gpt2rs[mkl]'); tried {}",
        tried.join("; ")
    ))
}

impl Mkl {
    /// `C = alpha * op(A) @ op(B) + beta * C`, row-major, A and B bf16 (as
    /// bits), C f32; with `beta == 0` C is not read. Sizes must fit i32.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16(
        &self,
        trans_a: bool,
        trans_b: bool,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        a: &[u16],
        b: &[u16],
        beta: f32,
        c: &mut [f32],
    ) {
        assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
        assert!(
            fits_i32(m, n, k),
            "gemm_bf16: sizes exceed MKL's 32-bit ints"
        );
        let lda = if trans_a { m } else { k };
        let ldb = if trans_b { k } else { n };
        let t = |x: bool| if x { CBLAS_TRANS } else { CBLAS_NO_TRANS };
        // SAFETY: the slices hold op(A) m x k, op(B) k x n and C m x n
        // row-major with these leading dimensions (asserted above); C does
        // not alias A or B (a &mut borrow); MKL is sequential, so the call
        // touches nothing else.
        unsafe {
            (self.gemm_bf16)(
                CBLAS_ROW_MAJOR,
                t(trans_a),
                t(trans_b),
                m as i32,
                n as i32,
                k as i32,
                alpha,
                a.as_ptr(),
                lda.max(1) as i32,
                b.as_ptr(),
                ldb.max(1) as i32,
                beta,
                c.as_mut_ptr(),
                n.max(1) as i32,
            )
        }
    }
}

/// Whether MKL's 32-bit sizes hold this product.
pub fn fits_i32(m: usize, n: usize, k: usize) -> bool {
    [m, n, k, m * k, k * n, m * n]
        .iter()
        .all(|&x| x <= i32::MAX as usize)
}

/// How bf16 GEMMs (bf16 tensors, and fp32_fast_bf16's rounded inputs) run
/// on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Gemm {
    /// Widen to f32 and run the `gemm` crate (fp32_fast_bf16 then computes
    /// in f32, as DESIGN.md allows the CPU).
    WidenF32,
    /// oneMKL's `cblas_gemm_bf16bf16f32`.
    Mkl,
}

/// The backend and why, for the run summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bf16GemmChoice {
    pub backend: Bf16Gemm,
    pub reason: String,
}

/// The policy, apart from the machine so that it is tested everywhere:
/// `request` is GPT2RS_BF16_GEMM, `amx` whether the CPU has AMX-BF16, and
/// `mkl` loads oneMKL (its path, or why not), called only where MKL could
/// be chosen. `Err` for an unknown request, or `mkl` requested where it
/// cannot load.
pub fn choose<'a>(
    request: Option<&str>,
    amx: bool,
    mkl: impl FnOnce() -> Result<&'a str, &'a str>,
) -> Result<Bf16GemmChoice, String> {
    let pick = |backend, reason: String| Ok(Bf16GemmChoice { backend, reason });
    match request.map(str::trim).filter(|r| !r.is_empty()) {
        None | Some("auto") if !amx => pick(
            Bf16Gemm::WidenF32,
            "f32 (no AMX-BF16: MKL's bf16 GEMM is slower than f32 there)".into(),
        ),
        None | Some("auto") => match mkl() {
            Ok(p) => pick(Bf16Gemm::Mkl, format!("oneMKL {p} on AMX-BF16")),
            Err(why) => pick(Bf16Gemm::WidenF32, format!("f32 ({why})")),
        },
        Some("f32") => pick(Bf16Gemm::WidenF32, "f32 (GPT2RS_BF16_GEMM=f32)".into()),
        Some("mkl") => match mkl() {
            Ok(p) => pick(Bf16Gemm::Mkl, format!("oneMKL {p} (GPT2RS_BF16_GEMM=mkl)")),
            Err(why) => Err(format!("GPT2RS_BF16_GEMM=mkl, but {why}")),
        },
        Some(other) => Err(format!(
            "GPT2RS_BF16_GEMM={other:?} is not one of auto, mkl, f32"
        )),
    }
}

/// Whether the CPU has AMX-BF16 (CPUID leaf 7, EDX bit 22). MKL asks the
/// kernel for the tile state itself.
pub fn has_amx_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        #[allow(unused_unsafe)]
        // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 reads zeros
        // where it is not implemented.
        let r = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        (r.edx >> 22) & 1 == 1
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

static CHOICE: OnceLock<Result<Bf16GemmChoice, String>> = OnceLock::new();

/// This process's choice (made once, at the first bf16 GEMM or query).
pub fn bf16_gemm_choice() -> Result<&'static Bf16GemmChoice, &'static str> {
    CHOICE
        .get_or_init(|| {
            let request = std::env::var("GPT2RS_BF16_GEMM").ok();
            choose(request.as_deref(), has_amx_bf16(), || {
                mkl().map(|m| m.path.as_str())
            })
        })
        .as_ref()
        .map_err(|e| e.as_str())
}

/// The backend the kernels use: an invalid setting (reported by
/// [`bf16_gemm_choice`] when a model is built) falls back to f32.
pub fn bf16_backend() -> Bf16Gemm {
    bf16_gemm_choice().map_or(Bf16Gemm::WidenF32, |c| c.backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_follows_features_and_the_request() {
        let ok = || Ok("libmkl_rt.so.3");
        let missing = || Err("oneMKL not found");
        let never = || -> Result<&str, &str> { panic!("MKL loaded where it cannot be chosen") };
        let b = |r: Result<Bf16GemmChoice, String>| r.map(|c| c.backend);
        assert_eq!(b(choose(None, true, ok)), Ok(Bf16Gemm::Mkl));
        assert_eq!(
            b(choose(Some("auto"), false, never)),
            Ok(Bf16Gemm::WidenF32)
        );
        assert_eq!(b(choose(None, true, missing)), Ok(Bf16Gemm::WidenF32));
        assert_eq!(b(choose(Some("mkl"), false, ok)), Ok(Bf16Gemm::Mkl));
        assert_eq!(b(choose(Some("f32"), true, never)), Ok(Bf16Gemm::WidenF32));
        assert!(choose(Some("mkl"), true, missing)
            .unwrap_err()
            .contains("not found"));
        assert!(choose(Some("onednn"), true, never)
            .unwrap_err()
            .contains("auto, mkl, f32"));
        assert!(choose(None, true, missing)
            .unwrap()
            .reason
            .contains("not found"));
    }
}
