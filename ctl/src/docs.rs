//! Shell completions (`palisadectl completion SHELL`) and man pages
//! (`palisadectl man --dir DIR`, which `cargo xtask package` runs), both
//! generated from the command definitions.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use clap_complete::Shell;

/// `palisadectl completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: Shell,
}

/// `palisadectl man`.
#[derive(Debug, Args)]
pub struct DocsArgs {
    /// Directory to write palisadectl.1 and one page per subcommand into.
    #[arg(long)]
    dir: PathBuf,
}

/// Prints the completion script for a shell.
///
/// # Errors
///
/// Never in practice; the signature matches the other commands.
pub fn completion(args: &CompletionArgs) -> anyhow::Result<()> {
    let mut command = crate::command();
    clap_complete::generate(
        args.shell,
        &mut command,
        "palisadectl",
        &mut std::io::stdout(),
    );
    Ok(())
}

/// Writes the man pages.
///
/// # Errors
///
/// When the directory cannot be created or a page cannot be written.
pub fn man(args: &DocsArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    clap_mangen::generate_to(crate::command(), &args.dir)
        .with_context(|| format!("writing man pages into {}", args.dir.display()))
}
