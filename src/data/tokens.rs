//! Tokenized corpora in memory: documents as one id buffer plus offsets. Small corpora and tests build
//! them directly; the pipeline itself tokenizes into shards on disk (`shards.rs`).

/// A corpus as token ids: document `i` is `tokens[doc_offsets[i]..doc_offsets[i + 1]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedCorpus {
    pub tokens: Vec<u32>,
    pub doc_offsets: Vec<usize>,
    /// Whether documents are separate texts that the batcher ends with eos (false for a pre-tokenized
    /// `.bin` stream, which is taken as is).
    pub documents_end_with_eos: bool,
}

impl TokenizedCorpus {
    /// Separate documents; the batcher appends eos to each.
    pub fn from_documents<D: AsRef<[u32]>>(documents: &[D]) -> TokenizedCorpus {
        let mut corpus =
            TokenizedCorpus { tokens: Vec::new(), doc_offsets: vec![0], documents_end_with_eos: true };
        for document in documents {
            corpus.tokens.extend_from_slice(document.as_ref());
            corpus.doc_offsets.push(corpus.tokens.len());
        }
        corpus
    }

    /// One pre-tokenized stream (a `.bin`), taken as is: no eos is added.
    pub fn from_stream(tokens: Vec<u32>) -> TokenizedCorpus {
        let doc_offsets = vec![0, tokens.len()];
        TokenizedCorpus { tokens, doc_offsets, documents_end_with_eos: false }
    }

    pub fn num_documents(&self) -> usize {
        self.doc_offsets.len().saturating_sub(1)
    }

    pub fn document(&self, index: usize) -> &[u32] {
        &self.tokens[self.doc_offsets[index]..self.doc_offsets[index + 1]]
    }

    /// The largest id present, `None` when there are no tokens.
    pub fn max_token_id(&self) -> Option<u32> {
        self.tokens.iter().copied().max()
    }

    /// The corpus as a token stream: each document followed by `eos_id`, or the stream as is.
    pub fn into_stream(self, eos_id: u32) -> super::stream::TokenStream {
        use super::stream::TokenStream;
        if self.documents_end_with_eos {
            let documents: Vec<&[u32]> = (0..self.num_documents()).map(|i| self.document(i)).collect();
            TokenStream::from_documents(&documents, eos_id)
        } else {
            TokenStream::from_ids(self.tokens)
        }
    }
}
