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
        if in_host_mount_namespace() == Some(true) {
            info!(path = BPF_FS_ROOT, "mounted bpffs");
        } else {
            warn!(
                path = BPF_FS_ROOT,
                "mounted bpffs inside palisaded's own mount namespace (started by `ip netns exec`, unshare or a sandbox while the host has no bpffs at /sys/fs/bpf): the pins die with palisaded, so a crash or kill -9 detaches every program and the node is open until it starts again; mount bpffs in the host's mount namespace (`mount -t bpf bpf /sys/fs/bpf`, as systemd and Cilium do) for enforcement that survives a restart"
            );
        }
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

/// Whether palisaded runs in the mount namespace of pid 1 (`None`: cannot
/// tell, e.g. /proc/1 hidden).
fn in_host_mount_namespace() -> Option<bool> {
    let own = std::fs::read_link("/proc/self/ns/mnt").ok()?;
    let host = std::fs::read_link("/proc/1/ns/mnt").ok()?;
    Some(own == host)
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

    /// `links/KIND:INTERFACE`, the interface's dots written as colons
    /// (bpffs refuses dots; interface names cannot hold colons).
    fn path(&self, interface: &str, kind: &str) -> PathBuf {
        self.dir
            .join(format!("{kind}:{}", interface.replace('.', ":")))
    }

    /// The interface a pin of [`LinkPins::path`] is for.
    fn interface_of(pin_name: &str) -> Option<String> {
        pin_name
            .split_once(':')
            .map(|(_, interface)| interface.replace(':', "."))
    }

    /// Puts `program` on `interface`'s TC hook: into the pinned link when
    /// there is one (atomic replacement), else through a new pinned link.
    /// Returns the link (the caller holds it, so removing the pin does not
    /// detach it) and whether a running link was adopted.
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
    ) -> anyhow::Result<HeldLink> {
        let kind = match attach_type {
            TcAttachType::Egress => "tc-egress",
            _ => "tc-ingress",
        };
        let path = self.path(interface, kind);
        if let Some(link) = open_pinned(&path)? {
            match SchedClassifierLink::try_from(link).map(|link| program.attach_to_link(link)) {
                Ok(Ok(id)) => {
                    let link = FdLink::try_from(program.take_link(id)?)
                        .map_err(|_| anyhow!("the adopted TC link on {interface} has no fd"))?;
                    return Ok(HeldLink {
                        path,
                        link,
                        adopted: true,
                    });
                }
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
        HeldLink::pinned(link, path)
    }

    /// Puts `program` on `interface`'s XDP hook, adopting a pinned link whose
    /// mode fits `mode`. Returns the mode in force and the link (held by the
    /// caller).
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
    ) -> anyhow::Result<(&'static str, HeldLink)> {
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
                    Ok(Ok(id)) => {
                        let link = FdLink::try_from(program.take_link(id)?).map_err(|_| {
                            anyhow!("the adopted XDP link on {interface} has no fd")
                        })?;
                        return Ok((
                            pinned_mode,
                            HeldLink {
                                path,
                                link,
                                adopted: true,
                            },
                        ));
                    }
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
        Ok((attached_mode, HeldLink::pinned(link, path)?))
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
            let interface = path
                .file_name()
                .and_then(|name| Self::interface_of(&name.to_string_lossy()));
            if interface.is_some_and(|i| !keep.contains(&i)) {
                info!(path = %path.display(), "detaching from an interface no longer configured");
                remove_pin(&path)?;
            }
        }
        Ok(())
    }
}

/// A link palisaded holds open beside its pin: removing the pin (`rm -rf`
/// of the pin path, a second `palisaded --cleanup`) does not detach it
/// while palisaded runs, and [`HeldLink::repin`] puts the pin back.
#[derive(Debug)]
pub struct HeldLink {
    path: PathBuf,
    link: FdLink,
    /// Whether it was adopted from an earlier run's pin.
    pub adopted: bool,
}

impl HeldLink {
    /// Pins a new `link` at `path` and keeps it open.
    fn pinned(link: FdLink, path: PathBuf) -> anyhow::Result<Self> {
        let pinned = link
            .pin(&path)
            .with_context(|| format!("pinning {}", path.display()))?;
        Ok(Self {
            link: FdLink::from(pinned),
            path,
            adopted: false,
        })
    }

    /// Whether its pin is still there.
    pub fn is_pinned(&self) -> bool {
        self.path.exists()
    }

    /// Pins the held link again where its pin was.
    ///
    /// # Errors
    ///
    /// When the directory cannot be made or the pin fails.
    pub fn repin(&self) -> anyhow::Result<()> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let id = self.link.info().context("reading a held link's id")?.id();
        pin_object_by_id(ObjectKind::Link, id, &self.path)
    }
}

/// What kind of BPF object an id names.
#[derive(Debug, Clone, Copy)]
pub enum ObjectKind {
    /// A map.
    Map,
    /// A link.
    Link,
}

/// Pins the map or link `id` at `path` (`BPF_*_GET_FD_BY_ID`, then
/// `BPF_OBJ_PIN`). aya pins a link only by consuming it, which would
/// detach the link if the pin failed, and a typed map only by value; the
/// objects palisaded holds are pinned again through a second fd instead.
///
/// # Errors
///
/// When the object is gone or the pin fails.
pub fn pin_object_by_id(kind: ObjectKind, id: u32, path: &Path) -> anyhow::Result<()> {
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    let command = match kind {
        ObjectKind::Map => BPF_MAP_GET_FD_BY_ID,
        ObjectKind::Link => BPF_LINK_GET_FD_BY_ID,
    };
    // union bpf_attr, zero beyond the fields a command reads: for the
    // GET_FD_BY_ID commands the id first; for BPF_OBJ_PIN the path pointer,
    // then the fd.
    let mut attr = [0u64; 8];
    attr[0] = u64::from(id);
    let size = std::mem::size_of_val(&attr);
    // SAFETY: attr is a valid, zeroed bpf_attr of `size` bytes.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), size) };
    if fd < 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("opening BPF object {id} to pin it at {}", path.display()));
    }
    let fd = i32::try_from(fd).context("a BPF fd out of range")?;
    // SAFETY: the kernel just returned this fd to us; OwnedFd closes it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let path_c = c_path(path)?;
    let mut attr = [0u64; 8];
    attr[0] = path_c.as_ptr() as u64;
    attr[1] = u64::from(
        u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&fd)).context("a BPF fd out of range")?,
    );
    // SAFETY: attr holds a NUL-terminated path that outlives the call and
    // an open fd.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_mut_ptr(), size) };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("pinning {}", path.display()));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_pin_names_its_interface_back() {
        let pins = LinkPins::new(Path::new("/sys/fs/bpf/p"));
        for interface in ["eth0", "eth0.100", "br-lan.2.3"] {
            let path = pins.path(interface, "tc-ingress");
            let name = path.file_name().unwrap().to_string_lossy();
            assert!(!name.contains('.'), "{name}");
            assert_eq!(LinkPins::interface_of(&name).as_deref(), Some(interface));
        }
    }
}
