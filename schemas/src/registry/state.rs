//! The registry's state as a pure function of its log.
//!
//! Every change is planned here as log records (Confluent's own `_schemas` key/value JSON),
//! written to the topic by [`super::store`], and applied here when read back, so the state
//! after a restart is exactly the state before it. Planning never mutates; only [`apply`]
//! does, and applying the same record twice is harmless.
//!
//! [`apply`]: RegistryState::apply

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use super::compat::Compatibility;
use super::error::RegistryError;

/// Key of a `_schemas` record, as Confluent writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keytype", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LogKey {
    /// One version of one subject.
    Schema {
        /// Subject.
        subject: String,
        /// Version.
        version: u32,
        /// Format version of the key.
        magic: u32,
    },
    /// A compatibility config; `subject` `None` is the global one.
    Config {
        /// Subject, or global.
        subject: Option<String>,
        /// Format version of the key.
        magic: u32,
    },
}

/// Value of a `SCHEMA` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaValue {
    /// Subject.
    pub subject: String,
    /// Version.
    pub version: u32,
    /// Global schema id.
    pub id: u32,
    /// Schema text.
    pub schema: String,
    /// Soft-deleted.
    #[serde(default)]
    pub deleted: bool,
}

/// Value of a `CONFIG` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigValue {
    /// The level.
    #[serde(rename = "compatibilityLevel")]
    pub compatibility_level: Compatibility,
}

/// One record to append to the log: key and value JSON (`None` is a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Key JSON.
    pub key: Vec<u8>,
    /// Value JSON, or a tombstone.
    pub value: Option<Vec<u8>>,
}

impl LogRecord {
    fn new<V: Serialize>(key: &LogKey, value: Option<&V>) -> Self {
        // Serializing these plain structs cannot fail.
        Self {
            key: serde_json::to_vec(key).unwrap_or_default(),
            value: value.map(|v| serde_json::to_vec(v).unwrap_or_default()),
        }
    }
}

/// A version in a request: a number or `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    /// The highest live version.
    Latest,
    /// A version number.
    Number(u32),
}

impl VersionSpec {
    /// Parses Confluent's version path segment: a positive int, `latest`, or `-1`.
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        match s {
            "latest" | "-1" => Ok(Self::Latest),
            _ => match s.parse::<u32>() {
                Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(Self::Number(n)),
                _ => Err(RegistryError::InvalidVersion {
                    version: s.to_owned(),
                }),
            },
        }
    }
}

/// A subject's version as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectVersion {
    /// Subject.
    pub subject: String,
    /// Version.
    pub version: u32,
    /// Schema id.
    pub id: u32,
    /// Schema text.
    pub schema: String,
}

#[derive(Debug, Clone)]
struct StoredSchema {
    text: String,
    parsed: Option<Arc<Schema>>,
}

#[derive(Debug, Clone, Copy)]
struct VersionEntry {
    id: u32,
    deleted: bool,
}

/// What a registration needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// The subject already has this schema: nothing to write.
    Existing {
        /// Its id.
        id: u32,
    },
    /// A new version to write.
    New {
        /// The id it gets (reused if another subject has the same schema).
        id: u32,
        /// The version it gets.
        version: u32,
        /// The record to append.
        record: LogRecord,
    },
}

/// The registry's state.
#[derive(Debug, Default)]
pub struct RegistryState {
    schemas: BTreeMap<u32, StoredSchema>,
    ids_by_canonical: HashMap<String, u32>,
    subjects: BTreeMap<String, BTreeMap<u32, VersionEntry>>,
    global: Compatibility,
    subject_config: BTreeMap<String, Compatibility>,
}

/// A schema parsed and in canonical text form (its JSON re-serialized with sorted keys and no
/// whitespace), which decides whether two registrations are the same schema.
#[derive(Debug)]
pub struct ParsedSchema {
    /// Canonical text.
    pub canonical: String,
    /// The Avro schema.
    pub schema: Schema,
}

/// Parses and canonicalizes schema text (Avro only).
pub fn parse_schema(text: &str) -> Result<ParsedSchema, RegistryError> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| RegistryError::InvalidSchema {
            reason: format!("not JSON: {e}"),
        })?;
    let schema = Schema::parse(&json).map_err(|e| RegistryError::InvalidSchema {
        reason: e.to_string(),
    })?;
    Ok(ParsedSchema {
        canonical: json.to_string(),
        schema,
    })
}

impl RegistryState {
    /// Applies one record read from the log. Records this registry does not understand (other
    /// key types written by a Confluent registry sharing the topic) are ignored.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let key: LogKey = match serde_json::from_slice(key) {
            Ok(k) => k,
            Err(e) => return Err(format!("unrecognized key: {e}")),
        };
        match (key, value) {
            (
                LogKey::Schema {
                    subject, version, ..
                },
                None,
            ) => {
                if let Some(versions) = self.subjects.get_mut(&subject) {
                    versions.remove(&version);
                    if versions.is_empty() {
                        self.subjects.remove(&subject);
                    }
                }
            }
            (LogKey::Schema { .. }, Some(value)) => {
                let v: SchemaValue =
                    serde_json::from_slice(value).map_err(|e| format!("bad schema value: {e}"))?;
                let parsed = parse_schema(&v.schema).ok();
                let canonical = parsed
                    .as_ref()
                    .map(|p| p.canonical.clone())
                    .unwrap_or_else(|| v.schema.clone());
                self.ids_by_canonical
                    .entry(canonical.clone())
                    .or_insert(v.id);
                self.schemas.entry(v.id).or_insert(StoredSchema {
                    text: canonical,
                    parsed: parsed.map(|p| Arc::new(p.schema)),
                });
                self.subjects.entry(v.subject).or_default().insert(
                    v.version,
                    VersionEntry {
                        id: v.id,
                        deleted: v.deleted,
                    },
                );
            }
            (LogKey::Config { subject, .. }, value) => {
                let level = value
                    .map(serde_json::from_slice::<ConfigValue>)
                    .transpose()
                    .map_err(|e| format!("bad config value: {e}"))?
                    .map(|c| c.compatibility_level);
                match (subject, level) {
                    (None, Some(level)) => self.global = level,
                    (None, None) => self.global = Compatibility::default(),
                    (Some(s), Some(level)) => {
                        self.subject_config.insert(s, level);
                    }
                    (Some(s), None) => {
                        self.subject_config.remove(&s);
                    }
                }
            }
        }
        Ok(())
    }

    fn live_versions(&self, subject: &str) -> impl Iterator<Item = (u32, VersionEntry)> + '_ {
        self.subjects
            .get(subject)
            .into_iter()
            .flat_map(|v| v.iter())
            .filter(|(_, e)| !e.deleted)
            .map(|(v, e)| (*v, *e))
    }

    fn subject_versions(
        &self,
        subject: &str,
        deleted: bool,
    ) -> Result<&BTreeMap<u32, VersionEntry>, RegistryError> {
        match self.subjects.get(subject) {
            Some(v) if deleted || v.values().any(|e| !e.deleted) => Ok(v),
            _ => Err(RegistryError::SubjectNotFound {
                subject: subject.to_owned(),
            }),
        }
    }

    /// The compatibility level that applies to `subject`.
    pub fn compatibility(&self, subject: &str) -> Compatibility {
        self.subject_config
            .get(subject)
            .copied()
            .unwrap_or(self.global)
    }

    /// The global compatibility level.
    pub fn global_compatibility(&self) -> Compatibility {
        self.global
    }

    /// The subject's own level, if one is set.
    pub fn subject_compatibility(&self, subject: &str) -> Option<Compatibility> {
        self.subject_config.get(subject).copied()
    }

    /// Plans registering `text` under `subject`.
    pub fn plan_register(&self, subject: &str, text: &str) -> Result<Registration, RegistryError> {
        let parsed = parse_schema(text)?;
        if let Some(id) = self.ids_by_canonical.get(&parsed.canonical)
            && self.live_versions(subject).any(|(_, e)| e.id == *id)
        {
            return Ok(Registration::Existing { id: *id });
        }
        let problems = self.check(subject, &parsed.schema, None)?;
        if !problems.is_empty() {
            return Err(RegistryError::Incompatible {
                subject: subject.to_owned(),
                details: problems,
            });
        }
        let id = match self.ids_by_canonical.get(&parsed.canonical) {
            Some(id) => *id,
            None => self.schemas.keys().next_back().map_or(1, |m| m + 1),
        };
        let version = self
            .subjects
            .get(subject)
            .and_then(|v| v.keys().next_back())
            .map_or(1, |m| m + 1);
        let record = LogRecord::new(
            &LogKey::Schema {
                subject: subject.to_owned(),
                version,
                magic: 1,
            },
            Some(&SchemaValue {
                subject: subject.to_owned(),
                version,
                id,
                schema: parsed.canonical,
                deleted: false,
            }),
        );
        Ok(Registration::New {
            id,
            version,
            record,
        })
    }

    /// Checks `schema` against the subject's live versions under its compatibility level, or
    /// against one version only when `version` is given. Returns the violations.
    pub fn check(
        &self,
        subject: &str,
        schema: &Schema,
        version: Option<VersionSpec>,
    ) -> Result<Vec<String>, RegistryError> {
        let level = self.compatibility(subject);
        let mut earlier: Vec<(u32, Arc<Schema>)> = Vec::new();
        match version {
            None => {
                for (v, e) in self.live_versions(subject) {
                    if let Some(p) = self.schemas.get(&e.id).and_then(|s| s.parsed.clone()) {
                        earlier.push((v, p));
                    }
                }
            }
            Some(spec) => {
                let sv = self.version(subject, spec, false)?;
                if let Some(p) = self.schemas.get(&sv.id).and_then(|s| s.parsed.clone()) {
                    earlier.push((sv.version, p));
                }
            }
        }
        let earlier: Vec<(u32, &Schema)> = earlier.iter().map(|(v, s)| (*v, s.as_ref())).collect();
        Ok(level.check(schema, &earlier))
    }

    /// Finds the version of `subject` whose schema is `text`.
    pub fn lookup(
        &self,
        subject: &str,
        text: &str,
        deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        let parsed = parse_schema(text)?;
        let versions = self.subject_versions(subject, deleted)?;
        let id = self.ids_by_canonical.get(&parsed.canonical);
        versions
            .iter()
            .rev()
            .find(|(_, e)| Some(&e.id) == id && (deleted || !e.deleted))
            .map(|(v, e)| SubjectVersion {
                subject: subject.to_owned(),
                version: *v,
                id: e.id,
                schema: parsed.canonical.clone(),
            })
            .ok_or(RegistryError::SchemaNotFound {
                what: String::new(),
            })
    }

    /// The schema text of an id.
    pub fn schema_by_id(&self, id: u32) -> Result<&str, RegistryError> {
        self.schemas
            .get(&id)
            .map(|s| s.text.as_str())
            .ok_or(RegistryError::SchemaNotFound {
                what: id.to_string(),
            })
    }

    /// The (subject, version) pairs that use an id.
    pub fn versions_of_id(
        &self,
        id: u32,
        deleted: bool,
    ) -> Result<Vec<(String, u32)>, RegistryError> {
        self.schema_by_id(id)?;
        Ok(self
            .subjects
            .iter()
            .flat_map(|(s, vs)| {
                vs.iter()
                    .filter(move |(_, e)| e.id == id && (deleted || !e.deleted))
                    .map(move |(v, _)| (s.clone(), *v))
            })
            .collect())
    }

    /// All subjects with a live version (or any version when `deleted`).
    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, vs)| deleted || vs.values().any(|e| !e.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// The versions of a subject.
    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<u32>, RegistryError> {
        Ok(self
            .subject_versions(subject, deleted)?
            .iter()
            .filter(|(_, e)| deleted || !e.deleted)
            .map(|(v, _)| *v)
            .collect())
    }

    /// One version of a subject.
    pub fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
        deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        let versions = self.subject_versions(subject, deleted)?;
        let found = match spec {
            VersionSpec::Latest => versions.iter().rev().find(|(_, e)| deleted || !e.deleted),
            VersionSpec::Number(n) => versions
                .get_key_value(&n)
                .filter(|(_, e)| deleted || !e.deleted),
        };
        let (version, entry) = found.ok_or_else(|| RegistryError::VersionNotFound {
            version: match spec {
                VersionSpec::Latest => "latest".to_owned(),
                VersionSpec::Number(n) => n.to_string(),
            },
        })?;
        Ok(SubjectVersion {
            subject: subject.to_owned(),
            version: *version,
            id: entry.id,
            schema: self.schema_by_id(entry.id)?.to_owned(),
        })
    }

    fn version_record(
        &self,
        subject: &str,
        version: u32,
        entry: VersionEntry,
        tombstone: bool,
    ) -> LogRecord {
        let key = LogKey::Schema {
            subject: subject.to_owned(),
            version,
            magic: 1,
        };
        let value = (!tombstone).then(|| SchemaValue {
            subject: subject.to_owned(),
            version,
            id: entry.id,
            schema: self
                .schemas
                .get(&entry.id)
                .map(|s| s.text.clone())
                .unwrap_or_default(),
            deleted: true,
        });
        LogRecord::new(&key, value.as_ref())
    }

    /// Plans deleting a subject: soft (versions marked deleted) or, after a soft delete,
    /// permanent (tombstones). Returns the versions deleted and the records to append.
    pub fn plan_delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<(Vec<u32>, Vec<LogRecord>), RegistryError> {
        let versions =
            self.subjects
                .get(subject)
                .ok_or_else(|| RegistryError::SubjectNotFound {
                    subject: subject.to_owned(),
                })?;
        let any_live = versions.values().any(|e| !e.deleted);
        if permanent && any_live {
            return Err(RegistryError::SubjectNotSoftDeleted {
                subject: subject.to_owned(),
            });
        }
        if !permanent && !any_live {
            return Err(RegistryError::SubjectSoftDeleted {
                subject: subject.to_owned(),
            });
        }
        let mut deleted = Vec::new();
        let mut records = Vec::new();
        for (v, e) in versions {
            if permanent || !e.deleted {
                deleted.push(*v);
                records.push(self.version_record(subject, *v, *e, permanent));
            }
        }
        Ok((deleted, records))
    }

    /// Plans deleting one version, soft or (after a soft delete) permanent.
    pub fn plan_delete_version(
        &self,
        subject: &str,
        spec: VersionSpec,
        permanent: bool,
    ) -> Result<(u32, LogRecord), RegistryError> {
        let sv = self.version(subject, spec, permanent)?;
        let entry = self
            .subjects
            .get(subject)
            .and_then(|vs| vs.get(&sv.version))
            .copied()
            .ok_or_else(|| RegistryError::VersionNotFound {
                version: sv.version.to_string(),
            })?;
        if permanent && !entry.deleted {
            return Err(RegistryError::VersionNotSoftDeleted {
                subject: subject.to_owned(),
                version: sv.version,
            });
        }
        if !permanent && entry.deleted {
            return Err(RegistryError::VersionSoftDeleted {
                subject: subject.to_owned(),
                version: sv.version,
            });
        }
        Ok((
            sv.version,
            self.version_record(subject, sv.version, entry, permanent),
        ))
    }

    /// Plans setting the level of a subject, or the global one when `subject` is `None`.
    pub fn plan_set_config(subject: Option<&str>, level: Compatibility) -> LogRecord {
        LogRecord::new(
            &LogKey::Config {
                subject: subject.map(str::to_owned),
                magic: 0,
            },
            Some(&ConfigValue {
                compatibility_level: level,
            }),
        )
    }

    /// Plans removing a subject's own level (it falls back to the global one).
    pub fn plan_delete_config(
        &self,
        subject: &str,
    ) -> Result<(Compatibility, LogRecord), RegistryError> {
        let level =
            self.subject_compatibility(subject)
                .ok_or_else(|| RegistryError::SubjectNotFound {
                    subject: subject.to_owned(),
                })?;
        let record = LogRecord::new::<ConfigValue>(
            &LogKey::Config {
                subject: Some(subject.to_owned()),
                magic: 0,
            },
            None,
        );
        Ok((level, record))
    }
}

#[cfg(test)]
mod tests;
