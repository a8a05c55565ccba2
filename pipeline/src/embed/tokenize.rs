//! Tokenization as sentence-transformers does it: the model folder's `tokenizer.json`, no
//! padding (batches are padded by the engine, to their own longest text only), truncation to
//! the model's `max_seq_length` special tokens included.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};

/// One tokenized text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Token ids, special tokens included, at most `max_seq_length`.
    pub ids: Vec<u32>,
    /// Whether the text was cut to fit `max_seq_length`.
    pub truncated: bool,
}

/// A model's tokenizer.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_seq_length: usize,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("max_seq_length", &self.max_seq_length)
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` from a model folder, with the model's own length limit.
    pub fn load(dir: &Path, max_seq_length: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let bad = |reason: String| Error::Config {
            path: path.clone(),
            reason,
        };
        let mut inner = Tokenizer::from_file(&path).map_err(|e| bad(e.to_string()))?;
        // The file may carry its own padding/truncation (MiniLM's pads to 128): replace both.
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            inner,
            max_seq_length,
        })
    }

    /// The limit texts are truncated to.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Tokenizes one text.
    pub fn encode(&self, text: &str) -> Result<Tokens, String> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| format!("tokenizer failed: {e}"))?;
        Ok(Tokens {
            ids: enc.get_ids().to_vec(),
            truncated: !enc.get_overflowing().is_empty(),
        })
    }
}
