//! The kernel's XFRM tables over netlink (what `ip xfrm state|policy`
//! does), synchronously, for palisade's own states and policies: those
//! whose request id is [`REQID`]. Anyone else's are never touched.

use std::{io, net::IpAddr};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_xfrm::{
    Address, AlgAead, UserSaId, UserTemplate, XfrmAttrs, XfrmMessage,
    constants::{
        AF_INET, AF_INET6, IPPROTO_ESP, XFRM_MODE_TRANSPORT, XFRM_MODE_TUNNEL, XFRM_POLICY_ALLOW,
        XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT,
    },
    policy::{DelGetMessage as PolicyDelGet, ModifyMessage as PolicyModify},
    state::{DelGetMessage as StateDelGet, GetDumpMessage, ModifyMessage as StateModify},
};
use netlink_sys::{Socket, SocketAddr, constants::NETLINK_XFRM};

use super::ipsec_plan::{IpsecMode, PolicySpec, REQID, SaSpec, XfrmDirection, wire_key_spi};

/// ESP's replay window, in packets (Cilium uses 1024 with ESN; palisade
/// keeps the classic window of the `xfrm_usersa_info` header).
const REPLAY_WINDOW: u8 = 32;

/// A state of palisade's in the kernel, as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldState {
    /// Its source address.
    pub source: IpAddr,
    /// Its destination address.
    pub destination: IpAddr,
    /// Its SPI.
    pub spi: u32,
    /// Bytes it has carried.
    pub bytes: u64,
    /// Packets it has carried.
    pub packets: u64,
    /// When it was added, in seconds since the epoch.
    pub added: u64,
}

impl HeldState {
    /// The key (the SPI of the key file) it was made from.
    pub fn key_spi(&self) -> u8 {
        wire_key_spi(self.spi)
    }
}

/// A policy of palisade's in the kernel, as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldPolicy {
    /// Selector: source prefix.
    pub source: IpNet,
    /// Selector: destination prefix.
    pub destination: IpNet,
    /// Its direction.
    pub direction: XfrmDirection,
}

fn mode_code(mode: IpsecMode) -> u8 {
    match mode {
        IpsecMode::Tunnel => XFRM_MODE_TUNNEL,
        IpsecMode::Transport => XFRM_MODE_TRANSPORT,
    }
}

fn direction_code(direction: XfrmDirection) -> u8 {
    match direction {
        XfrmDirection::Out => XFRM_POLICY_OUT,
        XfrmDirection::In => XFRM_POLICY_IN,
        XfrmDirection::Fwd => XFRM_POLICY_FWD,
    }
}

fn family_code(address: IpAddr) -> u16 {
    match address {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

fn address(address: &Address, family: u16) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(address.to_ipv4())
    } else {
        IpAddr::V6(address.to_ipv6())
    }
}

/// Puts security association `sa` in the kernel (replacing one of the same
/// destination and SPI).
///
/// # Errors
///
/// When the kernel refuses it (for one, without ESP support).
pub fn install_state(sa: &SaSpec) -> io::Result<()> {
    let mut message = StateModify::default();
    message.user_sa_info.source(&sa.source);
    message.user_sa_info.destination(&sa.destination);
    message.user_sa_info.id.proto = IPPROTO_ESP;
    message.user_sa_info.id.spi = sa.spi;
    message.user_sa_info.mode = mode_code(sa.mode);
    message.user_sa_info.reqid = REQID;
    message.user_sa_info.replay_window = REPLAY_WINDOW;
    if sa.direction == XfrmDirection::In {
        // Packets it decrypts carry palisade's mark when they come back
        // through the interface (tunnel mode): strict mode lets them pass.
        message
            .nlas
            .push(XfrmAttrs::MarkVal(palisade_common::IPSEC_DECRYPTED_MARK));
        message.nlas.push(XfrmAttrs::MarkMask(
            palisade_common::IPSEC_DECRYPTED_MARK_MASK,
        ));
    }
    let mut name = [0u8; 64];
    let algorithm = sa.aead.name().as_bytes();
    name[..algorithm.len()].copy_from_slice(algorithm);
    message.nlas.push(XfrmAttrs::EncryptionAlgAead(AlgAead {
        alg_name: name,
        alg_key_len: u32::try_from(sa.key.as_bytes().len() * 8).unwrap_or(u32::MAX),
        alg_icv_len: u32::from(sa.icv_bits),
        alg_key: sa.key.as_bytes().to_vec(),
    }));
    match request(
        XfrmMessage::AddSa(message.clone()),
        NLM_F_REQUEST | NLM_F_ACK,
    ) {
        Err(error) if error.raw_os_error() == Some(libc::EEXIST) => {
            request(XfrmMessage::UpdateSa(message), NLM_F_REQUEST | NLM_F_ACK).map(drop)
        }
        result => result.map(drop),
    }
}

/// Puts `policy` in the kernel (replacing one of the same selector and
/// direction).
///
/// # Errors
///
/// When the kernel refuses it.
pub fn install_policy(policy: &PolicySpec) -> io::Result<()> {
    let mut message = PolicyModify::default();
    let selector = &mut message.user_policy_info.selector;
    selector.source_prefix(&policy.source.addr(), policy.source.prefix_len());
    selector.destination_prefix(&policy.destination.addr(), policy.destination.prefix_len());
    message.user_policy_info.direction = direction_code(policy.direction);
    message.user_policy_info.action = XFRM_POLICY_ALLOW;
    let mut template = UserTemplate::default();
    template.id.proto = IPPROTO_ESP;
    template.id.spi = policy.spi.unwrap_or(0);
    template.reqid = REQID;
    template.mode = mode_code(policy.mode);
    template.family = family_code(policy.tunnel_destination);
    if policy.mode == IpsecMode::Tunnel {
        template.id.daddr = Address::from_ip(&policy.tunnel_destination);
        template.saddr = Address::from_ip(&policy.tunnel_source);
    }
    message.nlas.push(XfrmAttrs::Template(vec![template]));
    request(
        XfrmMessage::UpdatePolicy(message),
        NLM_F_REQUEST | NLM_F_ACK,
    )
    .map(drop)
}

/// palisade's states in the kernel.
///
/// # Errors
///
/// When the dump fails.
pub fn held_states() -> io::Result<Vec<HeldState>> {
    let replies = request(
        XfrmMessage::GetDumpSa(GetDumpMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
    )?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            XfrmMessage::AddSa(state) if state.user_sa_info.reqid == REQID => {
                let info = &state.user_sa_info;
                Some(HeldState {
                    source: address(&info.saddr, info.family),
                    destination: address(&info.id.daddr, info.family),
                    spi: info.id.spi,
                    bytes: info.lifetime_cur.bytes,
                    packets: info.lifetime_cur.packets,
                    added: info.lifetime_cur.add_time,
                })
            }
            _ => None,
        })
        .collect())
}

/// palisade's policies in the kernel: those whose template carries its
/// request id.
///
/// # Errors
///
/// When the dump fails.
pub fn held_policies() -> io::Result<Vec<HeldPolicy>> {
    let replies = request(
        XfrmMessage::GetPolicy(PolicyDelGet::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
    )?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| {
            let XfrmMessage::AddPolicy(policy) = reply else {
                return None;
            };
            let ours = policy.nlas.iter().any(|attribute| {
                matches!(attribute, XfrmAttrs::Template(templates)
                    if templates.iter().any(|template| template.reqid == REQID))
            });
            let info = &policy.user_policy_info;
            let direction = match info.direction {
                XFRM_POLICY_OUT => XfrmDirection::Out,
                XFRM_POLICY_IN => XfrmDirection::In,
                XFRM_POLICY_FWD => XfrmDirection::Fwd,
                _ => return None,
            };
            let selector = &info.selector;
            let prefix = |address_of: &Address, length: u8| {
                IpNet::new(address(address_of, selector.family), length).ok()
            };
            ours.then_some(())?;
            Some(HeldPolicy {
                source: prefix(&selector.saddr, selector.prefixlen_s)?,
                destination: prefix(&selector.daddr, selector.prefixlen_d)?,
                direction,
            })
        })
        .collect())
}

/// Deletes one of palisade's states; one already gone is not an error.
///
/// # Errors
///
/// When the kernel refuses.
pub fn delete_state(state: &HeldState) -> io::Result<()> {
    let message = StateDelGet {
        user_sa_id: UserSaId {
            daddr: Address::from_ip(&state.destination),
            spi: state.spi,
            family: family_code(state.destination),
            proto: IPPROTO_ESP,
        },
        nlas: vec![XfrmAttrs::SrcAddr(Address::from_ip(&state.source))],
    };
    ignore_missing(request(
        XfrmMessage::DeleteSa(message),
        NLM_F_REQUEST | NLM_F_ACK,
    ))
}

/// Deletes one of palisade's policies; one already gone is not an error.
///
/// # Errors
///
/// When the kernel refuses.
pub fn delete_policy(policy: &HeldPolicy) -> io::Result<()> {
    let mut message = PolicyDelGet::default();
    let selector = &mut message.user_policy_id.selector;
    selector.source_prefix(&policy.source.addr(), policy.source.prefix_len());
    selector.destination_prefix(&policy.destination.addr(), policy.destination.prefix_len());
    message.user_policy_id.direction = direction_code(policy.direction);
    ignore_missing(request(
        XfrmMessage::DeletePolicy(message),
        NLM_F_REQUEST | NLM_F_ACK,
    ))
}

fn ignore_missing(result: io::Result<Vec<XfrmMessage>>) -> io::Result<()> {
    match result {
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        result => result.map(drop),
    }
}

/// Sends `message` with `flags` on a new XFRM netlink socket and reads the
/// replies up to the acknowledgement or the end of the dump.
fn request(message: XfrmMessage, flags: u16) -> io::Result<Vec<XfrmMessage>> {
    let mut request = NetlinkMessage::from(message);
    request.header.flags = flags;
    request.finalize();
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);
    let socket = Socket::new(NETLINK_XFRM)?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&buffer, 0)?;
    let mut replies = Vec::new();
    let mut received = vec![0; 64 * 1024];
    loop {
        let length = socket.recv(&mut &mut received[..], 0)?;
        let mut offset = 0;
        while offset < length {
            let reply = NetlinkMessage::<XfrmMessage>::deserialize(&received[offset..length])
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
            let size = reply.header.length as usize;
            if size == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "an XFRM netlink reply of length 0",
                ));
            }
            offset += size.next_multiple_of(4);
            match reply.payload {
                NetlinkPayload::Error(error) => {
                    return match error.code {
                        Some(_) => Err(error.to_io()),
                        None => Ok(replies),
                    };
                }
                NetlinkPayload::Done(_) => return Ok(replies),
                NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                _ => {}
            }
        }
    }
}

/// These need ESP in the kernel: this host's kernel has no ESP module, so
/// they run in the Debian 6.1 guest (`cargo xtask kernel-matrix
/// palisade-daemon`), and `cargo xtask test` skips them on the host by
/// their name's ending.
#[cfg(test)]
mod tests {
    use palisade_e2e::{
        Netns,
        ipsec_mesh::{FOREIGN_SPI, add_foreign_ike_objects},
        require_root,
    };

    use super::*;
    use crate::encryption::{
        ipsec_keys::parse_keys,
        ipsec_plan::{MeshNode, XfrmPlan, mesh_plan},
    };

    const KEYS: &str = "3+ rfc4106(gcm(aes)) 0x0102030405060708090a0b0c0d0e0f1011121314 128\n\
                        4+ rfc4106(gcm(aes)) 0x1112131415161718191a1b1c1d1e1f2021222324 128\n";

    fn node(name: &str, address: &str, pods: &str) -> MeshNode {
        MeshNode {
            name: name.to_owned(),
            address: address.parse().expect("an address"),
            pod_cidrs: vec![pods.parse().expect("a prefix")],
            newest_key: None,
        }
    }

    fn plan(local: &MeshNode, peer: &MeshNode, outbound: u8) -> XfrmPlan {
        let keys = parse_keys("keys", KEYS).expect("keys");
        let peer = MeshNode {
            newest_key: Some(outbound),
            ..peer.clone()
        };
        mesh_plan(local, &[peer], &keys, IpsecMode::Tunnel).expect("a plan")
    }

    /// Installs `plan` inside `netns`.
    fn install(netns: &Netns, plan: XfrmPlan) {
        netns
            .spawn(move || -> io::Result<()> {
                plan.states.iter().try_for_each(install_state)?;
                plan.policies.iter().try_for_each(install_policy)
            })
            .expect("namespace")
            .join()
            .expect("thread")
            .expect("the plan installs");
    }

    /// palisade's states and policies inside `netns`.
    fn held(netns: &Netns) -> (Vec<HeldState>, Vec<HeldPolicy>) {
        netns
            .spawn(|| {
                (
                    held_states().expect("states"),
                    held_policies().expect("policies"),
                )
            })
            .expect("namespace")
            .join()
            .expect("thread")
    }

    #[test]
    #[ignore = "privileged: needs root, namespaces and ESP: the 6.1 guest runs it"]
    fn palisade_s_states_and_policies_are_installed_found_and_removed_alone_in_a_kernel_with_esp() {
        require_root();
        let netns = Netns::new("xfrm").expect("namespace");
        add_foreign_ike_objects(
            &netns,
            ("10.0.0.9", "10.0.0.1"),
            ("10.9.0.0/24", "10.1.0.0/24"),
        )
        .expect("another IKE daemon's state and policy");
        let (a, b) = (
            node("a", "10.0.0.1", "10.1.0.0/24"),
            node("b", "10.0.0.2", "10.2.0.0/24"),
        );
        install(&netns, plan(&a, &b, 3));
        install(&netns, plan(&a, &b, 4));
        let (states, policies) = held(&netns);
        assert_eq!(states.len(), 4, "{states:?}");
        assert_eq!(policies.len(), 3, "{policies:?}");
        let shown = netns.ip(&["xfrm", "policy"]).expect("ip xfrm policy");
        assert!(
            shown.contains("spi 0x04000001"),
            "the outbound policy moved to key 4: {shown}"
        );
        netns
            .spawn(move || -> io::Result<()> {
                states.iter().try_for_each(delete_state)?;
                policies.iter().try_for_each(delete_policy)
            })
            .expect("namespace")
            .join()
            .expect("thread")
            .expect("palisade's objects are deleted");
        let (states, policies) = held(&netns);
        assert!(
            states.is_empty() && policies.is_empty(),
            "{states:?} {policies:?}"
        );
        let states = netns.ip(&["xfrm", "state"]).expect("ip xfrm state");
        let policies = netns.ip(&["xfrm", "policy"]).expect("ip xfrm policy");
        assert!(states.contains(FOREIGN_SPI), "{states}");
        assert!(policies.contains("10.9.0.0/24"), "{policies}");
    }
}
