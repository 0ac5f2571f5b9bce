//! Files replaced whole or not at all: written to a temporary file beside
//! them, fsynced, and renamed over them.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// Replaces `path` with `content`, atomically. A new file gets `mode`
/// (less the umask); the temporary is `path` with `.new` appended.
///
/// # Errors
///
/// When the temporary cannot be created, written, synced or renamed.
pub fn write_atomically(path: &Path, content: &str, mode: u32) -> anyhow::Result<()> {
    let temporary = temporary_path(path);
    // A temporary left by a crash would keep its mode: start afresh.
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(content.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".new");
    path.with_file_name(name)
}
