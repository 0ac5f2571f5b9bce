//! Network namespaces: the pod's, opened from `CNI_NETNS`, and rtnetlink
//! handles bound to one.

use std::{fs::File, os::fd::AsFd as _};

use nix::sched::{CloneFlags, setns};
use rscni_types::error::Error;
use rtnetlink::Handle;

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    path: String,
    file: File,
}

impl Netns {
    /// Opens the namespace at `path`.
    ///
    /// # Errors
    ///
    /// Code 8 (invalid network namespace) when it cannot be opened.
    pub fn open(path: &str) -> Result<Self, Error> {
        let file = File::open(path)
            .map_err(|error| Error::InvalidNetNS(format!("opening {path}: {error}")))?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The namespace as a file, for `IFLA_NET_NS_FD`.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// An rtnetlink handle whose socket lives in this namespace (its
    /// connection runs on the current tokio runtime).
    ///
    /// # Errors
    ///
    /// Code 8 when this is not a network namespace, 5 when no socket can
    /// be opened.
    pub fn handle(&self) -> Result<Handle, Error> {
        let home = File::open("/proc/thread-self/ns/net").map_err(|error| {
            Error::IOFailure(format!("opening this thread's namespace: {error}"))
        })?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|error| {
            Error::InvalidNetNS(format!("{} is not a network namespace: {error}", self.path))
        })?;
        // The socket belongs to the namespace it was made in, wherever the
        // thread goes afterwards.
        let connection = rtnetlink::new_connection();
        let back = setns(home.as_fd(), CloneFlags::CLONE_NEWNET);
        if let Err(error) = back {
            // A plugin thread left in the pod's namespace would configure
            // the host's side there: nothing may continue.
            eprintln!("palisade-cni: cannot return to the host's network namespace: {error}");
            std::process::abort();
        }
        let (connection, handle, _) = connection
            .map_err(|error| Error::IOFailure(format!("opening a netlink socket: {error}")))?;
        tokio::spawn(connection);
        Ok(handle)
    }
}

/// An rtnetlink handle in the plugin's own (the host's) namespace.
///
/// # Errors
///
/// Code 5 when no socket can be opened.
pub fn host_handle() -> Result<Handle, Error> {
    let (connection, handle, _) = rtnetlink::new_connection()
        .map_err(|error| Error::IOFailure(format!("opening a netlink socket: {error}")))?;
    tokio::spawn(connection);
    Ok(handle)
}
