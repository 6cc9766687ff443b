//! A corpus as a list of `seq_len`-token sequences, formed on demand from its token stream: consecutive
//! windows of the stream, or one truncated, right-padded sequence per document.
use super::batching::{BatchConfig, BatchMode};
use super::error::{DataError, Result};
use super::stream::TokenStream;

/// The sequences of one corpus, formed on demand.
#[derive(Debug)]
pub(crate) struct Sequences {
    stream: TokenStream,
    seq_len: usize,
    form: Form,
}

#[derive(Debug)]
enum Form {
    /// Window `i` is stream positions `i * seq_len .. (i + 1) * seq_len`; a partial last window is dropped.
    Packed,
    /// Sequence `i` is document `i` with its eos, cut to `seq_len` and right-padded with `pad_id`.
    Documents { count: u64, pad_id: u32 },
}

impl Sequences {
    pub(crate) fn new(stream: TokenStream, config: &BatchConfig, what: &str) -> Result<Sequences> {
        let seq_len = config.seq_len;
        let form = match config.mode {
            BatchMode::Packed => Form::Packed,
            BatchMode::Document => match stream.num_documents() {
                Some(count) => Form::Documents { count, pad_id: config.pad_id },
                None => {
                    return Err(DataError::ModeNotSupported {
                        mode: "document",
                        what: what.to_string(),
                        reason: "a pre-tokenized .bin stream has no document boundaries; use packed",
                    })
                }
            },
        };
        let sequences = Sequences { stream, seq_len, form };
        if sequences.len() == 0 {
            let reason = match sequences.form {
                Form::Packed => format!("packing needs at least one window of seq_len = {seq_len} tokens"),
                Form::Documents { .. } => "it has no documents".to_string(),
            };
            let tokens = sequences.stream.num_tokens() as usize;
            return Err(DataError::TooSmall { what: what.to_string(), tokens, reason });
        }
        Ok(sequences)
    }

    pub(crate) fn len(&self) -> u64 {
        match self.form {
            Form::Packed => self.stream.num_tokens() / self.seq_len as u64,
            Form::Documents { count, .. } => count,
        }
    }

    pub(crate) fn stream(&self) -> &TokenStream {
        &self.stream
    }

    pub(crate) fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Appends sequence `index` (`seq_len` ids) to `out`.
    pub(crate) fn write(&self, index: u64, out: &mut Vec<u32>) {
        let seq_len = self.seq_len as u64;
        match self.form {
            Form::Packed => self.stream.extend(index * seq_len, seq_len, out),
            Form::Documents { pad_id, .. } => {
                let start = out.len();
                let document = self.stream.document(index);
                let len = (document.end - document.start).min(seq_len);
                self.stream.extend(document.start, len, out);
                out.resize(start + self.seq_len, pad_id);
            }
        }
    }
}
