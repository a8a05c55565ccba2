//! JSON lines of vectors (`{"id", "vector"}`, what `embedstream embed` writes): reading them
//! by id ([`read_vectors`]), and mapping them from the new model's space into the old one's
//! line by line ([`map_lines`]: a line that cannot be mapped is reported with its number and
//! the others go on).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use serde_json::Value;

use crate::{Adapter, AdapterError};

/// Maps every line of `input` to `output` (blank lines skipped), with the int8 serving path or,
/// with `exact`, the f32 map. Each line that cannot be mapped is passed to `bad` with its
/// 1-based number and the reason; returns how many there were. Only I/O errors stop it.
pub fn map_lines(
    adapter: &Adapter,
    exact: bool,
    input: impl BufRead,
    mut output: impl Write,
    mut bad: impl FnMut(usize, String),
) -> std::io::Result<usize> {
    let mut failed = 0usize;
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match map_line(adapter, exact, &line) {
            Ok(mapped) => {
                serde_json::to_writer(&mut output, &mapped)?;
                output.write_all(b"\n")?;
            }
            Err(reason) => {
                failed += 1;
                bad(n + 1, reason);
            }
        }
    }
    output.flush()?;
    Ok(failed)
}

fn map_line(adapter: &Adapter, exact: bool, line: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let id = v.get("id").cloned().ok_or("no \"id\"")?;
    let vector: Vec<f32> = serde_json::from_value(v.get("vector").cloned().ok_or("no \"vector\"")?)
        .map_err(|e| format!("\"vector\" is not a list of numbers: {e}"))?;
    let mapped = if exact {
        adapter.apply_exact(&vector)
    } else {
        adapter.apply(&vector)
    }
    .map_err(|e| format!("id {id}: {e}"))?;
    Ok(serde_json::json!({"id": id, "vector": mapped}))
}

/// An id as text: a JSON string as is, anything else as its JSON.
pub(crate) fn id_string(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The non-blank lines of `path` with their 1-based numbers.
pub(crate) fn nonblank_lines(path: &Path) -> Result<Vec<(usize, String)>, AdapterError> {
    let io = |source| AdapterError::Io {
        op: "reading",
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if !line.trim().is_empty() {
            out.push((i + 1, line));
        }
    }
    Ok(out)
}

/// `{"id", "vector"}` lines (the output of `embedstream embed`) by id, with their line numbers;
/// an id that appears twice is refused.
pub fn read_vectors(path: &Path) -> Result<BTreeMap<String, (usize, Vec<f32>)>, AdapterError> {
    #[derive(serde::Deserialize)]
    struct Line {
        id: serde_json::Value,
        vector: Vec<f32>,
    }
    let mut out = BTreeMap::new();
    for (n, line) in nonblank_lines(path)? {
        let parsed: Line = serde_json::from_str(&line).map_err(|e| {
            AdapterError::refused(format!(
                "{}:{n}: not a vector line {{\"id\", \"vector\"}}: {e}",
                path.display()
            ))
        })?;
        let id = id_string(&parsed.id);
        if out.insert(id.clone(), (n, parsed.vector)).is_some() {
            return Err(AdapterError::refused(format!(
                "{}:{n}: item {id:?} appears twice",
                path.display()
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AdapterKind, AdapterMeta, AdapterName, Layers, Matrix};

    /// Swaps the two coordinates.
    fn swap() -> Adapter {
        let name = AdapterName {
            new: "new@1".into(),
            old: "old@1".into(),
            kind: AdapterKind::Procrustes.as_str(),
            version: 1,
        };
        Adapter::new(
            AdapterMeta::new(&name, 2, 2, "test".into()),
            Layers::Linear {
                w: Matrix::new(2, 2, vec![0.0, 1.0, 1.0, 0.0]),
                b: vec![0.0, 0.0],
            },
        )
    }

    #[test]
    fn good_lines_are_mapped_in_order_and_bad_ones_reported_by_number() {
        let input = [
            r#"{"id": "a", "vector": [3, 4]}"#,
            "",
            "not json",
            r#"{"id": "b"}"#,
            r#"{"id": "c", "vector": [1, 2, 3]}"#,
            r#"{"id": 7, "vector": [0, 2]}"#,
        ]
        .join("\n");
        let mut out = Vec::new();
        let mut bad = Vec::new();
        let failed = map_lines(&swap(), true, input.as_bytes(), &mut out, |n, e| {
            bad.push((n, e))
        })
        .unwrap();
        assert_eq!(failed, 3);
        assert_eq!(
            bad.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [3, 4, 5],
            "{bad:?}"
        );
        assert!(bad[0].1.starts_with("invalid JSON"), "{bad:?}");
        assert!(bad[1].1.contains("no \"vector\""), "{bad:?}");
        assert!(bad[2].1.starts_with("id \"c\""), "{bad:?}");
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            [
                serde_json::json!({"id": "a", "vector": [0.8f32, 0.6f32]}),
                serde_json::json!({"id": 7, "vector": [1.0f32, 0.0f32]}),
            ]
        );
    }

    #[test]
    fn the_serving_path_maps_close_to_the_exact_one() {
        let mut out = Vec::new();
        let failed = map_lines(
            &swap(),
            false,
            r#"{"id": "a", "vector": [3, 4]}"#.as_bytes(),
            &mut out,
            |_, e| panic!("{e}"),
        )
        .unwrap();
        assert_eq!(failed, 0);
        let line: Value = serde_json::from_slice(out.trim_ascii_end()).unwrap();
        let v: Vec<f32> = serde_json::from_value(line["vector"].clone()).unwrap();
        assert!(
            (v[0] - 0.8).abs() < 0.01 && (v[1] - 0.6).abs() < 0.01,
            "{v:?}"
        );
    }
}
