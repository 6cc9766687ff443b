//! Every kernel source compiles through NVRTC to sm_90 machine code. Needs only libnvrtc (no GPU): `.ci/run`
//! installs it from PyPI and sets `COLA_REQUIRE_NVRTC=1`, so a missing library fails CI instead of skipping.
#![cfg(feature = "cuda")]
use cola_kernels::cuda::compile::{compile_cubin, nvrtc_available, KernelSource, SOURCES};

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
