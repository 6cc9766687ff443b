//! Model weights as a safetensors file with the PyTorch reference's names and layouts: CoLA factors
//! `cola_a` `[in, r]` and `cola_b` `[r, out]` as in memory, dense weights transposed to `[out, in]`.
//!
//! Writes are atomic (a temp file in the same directory, fsync, rename), so a crash leaves either the old
//! file or the new one. Loads check the whole file against the model before changing any parameter.
use crate::config::LlamaConfig;
use crate::error::{NnError, Result};
use crate::init::Init;
use crate::model::Llama;
use crate::module::{Module, ParamKind};
use cola_autograd::Parameter;
use cola_tensor::{bf16, DType, Element, Tensor};
use half::f16;
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensorError, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The file name the reference uses for a checkpoint's weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// A parameter as the file stores it: its on-disk view (transposed for dense weights) and dtype, encoded to
/// bytes lazily so that a save holds one tensor's bytes at a time.
/// A parameter ready for writing: on the CPU, already converted to the stored dtype.
struct DiskTensor {
    view: Tensor,
    dtype: DType,
}

impl View for DiskTensor {
    fn dtype(&self) -> Dtype {
        match self.dtype {
            DType::F32 => Dtype::F32,
            DType::F64 => Dtype::F64,
            DType::BF16 => Dtype::BF16,
        }
    }

    fn shape(&self) -> &[usize] {
        self.view.shape()
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let stored = &self.view;
        Cow::Owned(match self.dtype {
            DType::F32 => le_bytes(stored, f32::to_le_bytes),
            DType::F64 => le_bytes(stored, f64::to_le_bytes),
            DType::BF16 => le_bytes(stored, bf16::to_le_bytes),
        })
    }

    fn data_len(&self) -> usize {
        self.view.numel() * self.dtype.size_in_bytes()
    }
}

/// The little-endian bytes of `t`'s elements in row-major order; `T` is `t`'s dtype.
fn le_bytes<T: Element, const N: usize>(t: &Tensor, to: fn(T) -> [u8; N]) -> Vec<u8> {
    let values = t
        .contiguous_data::<T>()
        .unwrap_or_else(|_| Cow::Owned(t.to_vec_f64().into_iter().map(T::of_f64).collect()));
    let mut out = Vec::with_capacity(values.len() * N);
    for &v in values.iter() {
        out.extend_from_slice(&to(v));
    }
    out
}

/// The on-disk shape of a parameter of in-memory `shape`.
fn disk_shape(kind: ParamKind, shape: &[usize]) -> Vec<usize> {
    if kind.transposed_on_disk() {
        shape.iter().rev().copied().collect()
    } else {
        shape.to_vec()
    }
}

fn io_error(path: &Path, source: std::io::Error) -> NnError {
    NnError::Io { path: path.to_path_buf(), source }
}

fn format_error(path: &Path, error: SafeTensorError) -> NnError {
    match error {
        SafeTensorError::IoError(source) => io_error(path, source),
        other => NnError::Format { path: path.to_path_buf(), reason: other.to_string() },
    }
}

/// Saves every parameter of `module` to `path` as f32 (the reference's format).
pub fn save_safetensors<M: Module + ?Sized>(module: &M, path: &Path) -> Result<()> {
    save_safetensors_as(module, path, DType::F32)
}

/// Saves every parameter of `module` to `path`, stored as `dtype` (f32, bf16 or f64).
pub fn save_safetensors_as<M: Module + ?Sized>(module: &M, path: &Path, dtype: DType) -> Result<()> {
    let mut entries: Vec<(String, DiskTensor)> = Vec::new();
    let mut failure = None;
    module.visit(&mut |param, kind| {
        let on_cpu = |value: &Tensor| -> cola_tensor::Result<Tensor> {
            let host = value.to_device(cola_tensor::Device::Cpu)?;
            let view = if kind.transposed_on_disk() { host.t()? } else { host };
            view.to_dtype(dtype)
        };
        match on_cpu(param.value()) {
            Ok(view) => entries.push((param.name().to_string(), DiskTensor { view, dtype })),
            Err(e) => failure = failure.take().or(Some(e)),
        }
    });
    if let Some(e) = failure {
        return Err(e.into());
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_atomically(path, |temp| {
        safetensors::serialize_to_file(entries, Some(metadata), temp).map_err(|e| format_error(path, e))
    })
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Runs `write` on a fresh temp path beside `path`, syncs it, renames it over `path` and syncs the
/// directory. The temp file is removed when any step fails.
fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        io_error(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"))
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let unique = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(".{}.tmp-{}-{unique}", file_name.to_string_lossy(), std::process::id()));
    let result = write(&temp).and_then(|()| {
        let file = std::fs::File::open(&temp).map_err(|e| io_error(&temp, e))?;
        file.sync_all().map_err(|e| io_error(&temp, e))?;
        std::fs::rename(&temp, path).map_err(|e| io_error(path, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
        return result;
    }
    // Makes the rename durable; some platforms cannot open a directory, which loses only durability.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Decodes a tensor of the file into a tensor of its own dtype (f16 widened to f32).
fn decode(path: &Path, name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Tensor> {
    let (bytes, shape) = (view.data(), view.shape());
    let tensor = match view.dtype() {
        Dtype::F32 => Tensor::from_vec(le_values(bytes, f32::from_le_bytes), shape)?,
        Dtype::F64 => Tensor::from_vec(le_values(bytes, f64::from_le_bytes), shape)?,
        Dtype::BF16 => Tensor::from_vec(le_values(bytes, bf16::from_le_bytes), shape)?,
        Dtype::F16 => {
            let values: Vec<f32> = le_values(bytes, f16::from_le_bytes).into_iter().map(f32::from).collect();
            Tensor::from_vec(values, shape)?
        }
        other => {
            return Err(NnError::UnsupportedDType {
                path: path.to_path_buf(),
                name: name.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    };
    Ok(tensor)
}

fn le_values<T, const N: usize>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|c| from(c.try_into().unwrap_or([0; N]))).collect()
}

/// Loads every parameter of `module` from `path`, converting each to the dtype the parameter has now.
/// The file must hold exactly the module's names with the expected on-disk shapes; otherwise nothing is
/// changed and the error lists every missing, unexpected and mis-shaped tensor.
pub fn load_safetensors<M: Module + ?Sized>(module: &mut M, path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| format_error(path, e))?;
    let mut params: Vec<(&mut Parameter, ParamKind)> = Vec::new();
    module.visit_mut(&mut |p, kind| params.push((p, kind)));

    let in_file: BTreeMap<String, safetensors::tensor::TensorView<'_>> = file.tensors().into_iter().collect();
    let expected: Vec<(String, Vec<usize>)> = params
        .iter()
        .map(|(param, kind)| (param.name().to_string(), disk_shape(*kind, param.value().shape())))
        .collect();
    let found = in_file.iter().map(|(name, view)| (name.clone(), view.shape().to_vec())).collect();
    check_tensors(path, &expected, &found)?;

    let mut values = Vec::with_capacity(params.len());
    for (param, kind) in &params {
        let view = &in_file[param.name()];
        let stored = decode(path, param.name(), view)?;
        let in_memory = if kind.transposed_on_disk() { stored.t()?.contiguous()? } else { stored };
        let converted = in_memory.to_dtype(param.value().dtype())?.contiguous()?;
        values.push(converted.to_device(param.value().device())?);
    }
    for ((param, _), value) in params.iter_mut().zip(values) {
        param.set_value(value);
    }
    Ok(())
}

/// Fails unless `found` holds exactly the names of `expected` with their on-disk shapes; the error lists
/// every missing, unexpected and mis-shaped tensor.
fn check_tensors(
    path: &Path,
    expected: &[(String, Vec<usize>)],
    found: &BTreeMap<String, Vec<usize>>,
) -> Result<()> {
    let (mut missing, mut misshaped) = (Vec::new(), Vec::new());
    for (name, shape) in expected {
        match found.get(name) {
            None => missing.push(name.clone()),
            Some(got) if got != shape => misshaped.push((name.clone(), shape.clone(), got.clone())),
            Some(_) => {}
        }
    }
    let unexpected: Vec<String> =
        found.keys().filter(|name| !expected.iter().any(|(n, _)| n == *name)).cloned().collect();
    if !(missing.is_empty() && unexpected.is_empty() && misshaped.is_empty()) {
        return Err(NnError::Mismatch { path: path.to_path_buf(), missing, unexpected, misshaped });
    }
    Ok(())
}

/// The largest header a safetensors file may have (the safetensors crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Name and on-disk shape of every tensor of the safetensors file `path`, from its header alone. The
/// header is checked as a load checks it (each tensor's byte range holds exactly its shape and dtype,
/// the ranges tile the data, the data ends where the file does), so the shapes describe no more bytes
/// than the file holds and a model sized from them is bounded by the file's size.
pub fn read_safetensors_shapes(path: &Path) -> Result<BTreeMap<String, Vec<usize>>> {
    let corrupt = |reason: String| NnError::Format { path: path.to_path_buf(), reason };
    let mut file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let file_len = file.metadata().map_err(|e| io_error(path, e))?.len();
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).map_err(|_| corrupt(format!("{file_len} bytes, too short for a header")))?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > file_len.saturating_sub(8) || header_len > MAX_HEADER_BYTES {
        return Err(corrupt(format!("header length {header_len} does not fit the file of {file_len} bytes")));
    }
    // At most MAX_HEADER_BYTES and no more than the file holds.
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| io_error(path, e))?;
    let metadata: Metadata =
        serde_json::from_slice(&header).map_err(|e| corrupt(format!("invalid header ({e})")))?;
    let mut end = 0usize;
    for name in metadata.offset_keys() {
        let Some(info) = metadata.info(&name) else { continue };
        let (start, stop) = info.data_offsets;
        let bytes = info
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .and_then(|n| n.checked_mul(info.dtype.bitsize()))
            .filter(|bits| bits % 8 == 0)
            .map(|bits| bits / 8);
        if start != end || bytes.is_none() || bytes != stop.checked_sub(start) {
            return Err(corrupt(format!(
                "tensor {name:?}: bytes {start}..{stop} do not hold its {:?} of shape {:?} (the previous \
                 tensor ends at {end})",
                info.dtype, info.shape
            )));
        }
        end = stop;
    }
    if (end as u64).checked_add(8 + header_len) != Some(file_len) {
        return Err(corrupt(format!(
            "the tensors end at byte {} of the data but the file holds {} bytes of data",
            end,
            file_len - 8 - header_len
        )));
    }
    Ok(metadata.tensors().into_iter().map(|(name, info)| (name, info.shape.clone())).collect())
}

impl LlamaConfig {
    /// Checks that `shapes` (of the weights file `path`, from [`read_safetensors_shapes`]) are exactly the
    /// tensors of a model of this config, before the model is built: a config read from a damaged or
    /// foreign file then fails with the mismatch instead of allocating a model the file cannot fill.
    pub fn check_weights(&self, path: &Path, shapes: &BTreeMap<String, Vec<usize>>) -> Result<()> {
        // Every layer has tensors of its own: this bounds the list of expected names by the file.
        if self.n_layers > shapes.len() {
            return Err(NnError::TooFewTensors {
                path: path.to_path_buf(),
                n_layers: self.n_layers,
                tensors: shapes.len(),
            });
        }
        let expected: Vec<(String, Vec<usize>)> = self
            .parameter_shapes()
            .into_iter()
            .map(|(name, shape, kind)| (name, disk_shape(kind, &shape)))
            .collect();
        check_tensors(path, &expected, shapes)
    }
}

impl Llama {
    /// [`save_safetensors`]: every parameter as f32 under the reference's names.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        save_safetensors(self, path)
    }

    /// [`load_safetensors`]: replaces every parameter, converted to the model's dtype.
    pub fn load_safetensors(&mut self, path: &Path) -> Result<()> {
        load_safetensors(self, path)
    }

    /// A model of `config` with parameters stored as `dtype`, its weights read from `path`.
    pub fn from_safetensors(config: LlamaConfig, path: &Path, dtype: DType) -> Result<Llama> {
        let mut model = Llama::build(config, dtype, &mut Init::Zeros)?;
        model.load_safetensors(path)?;
        Ok(model)
    }
}
