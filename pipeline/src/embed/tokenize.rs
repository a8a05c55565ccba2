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
    lower_case: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("max_seq_length", &self.max_seq_length)
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Loads the tokenizer of the model folder `dir` configured by `config`: its length limit
    /// and lower-casing. A tokenizer with more tokens than the model's vocabulary (one that
    /// does not belong to this model) is refused.
    pub fn for_model(dir: &Path, config: &crate::models::ModelConfig) -> Result<Self> {
        let mut tokenizer = Self::load(dir, config.max_seq_length)?;
        tokenizer.lower_case = config.lower_case;
        let tokens = tokenizer.inner.get_vocab_size(true);
        if tokens > config.vocab_size {
            return Err(Error::Config {
                path: dir.join("tokenizer.json"),
                reason: format!(
                    "it has {tokens} tokens but config.json's vocab_size is {}: the tokenizer \
                     is not this model's",
                    config.vocab_size
                ),
            });
        }
        Ok(tokenizer)
    }

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
            lower_case: false,
        })
    }

    /// The limit texts are truncated to.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Tokenizes one text.
    pub fn encode(&self, text: &str) -> Result<Tokens, String> {
        let lowered;
        let text = if self.lower_case {
            lowered = text.to_lowercase();
            lowered.as_str()
        } else {
            text
        };
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
