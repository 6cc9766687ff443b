//! Readable printing: shape, dtype and device, then the values nested by dim (long dims elided).
use crate::Tensor;
use std::fmt;

/// Dims longer than this print their first and last `EDGE` entries around an ellipsis.
const MAX_FULL: usize = 8;
const EDGE: usize = 3;

fn write_nested(f: &mut fmt::Formatter<'_>, values: &[f64], shape: &[usize], depth: usize) -> fmt::Result {
    let Some((&n, rest)) = shape.split_first() else {
        return write!(f, "{:.6}", values.first().copied().unwrap_or(0.0));
    };
    let stride: usize = rest.iter().product();
    let shown: Vec<usize> =
        if n > MAX_FULL { (0..EDGE).chain(n - EDGE..n).collect() } else { (0..n).collect() };
    f.write_str("[")?;
    for (pos, &i) in shown.iter().enumerate() {
        if pos > 0 {
            f.write_str(if rest.is_empty() { ", " } else { ",\n" })?;
            if !rest.is_empty() {
                write!(f, "{:width$}", "", width = depth + 1)?;
            }
        }
        if n > MAX_FULL && pos == EDGE {
            f.write_str(if rest.is_empty() { "..., " } else { "...,\n" })?;
            if !rest.is_empty() {
                write!(f, "{:width$}", "", width = depth + 1)?;
            }
        }
        write_nested(f, &values[i * stride..(i + 1) * stride], rest, depth + 1)?;
    }
    f.write_str("]")
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Tensor(shape={:?}, dtype={}, device={})", self.shape(), self.dtype(), self.device())?;
        write_nested(f, &self.to_vec_f64(), self.shape(), 0)
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
