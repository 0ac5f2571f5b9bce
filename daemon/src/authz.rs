//! Who may use the control socket: the peer's credentials (`SO_PEERCRED`,
//! `SO_PEERGROUPS`, taken by the kernel at connect time) against the
//! configured groups. Reads need root or the read group; changes need root
//! or the admin group.

use std::os::fd::{AsRawFd as _, RawFd};

use crate::config::ControlConfig;

/// The process at the other end of a control connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its effective uid at connect time; `None` when the kernel would not say.
    pub uid: Option<u32>,
    /// Its pid, for the log.
    pub pid: Option<i32>,
    /// Its effective gid and supplementary groups at connect time.
    pub groups: Vec<u32>,
}

impl Peer {
    /// The peer at the other end of `io`, from its credentials.
    pub fn of(io: &tokio::net::UnixStream) -> Self {
        let (uid, pid, mut groups) = match io.peer_cred() {
            Ok(credentials) => (
                Some(credentials.uid()),
                credentials.pid(),
                vec![credentials.gid()],
            ),
            Err(_) => (None, None, Vec::new()),
        };
        groups.extend(peer_groups(io.as_raw_fd()).unwrap_or_default());
        Self { uid, pid, groups }
    }
}

/// The supplementary groups of the peer of `fd` (`SO_PEERGROUPS`, Linux 4.13).
fn peer_groups(fd: RawFd) -> std::io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut length = libc::socklen_t::try_from(groups.len() * size_of::<libc::gid_t>())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: the buffer holds `length` bytes and outlives the call; the
        // kernel writes at most `length` bytes and updates `length`.
        let result = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut length,
            )
        };
        let count = usize::try_from(length).unwrap_or(0) / size_of::<libc::gid_t>();
        if result == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(error);
    }
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Look: status, policies, flows, conntrack, diffs.
    Read,
    /// Change the rules or the connection state.
    Change,
}

/// The configured groups, resolved to ids once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorizer {
    read_group: Option<(String, u32)>,
    admin_group: Option<(String, u32)>,
    missing: Vec<String>,
}

impl Authorizer {
    /// Resolves `[control] group` and `admin_group`; a group that does not
    /// exist grants nothing (and is listed by [`Authorizer::missing_groups`]).
    pub fn new(config: &ControlConfig) -> Self {
        let mut missing = Vec::new();
        let mut resolve = |name: &str| {
            if name.is_empty() {
                return None;
            }
            let found = nix::unistd::Group::from_name(name).ok().flatten();
            if found.is_none() {
                missing.push(name.to_owned());
            }
            found.map(|group| (name.to_owned(), group.gid.as_raw()))
        };
        let read_group = resolve(&config.group);
        let admin_group = resolve(&config.admin_group);
        Self {
            read_group,
            admin_group,
            missing,
        }
    }

    /// Configured group names that do not exist on this system.
    pub fn missing_groups(&self) -> &[String] {
        &self.missing
    }

    /// The gid the socket is owned by, if the read group exists.
    pub fn socket_group(&self) -> Option<u32> {
        self.read_group.as_ref().map(|(_, gid)| *gid)
    }

    /// `Ok` when `peer` may do `access`; otherwise why not, for the reply.
    ///
    /// # Errors
    ///
    /// A sentence naming the uid and what it would need.
    pub fn check(&self, peer: &Peer, access: Access) -> Result<(), String> {
        if peer.uid == Some(0) {
            return Ok(());
        }
        let member = |group: &Option<(String, u32)>| {
            group
                .as_ref()
                .is_some_and(|(_, gid)| peer.groups.contains(gid))
        };
        let admin = member(&self.admin_group);
        let allowed = match access {
            Access::Read => admin || member(&self.read_group),
            Access::Change => admin,
        };
        if allowed {
            return Ok(());
        }
        let who = peer.uid.map_or_else(
            || "a peer of unknown uid".to_owned(),
            |uid| format!("uid {uid}"),
        );
        let name = |group: &Option<(String, u32)>| group.as_ref().map(|(name, _)| name.clone());
        let needs = match access {
            Access::Read => [name(&self.read_group), name(&self.admin_group)],
            Access::Change => [name(&self.admin_group), None],
        };
        let groups: Vec<String> = needs
            .into_iter()
            .flatten()
            .map(|group| format!("membership of group {group}"))
            .collect();
        let what = match access {
            Access::Read => "read palisade's state",
            Access::Change => "change palisade's rules",
        };
        let mut ways = vec!["root".to_owned()];
        ways.extend(groups);
        Err(format!(
            "{who} may not {what}: it needs {}",
            ways.join(" or ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorizer() -> Authorizer {
        Authorizer {
            read_group: Some(("palisade".into(), 900)),
            admin_group: Some(("palisade-admin".into(), 901)),
            missing: Vec::new(),
        }
    }

    fn peer(uid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid: Some(uid),
            pid: Some(1),
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_may_do_anything() {
        assert!(authorizer().check(&peer(0, &[0]), Access::Change).is_ok());
    }

    #[test]
    fn the_read_group_reads_but_does_not_change() {
        let member = peer(1000, &[1000, 900]);
        assert!(authorizer().check(&member, Access::Read).is_ok());
        let refused = authorizer().check(&member, Access::Change).unwrap_err();
        assert_eq!(
            refused,
            "uid 1000 may not change palisade's rules: it needs root or membership of group palisade-admin"
        );
    }

    #[test]
    fn the_admin_group_changes() {
        assert!(
            authorizer()
                .check(&peer(1000, &[901]), Access::Change)
                .is_ok()
        );
    }

    #[test]
    fn strangers_and_unknown_peers_are_refused() {
        let refused = authorizer()
            .check(&peer(65534, &[65534]), Access::Read)
            .unwrap_err();
        assert!(refused.starts_with("uid 65534 may not read"), "{refused}");
        let unknown = Peer {
            uid: None,
            pid: None,
            groups: vec![900],
        };
        assert!(authorizer().check(&unknown, Access::Read).is_ok());
        assert!(authorizer().check(&unknown, Access::Change).is_err());
    }

    #[test]
    fn without_groups_only_root_passes() {
        let none = Authorizer {
            read_group: None,
            admin_group: None,
            missing: Vec::new(),
        };
        assert!(none.check(&peer(1000, &[1000]), Access::Read).is_err());
        assert!(none.check(&peer(0, &[]), Access::Read).is_ok());
    }
}
