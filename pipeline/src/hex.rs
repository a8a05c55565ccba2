//! Lower-case hex text of digests (model file and canary checksums, dead letters' SHA-256).

/// Lower-case hex of `bytes`, two digits a byte.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
