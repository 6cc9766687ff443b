//! What a run starts from: the data prepared (tokenized into shards, split), the model built (seeded, or
//! zeros a checkpoint overwrites) on the run's device and precision, and the trainer with AdamW, the
//! schedule and the run's collective. Shared by training ([`super::run`]) and `--profile`.
use super::checkpoint;
use super::plan::model_vocab;
use super::trainer::{norms_and_embedding, Trainer};
use super::{Precision, Result, TrainConfig, TrainError};
use crate::data::{DataConfig, Dataset};
use cola_kernels::cpu::gemm::Bf16Path;
use cola_nn::{Init, Llama};
use cola_optim::{AdamW, AdamWConfig, CosineSchedule};
use cola_tensor::{DType, Device, Rng};
use std::path::Path;

/// What a run starts from: the prepared data and a trainer holding the model and AdamW.
pub(super) struct Prepared {
    pub dataset: Dataset,
    pub trainer: Trainer,
    /// The generator that drew the fresh weights (`None` when resuming: the checkpoint's is used).
    pub rng: Option<Rng>,
}

/// Prepares the data (with the tokenizer of `resume_dir`'s checkpoint when resuming), builds the model
/// (seeded weights, or zeros that the checkpoint will overwrite) on the run's device and precision, and
/// the trainer with AdamW, the schedule and the retention policy of `config`.
pub(super) fn prepare(config: &TrainConfig, device: Device, resume_dir: Option<&Path>) -> Result<Prepared> {
    let say = |message: &str| {
        if config.verbose {
            eprintln!("{message}");
        }
    };
    check_zero(config.zero, device, config.nccl, config.world().world_size())?;
    // A resumed run reads its token ids with the tokenizer it was trained with.
    let tokenizer = resume_dir.and_then(checkpoint::tokenizer_path).or(config.tokenizer.clone());
    let vocab = model_vocab(config.model, config.vocab_size, tokenizer.as_deref(), config.data.as_deref())?;
    if let Some(note) = vocab.note(config.model) {
        say(&format!("note: {note}"));
    }
    let mut model_config = config.model_config();
    model_config.vocab_size = vocab.size();

    let data_config = DataConfig {
        data: config.data.clone(),
        val_data: config.val_data.clone(),
        tokenizer,
        vocab_size: model_config.vocab_size,
        seq_len: config.seq_len,
        seed: config.seed,
        split_seed: config.split_seed,
        shuffle: config.shuffle,
        strict: config.strict,
        cache_dir: config.cache_dir.clone(),
        verbose: config.verbose,
        ..DataConfig::default()
    };
    // Rank 0 prepares (tokenizes and caches) first; the other ranks then read its cache.
    let world = config.world();
    if !world.is_root() {
        world.barrier()?;
    }
    let dataset = Dataset::prepare(&data_config)?;
    if world.is_root() {
        world.barrier()?;
    }
    dataset.check_model_vocab(model_config.vocab_size)?;
    model_config.pad_id = dataset.pad_id();
    say(&format!("data: {}", dataset.report()));

    let counts = model_config.param_counts();
    let millions = |n: usize| n as f64 / 1e6;
    say(&format!(
        "model {}: {:.2}M parameters (low-rank {:.2}M, other {:.2}M: embedding, head, norms{}); d_model {}, \
         {} layers, {} heads, {}",
        config.model,
        millions(counts.total),
        millions(counts.low_rank),
        millions(counts.other),
        if model_config.is_cola() { "" } else { ", dense projections" },
        model_config.d_model,
        model_config.n_layers,
        model_config.n_heads,
        match model_config.rank {
            Some(r) => format!("rank {r}, {} between the factors", model_config.lowrank_act),
            None => "full rank".to_string(),
        },
    ));

    let precision = config.precision;
    if device == Device::Cpu && precision == Precision::F32 && Bf16Path::DotAvx512Bf16.is_available() {
        say(&format!(
            "hint: this CPU has bf16 dot products (AVX512-BF16); --precision bf16-mixed or pure-bf16 trains in \
             the paper's precision (bf16 GEMM path here: {})",
            Bf16Path::selected()
        ));
    }
    if device == Device::Cpu && precision != Precision::F32 && !Bf16Path::DotAvx512Bf16.is_available() {
        say(&format!(
            "note: this CPU has no bf16 dot products (no AVX512-BF16): the bf16 GEMM widens its operands to \
             f32 ({}), so {precision} saves memory but is no faster than f32 here (README, bf16 on the CPU)",
            Bf16Path::selected()
        ));
    }
    let mut adamw = AdamW::new(AdamWConfig {
        weight_decay: config.weight_decay,
        master_weights: precision.master_weights(),
        ..AdamWConfig::default()
    });
    let schedule = CosineSchedule::new(config.lr, config.warmup, config.steps)?;
    let (mut model, rng) = match resume_dir {
        Some(_) => (Llama::build(model_config, DType::F32, &mut Init::Zeros)?, None),
        None => {
            let mut rng = Rng::new(config.seed);
            (Llama::new(model_config, &mut rng)?, Some(rng))
        }
    };
    if config.no_decay_norms_embeddings {
        adamw.exempt_from_decay(norms_and_embedding(&model));
    }
    // Weights are drawn on the CPU in f32 (the same numbers on every device), then moved and converted.
    if device != Device::Cpu || precision != Precision::F32 {
        model.to_device(device, precision.param_dtype())?;
        say(&format!("device: {device}, precision {precision}"));
    }
    let mut trainer = Trainer::new(model, adamw, schedule, config.micro_batch, config.clip_norm);
    trainer.policy = config.recompute;
    trainer.set_collective(crate::dist::for_device(world, device, config.nccl)?);
    trainer.set_gradient_sum(config.overlap, config.bucket_bytes);
    if config.zero {
        trainer.shard_optimizer()?;
    }
    Ok(Prepared { dataset, trainer, rng })
}

/// Refuses `--zero 1` where it cannot run: ZeRO-1 shards the optimizer over MPI between CPU processes,
/// or over NCCL between GPUs (`--nccl`, or several ranks of an `mpi,nccl` build: the runs whose
/// collective [`crate::dist::for_device`] makes NCCL).
fn check_zero(zero: bool, device: Device, nccl: bool, world_size: usize) -> Result<()> {
    if !zero {
        return Ok(());
    }
    if device == Device::Cpu {
        if !cfg!(feature = "mpi") {
            return Err(TrainError::Config(
                "--zero 1 shards the optimizer over MPI ranks, but this program was built without MPI: build \
                 with --features mpi (scripts/install_mpi.sh installs Open MPI) and start it with mpirun"
                    .into(),
            ));
        }
        return Ok(());
    }
    if !cfg!(feature = "nccl") {
        return Err(TrainError::Config(format!(
            "--zero 1 on {device} shards the optimizer over NCCL, but this program was built without it: \
             build with --features nccl (and mpi for several GPUs), or pass --device cpu"
        )));
    }
    if !nccl && world_size < 2 {
        return Err(TrainError::Config(format!(
            "--zero 1 on {device} shards the optimizer over NCCL, which a run of one process uses only \
             with --nccl: pass --nccl, or start several ranks with mpirun"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! `--zero 1` is refused where it cannot run, with the reason and the fix in the message.
    use super::*;

    #[test]
    fn zero_one_needs_mpi_on_the_cpu_and_nccl_on_a_gpu() {
        assert!(check_zero(false, Device::Cuda(0), false, 1).is_ok());
        let message = |device, nccl, ranks| check_zero(true, device, nccl, ranks).map_err(|e| e.to_string());
        if cfg!(feature = "mpi") {
            assert!(message(Device::Cpu, false, 1).is_ok());
        } else {
            let refused = message(Device::Cpu, false, 1).unwrap_err();
            assert!(refused.contains("without MPI") && refused.contains("--features mpi"), "{refused}");
        }
        if cfg!(feature = "nccl") {
            assert!(message(Device::Cuda(0), true, 1).is_ok());
            assert!(message(Device::Cuda(0), false, 2).is_ok());
            let refused = message(Device::Cuda(0), false, 1).unwrap_err();
            assert!(refused.contains("pass --nccl"), "{refused}");
        } else {
            let refused = message(Device::Cuda(0), true, 1).unwrap_err();
            assert!(refused.contains("without it") && refused.contains("--features nccl"), "{refused}");
        }
    }
}
