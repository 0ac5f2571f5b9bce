//! Reading a directory of policy files (`policy.directory`, and the saved
//! policies of the store): below the engine and the store, which both read
//! directories this way.

use std::path::Path;

use anyhow::Context as _;
use palisade_api::PolicyFile;
use palisade_policy::is_policy_file;

/// Reads the policy files (`*.toml`, `*.yaml`, `*.yml`) of `directory` in
/// name order; a missing directory holds no policies.
///
/// # Errors
///
/// When the directory or a file in it cannot be read.
pub fn read_policy_directory(directory: &Path) -> anyhow::Result<Vec<PolicyFile>> {
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", directory.display()));
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", directory.display()))?
            .path();
        if is_policy_file(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let content = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(PolicyFile {
                name: path.display().to_string(),
                content,
            })
        })
        .collect()
}
