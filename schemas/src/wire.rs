//! The Confluent wire format: one magic byte `0`, the schema id as a big-endian `u32`, then
//! the Avro binary datum. Pure functions; the registry lookup is in [`crate::codec`].

/// The magic byte that opens every framed record.
pub const MAGIC: u8 = 0;
/// Bytes before the Avro datum.
pub const HEADER_LEN: usize = 5;

/// Why bytes are not a framed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the header.
    #[error("{len} bytes is too short for the 5-byte Confluent header")]
    TooShort {
        /// Length seen.
        len: usize,
    },
    /// The first byte is not the magic byte.
    #[error("first byte is {found:#04x}, not the Confluent magic byte 0x00")]
    BadMagic {
        /// Byte seen.
        found: u8,
    },
}

/// Splits framed bytes into the schema id and the Avro datum.
pub fn split(bytes: &[u8]) -> Result<(u32, &[u8]), FrameError> {
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::TooShort { len: bytes.len() });
    }
    if bytes[0] != MAGIC {
        return Err(FrameError::BadMagic { found: bytes[0] });
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

/// Frames an Avro datum with its schema id.
pub fn frame(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_splits() {
        let framed = frame(0x01020304, b"abc");
        assert_eq!(framed, [0, 1, 2, 3, 4, b'a', b'b', b'c']);
        assert_eq!(split(&framed), Ok((0x01020304, &b"abc"[..])));
    }

    #[test]
    fn rejects_short_and_unframed_bytes() {
        assert_eq!(split(&[0, 0, 1]), Err(FrameError::TooShort { len: 3 }));
        assert_eq!(
            split(b"{\"json\": true}"),
            Err(FrameError::BadMagic { found: b'{' })
        );
    }
}
