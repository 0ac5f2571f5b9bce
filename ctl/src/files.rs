//! Reading the policy files a command names: files, directories (their
//! `*.toml`, `*.yaml` and `*.yml` files in name order) and `-` for standard input.

use std::{io::Read as _, path::Path};

use anyhow::Context as _;
use palisade_api::PolicyFile;

/// The files behind `paths`, in the order given.
///
/// # Errors
///
/// When a path cannot be read, or a directory holds no policy file.
pub fn read(paths: &[impl AsRef<Path>]) -> anyhow::Result<Vec<PolicyFile>> {
    let mut files = Vec::new();
    for path in paths {
        let path = path.as_ref();
        if path == Path::new("-") {
            let mut content = String::new();
            std::io::stdin()
                .read_to_string(&mut content)
                .context("reading standard input")?;
            files.push(PolicyFile {
                name: "<stdin>".to_owned(),
                content,
            });
        } else if path.is_dir() {
            let mut found: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read directory {}", path.display()))?
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|file| palisade_policy::is_policy_file(file))
                .collect();
            anyhow::ensure!(
                !found.is_empty(),
                "{} holds no policy file (*.toml, *.yaml, *.yml)",
                path.display()
            );
            found.sort();
            for file in found {
                files.push(read_file(&file)?);
            }
        } else {
            files.push(read_file(path)?);
        }
    }
    Ok(files)
}

fn read_file(path: &Path) -> anyhow::Result<PolicyFile> {
    let content =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(PolicyFile {
        name: path.display().to_string(),
        content,
    })
}
