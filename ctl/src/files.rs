//! Reading the policy files a command names: files, directories (their
//! `*.toml`, `*.yaml` and `*.yml` files in name order) and `-` for standard input.

use std::{io::Read as _, path::Path};

use anyhow::Context as _;
use palisade_api::PolicyFile;
use palisade_policy::{Policy, ValidateOptions};

use crate::{EXIT_REFUSED, Reported};

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

/// The policies in each file behind `paths` (file name, its policies), for
/// the offline commands. Every problem in every file is printed first.
///
/// # Errors
///
/// When a path cannot be read, or any file is invalid (exit 3).
pub fn parse(paths: &[impl AsRef<Path>]) -> anyhow::Result<Vec<(String, Vec<Policy>)>> {
    parse_with(paths, ValidateOptions::default())
}

/// [`parse`] with what validation accepts (`fqdn_audit`).
///
/// # Errors
///
/// As [`parse`].
pub fn parse_with(
    paths: &[impl AsRef<Path>],
    options: ValidateOptions,
) -> anyhow::Result<Vec<(String, Vec<Policy>)>> {
    let mut parsed = Vec::new();
    let mut invalid = false;
    for file in read(paths)? {
        match palisade_policy::policies_from_text_with(&file.name, &file.content, options) {
            Ok(policies) => parsed.push((file.name, policies)),
            Err(diagnostics) => {
                invalid = true;
                for diagnostic in &diagnostics.0 {
                    eprintln!("{diagnostic}");
                }
            }
        }
    }
    if invalid {
        return Err(Reported(EXIT_REFUSED).into());
    }
    Ok(parsed)
}

fn read_file(path: &Path) -> anyhow::Result<PolicyFile> {
    let content =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(PolicyFile {
        name: path.display().to_string(),
        content,
    })
}
