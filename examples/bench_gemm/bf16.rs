//! The bf16 GEMM on a case: bf16 A and B (the f32 case's values rounded to bf16, A stored as the case
//! says), a bf16 C, f32 accumulation, on a chosen path; what PyTorch's bf16 `torch.matmul` computes.
use super::{a_strides, filled, gflops, Case};
use cola::kernels::cpu::gemm::{gemm_bf16_with_path, Bf16Path, Dims, MatRef};
use cola::tensor::bf16;
use std::time::Instant;

/// GFLOP/s of the bf16 GEMM on `case` on `path`, which this CPU runs (see [`super::gflops`] for the
/// clock).
pub fn run(case: &Case, path: Bf16Path, cpu_time: bool) -> f64 {
    let (m, k, n) = (case.m, case.k, case.n);
    let to_bf16 = |values: Vec<f32>| -> Vec<bf16> { values.into_iter().map(bf16::from_f32).collect() };
    let a = to_bf16(filled(m * k, 1));
    let b = to_bf16(filled(k * n, 2));
    let mut c = vec![bf16::ZERO; m * n];
    let (a_rs, a_cs) = a_strides(case);
    gflops(case, cpu_time, || {
        let lhs = MatRef { data: &a, offset: 0, row_stride: a_rs, col_stride: a_cs };
        let rhs = MatRef { data: &b, offset: 0, row_stride: n, col_stride: 1 };
        let start = Instant::now();
        // The caller checked that this CPU runs the path, so this cannot fail.
        let _ = gemm_bf16_with_path(path, Dims { m, n, k }, 1.0, lhs, rhs, 0.0, &mut c);
        start.elapsed().as_secs_f64()
    })
}
