//! Dead letters: what the embed stage writes to `items.dlq` for a record that is provably
//! bad ([`letter`]), and listing and replaying them once the cause is fixed ([`replay`]).
//!
//! A letter is an Avro `DeadLetter` (the original key and value, cut to a limit so it always
//! fits the broker's record size, with the whole value's size and SHA-256; where it was read;
//! the error kind and message), keyed by the original key, with Kafka Connect's
//! `__connect.errors.*` headers, so DLQ tooling written for Connect reads it.

mod letter;
mod replay;

pub use self::letter::{DeadLetterPolicy, Failed, dead_letter, headers};
pub use self::replay::{
    Action, DlqSource, Line, REPLAYED_FROM, ReplayOptions, Selection, list, replay,
};
