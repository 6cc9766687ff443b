//! Stops 1 to 3: text becomes ids (byte-level BPE), an id becomes its embedding row, and the row is
//! normalised by RMSNorm before the first projection reads it.
use super::check::show;
use super::{Result, TourError};
use crate::autograd::{Graph, Tape};
use crate::data::Tokenizer;
use crate::nn::{Llama, LlamaConfig};
use crate::tensor::{Rng, Tensor};
use std::collections::HashMap;
use std::fmt::Write as _;

/// The sentences the tokens stop trains its BPE on.
const SENTENCES: [&str; 3] = [
    "the lowest and the newest are not the widest",
    "lower and lowest, new and newest",
    "slowest of the slow",
];
/// Merges learned on top of the 256 byte symbols and 3 special tokens.
const MERGES: usize = 16;
/// The word whose encoding the stop retraces.
const WORD: &str = "lowest";

/// A tiny byte-level BPE (`src/data/tokenizer.rs`) trained on three sentences, its merges replayed by
/// hand on one word (lowest rank first, as BPE applies them), against the tokenizer's own ids.
pub fn tokens(out: &mut String) -> Result<()> {
    let vocab = crate::data::tokenizer::MIN_BPE_VOCAB + MERGES;
    let tokenizer = Tokenizer::train_bpe(SENTENCES.iter(), vocab, false)?;
    let ranks = merge_ranks(&tokenizer)?;
    writeln!(
        out,
        "a byte-level BPE trained on {} sentences: 3 special tokens + 256 bytes + {} merges = {} entries",
        SENTENCES.len(),
        ranks.len(),
        tokenizer.vocab_size()
    )?;
    // Byte-level BPE maps each byte to a printable character; ASCII letters map to themselves.
    let mut pieces: Vec<String> = WORD.chars().map(String::from).collect();
    writeln!(out, "{WORD:?} starts as its bytes: {}", pieces.join(" "))?;
    loop {
        let best = (0..pieces.len().saturating_sub(1))
            .filter_map(|i| ranks.get(&(pieces[i].clone(), pieces[i + 1].clone())).map(|&r| (r, i)))
            .min();
        let Some((rank, i)) = best else { break };
        let merged = format!("{}{}", pieces[i], pieces[i + 1]);
        pieces[i] = merged;
        pieces.remove(i + 1);
        writeln!(out, "  merge #{rank:<2} -> {}", pieces.join(" "))?;
    }
    let by_hand: Vec<u32> = pieces.iter().filter_map(|p| tokenizer.token_to_id(p)).collect();
    let ids = tokenizer.encode(WORD)?;
    writeln!(out, "ids by hand (each piece's entry): {by_hand:?}")?;
    writeln!(out, "tokenizer.encode({WORD:?}):        {ids:?}")?;
    writeln!(out, "decoded back: {:?}", tokenizer.decode(&ids)?)?;
    Ok(())
}

/// `(left, right) -> rank` of a trained BPE's merges, read from its `tokenizer.json`.
fn merge_ranks(tokenizer: &Tokenizer) -> Result<HashMap<(String, String), usize>> {
    let json: serde_json::Value =
        serde_json::from_str(&tokenizer.to_json()?).map_err(|e| TourError::Merges(e.to_string()))?;
    let merges =
        json["model"]["merges"].as_array().ok_or_else(|| TourError::Merges("no merges list".into()))?;
    merges
        .iter()
        .enumerate()
        .map(|(rank, merge)| {
            // Newer files write a merge as `["a", "b"]`, older ones as `"a b"`.
            let pair = match merge {
                serde_json::Value::String(s) => {
                    s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string()))
                }
                serde_json::Value::Array(parts) => match parts.as_slice() {
                    [a, b] => a.as_str().zip(b.as_str()).map(|(a, b)| (a.to_string(), b.to_string())),
                    _ => None,
                },
                _ => None,
            };
            pair.map(|p| (p, rank)).ok_or_else(|| TourError::Merges(format!("merge {rank} is {merge}")))
        })
        .collect()
}

/// Ids `[5, 7, 5, 0]` through cola-tiny's embedding (`nn/src/embedding.rs`): each output row is a copy
/// of the table's row, and the table's gradient adds the output gradient into the row of every use
/// (scatter-add), except for the padding id, which never gets one.
pub fn embedding(out: &mut String) -> Result<()> {
    let config = LlamaConfig::preset("cola-tiny")?;
    let model = Llama::new(config.clone(), &mut Rng::new(1))?;
    let table = model.embedding().table();
    let ids = [5u32, 7, 5, 0];
    let mut tape = Tape::new();
    let rows = model.embedding().forward(&mut tape, &ids, &[1, ids.len()])?;
    let d = config.d_model;
    let weights = table.value().to_vec_f64();
    let output = tape.value(rows)?.to_vec_f64();
    writeln!(
        out,
        "{} is [{}, {d}]; ids {ids:?} (pad id {})",
        table.name(),
        config.vocab_size,
        config.pad_id
    )?;
    writeln!(out, "table row 5 (first 4 of {d}): {}", show(&weights[5 * d..5 * d + 4], 4))?;
    let copies = ids.iter().enumerate().all(|(i, &id)| {
        let id = id as usize;
        output[i * d..(i + 1) * d] == weights[id * d..(id + 1) * d]
    });
    writeln!(out, "output row i is table row ids[i], bit for bit: {copies}")?;
    let loss = tape.sum(&rows, &[], false)?;
    let grads = tape.backward(loss)?;
    let grad = grads.param(table.id()).map(|g| g.to_vec_f64()).unwrap_or_default();
    let row_value = |id: usize| grad.get(id * d).copied().unwrap_or(f64::NAN);
    writeln!(
        out,
        "gradient of sum(output): row 5 = {} (used twice), row 7 = {} (once), row 0 = {} (padding)",
        row_value(5),
        row_value(7),
        row_value(0)
    )?;
    let others_zero = grad.len() == config.vocab_size * d
        && (0..config.vocab_size)
            .filter(|id| ![5, 7].contains(id))
            .all(|id| grad[id * d..(id + 1) * d].iter().all(|&g| g == 0.0));
    writeln!(out, "every other row's gradient is zero: {others_zero}")?;
    Ok(())
}

/// `y = x / sqrt(mean(x^2) + eps) * w` (`nn/src/norm.rs`, kernel `kernels/src/cpu/norm.rs`) on one row of
/// four values, by hand next to the engine.
pub fn rms_norm(out: &mut String) -> Result<()> {
    let (x, w, eps) = ([1.0f64, 2.0, 3.0, 4.0], [1.0f64, 1.0, 0.5, 2.0], 1e-6);
    let engine = Tensor::from_vec(x.map(|v| v as f32).to_vec(), &[1, 4])?
        .rms_norm(&Tensor::from_vec(w.map(|v| v as f32).to_vec(), &[4])?, eps)?
        .to_vec_f64();
    let mean_square = x.iter().map(|v| v * v).sum::<f64>() / 4.0;
    let rms = (mean_square + eps).sqrt();
    let by_hand: Vec<f64> = x.iter().zip(&w).map(|(x, w)| x / rms * w).collect();
    writeln!(out, "x = {x:?}, w = {w:?}, eps = {eps:e}")?;
    writeln!(out, "mean(x^2) = (1 + 4 + 9 + 16) / 4 = {mean_square}; rms = sqrt(7.5 + 1e-6) = {rms:.6}")?;
    writeln!(out, "by hand: x / rms * w = {}", show(&by_hand, 6))?;
    writeln!(out, "engine:                {}", show(&engine, 6))?;
    Ok(())
}
