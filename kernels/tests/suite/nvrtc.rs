//! Every kernel source compiles through NVRTC to sm_90 machine code, and that code defines the symbol of
//! every kernel handle of its module. Needs only libnvrtc (no GPU): `.ci/run` installs it from PyPI and sets
//! `COLA_REQUIRE_NVRTC=1`, so a missing library fails CI instead of skipping.
#![cfg(feature = "cuda")]
use cola_kernels::cuda::compile::{compile_cubin, nvrtc_available, KernelSource, SOURCES};
use cola_kernels::cuda::Module;

fn nvrtc_or_skip() -> bool {
    if nvrtc_available() {
        return true;
    }
    assert!(
        std::env::var("COLA_REQUIRE_NVRTC").map_or(true, |v| v != "1"),
        "COLA_REQUIRE_NVRTC=1 but libnvrtc could not be loaded (check LD_LIBRARY_PATH)"
    );
    eprintln!("skipped: NVRTC library not found (set LD_LIBRARY_PATH to a folder with libnvrtc.so.13)");
    false
}

/// Whether `name` is a whole entry of one of the CUBIN's (NUL-separated) string tables.
fn has_symbol(cubin: &[u8], name: &str) -> bool {
    let entry = format!("\0{name}\0").into_bytes();
    cubin.windows(entry.len()).any(|w| w == entry.as_slice())
}

#[test]
fn every_kernel_source_compiles_for_sm90() {
    if !nvrtc_or_skip() {
        return;
    }
    for src in SOURCES {
        let cubin = compile_cubin(src, "sm_90").unwrap_or_else(|e| panic!("{e}"));
        // An ELF image, not PTX text.
        assert_eq!(&cubin[..4], b"\x7fELF", "{}.cu did not produce a CUBIN", src.name);
        eprintln!("{}.cu: {} bytes of sm_90 code", src.name, cubin.len());
        let module = Module::ALL.iter().find(|m| m.name() == src.name).expect("a module per source");
        for kernel in module.kernels() {
            assert!(has_symbol(&cubin, kernel.symbol()), "{}.cu has no symbol {}", src.name, kernel.symbol());
        }
        assert!(!has_symbol(&cubin, "no_such_kernel"), "the symbol check accepts anything");
    }
}

#[test]
fn a_broken_kernel_is_reported_with_the_compiler_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let broken =
        KernelSource { name: "broken", code: "extern \"C\" __global__ void k(float* y) { y[0] = nope; }" };
    let err = compile_cubin(&broken, "sm_90").expect_err("an undefined identifier must not compile");
    let text = err.to_string();
    assert!(text.contains("broken.cu") && text.contains("nope"), "unhelpful error: {text}");
}
