//! Decoding a batch's records and submitting their texts to every active model's engine;
//! a record that cannot be decoded or validated becomes a dead letter, never a blocked
//! partition.

use std::time::{Duration, Instant};

use ::metrics::{counter, histogram};
use embedstream_schemas::records::ItemEvent;
use embedstream_schemas::{AvroRecord, Codec, CodecError};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::consumer::Batch;
use super::flow::{Entry, Submitted};
use super::metrics as m;
use super::models::{ActiveModel, ActiveModels};
use super::validate::{self, Limits, Poison, Work};
use crate::control::ControlLog;
use crate::embed::engine::{EngineError, Pending};
use crate::error::{Error, Result};

/// The wait before asking the registry again for a record it could not serve: 100 ms,
/// doubling up to 5 s. Each wait is counted in the registry-retries metric under `op`.
pub(super) struct RegistryBackoff {
    op: &'static str,
    next: Duration,
}

impl RegistryBackoff {
    pub(super) fn new(op: &'static str) -> Self {
        Self {
            op,
            next: Duration::from_millis(100),
        }
    }

    /// Counts one retry and returns how long to wait before it.
    pub(super) fn step(&mut self) -> Duration {
        counter!(m::REGISTRY_RETRIES, "op" => self.op).increment(1);
        let wait = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        wait
    }
}

/// Decodes and validates a record; retries while the registry is unavailable. `None` when
/// shutdown is asked for while it waits (the record is not decided).
pub(crate) async fn decode(
    codec: &Codec,
    message: &OwnedMessage,
    limits: Limits,
    shutdown: &CancellationToken,
) -> Option<std::result::Result<Work, Poison>> {
    let Some(payload) = message.payload() else {
        return Some(validate::tombstone(message.key()));
    };
    Some(
        match decode_waiting::<ItemEvent>(codec, payload, shutdown).await? {
            Ok(event) => validate::event(event, limits),
            Err(e) => Err(Poison::from(&e)),
        },
    )
}

/// Decodes `bytes` as a `T`, waiting (with [`RegistryBackoff`]) while the registry is
/// unavailable; a provably bad record is the error. `None` when shutdown is asked for while
/// it waits.
pub(crate) async fn decode_waiting<T: AvroRecord>(
    codec: &Codec,
    bytes: &[u8],
    shutdown: &CancellationToken,
) -> Option<std::result::Result<T, CodecError>> {
    let mut backoff = RegistryBackoff::new("decode");
    loop {
        match codec.decode::<T>(bytes).await {
            Err(e) if e.is_retryable() => {
                let wait = backoff.step();
                tracing::warn!(error = %e, "Registry unavailable; retrying the record.");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(wait) => {}
                }
            }
            decided => return Some(decided),
        }
    }
}

pub(super) async fn prepare_loop(
    mut batches: mpsc::Receiver<Batch>,
    out: mpsc::Sender<Submitted>,
    codec: Codec,
    control: ControlLog,
    mut models: ActiveModels,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut view = control.subscribe();
    let state = view.borrow_and_update().state.clone();
    models.sync(&state).await?;
    let mut control_open = true;
    loop {
        // Control-log changes are applied as they come, also while no event arrives, so a
        // version activated now writes every event consumed after its model is loaded.
        let batch = tokio::select! {
            biased;
            changed = view.changed(), if control_open => {
                // The follower stops at shutdown; the batches already taken still finish.
                if changed.is_err() {
                    control_open = false;
                    continue;
                }
                let state = view.borrow_and_update().state.clone();
                models.sync(&state).await?;
                continue;
            }
            batch = batches.recv() => match batch {
                Some(b) => b,
                None => return Ok(()),
            },
        };
        histogram!(m::QUEUE_SECONDS).record(batch.first_at.elapsed().as_secs_f64());
        histogram!(m::BATCH_ITEMS).record(batch.messages.len() as f64);
        // Control changes are applied by the select above; with no active version, wait for
        // one (`changed` marks the value seen, so sync on what it brought).
        while models.is_empty() {
            tracing::warn!("No active model version in the control log; waiting for one.");
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                r = view.changed() => if r.is_err() { return Ok(()) },
            }
            let state = view.borrow_and_update().state.clone();
            models.sync(&state).await?;
        }
        let decode_start = Instant::now();
        let mut entries = Vec::with_capacity(batch.messages.len());
        for message in batch.messages {
            let Some(outcome) = decode(&codec, &message, limits, &shutdown).await else {
                return Ok(());
            };
            entries.push(Entry { message, outcome });
        }
        histogram!(m::DECODE_SECONDS).record(decode_start.elapsed().as_secs_f64());
        let texts: Vec<String> = entries
            .iter()
            .filter_map(|e| match &e.outcome {
                Ok(Work::Upsert { text, .. }) => Some(text.clone()),
                _ => None,
            })
            .collect();
        let active = models.current();
        let embed_start = Instant::now();
        let pending = submit_all(&active, &texts).await?;
        let submitted = Submitted {
            given_up: batch.given_up,
            entries,
            models: active,
            pending,
            texts,
            embed_start,
        };
        if out.send(submitted).await.is_err() {
            return Ok(());
        }
    }
}

/// Queues `texts` on every model (the engines' queues are bounded std channels: wait on a
/// blocking thread, never on a runtime worker).
async fn submit_all(models: &[ActiveModel], texts: &[String]) -> Result<Vec<Pending>> {
    let mut pending = Vec::with_capacity(models.len());
    for model in models {
        let engine = model.engine.clone();
        let texts = texts.to_vec();
        let p = tokio::task::spawn_blocking(move || engine.submit(texts))
            .await
            .map_err(Error::task("submitting to the engine"))?
            .map_err(|source| Error::Engine {
                model: model.label.clone(),
                source,
            })?;
        pending.push(p);
    }
    Ok(pending)
}

/// Waits for one model's vectors; a text the tokenizer refuses poisons only itself.
pub(super) async fn vectors_of(
    model: &ActiveModel,
    pending: Pending,
    texts: &[String],
) -> Result<Vec<std::result::Result<Vec<f32>, String>>> {
    match pending.recv().await {
        Ok(v) => Ok(v.into_iter().map(Ok).collect()),
        Err(EngineError::Stopped) => Err(Error::Engine {
            model: model.label.clone(),
            source: EngineError::Stopped,
        }),
        // The stage truncates, so `TooLong` is not expected; like a tokenizer's refusal it
        // poisons only its own text.
        Err(EngineError::Tokenize { .. } | EngineError::TooLong { .. }) => {
            // Rare: embed one by one to find the culprits.
            let mut out = Vec::with_capacity(texts.len());
            for text in texts {
                match model.engine.embed(vec![text.clone()]).await {
                    Ok(mut v) => out.push(Ok(v.pop().unwrap_or_default())),
                    Err(EngineError::Tokenize { reason, .. }) => out.push(Err(reason)),
                    Err(e @ EngineError::TooLong { .. }) => out.push(Err(e.to_string())),
                    Err(EngineError::Stopped) => {
                        return Err(Error::Engine {
                            model: model.label.clone(),
                            source: EngineError::Stopped,
                        });
                    }
                }
            }
            Ok(out)
        }
    }
}
