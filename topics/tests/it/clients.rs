//! Every Kafka client of the workspace is built by `KafkaConfig::client`, so a user's security
//! and tuning properties reach all of them: no source file outside `topics/src/kafka.rs` names
//! librdkafka's `ClientConfig`.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_kafka_client_is_built_outside_the_builder() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let builder = root.join("topics/src/kafka.rs");
    let this = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/clients.rs");
    let mut files = Vec::new();
    rust_files(root, &mut files);
    assert!(files.len() > 50, "the walk found the workspace's sources");
    assert!(files.contains(&builder));
    let word = "ClientConfig";
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| **f != builder && **f != this)
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            text.lines()
                .enumerate()
                .filter(|(_, l)| {
                    l.match_indices(word).any(|(i, _)| {
                        let before = l[..i].chars().next_back();
                        let after = l[i + word.len()..].chars().next();
                        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                            && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
                    })
                })
                .map(|(n, l)| format!("{}:{}: {}", f.display(), n + 1, l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "Kafka clients built outside embedstream_topics::KafkaConfig::client:\n{}",
        offenders.join("\n")
    );
}
