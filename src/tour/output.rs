//! Stops 16 and 17: the trained weights on disk, and the model put to use, one token at a time with a
//! KV cache.
use super::check::{max_abs_diff, show};
use super::{Result, TourError};
use crate::autograd::Eager;
use crate::nn::{Llama, LlamaConfig, Session};
use crate::tensor::{DType, Rng};
use std::fmt::Write as _;

/// cola-tiny saved in the reference's layout, its bytes accounted for, read back and compared.
pub fn checkpoint(out: &mut String) -> Result<()> {
    let config = LlamaConfig::preset("cola-tiny")?;
    let model = Llama::new(config.clone(), &mut Rng::new(2))?;
    let dir = std::env::temp_dir().join(format!("cola-tour-{}", std::process::id()));
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| TourError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join("model.safetensors");
    // The folder goes whatever happens in between.
    let result = save_and_read(out, &model, config, &path);
    std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    result
}

/// [`checkpoint`] on `path`: saves, accounts for every byte, reloads.
fn save_and_read(out: &mut String, model: &Llama, config: LlamaConfig, path: &std::path::Path) -> Result<()> {
    model.save_safetensors(path)?;
    let bytes = std::fs::read(path).map_err(|source| TourError::Io { path: path.to_path_buf(), source })?;
    let length: [u8; 8] =
        bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| header("shorter than 8 bytes"))?;
    let header_len = u64::from_le_bytes(length) as usize;
    let text = bytes.get(8..8 + header_len).ok_or_else(|| header("shorter than its header"))?;
    let header: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| TourError::Header(e.to_string()))?;
    let entries = header.as_object().ok_or_else(|| self::header("not a JSON object"))?;
    let tensors = entries.keys().filter(|k| *k != "__metadata__").count();
    let parameters = model.parameters();
    let count: usize = parameters.iter().map(|p| p.value().numel()).sum();
    let data = count * 4;
    writeln!(out, "model.safetensors: {} bytes, {tensors} tensors", bytes.len())?;
    writeln!(out, "  8 bytes: the header's length, a little-endian u64 = {header_len}")?;
    writeln!(out, "  {header_len} bytes: the JSON header (each tensor's dtype, shape and byte range)")?;
    writeln!(out, "  {data} bytes: {count} parameters x 4 bytes (f32)")?;
    let total = 8 + header_len + data;
    writeln!(out, "  8 + {header_len} + {data} = {total}, the file's size: {}", total == bytes.len())?;
    for name in ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.cola_a", "lm_head.weight"] {
        let in_memory = parameters.iter().find(|p| p.name() == name).map(|p| p.value().shape().to_vec());
        writeln!(
            out,
            "{name}: on disk {} {}, bytes {} of the data, in memory {:?}",
            header[name]["dtype"],
            header[name]["shape"],
            header[name]["data_offsets"],
            in_memory.unwrap_or_default()
        )?;
    }
    let loaded = Llama::from_safetensors(config, path, DType::F32)?;
    let same = parameters
        .iter()
        .zip(loaded.parameters())
        .all(|(a, b)| a.value().to_vec_f64() == b.value().to_vec_f64());
    writeln!(out, "reloaded parameters equal the saved ones bit for bit: {same}")?;
    Ok(())
}

fn header(why: &str) -> TourError {
    TourError::Header(why.to_string())
}

/// A prompt of four ids through an inference session (`nn/src/inference.rs`): the first three are
/// prefilled into the KV cache (`nn/src/kv_cache.rs`), the fourth decoded as one step; its logits against
/// the last row of a full forward over all four, which recomputes every position.
pub fn decode(out: &mut String) -> Result<()> {
    let config = LlamaConfig::preset("cola-tiny")?;
    let model = Llama::new(config.clone(), &mut Rng::new(5))?;
    let prompt = [5u32, 9, 2, 7];
    let mut session = Session::new(&model);
    session.prefill(&[&prompt[..3]])?;
    let cached_after_prefill = session.lengths();
    let step = session.decode(&prompt[3..])?.to_vec_f64();
    let full = model.forward(&mut Eager, &prompt, 1, prompt.len())?.to_vec_f64();
    let vocab = config.vocab_size;
    let last = &full[(prompt.len() - 1) * vocab..];
    let argmax = |v: &[f64]| v.iter().enumerate().fold(0, |best, (i, x)| if *x > v[best] { i } else { best });
    writeln!(
        out,
        "cola-tiny, prompt {prompt:?}: prefill {:?} caches {cached_after_prefill:?} positions",
        &prompt[..3]
    )?;
    writeln!(
        out,
        "decode {} with the cache: 1 new position per layer, keys and values of {} cached ones read; cache now {:?}",
        prompt[3],
        cached_after_prefill[0],
        session.lengths()
    )?;
    writeln!(out, "cached step's logits (first 4 of {vocab}): {}", show(&step[..4], 4))?;
    writeln!(out, "full forward's last row (first 4):     {}", show(&last[..4], 4))?;
    writeln!(
        out,
        "largest difference over all {vocab} logits below 1e-5: {}; same next token ({}): {}",
        max_abs_diff(&step, last) < 1e-5,
        argmax(last),
        argmax(&step) == argmax(last)
    )?;
    Ok(())
}
