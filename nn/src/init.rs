//! Where new parameters get their values: the paper's random initialisation (docs/METHOD.md section 5),
//! or zeros for a model whose weights a checkpoint is about to replace (drawing hundreds of millions of
//! normals only to overwrite them would dominate a load).
use cola_tensor::{DType, Rng, Tensor};

pub enum Init<'a> {
    /// Draw from the generator; the same seed gives the same weights.
    Random(&'a mut Rng),
    /// Every drawn tensor is zero and the generator is untouched.
    Zeros,
}

impl Init<'_> {
    /// Entries i.i.d. Normal(0, std^2) of `shape`, or zeros.
    pub fn normal(&mut self, shape: &[usize], std: f64, dtype: DType) -> Tensor {
        match self {
            Init::Random(rng) => Tensor::randn(shape, 0.0, std, dtype, rng),
            Init::Zeros => Tensor::zeros(shape, dtype),
        }
    }
}
