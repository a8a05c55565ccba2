//! Kafka headers the platform writes beside its values, as part of the topic contract.
//!
//! Every record on an embedding topic, tombstones included, names the source event it was
//! computed from on `items` (an Avro record also has it in its `source` field; a tombstone has
//! no value, so headers are where it can say it). Readers order an item's records by it: the
//! later source event wins, whatever order the embedding topic holds them in.

/// Partition of `items` of the source event (decimal text).
pub const SOURCE_PARTITION: &str = "embedstream.source.partition";
/// Offset of the source event in that partition (decimal text).
pub const SOURCE_OFFSET: &str = "embedstream.source.offset";

/// The source position a record's headers name, given a lookup of header values by name;
/// `None` when either header is missing or not a number.
pub fn source<'a>(header: impl Fn(&str) -> Option<&'a [u8]>) -> Option<(i32, i64)> {
    let number = |name| std::str::from_utf8(header(name)?).ok()?.parse::<i64>().ok();
    let partition = i32::try_from(number(SOURCE_PARTITION)?).ok()?;
    let offset = number(SOURCE_OFFSET)?;
    (partition >= 0 && offset >= 0).then_some((partition, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_needs_both_headers_as_non_negative_numbers() {
        let of = |p: &'static [u8], o: &'static [u8]| {
            source(move |n| match n {
                SOURCE_PARTITION => Some(p),
                SOURCE_OFFSET => Some(o),
                _ => None,
            })
        };
        assert_eq!(of(b"2", b"41"), Some((2, 41)));
        assert_eq!(of(b"2", b"x"), None);
        assert_eq!(of(b"-1", b"4"), None);
        assert_eq!(of(b"99999999999", b"4"), None);
        assert_eq!(source(|_| None), None);
    }
}
