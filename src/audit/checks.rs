//! What the code itself gives, for `docs/AUDIT.md` to set next to the closed forms of `formulas.rs`: the
//! parameter counts of the model's shapes and of an allocated model, and one recorded training step of a
//! small zero-initialised model (the tape's `loss` and `backward`, as the trainer runs them) with the
//! profiler's FLOPs per direction and the tape's saved activation bytes. A closed form that differs from
//! what the code gives is an [`AuditError::Mismatch`].
use super::formulas::{counted, Batch, Counted, Dims};
use super::synthetic_ids;
use cola_autograd::profile::{Direction, Profiler};
use cola_autograd::{AutogradError, Policy, Tape};
use cola_nn::{Init, Llama, LlamaConfig, NnError};
use cola_tensor::{DType, Device};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Nn(#[from] NnError),
    #[error(transparent)]
    Autograd(#[from] AutogradError),
    #[error("the FLOP formulas do not model the retention policy `{0}`")]
    Unmodelled(&'static str),
    #[error("{what}: the closed form gives {formula}, the code {measured}")]
    Mismatch { what: String, formula: u64, measured: u64 },
}

/// `measured` when it equals `formula`, else [`AuditError::Mismatch`] naming `what`.
pub fn agree(what: impl FnOnce() -> String, formula: u64, measured: u64) -> Result<u64, AuditError> {
    if formula == measured {
        Ok(measured)
    } else {
        Err(AuditError::Mismatch { what: what(), formula, measured })
    }
}

/// [`counted`], or [`AuditError::Unmodelled`] for a policy it does not model.
pub fn counted_or_error(dims: &Dims, batch: Batch, policy: Policy) -> Result<Counted, AuditError> {
    counted(dims, batch, policy).ok_or(AuditError::Unmodelled(policy.name()))
}

/// What one recorded step of a model did: saved activation bytes when backward started, and the FLOPs
/// the profiler counted per direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordedStep {
    pub saved_bytes: u64,
    pub forward: u64,
    pub backward: u64,
    pub recompute: u64,
}

/// Records the loss of one `batch` of synthetic ids through a zero-initialised model of `config` stored
/// as `dtype` on the CPU, under `policy`, with a profiler on the tape, then runs backward. Values change
/// neither bytes nor FLOPs, so zeros serve.
pub fn record_step(
    config: &LlamaConfig,
    dtype: DType,
    policy: Policy,
    batch: Batch,
) -> Result<RecordedStep, AuditError> {
    let model = Llama::build(config.clone(), dtype, &mut Init::Zeros)?;
    let (b, n) = (batch.b as usize, batch.n as usize);
    let ids = synthetic_ids(config.vocab_size, b * n, 1);
    let mut tape = Tape::with_policy(policy);
    tape.set_profiler(Profiler::new(Device::Cpu));
    let loss = model.loss(&mut tape, &ids, b, n)?;
    tape.backward(loss)?;
    let saved_bytes = tape.memory_stats().saved_bytes as u64;
    let profiler = tape.take_profiler().unwrap_or_else(|| Profiler::new(Device::Cpu));
    let flops = |direction: Direction| -> u64 {
        profiler.entries().filter(|(d, _, _)| *d == direction).map(|(_, _, e)| e.flops).sum()
    };
    Ok(RecordedStep {
        saved_bytes,
        forward: flops(Direction::Forward),
        backward: flops(Direction::Backward),
        recompute: flops(Direction::Recompute),
    })
}

/// Parameters of a model of `config` once allocated (zeros): `Llama::param_counts` over its tensors.
pub fn allocated_params(config: &LlamaConfig) -> Result<cola_nn::ParamCounts, AuditError> {
    Ok(Llama::build(config.clone(), DType::F32, &mut Init::Zeros)?.param_counts())
}
