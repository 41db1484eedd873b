//! Compiles the emulator and every module of `cuda/` as host C++: one
//! translation unit per module, `emu.h` + `prelude.cu` + the module, as
//! NVRTC compiles prelude + module (src/kernels/cuda/mod.rs).

use std::path::PathBuf;

/// The modules of `cuda/` (a test checks this against `Module::ALL`).
const MODULES: [&str; 10] = [
    "elementwise",
    "reduce",
    "activation",
    "bias",
    "embedding",
    "layernorm",
    "crossentropy",
    "optim",
    "attention",
    "attention_tc",
];

fn main() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let cuda = here
        .join("../../cuda")
        .canonicalize()
        .expect("cuda/ next to tools/");
    let cpp = here.join("cpp");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        // Like NVRTC's --fmad=false (and Rust): no multiply-add contraction.
        .flag("-ffp-contract=off")
        // The kernels' `#pragma unroll` is NVRTC's; g++ ignores it.
        .flag("-Wno-unknown-pragmas")
        .include(&cpp)
        .file(cpp.join("emu.cpp"));
    for m in MODULES {
        let unit = out.join(format!("{m}.cpp"));
        let src = format!(
            "#include \"emu.h\"\n#include \"{}\"\n#include \"{}\"\n",
            cuda.join("prelude.cu").display(),
            cuda.join(format!("{m}.cu")).display()
        );
        std::fs::write(&unit, src).unwrap();
        build.file(&unit);
        println!(
            "cargo:rerun-if-changed={}",
            cuda.join(format!("{m}.cu")).display()
        );
    }
    build.compile("cudaemu");
    println!(
        "cargo:rerun-if-changed={}",
        cuda.join("prelude.cu").display()
    );
    println!("cargo:rerun-if-changed={}", cpp.join("emu.h").display());
    println!("cargo:rerun-if-changed={}", cpp.join("emu.cpp").display());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-env=CUDA_EMU_MODULES={}", MODULES.join(","));
}
