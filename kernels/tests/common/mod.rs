//! What the GEMM tests share: a cheap reproducible generator and strided matrices inside NaN-filled
//! buffers (reading anything outside a view poisons the product).
use cola_kernels::cpu::gemm::MatRef;
use cola_kernels::Float;
use std::sync::{Mutex, MutexGuard};

/// Held by every test that caps the SIMD level (`simd::set_max_level`): the cap is process-wide and one
/// binary holds all these tests (`tests/suite/main.rs`), so a test that runs kernels on the level it set
/// must not have another lift or change the cap meanwhile. Tests that only run kernels need no lock: every
/// level gives the same bits (`kernels/src/cpu/simd.rs`). A test that failed holding it does not block
/// the others.
pub fn level_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// SplitMix64: cheap reproducible fill for large operands (proptest shrinking of big vectors is slow).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// A `rows x cols` matrix inside a NaN-filled buffer at `offset`, with the given strides and a few NaNs
/// past its last element.
pub struct Stored<T> {
    pub data: Vec<T>,
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<T: Float> Stored<T> {
    pub fn new(
        rows: usize,
        cols: usize,
        (row_stride, col_stride): (usize, usize),
        offset: usize,
        rng: &mut Rng,
    ) -> Self {
        let extent = (rows.max(1) - 1) * row_stride + (cols.max(1) - 1) * col_stride + 1;
        let mut data = vec![T::from_f64(f64::NAN); offset + extent + 3];
        for i in 0..rows {
            for j in 0..cols {
                data[offset + i * row_stride + j * col_stride] = T::from_f64(rng.uniform());
            }
        }
        Stored { data, offset, row_stride, col_stride }
    }

    pub fn view(&self) -> MatRef<'_, T> {
        MatRef {
            data: &self.data,
            offset: self.offset,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }

    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.data[self.offset + i * self.row_stride + j * self.col_stride].to_f64()
    }
}
