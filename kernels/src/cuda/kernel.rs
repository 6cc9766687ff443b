//! Typed handles of every kernel in `kernels/cuda/*.cu`. A [`Kernel`] names one `extern "C" __global__`
//! function: its source file ([`Module`]) and its symbol are `&'static str`s fixed at compile time, and its
//! position in [`Kernel::ALL`] indexes the per-device table of loaded functions, so a launch neither formats
//! a name nor hashes or locks anything (see `runtime.rs`). `kernels/tests/suite/kernel_handles.rs` checks that
//! the handles and the kernels declared in the sources are the same set.
use super::compile::{self, KernelSource};

/// One kernel source file, compiled (by NVRTC) and loaded as one CUDA module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    Elementwise,
    Reduce,
    Norm,
    Rope,
    Attention,
    FlashAttention,
    FlashAttentionBackward,
    Loss,
    Embedding,
    Adamw,
}

impl Module {
    /// Every module, in the order of their index.
    pub const ALL: [Module; 10] = [
        Module::Elementwise,
        Module::Reduce,
        Module::Norm,
        Module::Rope,
        Module::Attention,
        Module::FlashAttention,
        Module::FlashAttentionBackward,
        Module::Loss,
        Module::Embedding,
        Module::Adamw,
    ];

    /// Position in [`Module::ALL`]: the index of the module's slot in a device's table.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The embedded source of the module.
    pub fn source(self) -> &'static KernelSource {
        match self {
            Module::Elementwise => &compile::ELEMENTWISE,
            Module::Reduce => &compile::REDUCE,
            Module::Norm => &compile::NORM,
            Module::Rope => &compile::ROPE,
            Module::Attention => &compile::ATTENTION,
            Module::FlashAttention => &compile::FLASH_ATTENTION,
            Module::FlashAttentionBackward => &compile::FLASH_ATTENTION_BACKWARD,
            Module::Loss => &compile::LOSS,
            Module::Embedding => &compile::EMBEDDING,
            Module::Adamw => &compile::ADAMW,
        }
    }

    /// The file stem under `kernels/cuda/` (`elementwise` for `elementwise.cu`).
    pub fn name(self) -> &'static str {
        self.source().name
    }

    /// The kernels defined in this module's source.
    pub fn kernels(self) -> impl Iterator<Item = Kernel> {
        Kernel::ALL.iter().copied().filter(move |k| k.module() == self)
    }
}

/// Declares [`Kernel`] from one list of `Variant = "symbol"` per module, so the enum, [`Kernel::ALL`],
/// the module and the symbol of each variant cannot disagree.
macro_rules! kernel_table {
    ($($module:ident { $($kernel:ident = $symbol:literal,)* })*) => {
        /// One `extern "C" __global__` function of `kernels/cuda/*.cu`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Kernel {
            $($($kernel,)*)*
        }

        impl Kernel {
            /// Every kernel, in declaration order (`Kernel::ALL[k.index()] == k`).
            pub const ALL: &'static [Kernel] = &[$($(Kernel::$kernel,)*)*];

            /// The source file that defines the kernel.
            pub fn module(self) -> Module {
                match self {
                    $($(Kernel::$kernel => Module::$module,)*)*
                }
            }

            /// The kernel's (unmangled) symbol in its compiled module.
            pub fn symbol(self) -> &'static str {
                match self {
                    $($(Kernel::$kernel => $symbol,)*)*
                }
            }
        }
    };
}

kernel_table! {
    Elementwise {
        CopyF32F32 = "copy_f32_f32",
        CopyF32Bf16 = "copy_f32_bf16",
        CopyBf16F32 = "copy_bf16_f32",
        CopyBf16Bf16 = "copy_bf16_bf16",
        CopyRowsF32F32 = "copy_rows_f32_f32",
        CopyRowsF32Bf16 = "copy_rows_f32_bf16",
        CopyRowsBf16F32 = "copy_rows_bf16_f32",
        CopyRowsBf16Bf16 = "copy_rows_bf16_bf16",
        CopyVec16 = "copy_vec16",
        FillF32 = "fill_f32",
        FillBf16 = "fill_bf16",
        BinaryAddF32 = "binary_add_f32",
        BinaryAddBf16 = "binary_add_bf16",
        BinarySubF32 = "binary_sub_f32",
        BinarySubBf16 = "binary_sub_bf16",
        BinaryMulF32 = "binary_mul_f32",
        BinaryMulBf16 = "binary_mul_bf16",
        BinaryDivF32 = "binary_div_f32",
        BinaryDivBf16 = "binary_div_bf16",
        BinaryVecAddF32 = "binary_vec_add_f32",
        BinaryVecAddBf16 = "binary_vec_add_bf16",
        BinaryVecSubF32 = "binary_vec_sub_f32",
        BinaryVecSubBf16 = "binary_vec_sub_bf16",
        BinaryVecMulF32 = "binary_vec_mul_f32",
        BinaryVecMulBf16 = "binary_vec_mul_bf16",
        BinaryVecDivF32 = "binary_vec_div_f32",
        BinaryVecDivBf16 = "binary_vec_div_bf16",
        UnaryNegF32 = "unary_neg_f32",
        UnaryNegBf16 = "unary_neg_bf16",
        UnaryExpF32 = "unary_exp_f32",
        UnaryExpBf16 = "unary_exp_bf16",
        UnaryLogF32 = "unary_log_f32",
        UnaryLogBf16 = "unary_log_bf16",
        UnarySiluF32 = "unary_silu_f32",
        UnarySiluBf16 = "unary_silu_bf16",
        AffineF32 = "affine_f32",
        AffineBf16 = "affine_bf16",
        SiluBackwardF32 = "silu_backward_f32",
        SiluBackwardBf16 = "silu_backward_bf16",
        GatedForwardF32 = "gated_forward_f32",
        GatedBackwardF32 = "gated_backward_f32",
        GatedForwardBf16 = "gated_forward_bf16",
        GatedBackwardBf16 = "gated_backward_bf16",
    }
    Reduce {
        RowSumF32 = "row_sum_f32",
        RowSumBf16 = "row_sum_bf16",
    }
    Norm {
        RmsNormForwardF32 = "rms_norm_forward_f32",
        RmsNormForwardBf16 = "rms_norm_forward_bf16",
        RmsNormBackwardF32 = "rms_norm_backward_f32",
        RmsNormBackwardBf16 = "rms_norm_backward_bf16",
    }
    Rope {
        RopeRotateF32 = "rope_rotate_f32",
        RopeRotateBf16 = "rope_rotate_bf16",
    }
    Attention {
        CausalSoftmaxF32 = "causal_softmax_f32",
        CausalSoftmaxBf16 = "causal_softmax_bf16",
        CausalSoftmaxBackwardF32 = "causal_softmax_backward_f32",
        CausalSoftmaxBackwardBf16 = "causal_softmax_backward_bf16",
    }
    FlashAttention {
        FlashAttentionForwardF32 = "flash_attention_forward_f32",
        FlashAttentionForwardBf16 = "flash_attention_forward_bf16",
    }
    FlashAttentionBackward {
        FlashAttentionBackwardDotF32 = "flash_attention_backward_dot_f32",
        FlashAttentionBackwardDotBf16 = "flash_attention_backward_dot_bf16",
        FlashAttentionBackwardF32 = "flash_attention_backward_f32",
        FlashAttentionBackwardBf16 = "flash_attention_backward_bf16",
        FlashAttentionBackwardDqF32 = "flash_attention_backward_dq_f32",
        FlashAttentionBackwardDqBf16 = "flash_attention_backward_dq_bf16",
    }
    Loss {
        CrossEntropyRowsF32 = "cross_entropy_rows_f32",
        CrossEntropyRowsBf16 = "cross_entropy_rows_bf16",
        CrossEntropyMeanF32 = "cross_entropy_mean_f32",
        CrossEntropyMeanBf16 = "cross_entropy_mean_bf16",
        CrossEntropyBackwardF32 = "cross_entropy_backward_f32",
        CrossEntropyBackwardBf16 = "cross_entropy_backward_bf16",
    }
    Embedding {
        EmbeddingForwardF32 = "embedding_forward_f32",
        EmbeddingForwardBf16 = "embedding_forward_bf16",
        EmbeddingBackwardF32 = "embedding_backward_f32",
        EmbeddingBackwardBf16 = "embedding_backward_bf16",
    }
    Adamw {
        AdamwStepF32 = "adamw_step_f32",
        AdamwStepBf16 = "adamw_step_bf16",
        SquaredNormPartialsF32 = "squared_norm_partials_f32",
        SquaredNormPartialsBf16 = "squared_norm_partials_bf16",
        MultiTensorNormPartials = "multi_tensor_norm_partials",
        MultiTensorClipFactor = "multi_tensor_clip_factor",
        MultiTensorSquares = "multi_tensor_squares",
        MultiTensorAdamw = "multi_tensor_adamw",
    }
}

impl Kernel {
    /// Number of kernels: the length of a device's function table.
    pub const COUNT: usize = Kernel::ALL.len();

    /// Position in [`Kernel::ALL`]: the index of the kernel's slot in a device's function table.
    pub fn index(self) -> usize {
        self as usize
    }
}
