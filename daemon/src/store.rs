//! Policies applied through the control socket, saved under
//! `policy.state_directory/policies/` (one `NAME.toml` per policy) so a
//! restart restores them. Every write is atomic: write a
//! temporary file, fsync it, rename it over the old one, fsync the directory.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use palisade_api::PolicyFile;

use crate::atomic_file::write_atomically;

/// The saved policies.
#[derive(Debug, Clone)]
pub struct PolicyStore {
    directory: PathBuf,
}

impl PolicyStore {
    /// The store under `state_directory`.
    pub fn new(state_directory: &Path) -> Self {
        Self {
            directory: state_directory.join("policies"),
        }
    }

    /// Where the files are.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// The saved policies, by name (the file stem). None saved: empty.
    ///
    /// # Errors
    ///
    /// When the directory or a file in it cannot be read.
    pub fn load(&self) -> anyhow::Result<Vec<PolicyFile>> {
        crate::engine::read_policy_directory(&self.directory)
    }

    /// Makes the saved set exactly `policies` (name → text): writes each one
    /// that differs and removes the files of names no longer in it.
    ///
    /// # Errors
    ///
    /// When a file cannot be written, synced, renamed or removed; what was
    /// written before the failure stays (each file is whole, old or new).
    pub fn save(&self, policies: &BTreeMap<String, String>) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.directory)
            .with_context(|| format!("creating {}", self.directory.display()))?;
        for (name, content) in policies {
            let path = self.path(name)?;
            if std::fs::read_to_string(&path).is_ok_and(|old| old == *content) {
                continue;
            }
            write_atomically(&path, content, 0o666)?;
        }
        for entry in std::fs::read_dir(&self.directory)
            .with_context(|| format!("reading {}", self.directory.display()))?
        {
            let path = entry
                .with_context(|| format!("reading {}", self.directory.display()))?
                .path();
            let stem = path.file_stem().and_then(|stem| stem.to_str());
            let is_policy = path.extension().is_some_and(|ext| ext == "toml");
            if is_policy && !stem.is_some_and(|stem| policies.contains_key(stem)) {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        self.sync_directory()
    }

    /// The file of policy `name`; names that are not plain file names are refused.
    fn path(&self, name: &str) -> anyhow::Result<PathBuf> {
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        anyhow::ensure!(
            plain,
            "policy name {name:?} cannot be saved as a file name (use lower-case letters, digits, '-' and '.')"
        );
        Ok(self.directory.join(format!("{name}.toml")))
    }

    fn sync_directory(&self) -> anyhow::Result<()> {
        File::open(&self.directory)
            .and_then(|directory| directory.sync_all())
            .with_context(|| format!("syncing {}", self.directory.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("palisade-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        path
    }

    #[test]
    fn save_then_load_gives_the_same_set_and_removes_the_rest() {
        let root = scratch("roundtrip");
        let store = PolicyStore::new(&root);
        let mut set = BTreeMap::new();
        set.insert("a".to_owned(), "one".to_owned());
        set.insert("b".to_owned(), "two".to_owned());
        store.save(&set).unwrap();
        set.remove("a");
        set.insert("b".to_owned(), "three".to_owned());
        store.save(&set).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert!(loaded[0].name.ends_with("policies/b.toml"));
        assert_eq!(loaded[0].content, "three");
        let leftovers: Vec<_> = std::fs::read_dir(store.directory()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files stay behind");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn names_that_are_not_file_names_are_refused() {
        let root = scratch("names");
        let store = PolicyStore::new(&root);
        for name in ["../escape", "a/b", "", ".hidden"] {
            let set = BTreeMap::from([(name.to_owned(), String::new())]);
            assert!(store.save(&set).is_err(), "{name:?} must be refused");
        }
        let _ = std::fs::remove_dir_all(root);
    }
}
