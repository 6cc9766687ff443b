//! Sequences, the train/validation split and the batch iterators.
//!
//! A corpus becomes a list of `seq_len`-token sequences in one of two ways ([`BatchMode`]); a seeded hash
//! holds some of them out for validation; the rest are shuffled per epoch and served as `[batch, seq_len]`
//! id matrices. Each sequence is both input and label: the model predicts ids `1..seq_len` from the
//! positions before them, so the loss covers `seq_len - 1` positions per row.
use super::error::{DataError, Result};
use super::sequences::Sequences;
use super::tokens::TokenizedCorpus;
use cola_tensor::rng::bits_at;
use cola_tensor::Rng;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Salts that separate the random streams drawn from one user seed.
const VALIDATION_SALT: u64 = 0x76A1_1DA7_E5E7_0001;
const SHUFFLE_SALT: u64 = 0x5A0F_F1E5_0000_0002;

/// How documents become sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchMode {
    /// The paper's C4 setting: each document plus eos, truncated to `seq_len` and right-padded with the
    /// pad id (pads carry no loss).
    Document,
    /// Every document plus eos concatenated into one stream, cut into consecutive non-overlapping
    /// `seq_len` windows; a partial last window is dropped.
    Packed,
}

impl BatchMode {
    pub fn name(self) -> &'static str {
        match self {
            BatchMode::Document => "document",
            BatchMode::Packed => "packed",
        }
    }
}

impl std::fmt::Display for BatchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BatchMode {
    type Err = DataError;

    fn from_str(text: &str) -> Result<BatchMode> {
        match text {
            "document" => Ok(BatchMode::Document),
            "packed" => Ok(BatchMode::Packed),
            other => Err(DataError::InvalidConfig {
                reason: format!("unknown batching mode {other:?}; expected \"document\" or \"packed\""),
            }),
        }
    }
}

/// How sequences are formed, split and ordered.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchConfig {
    pub seq_len: usize,
    pub mode: BatchMode,
    /// Seeds the validation split and the per-epoch shuffles.
    pub seed: u64,
    /// `false` serves training sequences in file order every epoch.
    pub shuffle: bool,
    /// Fraction of the sequences (packed) or documents (document mode) held out for validation when no
    /// separate validation corpus is given; at least one is held out when it is positive.
    pub val_fraction: f64,
    pub pad_id: u32,
    pub eos_id: u32,
}

/// Where the training stream stands: `index` sequences of epoch `epoch` have been served. A checkpoint
/// that stores it resumes the stream bit for bit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DataState {
    pub epoch: u64,
    pub index: u64,
}

/// `rows` sequences of `seq_len` ids, row-major `[rows, seq_len]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub tokens: Vec<u32>,
    pub rows: usize,
    pub seq_len: usize,
    /// The epoch the batch belongs to (0 for validation batches).
    pub epoch: u64,
}

impl Batch {
    pub fn row(&self, index: usize) -> &[u32] {
        &self.tokens[index * self.seq_len..(index + 1) * self.seq_len]
    }
}

/// The training and validation sequences of a corpus. Unit indices name sequences (packed) or documents
/// (document mode) in file order.
#[derive(Debug)]
pub struct DataSplits {
    train: Arc<Sequences>,
    val: Arc<Sequences>,
    train_units: Arc<Vec<usize>>,
    val_units: Vec<usize>,
    held_out: bool,
    config: BatchConfig,
}

impl DataSplits {
    /// Forms the sequences of `train` and holds out `config.val_fraction` of them for validation, or
    /// uses all of `val` for validation when it is given.
    pub fn new(
        train: TokenizedCorpus,
        val: Option<TokenizedCorpus>,
        config: BatchConfig,
    ) -> Result<DataSplits> {
        if config.seq_len < 2 {
            return Err(DataError::InvalidConfig {
                reason: format!(
                    "seq_len must be at least 2 (the loss predicts the next token), got {}",
                    config.seq_len
                ),
            });
        }
        if !(0.0..1.0).contains(&config.val_fraction) {
            return Err(DataError::InvalidConfig {
                reason: format!("val_fraction must lie in [0, 1), got {}", config.val_fraction),
            });
        }
        let train = Arc::new(Sequences::new(train, &config, "the training corpus")?);
        let count = train.len();
        let (val, train_units, val_units, held_out) = match val {
            Some(val) => {
                let val = Arc::new(Sequences::new(val, &config, "the validation corpus")?);
                let val_units = (0..val.len()).collect();
                (val, (0..count).collect(), val_units, false)
            }
            None => {
                let (train_units, val_units) = hold_out(count, config.val_fraction, config.seed)?;
                (train.clone(), train_units, val_units, true)
            }
        };
        Ok(DataSplits { train, val, train_units: Arc::new(train_units), val_units, held_out, config })
    }

    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    /// Training units (sequence or document indices of the training corpus), ascending.
    pub fn train_units(&self) -> &[usize] {
        &self.train_units
    }

    /// Validation units, ascending: indices into the training corpus when held out from it
    /// ([`DataSplits::val_is_held_out`]), else into the validation corpus.
    pub fn val_units(&self) -> &[usize] {
        &self.val_units
    }

    pub fn val_is_held_out(&self) -> bool {
        self.held_out
    }

    /// Training sequence `unit` of the corpus (`seq_len` ids).
    pub fn train_sequence(&self, unit: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.config.seq_len);
        self.train.write(unit, &mut out);
        out
    }

    /// The infinite training stream from the start of epoch 0.
    pub fn train_batches(&self, batch_size: usize) -> Result<TrainBatches> {
        self.train_batches_from(batch_size, DataState::default())
    }

    /// The infinite training stream from `state`, as [`TrainBatches::state`] reported it.
    pub fn train_batches_from(&self, batch_size: usize, state: DataState) -> Result<TrainBatches> {
        check_batch(batch_size, self.train_units.len(), self.config.seq_len, "training")?;
        if state.index > self.train_units.len() as u64 {
            return Err(DataError::BadResumeState {
                state: format!("{state:?}"),
                reason: format!("the epoch has only {} training sequences", self.train_units.len()),
            });
        }
        let mut batches = TrainBatches {
            sequences: self.train.clone(),
            units: self.train_units.clone(),
            batch_size,
            seed: self.config.seed,
            shuffle: self.config.shuffle,
            state,
            order: Vec::new(),
        };
        batches.order = batches.epoch_order(state.epoch);
        Ok(batches)
    }

    /// The validation sequences in a fixed order, `batch_size` at a time; the last batch may be shorter.
    pub fn val_batches(&self, batch_size: usize) -> Result<ValBatches<'_>> {
        if batch_size == 0 {
            return Err(DataError::InvalidConfig { reason: "batch size must be positive".into() });
        }
        Ok(ValBatches { splits: self, batch_size, next: 0 })
    }
}

/// Holds out `max(1, round(fraction * count))` of `count` units (none when `fraction` is 0): those with
/// the smallest seeded hashes, so the split depends on the seed alone, not on the order of anything.
fn hold_out(count: usize, fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if fraction == 0.0 {
        return Ok(((0..count).collect(), Vec::new()));
    }
    let held = ((fraction * count as f64).round() as usize).max(1);
    if held >= count {
        return Err(DataError::TooSmall {
            what: "the training corpus".into(),
            tokens: count,
            reason: format!(
                "only {count} sequences/documents, too few to hold out {held} for validation and train on \
                 the rest (give a validation corpus or more data)"
            ),
        });
    }
    let split_seed = bits_at(seed, VALIDATION_SALT);
    let mut ranked: Vec<(u64, usize)> =
        (0..count).map(|unit| (bits_at(split_seed, unit as u64), unit)).collect();
    ranked.select_nth_unstable(held - 1);
    let mut val: Vec<usize> = ranked[..held].iter().map(|&(_, unit)| unit).collect();
    val.sort_unstable();
    let mut is_val = vec![false; count];
    for &unit in &val {
        is_val[unit] = true;
    }
    let train = (0..count).filter(|&unit| !is_val[unit]).collect();
    Ok((train, val))
}

fn check_batch(batch_size: usize, sequences: usize, seq_len: usize, split: &'static str) -> Result<()> {
    if batch_size == 0 {
        return Err(DataError::InvalidConfig { reason: "batch size must be positive".into() });
    }
    if sequences < batch_size {
        return Err(DataError::TooFewSequences { split, sequences, seq_len, batch_size });
    }
    Ok(())
}

/// The training stream: epoch after epoch, each a fresh seeded permutation of the training units (file
/// order without shuffling) cut into full batches; the `len % batch_size` units left at an epoch's end
/// are skipped in that epoch.
#[derive(Debug)]
pub struct TrainBatches {
    sequences: Arc<Sequences>,
    units: Arc<Vec<usize>>,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    state: DataState,
    order: Vec<usize>,
}

impl TrainBatches {
    /// The position of the next batch; [`DataSplits::train_batches_from`] resumes from it.
    pub fn state(&self) -> DataState {
        self.state
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.units.len() / self.batch_size
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The units of `epoch` in serving order: a Fisher-Yates shuffle driven by the counter-based stream
    /// of seed `hash(seed, epoch)`.
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order = self.units.as_ref().clone();
        if self.shuffle {
            let mut rng = Rng::new(bits_at(self.seed ^ SHUFFLE_SALT, epoch));
            for i in (1..order.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                order.swap(i, j);
            }
        }
        order
    }

    /// The next batch, moving on to the next epoch when this one has no full batch left.
    pub fn next_batch(&mut self) -> Batch {
        if self.state.index as usize + self.batch_size > self.order.len() {
            self.state = DataState { epoch: self.state.epoch + 1, index: 0 };
            self.order = self.epoch_order(self.state.epoch);
        }
        let start = self.state.index as usize;
        let seq_len = self.sequences.seq_len();
        let mut tokens = Vec::with_capacity(self.batch_size * seq_len);
        for &unit in &self.order[start..start + self.batch_size] {
            self.sequences.write(unit, &mut tokens);
        }
        let batch = Batch { tokens, rows: self.batch_size, seq_len, epoch: self.state.epoch };
        self.state.index += self.batch_size as u64;
        batch
    }
}

impl Iterator for TrainBatches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        Some(self.next_batch())
    }
}

/// The validation sequences in unit order, `batch_size` at a time.
#[derive(Debug)]
pub struct ValBatches<'a> {
    splits: &'a DataSplits,
    batch_size: usize,
    next: usize,
}

impl Iterator for ValBatches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let units = &self.splits.val_units;
        if self.next >= units.len() {
            return None;
        }
        let end = (self.next + self.batch_size).min(units.len());
        let seq_len = self.splits.config.seq_len;
        let mut tokens = Vec::with_capacity((end - self.next) * seq_len);
        for &unit in &units[self.next..end] {
            self.splits.val.write(unit, &mut tokens);
        }
        let batch = Batch { tokens, rows: end - self.next, seq_len, epoch: 0 };
        self.next = end;
        Some(batch)
    }
}
