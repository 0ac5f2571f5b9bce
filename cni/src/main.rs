//! `palisade-cni`: run by a container runtime as a CNI plugin.

use std::{io::Write as _, process::ExitCode};

use rscni_types::version::PluginInfo;

fn main() -> ExitCode {
    // Run by hand (no CNI_COMMAND): say what this is, as the reference
    // plugins do, instead of an error for a runtime.
    if std::env::var_os("CNI_COMMAND").is_none_or(|command| command.is_empty()) {
        let versions: Vec<String> = PluginInfo::default()
            .supported_versions()
            .iter()
            .map(ToString::to_string)
            .collect();
        eprintln!(
            "palisade-cni {}: the CNI plugin of palisade, run by a container runtime (see palisade-cni(8))\n\
             CNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            versions.join(", ")
        );
        return ExitCode::SUCCESS;
    }
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
