//! Properties over untrusted input: whatever bytes arrive on a topic or in a request, the
//! decoders and the registry's parsers answer with a value or an error, never a panic; and
//! what is framed or encoded reads back the same.

use apache_avro::Schema;
use proptest::prelude::*;

use crate::codec::decode_datum;
use crate::records::{AvroRecord, ControlRecord, DeadLetter, EmbeddingRecord, ItemEvent};
use crate::registry::state::{Registration, RegistryState, parse_schema};
use crate::wire;

/// Valid schema text with `edits` (position, byte) applied: near-misses reach deeper into the
/// parser than random strings.
fn mutated(text: &str, edits: &[(usize, u8)]) -> String {
    let mut b = text.as_bytes().to_vec();
    for &(at, byte) in edits {
        let at = at % (b.len() + 1);
        match byte % 3 {
            0 if at < b.len() => {
                b.remove(at);
            }
            1 if at < b.len() => b[at] = byte,
            _ => b.insert(at, byte),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn decode_any<T: AvroRecord>(bytes: &[u8]) {
    let _ = decode_datum::<T>(T::schema(), &mut &bytes[..]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
    ))]

    #[test]
    fn framing_reads_back_and_never_panics(id in any::<u32>(), datum in prop::collection::vec(any::<u8>(), 0..64), junk in prop::collection::vec(any::<u8>(), 0..16)) {
        let framed = wire::frame(id, &datum);
        let (got_id, got) = wire::split(&framed).unwrap();
        prop_assert_eq!(got_id, id);
        prop_assert_eq!(got, &datum[..]);
        let _ = wire::split(&junk);
    }

    #[test]
    fn the_avro_decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_any::<ItemEvent>(&bytes);
        decode_any::<EmbeddingRecord>(&bytes);
        decode_any::<DeadLetter>(&bytes);
        decode_any::<ControlRecord>(&bytes);
    }

    #[test]
    fn a_mangled_item_event_decodes_or_fails_cleanly(
        text in ".{0,40}",
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
    ) {
        let event = ItemEvent { text: Some(text), ..crate::records::tests::item_event() };
        let value = apache_avro::to_value(&event).unwrap();
        let mut bytes = apache_avro::writer::datum::GenericDatumWriter::builder(ItemEvent::schema())
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap();
        let clean: ItemEvent = decode_datum(ItemEvent::schema(), &mut &bytes[..]).unwrap();
        prop_assert_eq!(&clean, &event);
        for &(at, byte) in &edits {
            if !bytes.is_empty() {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
        }
        let _ = decode_datum::<ItemEvent>(ItemEvent::schema(), &mut &bytes[..]);
    }

    #[test]
    fn schema_text_from_a_client_never_panics_the_registry(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        raw in ".{0,80}",
    ) {
        let _ = parse_schema(&raw);
        let text = mutated(ItemEvent::SCHEMA_JSON, &edits);
        let _ = parse_schema(&text);
        let mut state = RegistryState::default();
        if let Ok(Registration::New { record, .. }) =
            state.plan_register("items-value", ItemEvent::SCHEMA_JSON)
        {
            state.apply(&record.key, record.value.as_deref()).unwrap();
        }
        let _ = state.plan_register("items-value", &text);
        let _ = Schema::parse_str(&text);
    }

    #[test]
    fn replaying_a_corrupt_schemas_log_never_panics(
        records in prop::collection::vec((".{0,60}", prop::option::of(".{0,120}")), 0..8),
    ) {
        let mut state = RegistryState::default();
        for (key, value) in &records {
            let _ = state.apply(key.as_bytes(), value.as_deref().map(str::as_bytes));
        }
        let _ = state.subjects(true);
    }
}
