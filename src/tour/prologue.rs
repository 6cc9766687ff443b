//! The prologue: the GEMM micro-kernel every projection ends in, and the views that let it read
//! transposed operands without copies.
use super::Result;
use crate::kernels::cpu::gemm::{gemm_with_path, Dims, KernelPath, MatRef};
use crate::tensor::{DType, Tensor};
use std::fmt::Write as _;

/// `A [12, 4] @ B [4, 32]` of small integers on every micro-kernel this CPU has. 12 x 32 is a whole
/// number of every path's register tiles (12 x 32 on AVX-512, 6 x 16 on AVX2, 6 x 8 portable) and 12 rows
/// are more than the few-row path takes, so the blocked main path runs, not the edge path. Small
/// integers are exact in f32, so every path must give the same C, bit for bit.
pub fn gemm(out: &mut String) -> Result<()> {
    const M: usize = 12;
    const N: usize = 32;
    const K: usize = 4;
    let a_at = |i: usize, k: usize| ((i + 2 * k) % 5) as f32 - 2.0;
    let b_at = |k: usize, j: usize| ((3 * j + k) % 7) as f32 - 3.0;
    let a: Vec<f32> = (0..M * K).map(|x| a_at(x / K, x % K)).collect();
    let b: Vec<f32> = (0..K * N).map(|x| b_at(x / N, x % N)).collect();
    let dims = Dims { m: M, n: N, k: K };
    let mut results: Vec<(&str, Vec<f32>)> = Vec::new();
    for path in KernelPath::ALL.into_iter().filter(|p| p.is_available()) {
        let mut c = vec![0.0f32; M * N];
        gemm_with_path(path, dims, 1.0, row_major(&a, K), row_major(&b, N), 0.0, &mut c)?;
        results.push((path.name(), c));
    }
    let names: Vec<&str> = results.iter().map(|(name, _)| *name).collect();
    let (_, first) = &results[0];
    let same = results.iter().all(|(_, c)| c == first);
    writeln!(out, "selected micro-kernel: {}", KernelPath::selected().name())?;
    writeln!(out, "A [12, 4] @ B [4, 32] on {}: every path gives the same C: {same}", names.join(", "))?;
    writeln!(out, "C[0][0..8]    = {:?}", &first[..8])?;
    writeln!(out, "C[11][24..32] = {:?}", &first[11 * N + 24..])?;
    let terms: Vec<String> = (0..K).map(|k| format!("({})*({})", a_at(0, k), b_at(k, 0))).collect();
    let by_hand: f32 = (0..K).map(|k| a_at(0, k) * b_at(k, 0)).sum();
    writeln!(out, "by hand: C[0][0] = {} = {by_hand}", terms.join(" + "))?;
    let terms: Vec<String> = (0..K).map(|k| format!("({})*({})", a_at(11, k), b_at(k, 31))).collect();
    let by_hand: f32 = (0..K).map(|k| a_at(11, k) * b_at(k, 31)).sum();
    writeln!(out, "by hand: C[11][31] = {} = {by_hand}", terms.join(" + "))?;
    Ok(())
}

/// A row-major matrix of `cols` columns as a GEMM operand.
fn row_major(data: &[f32], cols: usize) -> MatRef<'_, f32> {
    MatRef { data, offset: 0, row_stride: cols, col_stride: 1 }
}

/// A transpose and a narrow are new layouts over the same buffer; only `contiguous` copies.
pub fn views(out: &mut String) -> Result<()> {
    let x = Tensor::arange(6, DType::F32).reshape(&[2, 3])?;
    let show = |out: &mut String, what: &str, t: &Tensor| -> Result<()> {
        let layout = t.layout();
        let values = t.to_vec::<f32>()?;
        writeln!(
            out,
            "{what:<12} shape {:?} strides {:?} offset {} shares x's buffer: {:<5} values {values:?}",
            layout.shape(),
            layout.strides(),
            layout.offset(),
            t.shares_storage(&x),
        )?;
        Ok(())
    };
    show(out, "x", &x)?;
    show(out, "x.t()", &x.t()?)?;
    show(out, "x.narrow", &x.narrow(1, 1, 2)?)?;
    show(out, "contiguous", &x.t()?.contiguous()?)?;
    Ok(())
}
