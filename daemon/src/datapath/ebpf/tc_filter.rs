//! The TC programs as clsact + cls_bpf filters (direct-action mode), for
//! kernels without TCX links (before 6.6) or `datapath.attach = "tc"`.
//!
//! A filter is not tied to a process: it stays in the kernel when palisaded
//! exits, so enforcement outlives a crash as pinned TCX links do. palisade's
//! filter has one fixed place on each hook — preference [`PRIORITY`] (ahead
//! of other filters), handle [`HANDLE`] — so a restarted palisaded swaps its
//! program into the running filter with one netlink replace (no window) and
//! can find it to delete it. Deleting is explicit ([`detach`]): dropping
//! aya's handle would delete the filter, so the handle is forgotten instead.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya::programs::{
    SchedClassifier, TcAttachType,
    tc::{self, NlOptions, SchedClassifierLink, TcAttach, TcError, TcHandle},
};
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcHandle as NlTcHandle, TcMessage},
};

/// The filter preference palisade's filters take: 1, the first to run.
pub const PRIORITY: u16 = 1;
/// The handle of palisade's filters ("PALI" in ASCII), distinct from what
/// `tc filter add ... bpf` picks by default.
pub const HANDLE: TcHandle = TcHandle::new(0x5041, 0x4c49);

/// The clsact parent of a direction.
fn parent(attach_type: TcAttachType) -> TcHandle {
    TcHandle::from(attach_type)
}

/// Puts `program` into palisade's filter on `ifindex`'s hook: replaces the
/// program of a filter already there (returns `true`: adopted), else adds
/// the clsact qdisc when missing and creates the filter.
///
/// # Errors
///
/// When the kernel refuses the qdisc or the filter (another filter at
/// palisade's preference and handle, no cls_bpf).
pub fn attach(
    program: &mut SchedClassifier,
    ifindex: u32,
    attach_type: TcAttachType,
) -> anyhow::Result<bool> {
    let parent = parent(attach_type);
    let existing = SchedClassifierLink::attached(ifindex, parent, PRIORITY, HANDLE, None)
        .context("naming palisade's filter")?;
    let (id, adopted) = match program.attach_to_link(existing) {
        Ok(id) => (id, true),
        Err(_) => {
            match tc::qdisc_add_clsact(ifindex) {
                Ok(()) => {}
                Err(TcError::NetlinkError(error)) if error.raw_os_error() == Some(libc::EEXIST) => {
                }
                Err(error) => return Err(error).context("adding the clsact qdisc"),
            }
            let id = program
                .attach(
                    ifindex,
                    TcAttach::Netlink {
                        parent,
                        options: NlOptions {
                            priority: PRIORITY,
                            handle: HANDLE,
                            classid: None,
                        },
                    },
                )
                .context("adding palisade's cls_bpf filter (pref 1, handle 0x50414c49)")?;
            (id, false)
        }
    };
    // The filter must outlive this handle (see the module comment).
    std::mem::forget(program.take_link(id)?);
    Ok(adopted)
}

/// Deletes palisade's filter from `ifindex`'s hook; a filter already gone
/// (or a qdisc or interface gone) is not an error.
///
/// # Errors
///
/// When the kernel refuses the deletion.
pub fn detach(ifindex: u32, attach_type: TcAttachType) -> anyhow::Result<()> {
    use aya::programs::links::Link as _;
    let link = SchedClassifierLink::attached(ifindex, parent(attach_type), PRIORITY, HANDLE, None)
        .context("naming palisade's filter")?;
    match present(ifindex, attach_type) {
        Ok(false) => return Ok(()),
        Ok(true) => {}
        Err(error) if error.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
        Err(error) => return Err(error).context("listing the TC filters"),
    }
    link.detach()
        .map_err(|error| anyhow!("deleting palisade's TC filter: {error}"))
}

/// Whether palisade's filter is on `ifindex`'s hook (an `RTM_GETTFILTER`
/// dump of the clsact parent).
///
/// # Errors
///
/// When the dump fails (`ENODEV`: no such interface).
pub fn present(ifindex: u32, attach_type: TcAttachType) -> io::Result<bool> {
    let index = i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
    let mut message = TcMessage::default();
    message.header.index = index;
    message.header.parent = NlTcHandle::from(u32::from(parent(attach_type)));
    let socket = crate::link::send(
        RouteNetlinkMessage::GetTrafficFilter(message),
        NLM_F_REQUEST | NLM_F_DUMP,
    )?;
    let want_handle = u32::from(HANDLE);
    let mut found = false;
    let mut reply = vec![0; 64 * 1024];
    loop {
        let length = socket.recv(&mut &mut reply[..], 0)?;
        let mut offset = 0;
        while offset < length {
            let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[offset..length])
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
            let size = usize::try_from(answer.header.length)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "netlink length"))?;
            match answer.payload {
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(error) if error.code.is_some() => return Err(error.to_io()),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(filter)) => {
                    found |= u32::from(filter.header.handle) == want_handle
                        && filter.header.info >> 16 == u32::from(PRIORITY);
                }
                _ => {}
            }
            if size == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "empty netlink message",
                ));
            }
            offset += size.next_multiple_of(4);
        }
    }
}

/// The network namespace palisaded runs in, as `(device, inode)` of
/// `/proc/self/ns/net`.
///
/// # Errors
///
/// When /proc cannot be read.
pub fn own_netns() -> io::Result<(u64, u64)> {
    let meta = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok((meta.dev(), meta.ino()))
}

/// Where a network namespace of identity `netns` can be entered from: the
/// own one (`None`), one bound under /run/netns, or one of a running
/// process. `Err` when none is found (the namespace is gone, and its
/// filters with it).
pub fn find_netns(netns: (u64, u64)) -> Result<Option<PathBuf>, ()> {
    if own_netns().ok() == Some(netns) {
        return Ok(None);
    }
    let same =
        |path: &Path| std::fs::metadata(path).is_ok_and(|meta| (meta.dev(), meta.ino()) == netns);
    let bound = std::fs::read_dir("/run/netns").into_iter().flatten();
    let processes = std::fs::read_dir("/proc").into_iter().flatten();
    bound
        .flatten()
        .map(|entry| entry.path())
        .chain(
            processes
                .flatten()
                .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
                .map(|entry| entry.path().join("ns/net")),
        )
        .find(|path| same(path))
        .map(Some)
        .ok_or(())
}

/// Runs `work` on a thread inside the network namespace at `netns` (`None`:
/// the own one).
///
/// # Errors
///
/// When the namespace cannot be entered, or `work` fails.
pub fn in_netns<T: Send>(
    netns: Option<&Path>,
    work: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let Some(path) = netns else {
        return work();
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).with_context(
                    || format!("entering the network namespace {}", path.display()),
                )?;
                work()
            })
            .join()
            .map_err(|_| anyhow!("a thread in another network namespace panicked"))?
    })
}
