//! What the stops share: the by-hand maths in f64 (one definition each), central finite differences, and
//! the printing of short vectors.

/// `x * sigmoid(x)`, the by-hand SiLU the stops compare the engine's with.
pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// `exp(x - max) / sum exp(x - max)` of one row.
pub fn softmax(row: &[f64]) -> Vec<f64> {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = row.iter().map(|&x| (x - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// `a [m, k] @ b [k, n]`, row-major.
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    c
}

/// Central differences `(f(x + h e_i) - f(x - h e_i)) / 2h` of a scalar function at every coordinate.
/// With f64 sums and `h = 1e-6` the truncation error is about `h^2 f'''` and the rounding error about
/// `1e-16 / h`: both near 1e-10 for the unit-scale functions of the tour.
pub fn central_differences(f: impl Fn(&[f64]) -> f64, at: &[f64]) -> Vec<f64> {
    const H: f64 = 1e-6;
    let mut x = at.to_vec();
    (0..at.len())
        .map(|i| {
            x[i] = at[i] + H;
            let up = f(&x);
            x[i] = at[i] - H;
            let down = f(&x);
            x[i] = at[i];
            (up - down) / (2.0 * H)
        })
        .collect()
}

/// The largest `|a_i - b_i|`.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// `[v0, v1, ...]` with `decimals` digits after the point (negative zero printed as zero).
pub fn show(values: &[f64], decimals: usize) -> String {
    let parts: Vec<String> = values
        .iter()
        .map(|&v| {
            let text = format!("{v:.decimals$}");
            if text.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') {
                text.trim_start_matches('-').to_string()
            } else {
                text
            }
        })
        .collect();
    format!("[{}]", parts.join(", "))
}
