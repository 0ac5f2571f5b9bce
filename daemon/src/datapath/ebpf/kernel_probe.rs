//! What the running kernel offers the eBPF programs, probed before they
//! load, so an unsupported kernel is refused with one line naming what it
//! lacks instead of a verifier log.

use std::fmt;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_btf_supported, is_helper_supported, is_map_supported},
    util::KernelVersion,
};
use serde::Serialize;

/// The oldest kernel palisade is tested on (Debian 12's).
pub const MINIMUM_KERNEL: &str = "6.1";

/// One probed feature.
#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    /// What it is.
    pub name: &'static str,
    /// The mainline release that brought it.
    pub since: &'static str,
    /// Whether the programs cannot run without it.
    pub required: bool,
    /// `Some(present)`, or `None` when the probe itself failed (no
    /// permission): then loading says what is wrong.
    pub present: Option<bool>,
}

/// The probed kernel.
#[derive(Debug, Clone, Serialize)]
pub struct KernelSupport {
    /// `uname -r`.
    pub release: String,
    /// Each feature the programs use.
    pub features: Vec<Feature>,
}

/// A kernel that lacks what the programs need.
#[derive(Debug, thiserror::Error)]
#[error(
    "this kernel (Linux {release}) lacks {missing}; palisade needs Linux {MINIMUM_KERNEL} or later (`palisaded --check-kernel` lists what it probes)"
)]
pub struct UnsupportedKernel {
    release: String,
    missing: String,
}

impl KernelSupport {
    /// Probes the running kernel (needs `CAP_BPF`; without it the features
    /// are unknown, not missing).
    pub fn probe() -> Self {
        let helper =
            |helper: BpfHelper| is_helper_supported(ProgramType::SchedClassifier, helper).ok();
        let map = |map_type: MapType| is_map_supported(map_type).ok();
        let tcx = KernelVersion::current()
            .ok()
            .map(|version| version >= KernelVersion::new(6, 6, 0));
        Self {
            release: nix::sys::utsname::uname()
                .map(|name| name.release().to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
            features: vec![
                Feature {
                    name: "BTF",
                    since: "4.18",
                    required: true,
                    present: is_btf_supported().ok(),
                },
                Feature {
                    name: "LRU hash maps",
                    since: "4.10",
                    required: true,
                    present: map(MapType::LruHash),
                },
                Feature {
                    name: "the BPF ring buffer",
                    since: "5.8",
                    required: true,
                    present: map(MapType::RingBuf),
                },
                Feature {
                    name: "the BPF helper bpf_ktime_get_coarse_ns",
                    since: "5.11",
                    required: true,
                    present: helper(BpfHelper::BPF_FUNC_ktime_get_coarse_ns),
                },
                Feature {
                    name: "the BPF helper bpf_loop",
                    since: "5.17",
                    required: true,
                    present: helper(BpfHelper::BPF_FUNC_loop),
                },
                Feature {
                    name: "TCX links (else clsact cls_bpf filters)",
                    since: "6.6",
                    required: false,
                    present: tcx,
                },
            ],
        }
    }

    /// Whether every required feature could be probed (probing needs
    /// `CAP_BPF`).
    pub fn fully_probed(&self) -> bool {
        self.features
            .iter()
            .all(|feature| !feature.required || feature.present.is_some())
    }

    /// Whether the programs can run here.
    ///
    /// # Errors
    ///
    /// When a required feature is known to be missing: one line naming each
    /// and the minimum kernel.
    pub fn check(&self) -> Result<(), UnsupportedKernel> {
        let missing: Vec<String> = self
            .features
            .iter()
            .filter(|feature| feature.required && feature.present == Some(false))
            .map(|feature| format!("{} (Linux {})", feature.name, feature.since))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(UnsupportedKernel {
            release: self.release.clone(),
            missing: missing.join(", "),
        })
    }
}

impl fmt::Display for KernelSupport {
    /// The report of `palisaded --check-kernel`: a line per feature.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel {}", self.release)?;
        for feature in &self.features {
            let state = match feature.present {
                Some(true) => "yes",
                Some(false) if feature.required => "MISSING",
                Some(false) => "no",
                None => "unknown (no permission to probe)",
            };
            writeln!(
                f,
                "  {:<44} {:<8} since Linux {}{}",
                feature.name,
                state,
                feature.since,
                if feature.required { "" } else { ", optional" }
            )?;
        }
        match self.check() {
            Ok(()) if self.fully_probed() => write!(f, "palisade can run on this kernel"),
            Ok(()) => write!(f, "cannot tell without CAP_BPF: run it as root"),
            Err(error) => write!(f, "{error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(without: &[&str]) -> KernelSupport {
        let mut support = KernelSupport {
            release: "5.15.0-91-generic".to_owned(),
            features: KernelSupport::probe().features,
        };
        for feature in &mut support.features {
            feature.present = Some(!without.iter().any(|name| feature.name.contains(name)));
        }
        support
    }

    #[test]
    fn a_kernel_without_bpf_loop_is_refused_in_one_line_naming_it_and_the_minimum() {
        let error = kernel(&["bpf_loop"]).check().expect_err("refused");
        let message = error.to_string();
        assert_eq!(
            message,
            "this kernel (Linux 5.15.0-91-generic) lacks the BPF helper bpf_loop (Linux 5.17); palisade needs Linux 6.1 or later (`palisaded --check-kernel` lists what it probes)"
        );
        assert!(!message.contains('\n'));
    }

    #[test]
    fn every_missing_requirement_is_named_and_optional_ones_are_not() {
        let message = kernel(&["ring buffer", "BTF", "TCX"])
            .check()
            .expect_err("refused")
            .to_string();
        assert!(
            message.contains("lacks BTF (Linux 4.18), the BPF ring buffer (Linux 5.8);"),
            "{message}"
        );
        assert!(!message.contains("TCX"), "{message}");
        assert!(kernel(&["TCX"]).check().is_ok());
    }

    #[test]
    fn an_unknown_feature_does_not_refuse_the_kernel() {
        let mut support = kernel(&[]);
        for feature in &mut support.features {
            feature.present = None;
        }
        assert!(support.check().is_ok());
        assert!(
            support
                .to_string()
                .contains("unknown (no permission to probe)")
        );
    }
}
