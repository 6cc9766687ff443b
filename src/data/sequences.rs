//! A corpus as a list of `seq_len`-token sequences, formed on demand: consecutive windows of the packed
//! stream, or one truncated, right-padded sequence per document.
use super::batching::{BatchConfig, BatchMode};
use super::error::{DataError, Result};
use super::tokens::TokenizedCorpus;

/// The sequences of one corpus, formed on demand.
#[derive(Debug)]
pub(crate) enum Sequences {
    Packed { stream: Vec<u32>, seq_len: usize },
    Documents { corpus: TokenizedCorpus, seq_len: usize, pad_id: u32, eos_id: u32 },
}

impl Sequences {
    pub(crate) fn new(corpus: TokenizedCorpus, config: &BatchConfig, what: &str) -> Result<Sequences> {
        let seq_len = config.seq_len;
        let sequences = match config.mode {
            BatchMode::Packed => {
                let stream = if corpus.documents_end_with_eos {
                    let mut stream = Vec::with_capacity(corpus.tokens.len() + corpus.num_documents());
                    for index in 0..corpus.num_documents() {
                        stream.extend_from_slice(corpus.document(index));
                        stream.push(config.eos_id);
                    }
                    stream
                } else {
                    corpus.tokens
                };
                Sequences::Packed { stream, seq_len }
            }
            BatchMode::Document => {
                if !corpus.documents_end_with_eos {
                    return Err(DataError::ModeNotSupported {
                        mode: "document",
                        what: what.to_string(),
                        reason: "a pre-tokenized .bin stream has no document boundaries; use packed",
                    });
                }
                Sequences::Documents { corpus, seq_len, pad_id: config.pad_id, eos_id: config.eos_id }
            }
        };
        if sequences.len() == 0 {
            let (tokens, reason) = match &sequences {
                Sequences::Packed { stream, .. } => {
                    (stream.len(), format!("packing needs at least one window of seq_len = {seq_len} tokens"))
                }
                Sequences::Documents { corpus, .. } => {
                    (corpus.tokens.len(), "it has no documents".to_string())
                }
            };
            return Err(DataError::TooSmall { what: what.to_string(), tokens, reason });
        }
        Ok(sequences)
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Sequences::Packed { stream, seq_len } => stream.len() / seq_len,
            Sequences::Documents { corpus, .. } => corpus.num_documents(),
        }
    }

    pub(crate) fn seq_len(&self) -> usize {
        match self {
            Sequences::Packed { seq_len, .. } | Sequences::Documents { seq_len, .. } => *seq_len,
        }
    }

    /// Appends sequence `index` (`seq_len` ids) to `out`.
    pub(crate) fn write(&self, index: usize, out: &mut Vec<u32>) {
        match self {
            Sequences::Packed { stream, seq_len } => {
                out.extend_from_slice(&stream[index * seq_len..(index + 1) * seq_len]);
            }
            Sequences::Documents { corpus, seq_len, pad_id, eos_id } => {
                let start = out.len();
                let document = corpus.document(index);
                out.extend_from_slice(&document[..document.len().min(*seq_len)]);
                if document.len() < *seq_len {
                    out.push(*eos_id);
                }
                out.resize(start + seq_len, *pad_id);
            }
        }
    }
}
