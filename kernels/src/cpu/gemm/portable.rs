//! The portable micro-kernel: plain Rust for any target, the reference the SIMD paths are tested against.
use super::kernel::{Kernel, KernelPath, Update};
use super::pack::pack;
use crate::Float;
use std::mem::size_of;

/// Tiles sized for 16 128-bit registers (the x86-64 baseline; NEON has 32): 12 accumulator registers
/// plus the B row and the broadcast A element. A KC-deep B sliver is 8 KiB (L1), an MC x KC block of A
/// about 144 KiB (L2), a KC x NC panel of B 2-4 MiB (L3).
pub(super) fn kernel<T: Float>() -> Kernel<T> {
    if size_of::<T>() <= 4 {
        Kernel {
            mr: 6,
            nr: 8,
            mc: 144,
            kc: 256,
            nc: 2048,
            k_unit: 1,
            pack_a: pack::<T, 6>,
            pack_b: pack::<T, 8>,
            path: KernelPath::Portable,
            compute: micro_kernel::<T, 6, 8>,
        }
    } else {
        Kernel {
            mr: 6,
            nr: 4,
            mc: 72,
            kc: 256,
            nc: 2048,
            k_unit: 1,
            pack_a: pack::<T, 6>,
            pack_b: pack::<T, 4>,
            path: KernelPath::Portable,
            compute: micro_kernel::<T, 6, 4>,
        }
    }
}

/// Fixed-size accumulators and an inner loop over NR let LLVM keep the tile in vector registers.
pub(super) fn micro_kernel<T: Float, const MR: usize, const NR: usize>(
    a: &[T],
    b: &[T],
    c: &mut [&mut [T]],
    col: usize,
    alpha: T,
    update: Update<T>,
) {
    assert_eq!(a.len() / MR, b.len() / NR, "micro-kernel: sliver depths differ");
    let mut acc = [[T::ZERO; NR]; MR];
    for (a_col, b_row) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (acc_row, &a_i) in acc.iter_mut().zip(a_col) {
            for (acc_ij, &b_j) in acc_row.iter_mut().zip(b_row) {
                *acc_ij += a_i * b_j;
            }
        }
    }
    for (c_row, acc_row) in c[..MR].iter_mut().zip(&acc) {
        let pairs = c_row[col..col + NR].iter_mut().zip(acc_row);
        match update {
            Update::Overwrite => pairs.for_each(|(c, &t)| *c = alpha * t),
            Update::Scale(beta) => pairs.for_each(|(c, &t)| *c = alpha * t + beta * *c),
            Update::Accumulate => pairs.for_each(|(c, &t)| *c += alpha * t),
        }
    }
}
