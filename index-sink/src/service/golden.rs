//! The consumers' golden queries in the recall self-check: the query texts of every golden
//! set the consumers file names (`golden_set`, relative to the file), embedded with this
//! version's model once at start, in the background, and handed to the index
//! ([`ShardedIndex::set_golden_queries`]). A golden set that cannot be read, or a model that
//! cannot embed, is logged and leaves the check on the shard's own vectors alone: it never
//! stops the sink.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use embedstream_schemas::consumers::{ConsumerProfile, GoldenSet};

use super::http::QueryEmbedder;
use crate::ShardedIndex;

/// The query texts of every consumer's golden set, each text once.
pub(crate) fn texts(file: &Path, consumers: &BTreeMap<String, ConsumerProfile>) -> Vec<String> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut texts = std::collections::BTreeSet::new();
    for (consumer, profile) in consumers {
        let Some(path) = &profile.golden_set else {
            continue;
        };
        let path = dir.join(path);
        let set = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<GoldenSet>(&b).map_err(|e| e.to_string()));
        match set {
            Ok(set) => texts.extend(set.queries.into_iter().map(|q| q.text)),
            Err(error) => {
                tracing::warn!(consumer, path = %path.display(), error, "Golden set cannot be read; the recall self-check leaves it out.");
            }
        }
    }
    texts.into_iter().collect()
}

/// Embeds `texts` and gives their vectors to the index's recall self-check.
pub(crate) async fn embed_into(
    embedder: Arc<dyn QueryEmbedder>,
    index: Arc<ShardedIndex>,
    texts: Vec<String>,
) {
    let mut vectors = Vec::with_capacity(texts.len());
    for text in texts {
        match embedder.embed(text).await {
            Ok(v) => vectors.push(v),
            Err(error) => {
                tracing::warn!(error = %error, "Golden queries cannot be embedded; the recall self-check uses the shards' own vectors only.");
                return;
            }
        }
    }
    match index.set_golden_queries(&vectors) {
        Ok(()) => tracing::info!(
            queries = vectors.len(),
            "Golden queries added to the recall self-check."
        ),
        Err(error) => {
            tracing::warn!(error = %error, "Golden query vectors refused by the index.");
        }
    }
}
