//! Rebuilds the eBPF programs when bpf-linker changes.

use which::which;

/// Rebuild when bpf-linker changes: it links the programs.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
