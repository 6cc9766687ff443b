//! Sequences, the train/validation split and the batch iterators.
//!
//! A corpus becomes a list of `seq_len`-token sequences in one of two ways ([`BatchMode`]); a seeded hash
//! holds some of them out for validation; the rest are shuffled per epoch and served as `[batch, seq_len]`
//! id matrices. Each sequence is both input and label: the model predicts ids `1..seq_len` from the
//! positions before them, so the loss covers `seq_len - 1` positions per row.
use super::error::{DataError, Result};
use super::permutation::Permutation;
use super::sequences::Sequences;
use super::stream::TokenStream;
use super::tokens::TokenizedCorpus;
use cola_tensor::rng::bits_at;
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
    /// Seeds the per-epoch shuffles.
    pub seed: u64,
    /// Seeds the validation split (the training program passes its `--seed`; experiments fix it, so that
    /// every seed is scored on the same held-out sequences).
    pub split_seed: u64,
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
///
/// Nothing here grows with the corpus: held-out units are the first `held` of a seeded [`Permutation`]
/// of all units (so membership is one inverse permutation), and each epoch's order is another
/// permutation, of the training units.
#[derive(Debug)]
pub struct DataSplits {
    train: Arc<Sequences>,
    val: Arc<Sequences>,
    split: Split,
    config: BatchConfig,
}

/// Where validation sequences come from.
#[derive(Clone, Debug)]
enum Split {
    /// Units `order.apply(0..held)` of the training corpus are held out.
    HeldOut { order: Permutation, held: u64 },
    /// A separate validation corpus; every training unit trains.
    Separate { train: u64 },
}

impl Split {
    fn train_len(&self) -> u64 {
        match self {
            Split::HeldOut { order, held } => order.len() - held,
            Split::Separate { train } => *train,
        }
    }

    fn is_held_out(&self, unit: u64) -> bool {
        match self {
            Split::HeldOut { order, held } => order.invert(unit) < *held,
            Split::Separate { .. } => false,
        }
    }

    /// Training unit `j` of a fixed arbitrary enumeration (the one epoch shuffles permute).
    fn train_unit(&self, j: u64) -> u64 {
        match self {
            Split::HeldOut { order, held } => order.apply(held + j),
            Split::Separate { .. } => j,
        }
    }

    /// The first training unit at or after corpus unit `from`, in file order.
    fn next_train_unit(&self, mut from: u64) -> u64 {
        while self.is_held_out(from) {
            from += 1;
        }
        from
    }
}

impl DataSplits {
    /// [`DataSplits::from_streams`] of corpora in memory (documents end with `config.eos_id`).
    pub fn new(
        train: TokenizedCorpus,
        val: Option<TokenizedCorpus>,
        config: BatchConfig,
    ) -> Result<DataSplits> {
        let eos = config.eos_id;
        Self::from_streams(train.into_stream(eos), val.map(|v| v.into_stream(eos)), config)
    }

    /// Forms the sequences of `train` and holds out `config.val_fraction` of them for validation, or
    /// uses all of `val` for validation when it is given.
    pub fn from_streams(
        train: TokenStream,
        val: Option<TokenStream>,
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
        let (val, split) = match val {
            Some(val) => {
                let val = Arc::new(Sequences::new(val, &config, "the validation corpus")?);
                (val, Split::Separate { train: count })
            }
            None => {
                let held = held_out_count(count, config.val_fraction)?;
                let order = Permutation::new(count, bits_at(config.split_seed, VALIDATION_SALT));
                (train.clone(), Split::HeldOut { order, held })
            }
        };
        Ok(DataSplits { train, val, split, config })
    }

    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    /// The token streams read: the training corpus's, and the validation corpus's when it is separate.
    pub fn streams(&self) -> impl Iterator<Item = &TokenStream> {
        let val = matches!(self.split, Split::Separate { .. }).then(|| self.val.stream());
        std::iter::once(self.train.stream()).chain(val)
    }

    /// Number of training units (an epoch serves all of them but the last partial batch).
    pub fn train_len(&self) -> u64 {
        self.split.train_len()
    }

    /// Number of validation sequences.
    pub fn val_len(&self) -> u64 {
        match &self.split {
            Split::HeldOut { held, .. } => *held,
            Split::Separate { .. } => self.val.len(),
        }
    }

    /// The training units in file order (a scan: for tests and small corpora).
    pub fn train_units(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.train.len()).filter(|&unit| !self.split.is_held_out(unit))
    }

    /// The validation units in serving order: indices into the training corpus when held out from it
    /// ([`DataSplits::val_is_held_out`]), else into the validation corpus.
    pub fn val_units(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.val_len()).map(|i| self.val_unit(i))
    }

    fn val_unit(&self, i: u64) -> u64 {
        match &self.split {
            Split::HeldOut { order, .. } => order.apply(i),
            Split::Separate { .. } => i,
        }
    }

    pub fn val_is_held_out(&self) -> bool {
        matches!(self.split, Split::HeldOut { .. })
    }

    /// Training sequence `unit` of the corpus (`seq_len` ids).
    pub fn train_sequence(&self, unit: u64) -> Vec<u32> {
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
        let train_len = self.train_len();
        check_batch(batch_size, train_len, self.config.seq_len, "training")?;
        if state.index > train_len {
            return Err(DataError::BadResumeState {
                state: format!("{state:?}"),
                reason: format!("the epoch has only {train_len} training sequences"),
            });
        }
        let mut batches = TrainBatches {
            sequences: self.train.clone(),
            split: self.split.clone(),
            batch_size,
            seed: self.config.seed,
            shuffle: self.config.shuffle,
            state: DataState { index: 0, ..state },
            order: Permutation::new(train_len, 0),
            cursor: 0,
        };
        batches.start_epoch(state.epoch);
        // Without shuffling, file order is a scan past held-out units: move the cursor to the position.
        if !batches.shuffle {
            for _ in 0..state.index {
                batches.cursor = batches.split.next_train_unit(batches.cursor) + 1;
            }
        }
        batches.state.index = state.index;
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

/// `max(1, round(fraction * count))` units to hold out of `count` (none when `fraction` is 0); an error
/// when that leaves nothing to train on.
fn held_out_count(count: u64, fraction: f64) -> Result<u64> {
    if fraction == 0.0 {
        return Ok(0);
    }
    let held = ((fraction * count as f64).round() as u64).max(1);
    if held >= count {
        return Err(DataError::TooSmall {
            what: "the training corpus".into(),
            tokens: count as usize,
            reason: format!(
                "only {count} sequences/documents, too few to hold out {held} for validation and train on \
                 the rest (give a validation corpus or more data)"
            ),
        });
    }
    Ok(held)
}

fn check_batch(batch_size: usize, sequences: u64, seq_len: usize, split: &'static str) -> Result<()> {
    if batch_size == 0 {
        return Err(DataError::InvalidConfig { reason: "batch size must be positive".into() });
    }
    if sequences < batch_size as u64 {
        return Err(DataError::TooFewSequences { split, sequences: sequences as usize, seq_len, batch_size });
    }
    Ok(())
}

/// The training stream: epoch after epoch, each a fresh seeded permutation of the training units (file
/// order without shuffling) cut into full batches; the `len % batch_size` units left at an epoch's end
/// are skipped in that epoch.
#[derive(Debug)]
pub struct TrainBatches {
    sequences: Arc<Sequences>,
    split: Split,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    state: DataState,
    /// This epoch's order of the training units (when shuffling).
    order: Permutation,
    /// Without shuffling: the corpus unit from which to look for the next training unit.
    cursor: u64,
}

impl TrainBatches {
    /// The position of the next batch; [`DataSplits::train_batches_from`] resumes from it.
    pub fn state(&self) -> DataState {
        self.state
    }

    pub fn batches_per_epoch(&self) -> usize {
        (self.split.train_len() / self.batch_size as u64) as usize
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Starts `epoch`: its order is the permutation of seed `hash(seed, epoch)`.
    fn start_epoch(&mut self, epoch: u64) {
        self.state = DataState { epoch, index: 0 };
        self.order = Permutation::new(self.split.train_len(), bits_at(self.seed ^ SHUFFLE_SALT, epoch));
        self.cursor = 0;
    }

    /// The corpus unit served at the current position.
    fn next_unit(&mut self) -> u64 {
        if self.shuffle {
            self.split.train_unit(self.order.apply(self.state.index))
        } else {
            let unit = self.split.next_train_unit(self.cursor);
            self.cursor = unit + 1;
            unit
        }
    }

    /// The next batch, moving on to the next epoch when this one has no full batch left.
    pub fn next_batch(&mut self) -> Batch {
        if self.state.index + self.batch_size as u64 > self.split.train_len() {
            self.start_epoch(self.state.epoch + 1);
        }
        let seq_len = self.sequences.seq_len();
        let mut tokens = Vec::with_capacity(self.batch_size * seq_len);
        for _ in 0..self.batch_size {
            let unit = self.next_unit();
            self.sequences.write(unit, &mut tokens);
            self.state.index += 1;
        }
        Batch { tokens, rows: self.batch_size, seq_len, epoch: self.state.epoch }
    }
}

impl Iterator for TrainBatches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        Some(self.next_batch())
    }
}

/// The validation sequences in a fixed order, `batch_size` at a time.
#[derive(Debug)]
pub struct ValBatches<'a> {
    splits: &'a DataSplits,
    batch_size: usize,
    next: u64,
}

impl Iterator for ValBatches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let len = self.splits.val_len();
        if self.next >= len {
            return None;
        }
        let end = (self.next + self.batch_size as u64).min(len);
        let seq_len = self.splits.config.seq_len;
        let mut tokens = Vec::with_capacity((end - self.next) as usize * seq_len);
        for i in self.next..end {
            self.splits.val.write(self.splits.val_unit(i), &mut tokens);
        }
        let batch = Batch { tokens, rows: (end - self.next) as usize, seq_len, epoch: 0 };
        self.next = end;
        Some(batch)
    }
}
