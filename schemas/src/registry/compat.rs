//! Avro compatibility levels, with Confluent's semantics.
//!
//! BACKWARD: the new schema can read data written with the previous one (consumers upgrade
//! first). FORWARD: the previous schema can read data written with the new one (producers
//! upgrade first). FULL: both. The `_TRANSITIVE` variants check against every earlier version
//! instead of only the latest. NONE checks nothing.

use std::fmt;
use std::str::FromStr;

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use serde::{Deserialize, Serialize};

use super::error::RegistryError;

/// A compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    /// No checks.
    None,
    /// New reads latest (Confluent's default).
    #[default]
    Backward,
    /// New reads all earlier.
    BackwardTransitive,
    /// Latest reads new.
    Forward,
    /// All earlier read new.
    ForwardTransitive,
    /// Backward and forward against the latest.
    Full,
    /// Backward and forward against all earlier.
    FullTransitive,
}

impl Compatibility {
    fn name(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    /// Checks `new` against the earlier versions (oldest first) and returns one message per
    /// violation; empty means compatible.
    pub fn check(self, new: &Schema, earlier: &[(u32, &Schema)]) -> Vec<String> {
        let against: &[(u32, &Schema)] = if self.transitive() {
            earlier
        } else {
            earlier.last().map(std::slice::from_ref).unwrap_or(&[])
        };
        let mut problems = Vec::new();
        for (version, old) in against {
            if self.backward()
                && let Err(e) = SchemaCompatibility::can_read(old, new)
            {
                problems.push(format!(
                    "{}: the new schema cannot read data written with version {version}: {e}",
                    self.name()
                ));
            }
            if self.forward()
                && let Err(e) = SchemaCompatibility::can_read(new, old)
            {
                problems.push(format!(
                    "{}: version {version} cannot read data written with the new schema: {e}",
                    self.name()
                ));
            }
        }
        problems
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compatibility {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "NONE" => Self::None,
            "BACKWARD" => Self::Backward,
            "BACKWARD_TRANSITIVE" => Self::BackwardTransitive,
            "FORWARD" => Self::Forward,
            "FORWARD_TRANSITIVE" => Self::ForwardTransitive,
            "FULL" => Self::Full,
            "FULL_TRANSITIVE" => Self::FullTransitive,
            _ => return Err(RegistryError::InvalidCompatibilityLevel),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn levels_follow_confluent_directions() {
        let v1 = record(r#"{"name":"a","type":"string"}"#);
        let added_no_default =
            record(r#"{"name":"a","type":"string"},{"name":"b","type":"string"}"#);
        let added_default =
            record(r#"{"name":"a","type":"string"},{"name":"b","type":"string","default":""}"#);
        let removed = record(r#"{"name":"c","type":["null","int"],"default":null}"#);
        let earlier = [(1, &v1)];

        // Adding a field without a default: new cannot read old data.
        assert!(
            !Compatibility::Backward
                .check(&added_no_default, &earlier)
                .is_empty()
        );
        assert!(
            Compatibility::Forward
                .check(&added_no_default, &earlier)
                .is_empty()
        );
        // With a default it is fully compatible.
        assert!(
            Compatibility::Full
                .check(&added_default, &earlier)
                .is_empty()
        );
        // Dropping a required field breaks forward (old readers need it).
        assert!(!Compatibility::Forward.check(&removed, &earlier).is_empty());
        assert!(Compatibility::Backward.check(&removed, &earlier).is_empty());
        // NONE accepts anything.
        assert!(
            Compatibility::None
                .check(&added_no_default, &earlier)
                .is_empty()
        );
    }

    #[test]
    fn transitive_checks_every_earlier_version() {
        let v1 = record(r#"{"name":"a","type":"string"}"#);
        let v2 = record(r#"{"name":"a","type":"string"},{"name":"b","type":"int","default":1}"#);
        // v3 drops `a` and makes `b` required: readable against v2 data, not v1 data.
        let v3 = record(r#"{"name":"b","type":"int"}"#);
        let earlier = [(1, &v1), (2, &v2)];
        assert!(Compatibility::Backward.check(&v3, &earlier).is_empty());
        let problems = Compatibility::BackwardTransitive.check(&v3, &earlier);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("version 1"), "{problems:?}");
    }

    #[test]
    fn parses_levels_case_insensitively() {
        assert_eq!(
            "full_transitive".parse::<Compatibility>().unwrap(),
            Compatibility::FullTransitive
        );
        assert_eq!(
            "bogus".parse::<Compatibility>().unwrap_err().error_code(),
            42203
        );
    }
}
