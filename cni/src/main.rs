//! `palisade-cni`: run by a container runtime as a CNI plugin.

use std::{io::Write as _, process::ExitCode};

fn main() -> ExitCode {
    let output = palisade_cni::run(|name| std::env::var(name).ok(), std::io::stdin().lock());
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(output.stdout.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    if output.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
