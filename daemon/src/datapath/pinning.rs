//! bpffs pinning: what lets enforcement outlive palisaded.
//!
//! Layout under the configured `datapath.pin_path`:
//! - `CT_TCP`, `CT_ANY`, `FRAGMENTS`: the connection state, pinned by aya
//!   (the maps are declared pinned) and reused by the next start;
//! - `links/tc-ingress:IFACE`, `links/tc-egress:IFACE`,
//!   `links/xdp-native:IFACE` or `links/xdp-generic:IFACE`: one bpf_link per
//!   attachment (bpffs refuses `.` in names, so a `.` of the interface name is
//!   written `:`, which interface names cannot contain). A pinned link stays attached when the process exits (even by
//!   kill -9); the next start swaps its own program into the same link with
//!   one `bpf_link_update`, so no packet meets an unprotected interface.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya::programs::{
    SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, LinkError, PinnedLink},
    tc::SchedClassifierLink,
    xdp::XdpLink,
};
use tracing::{info, warn};

use crate::config::XdpModeConfig;

/// `statfs` magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is conventionally mounted.
pub const BPF_FS_ROOT: &str = "/sys/fs/bpf";

/// Makes sure `pin_path` exists on a bpf filesystem, mounting bpffs at
/// `/sys/fs/bpf` when nothing is mounted there (as Cilium does).
///
/// # Errors
///
/// When the path is not on bpffs and cannot be put there.
pub fn prepare(pin_path: &Path) -> anyhow::Result<()> {
    if !is_bpffs(Path::new(BPF_FS_ROOT))? && pin_path.starts_with(BPF_FS_ROOT) {
        mount_bpffs(Path::new(BPF_FS_ROOT))?;
        info!(path = BPF_FS_ROOT, "mounted bpffs");
    }
    std::fs::create_dir_all(pin_path.join("links"))
        .with_context(|| format!("creating {}", pin_path.display()))?;
    if !is_bpffs(pin_path)? {
        return Err(anyhow!(
            "{} is not on a bpf filesystem; set `datapath.pin_path` to a directory under {BPF_FS_ROOT}",
            pin_path.display()
        ));
    }
    Ok(())
}

fn c_path(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("path {} contains a NUL byte", path.display()))
}

/// Whether `path` is on a bpf filesystem (a missing path is not).
///
/// # Errors
///
/// When `statfs` fails for another reason than a missing path.
pub fn is_bpffs(path: &Path) -> anyhow::Result<bool> {
    let c_path = c_path(path)?;
    // SAFETY: statfs writes into the zeroed struct; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &raw mut stat) } != 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::NotFound {
            return Ok(false);
        }
        return Err(error).with_context(|| format!("statfs {}", path.display()));
    }
    #[allow(
        clippy::useless_conversion,
        reason = "f_type is i64 on x86_64 but narrower on other architectures"
    )]
    let f_type = i64::from(stat.f_type);
    Ok(f_type == BPF_FS_MAGIC)
}

fn mount_bpffs(target: &Path) -> anyhow::Result<()> {
    let target = c_path(target)?;
    // SAFETY: all strings are NUL-terminated; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("mounting bpffs at /sys/fs/bpf");
    }
    Ok(())
}

/// The pinned links of one pin directory.
pub struct LinkPins {
    dir: PathBuf,
}

impl LinkPins {
    /// The links under `pin_path/links`.
    pub fn new(pin_path: &Path) -> Self {
        Self {
            dir: pin_path.join("links"),
        }
    }

    fn path(&self, interface: &str, kind: &str) -> PathBuf {
        self.dir
            .join(format!("{kind}:{}", interface.replace('.', ":")))
    }

    /// Puts `program` on `interface`'s TC hook: into the pinned link when
    /// there is one (atomic replacement), else through a new pinned link.
    /// Returns whether a running link was adopted.
    ///
    /// # Errors
    ///
    /// When the kernel refuses the attachment or the pin.
    pub fn attach_tc(
        &self,
        program: &mut SchedClassifier,
        interface: &str,
        ifindex: u32,
        attach_type: TcAttachType,
    ) -> anyhow::Result<bool> {
        let kind = match attach_type {
            TcAttachType::Egress => "tc-egress",
            _ => "tc-ingress",
        };
        let path = self.path(interface, kind);
        if let Some(link) = open_pinned(&path)? {
            match SchedClassifierLink::try_from(link).map(|link| program.attach_to_link(link)) {
                Ok(Ok(_)) => return Ok(true),
                Ok(Err(error)) => {
                    warn!(%error, path = %path.display(), "cannot adopt pinned link; attaching anew")
                }
                Err(error) => {
                    warn!(%error, path = %path.display(), "pinned link is not a TC link; attaching anew")
                }
            }
            remove_pin(&path)?;
        }
        let id = program.attach(ifindex, attach_type)?;
        let link = FdLink::try_from(program.take_link(id)?).map_err(|_| {
            anyhow!("TC on {interface} is not attached through a bpf_link (kernel < 6.6?)")
        })?;
        link.pin(&path)
            .with_context(|| format!("pinning {}", path.display()))?;
        Ok(false)
    }

    /// Puts `program` on `interface`'s XDP hook, adopting a pinned link whose
    /// mode fits `mode`. Returns the mode in force and whether a link was
    /// adopted.
    ///
    /// # Errors
    ///
    /// When no mode can be attached, or pinning fails.
    pub fn attach_xdp(
        &self,
        program: &mut Xdp,
        interface: &str,
        ifindex: u32,
        mode: XdpModeConfig,
    ) -> anyhow::Result<(&'static str, bool)> {
        for pinned_mode in ["native", "generic"] {
            let path = self.path(interface, &format!("xdp-{pinned_mode}"));
            let Some(link) = open_pinned(&path)? else {
                continue;
            };
            let fits = match mode {
                XdpModeConfig::Auto => true,
                XdpModeConfig::Native => pinned_mode == "native",
                XdpModeConfig::Generic => pinned_mode == "generic",
            };
            if fits {
                match XdpLink::try_from(link).map(|link| program.attach_to_link(link)) {
                    Ok(Ok(_)) => return Ok((pinned_mode, true)),
                    Ok(Err(error)) => {
                        warn!(%error, path = %path.display(), "cannot adopt pinned XDP link; attaching anew")
                    }
                    Err(error) => {
                        warn!(%error, path = %path.display(), "pinned link is not an XDP link; attaching anew")
                    }
                }
            }
            remove_pin(&path)?;
        }
        let (id, attached_mode) = match mode {
            XdpModeConfig::Native => (program.attach(ifindex, XdpMode::Driver)?, "native"),
            XdpModeConfig::Generic => (program.attach(ifindex, XdpMode::Skb)?, "generic"),
            XdpModeConfig::Auto => match program.attach(ifindex, XdpMode::Driver) {
                Ok(id) => (id, "native"),
                Err(error) => {
                    info!(interface, %error, "native XDP unavailable, using generic mode");
                    (program.attach(ifindex, XdpMode::Skb)?, "generic")
                }
            },
        };
        let link = FdLink::try_from(program.take_link(id)?)
            .map_err(|_| anyhow!("XDP on {interface} is not attached through a bpf_link"))?;
        let path = self.path(interface, &format!("xdp-{attached_mode}"));
        link.pin(&path)
            .with_context(|| format!("pinning {}", path.display()))?;
        Ok((attached_mode, false))
    }

    /// Detaches the pinned links of interfaces not in `keep`.
    ///
    /// # Errors
    ///
    /// When the directory cannot be read or a pin cannot be removed.
    pub fn remove_others(&self, keep: &[String]) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(&self.dir)
            .with_context(|| format!("reading {}", self.dir.display()))?
        {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let interface = name
                .as_deref()
                .and_then(|n| n.rsplit_once('.'))
                .map(|(i, _)| i);
            if interface.is_some_and(|i| !keep.iter().any(|k| k == i)) {
                info!(path = %path.display(), "detaching from an interface no longer configured");
                remove_pin(&path)?;
            }
        }
        Ok(())
    }
}

fn open_pinned(path: &Path) -> anyhow::Result<Option<FdLink>> {
    // BPF_OBJ_GET reports a missing pin as EPERM on some kernels: look first.
    if !path.exists() {
        return Ok(None);
    }
    match PinnedLink::from_pin(path) {
        Ok(link) => Ok(Some(FdLink::from(link))),
        Err(LinkError::SyscallError(error)) if error.io_error.kind() == io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(error) => Err(error).with_context(|| format!("opening {}", path.display())),
    }
}

fn remove_pin(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("removing {}", path.display())),
    }
}

/// Removes everything palisade pinned: detaches every program and drops the
/// connection state. Returns whether there was anything to remove.
///
/// # Errors
///
/// When a pin cannot be removed.
pub fn cleanup(pin_path: &Path) -> anyhow::Result<bool> {
    match std::fs::remove_dir_all(pin_path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error).with_context(|| format!("removing {}", pin_path.display())),
    }
}
