//! Checkpoints: everything a run needs to continue bit for bit, in one folder `checkpoint-<step>/` of the
//! run directory:
//! - `model.safetensors`: the weights in the PyTorch reference's names and layouts (written by cola-nn);
//! - `config.json`: the model config in the Hugging Face form ([`HfConfig`]): a full-rank checkpoint
//!   loads in `transformers` as a `LlamaForCausalLM`;
//! - `optimizer.safetensors`: AdamW's moments as `<parameter>.exp_avg` / `<parameter>.exp_avg_sq`;
//! - `tokenizer.json`: the tokenizer the token ids came from;
//! - `state.json`: update count, tokens seen, data position, RNG state, the run config, and the size and
//!   checksum of every other file, so a truncated or damaged checkpoint is named as such on load.
//!
//! A checkpoint is written into a temp folder (`.checkpoint-<step>.tmp-<pid>`), every file fsynced, and
//! only then renamed into place; only after that are the checkpoints the retention rule does not keep
//! deleted ([`Retention`]: by default all but the newest). A crash at any moment leaves the last
//! complete checkpoint loadable, and the half-written temp folder is ignored (and swept by the next save).
use super::hf_config::{HfConfig, HF_CONFIG_FILE};
use super::{Result, Retention, TrainConfig, TrainError};
use crate::data::{DataState, Tokenizer};
use cola_autograd::Parameter;
use cola_nn::{
    load_safetensors, read_safetensors_shapes, save_safetensors, Llama, Module, ParamKind, WEIGHTS_FILE,
};
use cola_optim::AdamW;
use cola_tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Checkpoint folders are `checkpoint-<step>`.
pub const CHECKPOINT_PREFIX: &str = "checkpoint-";
const FORMAT: &str = "cola-train-checkpoint/1";

/// A counter-based generator's whole state ([`cola_tensor::Rng`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: u64,
    pub counter: u64,
}

/// Size and checksum of a file of the checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub bytes: u64,
    pub hash: String,
}

/// The contents of `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    pub format: String,
    /// Optimizer updates applied.
    pub step: u64,
    /// AdamW's own update count (its bias correction).
    pub optimizer_step: u64,
    /// Non-pad input tokens trained on so far.
    pub tokens: u64,
    /// Wall time of the run so far, evaluations and saves included.
    pub elapsed_s: f64,
    /// Position of the training data stream.
    pub data: DataState,
    pub rng: RngState,
    /// Rayon threads of the run: the GEMM split, hence the f32 rounding, depends on it.
    pub threads: usize,
    pub last_val_loss: Option<f64>,
    pub config: TrainConfig,
    /// Digest of every other file of the checkpoint, by file name.
    #[serde(default)]
    pub files: BTreeMap<String, FileDigest>,
}

impl RunState {
    /// A state with the current format tag and no file digests yet.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        step: u64,
        optimizer_step: u64,
        tokens: u64,
        elapsed_s: f64,
        data: DataState,
        rng: RngState,
        last_val_loss: Option<f64>,
        config: TrainConfig,
    ) -> RunState {
        RunState {
            format: FORMAT.into(),
            step,
            optimizer_step,
            tokens,
            elapsed_s,
            data,
            rng,
            threads: rayon::current_num_threads(),
            last_val_loss,
            config,
            files: BTreeMap::new(),
        }
    }
}

/// Named tensors seen as a module of non-transposed parameters, so that cola-nn's safetensors writer
/// (atomic) and checked reader store the optimizer state too.
struct NamedTensors(Vec<Parameter>);

impl Module for NamedTensors {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Parameter, ParamKind)) {
        self.0.iter().for_each(|p| f(p, ParamKind::LowRank));
    }

    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Parameter, ParamKind)) {
        self.0.iter_mut().for_each(|p| f(p, ParamKind::LowRank));
    }
}

/// Writes a checkpoint of `state` into `run_dir/checkpoint-<step>`, then deletes the ones `retention`
/// does not keep. Returns the folder and whether it was written (a checkpoint of the same step already
/// there is kept as it is).
pub fn save(
    run_dir: &Path,
    retention: &Retention,
    mut state: RunState,
    model: &Llama,
    optimizer: &AdamW,
    tokenizer: Option<&Tokenizer>,
) -> Result<(PathBuf, bool)> {
    let target = run_dir.join(format!("{CHECKPOINT_PREFIX}{}", state.step));
    if target.join(STATE_FILE).is_file() {
        return Ok((target, false));
    }
    let temp = run_dir.join(format!(".{CHECKPOINT_PREFIX}{}.tmp-{}", state.step, std::process::id()));
    let written = (|| -> Result<()> {
        if temp.exists() {
            std::fs::remove_dir_all(&temp).map_err(TrainError::io(&temp))?;
        }
        std::fs::create_dir_all(&temp).map_err(TrainError::io(&temp))?;
        model.save_safetensors(&temp.join(WEIGHTS_FILE))?;
        // `Llama::save_safetensors` stores f32 whatever the training precision.
        HfConfig::of(model.config(), DType::F32, tokenizer.map(Tokenizer::eos_id))
            .write(&temp.join(HF_CONFIG_FILE))?;
        let moments =
            optimizer.state_tensors().into_iter().map(|(name, t)| Parameter::new(name, t)).collect();
        save_safetensors(&NamedTensors(moments), &temp.join(OPTIMIZER_FILE))?;
        let mut names = vec![WEIGHTS_FILE, HF_CONFIG_FILE, OPTIMIZER_FILE];
        if let Some(tokenizer) = tokenizer {
            tokenizer.save_into_dir(&temp)?;
            names.push(TOKENIZER_FILE);
        }
        for name in names {
            let path = temp.join(name);
            readable_by_all(&path);
            sync_file(&path)?;
            state.files.insert(name.to_string(), digest(&path)?);
        }
        let json =
            serde_json::to_vec_pretty(&state).map_err(|e| TrainError::checkpoint(&temp, e.to_string()))?;
        let state_path = temp.join(STATE_FILE);
        std::fs::write(&state_path, json).map_err(TrainError::io(&state_path))?;
        sync_file(&state_path)?;
        sync_dir(&temp);
        std::fs::rename(&temp, &target).map_err(TrainError::io(&target))?;
        sync_dir(run_dir);
        Ok(())
    })();
    if let Err(error) = written {
        // The temp folder is incomplete by construction; the previous checkpoint is untouched.
        let _ = std::fs::remove_dir_all(&temp);
        return Err(error);
    }
    sweep(run_dir, retention);
    Ok((target, true))
}

/// Deletes the complete checkpoints `retention` does not keep and the temp folders of interrupted saves
/// (the run directory's lock means no other process is writing one). Failures only leave files behind,
/// so they are ignored.
fn sweep(run_dir: &Path, retention: &Retention) {
    let complete = list(run_dir);
    let steps: Vec<u64> = complete.iter().map(|&(step, _)| step).collect();
    let kept = retention.retained(&steps);
    for (step, dir) in complete {
        if kept.binary_search(&step).is_err() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    let Ok(entries) = std::fs::read_dir(run_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!(".{CHECKPOINT_PREFIX}")) && name.contains(".tmp-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The step of a folder named `checkpoint-<step>`.
fn checkpoint_step(name: &str) -> Option<u64> {
    name.strip_prefix(CHECKPOINT_PREFIX)?.parse().ok()
}

/// The complete checkpoints of a run directory as `(step, folder)`, oldest first.
pub fn list(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((checkpoint_step(&e.file_name().to_string_lossy())?, e.path())))
        .filter(|(_, path)| path.join(STATE_FILE).is_file())
        .collect();
    found.sort();
    found
}

/// The checkpoint `path` names: a checkpoint folder itself, or the latest checkpoint of a run directory.
pub fn locate(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.exists() {
        return Err(TrainError::checkpoint(path, "does not exist"));
    }
    list(path).pop().map(|(_, dir)| dir).ok_or_else(|| {
        TrainError::checkpoint(
            path,
            format!(
                "no checkpoint here: expected {STATE_FILE} in it or in a {CHECKPOINT_PREFIX}<step> folder of it \
                 (a crash during the first save leaves none; start the run again)"
            ),
        )
    })
}

/// Reads and checks `dir/state.json` and the size and checksum of every file it lists.
pub fn read_state(dir: &Path) -> Result<RunState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(TrainError::io(&path))?;
    let state: RunState = serde_json::from_str(&text).map_err(|e| {
        TrainError::checkpoint(&path, format!("truncated or corrupt ({e}); resume from another checkpoint"))
    })?;
    if state.format != FORMAT {
        return Err(TrainError::checkpoint(
            &path,
            format!("format {:?}, this program reads {FORMAT:?}", state.format),
        ));
    }
    for (name, expected) in &state.files {
        let file = dir.join(name);
        if !file.is_file() {
            return Err(TrainError::checkpoint(dir, format!("{name} is missing")));
        }
        let found = digest(&file)?;
        if found.bytes != expected.bytes {
            return Err(TrainError::checkpoint(
                &file,
                format!(
                    "truncated or damaged: {} bytes, state.json recorded {}",
                    found.bytes, expected.bytes
                ),
            ));
        }
        if found.hash != expected.hash {
            return Err(TrainError::checkpoint(
                &file,
                "corrupt: its checksum does not match the one in state.json",
            ));
        }
    }
    // The digests cover the other files, not state.json itself: a damaged number in its config (say a
    // vocabulary of 2^60) would size a model before any weight is read. The weights must be that model's.
    let weights = dir.join(WEIGHTS_FILE);
    state.config.model_config().check_weights(&weights, &read_safetensors_shapes(&weights)?)?;
    Ok(state)
}

/// Loads the weights and the optimizer state of checkpoint `dir` (checked by [`read_state`]).
pub fn load(dir: &Path, state: &RunState, model: &mut Llama, optimizer: &mut AdamW) -> Result<()> {
    model.load_safetensors(&dir.join(WEIGHTS_FILE))?;
    if state.optimizer_step == 0 {
        return Ok(()); // saved before the first update: AdamW has no state yet
    }
    // Shape-and-dtype templates of what the optimizer file holds: the moments (f32 with an f32 master copy
    // for bf16 parameters under mixed precision, else the parameter's dtype).
    let expected: Vec<Parameter> = model
        .parameters()
        .iter()
        .flat_map(|p| {
            let (mixed, dtype) = optimizer.state_dtype(p.value().dtype());
            let zeros = || Tensor::zeros(p.value().shape(), dtype);
            let mut entries = vec![
                Parameter::new(format!("{}.exp_avg", p.name()), zeros()),
                Parameter::new(format!("{}.exp_avg_sq", p.name()), zeros()),
            ];
            if mixed {
                entries.push(Parameter::new(format!("{}.master", p.name()), zeros()));
            }
            entries
        })
        .collect();
    let mut moments = NamedTensors(expected);
    load_safetensors(&mut moments, &dir.join(OPTIMIZER_FILE))?;
    let tensors: BTreeMap<String, Tensor> =
        moments.0.into_iter().map(|p| (p.name().to_string(), p.value().clone())).collect();
    optimizer.load_state(&model.parameters(), &tensors, state.optimizer_step)?;
    Ok(())
}

/// The tokenizer saved in checkpoint `dir`, if it has one.
pub fn tokenizer_path(dir: &Path) -> Option<PathBuf> {
    Some(dir.join(TOKENIZER_FILE)).filter(|p| p.is_file())
}

/// The safetensors crate writes through a private (0600) temp file; a checkpoint is meant to be shared
/// like any other output file. Failing leaves the file private, nothing worse.
fn readable_by_all(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    }
    #[cfg(not(unix))]
    let _ = path;
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(TrainError::io(path))
}

/// Makes renames in `dir` durable; platforms that cannot open a folder lose only durability.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Size and a 64-bit multiply-rotate checksum of 8-byte words: catches truncation and damage at disk
/// speed (this is not a cryptographic hash).
pub fn digest(path: &Path) -> Result<FileDigest> {
    let mut file = std::fs::File::open(path).map_err(TrainError::io(path))?;
    let mut buffer = vec![0u8; 1 << 20];
    let (mut hash, mut bytes) = (0xcbf2_9ce4_8422_2325u64, 0u64);
    loop {
        // Fill the whole buffer so that word boundaries do not depend on how reads split.
        let mut filled = 0;
        while filled < buffer.len() {
            match file.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TrainError::Io { path: path.to_path_buf(), source: e }),
            }
        }
        for chunk in buffer[..filled].chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            hash = (hash ^ u64::from_le_bytes(word)).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
        }
        bytes += filled as u64;
        if filled < buffer.len() {
            break;
        }
    }
    hash = (hash ^ bytes).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Ok(FileDigest { bytes, hash: format!("{hash:016x}") })
}
