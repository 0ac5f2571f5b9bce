//! bpffs pinning: what lets enforcement outlive palisaded.
//!
//! Layout under the configured `datapath.pin_path`:
//! - `CT_TCP`, `CT_ANY`, `FRAGMENTS`: the connection state, pinned by aya
//!   (the maps are declared pinned) and reused by the next start;
//! - `links/tc-ingress:IFACE`, `links/tc-egress:IFACE`,
//!   `links/xdp-native:IFACE` or `links/xdp-generic:IFACE`: one bpf_link per
//!   attachment (bpffs refuses `.` in names, so a `.` of the interface name is
//!   written `:`, which interface names cannot contain). A pinned link stays
//!   attached when the process exits (even by kill -9); the next start swaps
//!   its own program into the same link with one `bpf_link_update`, so no
//!   packet meets an unprotected interface;
//! - `links/tcfilter-ingress:IFACE`, `links/tcfilter-egress:IFACE`: the
//!   program of a cls_bpf filter ([`tc_filter`], kernels without TCX),
//!   pinned as the record that the filter is palisade's; the filter itself
//!   stays in the kernel without a pin, and `tc-filters-netns-DEV-INO` names
//!   the network namespace it is in, for `--cleanup` from another one.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, LinkError, PinnedLink},
    tc::{SchedClassifierLink, TcAttach},
    xdp::XdpLink,
};
use tracing::{info, warn};

use super::tc_filter;
use crate::config::{TcAttachConfig, XdpModeConfig};

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

    /// Puts `program` on `interface`'s TC hook the way `mode` says, and
    /// takes palisade's attachment of the other kind off that hook once the
    /// new one is in place (both enforce the same table meanwhile). Returns
    /// the kind in force (`"tcx"` or `"tc"`) and the held link.
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
        mode: TcAttachConfig,
    ) -> anyhow::Result<(&'static str, HeldLink)> {
        let held = match mode {
            TcAttachConfig::Tcx => self.attach_tcx(program, interface, ifindex, attach_type)?,
            TcAttachConfig::Tc => self.attach_filter(program, interface, ifindex, attach_type)?,
            TcAttachConfig::Auto => {
                match self.attach_tcx(program, interface, ifindex, attach_type) {
                    Ok(held) => held,
                    Err(error) => {
                        info!(
                            interface,
                            error = format!("{error:#}"),
                            "no TCX link; attaching a clsact cls_bpf filter"
                        );
                        self.attach_filter(program, interface, ifindex, attach_type)?
                    }
                }
            }
        };
        if matches!(held.held, Held::Link) {
            self.detach_filter(interface, ifindex, attach_type)?;
            Ok(("tcx", held))
        } else {
            remove_pin(&self.path(interface, Self::tc_kinds(attach_type).0))?;
            Ok(("tc", held))
        }
    }

    /// The pin kinds of a TC direction: (TCX link, cls_bpf filter).
    fn tc_kinds(attach_type: TcAttachType) -> (&'static str, &'static str) {
        match attach_type {
            TcAttachType::Egress => ("tc-egress", "tcfilter-egress"),
            _ => ("tc-ingress", "tcfilter-ingress"),
        }
    }

    /// Puts `program` into the pinned TCX link when there is one (atomic
    /// replacement), else into a new pinned link.
    fn attach_tcx(
        &self,
        program: &mut SchedClassifier,
        interface: &str,
        ifindex: u32,
        attach_type: TcAttachType,
    ) -> anyhow::Result<HeldLink> {
        let path = self.path(interface, Self::tc_kinds(attach_type).0);
        if let Some(link) = open_pinned(&path)? {
            match SchedClassifierLink::try_from(link).map(|link| program.attach_to_link(link)) {
                Ok(Ok(id)) => {
                    let link = FdLink::try_from(program.take_link(id)?)
                        .map_err(|_| anyhow!("the adopted TC link on {interface} has no fd"))?;
                    return HeldLink::adopted(link, path);
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
        let id = program
            .attach(
                ifindex,
                TcAttach::Tcx {
                    attach_type,
                    order: LinkOrder::default(),
                },
            )
            .context("attaching a TCX link (Linux 6.6 or later; `datapath.attach = \"tc\"` uses a cls_bpf filter instead)")?;
        let link = FdLink::try_from(program.take_link(id)?)
            .map_err(|_| anyhow!("TC on {interface} is not attached through a bpf_link"))?;
        HeldLink::pinned(link, path)
    }

    /// Puts `program` into palisade's cls_bpf filter on the hook (replacing
    /// the program of one already there), and pins the program as the
    /// record that the filter is palisade's to delete.
    fn attach_filter(
        &self,
        program: &mut SchedClassifier,
        interface: &str,
        ifindex: u32,
        attach_type: TcAttachType,
    ) -> anyhow::Result<HeldLink> {
        if let Some(root) = self.dir.parent() {
            record_netns(root)?;
        }
        let adopted = tc_filter::attach(program, ifindex, attach_type)?;
        let pinnable = program
            .fd()
            .context("the TC program has no fd")?
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the TC program's fd")?;
        let path = self.path(interface, Self::tc_kinds(attach_type).1);
        remove_pin(&path)?;
        pin_fd(pinnable.as_fd(), &path)?;
        Ok(HeldLink {
            path,
            held: Held::Filter {
                ifindex,
                attach_type,
            },
            pinnable,
            adopted,
        })
    }

    /// Deletes palisade's cls_bpf filter from the hook if palisade put one
    /// there (its pin says so), and the pin.
    fn detach_filter(
        &self,
        interface: &str,
        ifindex: u32,
        attach_type: TcAttachType,
    ) -> anyhow::Result<()> {
        let path = self.path(interface, Self::tc_kinds(attach_type).1);
        if path.exists() {
            tc_filter::detach(ifindex, attach_type)?;
            remove_pin(&path)?;
        }
        Ok(())
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
                        return Ok((pinned_mode, HeldLink::adopted(link, path)?));
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
            let Some(interface) = interface.filter(|i| !keep.contains(i)) else {
                continue;
            };
            info!(path = %path.display(), "detaching from an interface no longer configured");
            if let Some(attach_type) = filter_direction(&path) {
                detach_filter_by_name(&interface, attach_type)?;
            }
            remove_pin(&path)?;
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
    held: Held,
    /// A reference to what is pinned (the link, or the filter's program),
    /// opened from the pin: it keeps a link attached while palisaded runs
    /// and pins it again when the pin is removed.
    pinnable: OwnedFd,
    /// Whether it was adopted from an earlier run's pin or filter.
    pub adopted: bool,
}

/// What a [`HeldLink`] holds.
#[derive(Debug)]
enum Held {
    /// A bpf_link (TCX, XDP), pinned at the path; the held fd keeps it
    /// attached while palisaded runs, pin or no pin.
    Link,
    /// A cls_bpf filter, which the kernel keeps by itself; its program is
    /// pinned at the path as the record that the filter is palisade's.
    Filter {
        ifindex: u32,
        attach_type: TcAttachType,
    },
}

impl HeldLink {
    /// Pins a new `link` at `path` and keeps it open.
    fn pinned(link: FdLink, path: PathBuf) -> anyhow::Result<Self> {
        link.pin(&path)
            .with_context(|| format!("pinning {}", path.display()))?;
        Ok(Self {
            held: Held::Link,
            pinnable: open_pin(&path)?,
            path,
            adopted: false,
        })
    }

    /// A link adopted from the pin at `path` (`link`, aya's handle, may go:
    /// the pin and the fd opened from it hold the link).
    fn adopted(link: FdLink, path: PathBuf) -> anyhow::Result<Self> {
        let pinnable = open_pin(&path)?;
        drop(link);
        Ok(Self {
            held: Held::Link,
            pinnable,
            path,
            adopted: true,
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
        if matches!(self.held, Held::Filter { .. })
            && let Some(root) = self.path.parent().and_then(Path::parent)
        {
            record_netns(root)?;
        }
        pin_fd(self.pinnable.as_fd(), &self.path)
    }

    /// Whether the attachment is still in the kernel: a cls_bpf filter can
    /// be deleted under palisaded (`tc filter del`, `tc qdisc del ... clsact`);
    /// a held bpf_link cannot. A failed check counts as present.
    pub fn is_attached(&self) -> bool {
        match &self.held {
            Held::Link => true,
            Held::Filter {
                ifindex,
                attach_type,
                ..
            } => tc_filter::present(*ifindex, *attach_type).unwrap_or(true),
        }
    }
}

/// `bpf(2)` commands used here directly: aya pins a link only by consuming
/// it (which would detach the link if the pin failed) and reopens objects
/// by id (`BPF_*_GET_FD_BY_ID`, which needs CAP_SYS_ADMIN, a capability the
/// packaged unit does not grant). A second fd from the pin (`BPF_OBJ_GET`:
/// only the file's permissions) pins again later.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;

/// Opens the BPF object pinned at `path` (a second reference to it).
///
/// # Errors
///
/// When there is no pin or it cannot be opened.
pub fn open_pin(path: &Path) -> anyhow::Result<OwnedFd> {
    let path_c = c_path(path)?;
    // union bpf_attr for BPF_OBJ_GET: the path pointer, then bpf_fd and
    // file_flags (zero).
    let mut attr = [0u64; 8];
    attr[0] = path_c.as_ptr() as u64;
    let size = std::mem::size_of_val(&attr);
    // SAFETY: attr holds a NUL-terminated path that outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), size) };
    if fd < 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("opening the pin {}", path.display()));
    }
    let fd = i32::try_from(fd).context("a BPF fd out of range")?;
    // SAFETY: the kernel just returned this fd to us; OwnedFd closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Pins the BPF object `fd` refers to at `path` (`BPF_OBJ_PIN`).
///
/// # Errors
///
/// When the pin fails.
pub fn pin_fd(fd: BorrowedFd<'_>, path: &Path) -> anyhow::Result<()> {
    let path_c = c_path(path)?;
    let mut attr = [0u64; 8];
    attr[0] = path_c.as_ptr() as u64;
    attr[1] = u64::from(u32::try_from(fd.as_raw_fd()).context("a BPF fd out of range")?);
    let size = std::mem::size_of_val(&attr);
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
    delete_filters(pin_path)?;
    match std::fs::remove_dir_all(pin_path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error).with_context(|| format!("removing {}", pin_path.display())),
    }
}

/// Deletes the cls_bpf filters the pins under `pin_path` record, in the
/// network namespace they were attached in (entered when it is another).
fn delete_filters(pin_path: &Path) -> anyhow::Result<()> {
    let links = pin_path.join("links");
    let filters: Vec<(String, TcAttachType)> = match std::fs::read_dir(&links) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                let interface = LinkPins::interface_of(&entry.file_name().to_string_lossy())?;
                Some((interface, filter_direction(&path)?))
            })
            .collect(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", links.display())),
    };
    if filters.is_empty() {
        return Ok(());
    }
    let Some(netns) = netns_markers(pin_path)?.into_iter().next() else {
        warn!(path = %pin_path.display(), "cls_bpf filters are pinned but their network namespace is not recorded; deleting them in this one");
        return delete_filters_here(&filters);
    };
    match tc_filter::find_netns(netns) {
        Ok(path) => tc_filter::in_netns(path.as_deref(), || delete_filters_here(&filters)),
        Err(()) => {
            info!(
                "the network namespace of palisade's cls_bpf filters is gone, and the filters with it"
            );
            Ok(())
        }
    }
}

fn delete_filters_here(filters: &[(String, TcAttachType)]) -> anyhow::Result<()> {
    for (interface, attach_type) in filters {
        detach_filter_by_name(interface, *attach_type)?;
    }
    Ok(())
}

/// Deletes palisade's cls_bpf filter from the hook of the interface named
/// `interface` in this network namespace; none there (or no such
/// interface) is not an error.
fn detach_filter_by_name(interface: &str, attach_type: TcAttachType) -> anyhow::Result<()> {
    let ifindex = nix::net::if_::if_nametoindex(interface).unwrap_or(0);
    if ifindex != 0 {
        tc_filter::detach(ifindex, attach_type).with_context(|| format!("on {interface}"))?;
    }
    Ok(())
}

/// The direction of a cls_bpf filter pin (`None`: not a filter pin).
fn filter_direction(path: &Path) -> Option<TcAttachType> {
    let name = path.file_name()?.to_string_lossy();
    let (kind, _) = name.split_once(':')?;
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .find(|&attach_type| LinkPins::tc_kinds(attach_type).1 == kind)
}

/// Writes down in the pin directory `root` which network namespace the
/// cls_bpf filters are in, so `palisaded --cleanup` can delete them from
/// another one.
fn record_netns(root: &Path) -> anyhow::Result<()> {
    let netns = tc_filter::own_netns().context("reading the network namespace")?;
    let marker = root.join(netns_marker_name(netns));
    if !marker.exists() {
        for stale in netns_markers(root)? {
            std::fs::remove_dir(root.join(netns_marker_name(stale)))
                .with_context(|| format!("removing a stale marker in {}", root.display()))?;
        }
        std::fs::create_dir(&marker).with_context(|| format!("creating {}", marker.display()))?;
    }
    Ok(())
}

/// The prefix of the directory naming the filters' network namespace.
const NETNS_MARKER: &str = "tc-filters-netns-";

fn netns_marker_name((dev, ino): (u64, u64)) -> String {
    format!("{NETNS_MARKER}{dev}-{ino}")
}

/// The network namespaces recorded under `root` (normally one).
fn netns_markers(root: &Path) -> anyhow::Result<Vec<(u64, u64)>> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", root.display())),
    };
    Ok(entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let (dev, ino) = name.strip_prefix(NETNS_MARKER)?.split_once('-')?;
            Some((dev.parse().ok()?, ino.parse().ok()?))
        })
        .collect())
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

    #[test]
    fn filter_pins_name_their_direction_and_link_pins_are_not_filters() {
        let pins = LinkPins::new(Path::new("/sys/fs/bpf/p"));
        let (_, ingress) = LinkPins::tc_kinds(TcAttachType::Ingress);
        let (tcx, egress) = LinkPins::tc_kinds(TcAttachType::Egress);
        assert!(matches!(
            filter_direction(&pins.path("eth0.7", ingress)),
            Some(TcAttachType::Ingress)
        ));
        assert!(matches!(
            filter_direction(&pins.path("eth0", egress)),
            Some(TcAttachType::Egress)
        ));
        assert!(filter_direction(&pins.path("eth0", tcx)).is_none());
        assert!(filter_direction(&pins.path("eth0", "xdp-native")).is_none());
    }

    #[test]
    fn the_recorded_network_namespace_reads_back_and_replaces_a_stale_one() {
        let root = std::env::temp_dir().join(format!("palisade-netns-{}", std::process::id()));
        std::fs::create_dir_all(root.join(netns_marker_name((1, 2)))).unwrap();
        record_netns(&root).unwrap();
        let own = tc_filter::own_netns().unwrap();
        assert_eq!(netns_markers(&root).unwrap(), vec![own]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
