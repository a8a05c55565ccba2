//! The model versions the stage writes, following the control log: a version that becomes
//! ACTIVE gets its embedding topic created and its model loaded; one that stops being active is
//! dropped after the batches already holding it finish.

use std::collections::BTreeMap;

use embedstream_schemas::control::ControlState;
use embedstream_schemas::records::MigrationPhase;
use embedstream_topics::ModelRef;
use embedstream_topics::admin::{Admin, Layout, TopicSpec};
use embedstream_topics::names::TopicNames;

use crate::embed::burn_model::Device;
use crate::embed::engine::{Engine, EngineConfig};
use crate::error::Result;

/// One active version.
#[derive(Debug, Clone)]
pub struct ActiveModel {
    /// The version.
    pub model: ModelRef,
    /// `id@v`, the metrics label.
    pub label: String,
    /// Its embedding topic.
    pub topic: String,
    /// Whether its vectors are L2-normalized.
    pub normalized: bool,
    /// The engine serving it.
    pub engine: Engine,
}

/// The set of active versions.
#[derive(Debug)]
pub struct ActiveModels {
    active: BTreeMap<ModelRef, ActiveModel>,
    /// Versions the control log names that this build cannot serve (logged once).
    refused: BTreeMap<ModelRef, String>,
    device: Device,
    engine: EngineConfig,
    admin: Admin,
    names: TopicNames,
    layout: Layout,
}

impl ActiveModels {
    /// An empty set.
    pub fn new(
        device: Device,
        engine: EngineConfig,
        admin: Admin,
        names: TopicNames,
        layout: Layout,
    ) -> Self {
        Self {
            active: BTreeMap::new(),
            refused: BTreeMap::new(),
            device,
            engine,
            admin,
            names,
            layout,
        }
    }

    /// The active versions, in a fixed order.
    pub fn current(&self) -> Vec<ActiveModel> {
        self.active.values().cloned().collect()
    }

    /// Whether no version is active.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Brings the set in line with the control log.
    pub async fn sync(&mut self, state: &ControlState) -> Result<()> {
        let wanted: Vec<ModelRef> = state
            .active_models()
            .iter()
            .filter_map(|m| crate::control::model_ref(m))
            .collect();
        let before = self.active.len();
        self.active.retain(|m, _| wanted.contains(m));
        if self.active.len() != before {
            tracing::info!(active = ?self.active.keys().collect::<Vec<_>>(), "A model version stopped being written.");
        }
        let catalog = crate::control::catalog(state);
        for model in wanted {
            if self.active.contains_key(&model) || self.refused.contains_key(&model) {
                continue;
            }
            let spec = match catalog.lookup(&model) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::error!(error = %e, %model, "The control log activates a model it does not register; not writing it.");
                    self.refused.insert(model, e.to_string());
                    continue;
                }
            };
            let topic = self.names.embeddings(&model);
            self.admin
                .ensure(&[TopicSpec::compacted(topic.clone(), self.layout.partitions)])
                .await?;
            let (device, config, loading) = (self.device, self.engine, spec.clone());
            let label = model.to_string();
            let name = label.clone();
            let (engine, _threads) = tokio::task::spawn_blocking(move || {
                crate::embed::open_named(&loading, device, config, &name)
            })
            .await
            .map_err(crate::Error::task(format!("loading {model}")))??;
            tracing::info!(%model, topic, "Writing a new model version.");
            self.active.insert(
                model.clone(),
                ActiveModel {
                    model,
                    label,
                    topic,
                    normalized: spec.normalized,
                    engine,
                },
            );
        }
        metrics::gauge!(super::metrics::ACTIVE_VERSIONS).set(self.active.len() as f64);
        for m in state.migrations() {
            let writing = !matches!(
                m.phase,
                MigrationPhase::RolledBack | MigrationPhase::Decommissioned
            );
            metrics::gauge!(super::metrics::MIGRATION_DUAL_WRITE,
                "migration" => m.migration_id.clone(),
                "old_version" => m.from_model.clone(),
                "new_version" => m.to_model.clone())
            .set(if writing { 1.0 } else { 0.0 });
        }
        Ok(())
    }
}
