//! What the kernel's XFRM tables must hold for palisade's IPsec node mesh,
//! computed from the node list and the keys, with no I/O: the netlink shell
//! installs it and compares it with what the kernel holds.
//!
//! For every peer and every key of the file there is an outbound security
//! association (this node → peer, the key derived for that direction) and
//! an inbound one (peer → this node), so a rotation switches outbound
//! traffic by changing only the policies' SPI. The policies steer pod
//! traffic (tunnel mode: ESP between the node addresses, the nodes'
//! `pod_cidrs` inside) or node traffic (transport mode) into them, each way,
//! with templates that are required, so the kernel itself refuses those
//! packets in the clear. Everything palisade adds carries [`REQID`], which
//! is how a restart re-adopts it and `--cleanup` removes exactly it.
//!
//! The SPI on the wire is the key's SPI times 2^24 plus the last 16 bits of
//! the sending node's address: unique per sender at each receiver (the
//! kernel finds an inbound SA by destination and SPI), and predictable, so
//! a peer set up by hand with `ip xfrm` uses the same.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use ipnet::IpNet;

use super::ipsec_keys::{Aead, IpsecKeys, SecretKey};

/// The request id of every state and policy template palisade installs.
pub const REQID: u32 = 0x5041_4c00;

/// How the mesh carries traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpsecMode {
    /// Pod traffic inside ESP between the node addresses.
    Tunnel,
    /// Node-to-node traffic, ESP in place of the transport header.
    Transport,
}

/// A node of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshNode {
    /// Its name.
    pub name: String,
    /// The address ESP goes to and from.
    pub address: IpAddr,
    /// Its pods' prefixes (tunnel mode).
    pub pod_cidrs: Vec<IpNet>,
    /// The newest key (SPI) it has installed, as it advertises it: traffic
    /// to it is encrypted with the newest key of ours it has. `None`: it
    /// has every key of ours.
    pub newest_key: Option<u8>,
}

/// Which way a state or policy points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum XfrmDirection {
    /// Leaving this node.
    Out,
    /// Arriving for this node.
    In,
    /// Arriving for this node's pods (forwarded).
    Fwd,
}

/// One security association.
#[derive(Clone, PartialEq, Eq)]
pub struct SaSpec {
    /// The peer node's name.
    pub peer: String,
    /// Out (this node encrypts) or In (it decrypts).
    pub direction: XfrmDirection,
    /// The sending node's address.
    pub source: IpAddr,
    /// The receiving node's address.
    pub destination: IpAddr,
    /// The SPI on the wire.
    pub spi: u32,
    /// The key file's SPI it comes from.
    pub key_spi: u8,
    /// The algorithm.
    pub aead: Aead,
    /// Integrity check value length in bits.
    pub icv_bits: u16,
    /// The key (never shown).
    pub key: SecretKey,
    /// Tunnel or transport.
    pub mode: IpsecMode,
}

/// SPIs in hex, as `ip xfrm` shows them; the key redacted.
impl fmt::Debug for SaSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaSpec")
            .field("peer", &self.peer)
            .field("direction", &self.direction)
            .field("source", &self.source)
            .field("destination", &self.destination)
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("key_spi", &self.key_spi)
            .field("aead", &self.aead)
            .field("icv_bits", &self.icv_bits)
            .field("key", &self.key)
            .field("mode", &self.mode)
            .finish()
    }
}

/// One policy: traffic between two prefixes goes through the SA its
/// template names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// The peer node's name.
    pub peer: String,
    /// Out, In or Fwd.
    pub direction: XfrmDirection,
    /// Selector: source prefix.
    pub source: IpNet,
    /// Selector: destination prefix.
    pub destination: IpNet,
    /// Template: the sending node's address.
    pub tunnel_source: IpAddr,
    /// Template: the receiving node's address.
    pub tunnel_destination: IpAddr,
    /// Template: the SPI outbound traffic uses (inbound templates take any
    /// of palisade's).
    pub spi: Option<u32>,
    /// Tunnel or transport.
    pub mode: IpsecMode,
}

/// Everything the XFRM tables must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XfrmPlan {
    /// Security associations, by peer then direction then SPI.
    pub states: Vec<SaSpec>,
    /// Policies, by peer then direction.
    pub policies: Vec<PolicySpec>,
}

/// Why the mesh cannot be set up as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Two nodes' addresses end in the same 16 bits.
    #[error(
        "nodes {first} and {second} have addresses ending in the same 16 bits ({tag:#06x}), which palisade's IPsec SPIs are made of; give one another address"
    )]
    SpiClash {
        /// One node.
        first: String,
        /// The other.
        second: String,
        /// The shared bits.
        tag: u16,
    },
    /// A node has none of the keys of the file.
    #[error(
        "node {peer} has key {newest} at newest, and the key file has no key of that SPI or lower: it cannot be reached"
    )]
    NoSharedKey {
        /// The node.
        peer: String,
        /// The newest key it has.
        newest: u8,
    },
    /// A peer of another address family than this node.
    #[error("node {peer}'s address {address} is not of the same family as this node's ({local})")]
    MixedFamilies {
        /// The peer.
        peer: String,
        /// Its address.
        address: IpAddr,
        /// This node's address.
        local: IpAddr,
    },
}

/// The SPI on the wire of key `key_spi` sent by the node at `source`.
pub fn wire_spi(key_spi: u8, source: IpAddr) -> u32 {
    (u32::from(key_spi) << 24) | u32::from(address_tag(source))
}

/// The key (its SPI in the key file) of an SPI on the wire.
pub fn wire_key_spi(spi: u32) -> u8 {
    u8::try_from(spi >> 24).unwrap_or(u8::MAX)
}

/// The last 16 bits of an address.
fn address_tag(address: IpAddr) -> u16 {
    let bytes = match address {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    u16::from_be_bytes([bytes[bytes.len() - 2], bytes[bytes.len() - 1]])
}

/// The host prefix of an address.
fn host(address: IpAddr) -> IpNet {
    IpNet::from(address)
}

/// The key traffic to `peer` is encrypted with: the newest of `keys` it
/// has.
///
/// # Errors
///
/// [`PlanError::NoSharedKey`] when it has none of them.
pub fn outbound_key(peer: &MeshNode, keys: &IpsecKeys) -> Result<u8, PlanError> {
    let Some(newest) = peer.newest_key else {
        return Ok(keys.newest().spi);
    };
    keys.keys()
        .iter()
        .rev()
        .map(|key| key.spi)
        .find(|spi| *spi <= newest)
        .ok_or_else(|| PlanError::NoSharedKey {
            peer: peer.name.clone(),
            newest,
        })
}

/// The plan for `local` meshed with `peers`, every key of `keys` installed
/// and traffic to each peer on its [`outbound_key`].
///
/// # Errors
///
/// [`PlanError`] when two nodes would share SPIs, a peer has none of the
/// keys, or a peer is of the other address family.
pub fn mesh_plan(
    local: &MeshNode,
    peers: &[MeshNode],
    keys: &IpsecKeys,
    mode: IpsecMode,
) -> Result<XfrmPlan, PlanError> {
    let mut tags: BTreeMap<u16, &str> =
        BTreeMap::from([(address_tag(local.address), local.name.as_str())]);
    for peer in peers {
        if peer.address.is_ipv4() != local.address.is_ipv4() {
            return Err(PlanError::MixedFamilies {
                peer: peer.name.clone(),
                address: peer.address,
                local: local.address,
            });
        }
        let tag = address_tag(peer.address);
        if let Some(first) = tags.insert(tag, &peer.name) {
            return Err(PlanError::SpiClash {
                first: first.to_owned(),
                second: peer.name.clone(),
                tag,
            });
        }
    }
    let mut plan = XfrmPlan::default();
    for peer in peers {
        let outbound = outbound_key(peer, keys)?;
        for key in keys.keys() {
            for (direction, source, destination) in [
                (XfrmDirection::Out, local.address, peer.address),
                (XfrmDirection::In, peer.address, local.address),
            ] {
                plan.states.push(SaSpec {
                    peer: peer.name.clone(),
                    direction,
                    source,
                    destination,
                    spi: wire_spi(key.spi, source),
                    key_spi: key.spi,
                    aead: key.aead,
                    icv_bits: key.icv_bits,
                    key: key.key_for(source, destination),
                    mode,
                });
            }
        }
        let selectors: Vec<(IpNet, IpNet)> = match mode {
            IpsecMode::Tunnel => local
                .pod_cidrs
                .iter()
                .flat_map(|mine| peer.pod_cidrs.iter().map(move |theirs| (*mine, *theirs)))
                .filter(|(mine, theirs)| mine.addr().is_ipv4() == theirs.addr().is_ipv4())
                .collect(),
            IpsecMode::Transport => vec![(host(local.address), host(peer.address))],
        };
        for (mine, theirs) in selectors {
            let out_spi = wire_spi(outbound, local.address);
            plan.policies.push(PolicySpec {
                peer: peer.name.clone(),
                direction: XfrmDirection::Out,
                source: mine,
                destination: theirs,
                tunnel_source: local.address,
                tunnel_destination: peer.address,
                spi: Some(out_spi),
                mode,
            });
            let inbound = match mode {
                IpsecMode::Tunnel => [XfrmDirection::In, XfrmDirection::Fwd].as_slice(),
                IpsecMode::Transport => [XfrmDirection::In].as_slice(),
            };
            for direction in inbound {
                plan.policies.push(PolicySpec {
                    peer: peer.name.clone(),
                    direction: *direction,
                    source: theirs,
                    destination: mine,
                    tunnel_source: peer.address,
                    tunnel_destination: local.address,
                    spi: None,
                    mode,
                });
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encryption::ipsec_keys::parse_keys;

    fn node(name: &str, address: &str, pods: &str) -> MeshNode {
        MeshNode {
            name: name.to_owned(),
            address: address.parse().unwrap(),
            pod_cidrs: vec![pods.parse().unwrap()],
            newest_key: Some(3),
        }
    }

    fn keys() -> IpsecKeys {
        parse_keys(
            "keys",
            "3+ rfc4106(gcm(aes)) 0x0102030405060708090a0b0c0d0e0f1011121314 128\n\
             4+ rfc4106(gcm(aes)) 0x1112131415161718191a1b1c1d1e1f2021222324 128\n",
        )
        .unwrap()
    }

    #[test]
    fn each_end_decrypts_with_what_the_other_encrypts() {
        let (a, b) = (
            node("a", "10.0.0.1", "10.1.0.0/24"),
            node("b", "10.0.0.2", "10.2.0.0/24"),
        );
        let at_a = mesh_plan(&a, std::slice::from_ref(&b), &keys(), IpsecMode::Tunnel).unwrap();
        let at_b = mesh_plan(&b, std::slice::from_ref(&a), &keys(), IpsecMode::Tunnel).unwrap();
        assert_eq!(at_a.states.len(), 4, "{at_a:?}");
        for out in at_a
            .states
            .iter()
            .filter(|sa| sa.direction == XfrmDirection::Out)
        {
            let inbound = at_b
                .states
                .iter()
                .find(|sa| sa.direction == XfrmDirection::In && sa.spi == out.spi)
                .expect("b has the inbound SA of each of a's outbound ones");
            assert_eq!(
                (inbound.source, inbound.destination),
                (out.source, out.destination)
            );
            assert_eq!(inbound.key, out.key);
        }
        let a_out = &at_a.states[0];
        let a_in = &at_a.states[1];
        assert_ne!(a_out.key, a_in.key, "each direction has its own key");
        assert_eq!(a_out.spi, 0x0300_0001);
        assert_eq!(a_in.spi, 0x0300_0002);
    }

    #[test]
    fn tunnel_policies_steer_pod_traffic_and_require_esp_inbound() {
        let (a, b) = (
            node("a", "10.0.0.1", "10.1.0.0/24"),
            node("b", "10.0.0.2", "10.2.0.0/24"),
        );
        let b = MeshNode {
            newest_key: None,
            ..b
        };
        let plan = mesh_plan(&a, &[b], &keys(), IpsecMode::Tunnel).unwrap();
        let directions: Vec<_> = plan
            .policies
            .iter()
            .map(|policy| policy.direction)
            .collect();
        assert_eq!(
            directions,
            [XfrmDirection::Out, XfrmDirection::In, XfrmDirection::Fwd]
        );
        let out = &plan.policies[0];
        assert_eq!(
            (out.source.to_string(), out.destination.to_string(), out.spi),
            (
                "10.1.0.0/24".to_owned(),
                "10.2.0.0/24".to_owned(),
                Some(0x0400_0001)
            )
        );
        assert_eq!(plan.policies[1].source.to_string(), "10.2.0.0/24");
    }

    #[test]
    fn each_node_gets_the_newest_key_it_has() {
        let keys = keys();
        let node_with = |newest_key| MeshNode {
            newest_key,
            ..node("b", "10.0.0.2", "10.2.0.0/24")
        };
        assert_eq!(outbound_key(&node_with(None), &keys), Ok(4));
        assert_eq!(outbound_key(&node_with(Some(3)), &keys), Ok(3));
        assert_eq!(outbound_key(&node_with(Some(9)), &keys), Ok(4));
    }

    #[test]
    fn transport_mode_covers_the_node_addresses() {
        let (a, b) = (
            node("a", "10.0.0.1", "10.1.0.0/24"),
            node("b", "10.0.0.2", "10.2.0.0/24"),
        );
        let plan = mesh_plan(&a, &[b], &keys(), IpsecMode::Transport).unwrap();
        assert_eq!(plan.policies.len(), 2);
        assert_eq!(plan.policies[0].source.to_string(), "10.0.0.1/32");
        assert_eq!(plan.policies[0].destination.to_string(), "10.0.0.2/32");
    }

    #[test]
    fn what_cannot_work_is_refused() {
        let a = node("a", "10.0.0.1", "10.1.0.0/24");
        let clash = mesh_plan(
            &a,
            &[node("b", "10.9.0.1", "10.2.0.0/24")],
            &keys(),
            IpsecMode::Tunnel,
        );
        assert_eq!(
            clash.unwrap_err().to_string(),
            "nodes a and b have addresses ending in the same 16 bits (0x0001), which palisade's IPsec SPIs are made of; give one another address"
        );
        let behind = MeshNode {
            newest_key: Some(2),
            ..node("b", "10.0.0.2", "10.2.0.0/24")
        };
        let unknown = mesh_plan(&a, &[behind], &keys(), IpsecMode::Tunnel);
        assert_eq!(
            unknown.unwrap_err(),
            PlanError::NoSharedKey {
                peer: "b".to_owned(),
                newest: 2
            }
        );
        let mixed = mesh_plan(
            &a,
            &[node("b", "fd00::2", "fd01::/64")],
            &keys(),
            IpsecMode::Tunnel,
        );
        assert!(matches!(mixed, Err(PlanError::MixedFamilies { .. })));
    }

    #[test]
    fn keys_are_never_shown() {
        let (a, b) = (
            node("a", "10.0.0.1", "10.1.0.0/24"),
            node("b", "10.0.0.2", "10.2.0.0/24"),
        );
        let plan = mesh_plan(&a, &[b], &keys(), IpsecMode::Tunnel).unwrap();
        let shown = format!("{plan:?}");
        assert!(
            shown.contains("<20 bytes, not shown>") && shown.contains("0x03000001"),
            "{shown}"
        );
        assert!(!shown.contains("key: ["), "{shown}");
    }
}
