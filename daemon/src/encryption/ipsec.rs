//! The IPsec mesh: the key file and the nodes of the configuration put in
//! the kernel's XFRM tables (the shell around [`super::ipsec_plan`]), kept
//! there across reloads and key rotations, removed at stop. A restarted
//! palisaded adopts the states a killed one left: states already in the
//! kernel are not written again, so traffic never pauses.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use palisade_api::{IpsecNodeStatus, IpsecStatus};
use tracing::{info, warn};

use super::{
    ipsec_keys::{IpsecKeys, read_key_file},
    ipsec_plan::{IpsecMode, MeshNode, XfrmPlan, mesh_plan, outbound_key},
    xfrm::{self, HeldPolicy, HeldState},
};
use crate::config::{Config, IpsecMode as ConfiguredMode};

/// Where the kernel counts XFRM errors (per network namespace).
const XFRM_STAT: &str = "/proc/net/xfrm_stat";

/// palisade's IPsec states and policies, as the configuration asks.
pub struct IpsecMesh {
    mode: IpsecMode,
    in_force: Mutex<InForce>,
}

/// What was last put in the kernel.
struct InForce {
    local: MeshNode,
    peers: Vec<MeshNode>,
    keys: IpsecKeys,
    window: Duration,
    plan: XfrmPlan,
    /// Keys no node is sent to with any more (installed, or only still in
    /// the kernel), since when: each goes a window after that.
    retiring: BTreeMap<u8, Instant>,
}

impl IpsecMesh {
    /// Reads the key file and puts the mesh in the kernel.
    ///
    /// # Errors
    ///
    /// When the key file is refused (with its place), the nodes cannot be
    /// meshed, or the kernel refuses a state or policy (no ESP support).
    pub fn start(config: &Config) -> anyhow::Result<Self> {
        let mode = match config.ipsec.mode {
            ConfiguredMode::Tunnel => IpsecMode::Tunnel,
            ConfiguredMode::Transport => IpsecMode::Transport,
        };
        let in_force = InForce::from_config(config)?;
        let mesh = Self {
            mode,
            in_force: Mutex::new(in_force),
        };
        {
            let mut in_force = mesh.lock();
            let installed = mesh.install(&mut in_force)?;
            info!(
                keys = %spis(&in_force.keys),
                nodes = in_force.peers.len(),
                states = in_force.plan.states.len(),
                adopted = installed.adopted,
                "IPsec mesh in force"
            );
        }
        Ok(mesh)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InForce> {
        self.in_force.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the key file again and puts `config`'s nodes in force (on
    /// reload): new keys are installed beside the old ones.
    ///
    /// # Errors
    ///
    /// As [`IpsecMesh::start`]; what was in force stays.
    pub fn reconcile(&self, config: &Config) -> anyhow::Result<()> {
        let mut next = InForce::from_config(config)?;
        let mut in_force = self.lock();
        next.retiring = in_force.retiring.clone();
        self.install(&mut next)?;
        *in_force = next;
        Ok(())
    }

    /// Removes older keys whose window has passed (called every second).
    ///
    /// # Errors
    ///
    /// When the kernel's tables cannot be read or written.
    pub fn retire_old_keys(&self) -> anyhow::Result<()> {
        let mut in_force = self.lock();
        let held = xfrm::held_states()?;
        let held_keys: BTreeSet<u8> = held.iter().map(HeldState::key_spi).collect();
        let retired = in_force.retired_keys(&held_keys, Instant::now());
        if held_keys.is_disjoint(&retired) {
            return Ok(());
        }
        self.install(&mut in_force)?;
        Ok(())
    }

    /// Plans `in_force` against the kernel's tables and writes the
    /// difference: missing states, every policy, then the stale policies
    /// and states.
    fn install(&self, in_force: &mut InForce) -> anyhow::Result<Installed> {
        let held_states = xfrm::held_states().context("reading the XFRM states")?;
        let held_keys: BTreeSet<u8> = held_states.iter().map(HeldState::key_spi).collect();
        let retired = in_force.retired_keys(&held_keys, Instant::now());
        let keys = in_force.keys.without(&retired);
        let plan = mesh_plan(&in_force.local, &in_force.peers, &keys, self.mode)?;
        let mut adopted = 0;
        for sa in &plan.states {
            let held = held_states.iter().any(|state| {
                state.spi == sa.spi
                    && state.source == sa.source
                    && state.destination == sa.destination
            });
            if held {
                adopted += 1;
                continue;
            }
            xfrm::install_state(sa).with_context(|| {
                format!(
                    "installing the IPsec state {} -> {} SPI {:#010x} (does the kernel have ESP and {}?)",
                    sa.source,
                    sa.destination,
                    sa.spi,
                    sa.aead.name()
                )
            })?;
        }
        for policy in &plan.policies {
            xfrm::install_policy(policy).with_context(|| {
                format!(
                    "installing the IPsec policy {} -> {} ({:?})",
                    policy.source, policy.destination, policy.direction
                )
            })?;
        }
        let held_policies = xfrm::held_policies().context("reading the XFRM policies")?;
        for stale in held_policies.iter().filter(|held| {
            !plan.policies.iter().any(|policy| {
                policy.source == held.source
                    && policy.destination == held.destination
                    && policy.direction == held.direction
            })
        }) {
            xfrm::delete_policy(stale).context("removing a stale IPsec policy")?;
        }
        for stale in held_states.iter().filter(|held| {
            !plan.states.iter().any(|sa| {
                sa.spi == held.spi && sa.source == held.source && sa.destination == held.destination
            })
        }) {
            // A key no longer in use stays until its window is over: the
            // other nodes may still be sending with it.
            let peer_gone = !in_force
                .peers
                .iter()
                .any(|peer| peer.address == stale.source || peer.address == stale.destination);
            if retired.contains(&stale.key_spi()) || peer_gone {
                xfrm::delete_state(stale).context("removing a stale IPsec state")?;
                info!(spi = format!("{:#010x}", stale.spi), source = %stale.source, destination = %stale.destination, "removed an IPsec state no longer in use");
            }
        }
        in_force.plan = plan;
        Ok(Installed { adopted })
    }

    /// The mesh as the kernel holds it, for `/v1/encryption` and the
    /// metrics.
    ///
    /// # Errors
    ///
    /// When the kernel's tables cannot be read.
    pub fn status(&self) -> anyhow::Result<IpsecStatus> {
        let in_force = self.lock();
        let states = xfrm::held_states()?;
        let policies = xfrm::held_policies()?;
        let keys: Vec<u8> = in_force
            .plan
            .states
            .iter()
            .map(|sa| sa.key_spi)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let nodes = in_force
            .peers
            .iter()
            .map(|peer| node_status(peer, &in_force, &states, &policies))
            .collect();
        Ok(IpsecStatus {
            mode: match self.mode {
                IpsecMode::Tunnel => "tunnel".to_owned(),
                IpsecMode::Transport => "transport".to_owned(),
            },
            newest_key: keys.last().copied().unwrap_or(0),
            keys,
            nodes,
            xfrm_stats: read_xfrm_stats(),
        })
    }
}

impl Drop for IpsecMesh {
    fn drop(&mut self) {
        match remove_all() {
            Ok(removed) => info!(removed, "removed palisade's IPsec states and policies"),
            Err(error) => warn!(
                error = format!("{error:#}"),
                "removing palisade's IPsec states and policies"
            ),
        }
    }
}

/// What an install found already in place.
struct Installed {
    adopted: usize,
}

impl InForce {
    fn from_config(config: &Config) -> anyhow::Result<Self> {
        if let Some(gap) = config.ipsec_gaps().into_iter().next() {
            anyhow::bail!(gap);
        }
        let keys = read_key_file(&config.ipsec.keys_file).with_context(|| {
            format!(
                "reading the IPsec keys ({})",
                config.ipsec.keys_file.display()
            )
        })?;
        let first = |addresses: &[ipnet::IpNet]| addresses.first().map(ipnet::IpNet::addr);
        let local = MeshNode {
            name: config
                .node
                .name
                .clone()
                .unwrap_or_else(|| "this node".to_owned()),
            address: first(&config.node.addresses).context("node.addresses is empty")?,
            pod_cidrs: config.node.pod_cidrs.clone(),
            newest_key: None,
        };
        let peers = config
            .nodes
            .iter()
            .map(|node| {
                Ok(MeshNode {
                    name: node.name.clone(),
                    address: first(&node.addresses)
                        .with_context(|| format!("node {:?} has no address", node.name))?,
                    pod_cidrs: node.pod_cidrs.clone(),
                    newest_key: node.ipsec_key,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            local,
            peers,
            keys,
            window: Duration::from_secs(config.ipsec.key_rotation_window),
            plan: XfrmPlan::default(),
            retiring: BTreeMap::new(),
        })
    }

    /// The keys whose window is over: older than the newest, no node sent
    /// to with them for a window (counted from when that was first seen
    /// here; `held` are the keys in the kernel, the file's or not).
    fn retired_keys(&mut self, held: &BTreeSet<u8>, now: Instant) -> BTreeSet<u8> {
        let mut in_use: BTreeSet<u8> = self
            .peers
            .iter()
            .filter_map(|peer| outbound_key(peer, &self.keys).ok())
            .collect();
        in_use.insert(self.keys.newest().spi);
        let unused: BTreeSet<u8> = self
            .keys
            .keys()
            .iter()
            .map(|key| key.spi)
            .chain(held.iter().copied())
            .filter(|spi| !in_use.contains(spi))
            .collect();
        self.retiring.retain(|spi, _| unused.contains(spi));
        for spi in &unused {
            self.retiring.entry(*spi).or_insert(now);
        }
        self.retiring
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= self.window)
            .map(|(spi, _)| *spi)
            .collect()
    }
}

/// Reads the key file and checks the nodes as [`IpsecMesh::start`] would,
/// touching nothing: palisaded refuses a bad key file before it loads
/// anything.
///
/// # Errors
///
/// As [`IpsecMesh::start`] before it reaches the kernel.
pub fn check(config: &Config) -> anyhow::Result<()> {
    InForce::from_config(config).map(drop)
}

fn node_status(
    peer: &MeshNode,
    in_force: &InForce,
    states: &[HeldState],
    policies: &[HeldPolicy],
) -> IpsecNodeStatus {
    let touches =
        |state: &&HeldState| state.source == peer.address || state.destination == peer.address;
    let own: Vec<&HeldState> = states.iter().filter(touches).collect();
    let planned_policies: Vec<_> = in_force
        .plan
        .policies
        .iter()
        .filter(|policy| policy.peer == peer.name)
        .collect();
    let present_policies = planned_policies
        .iter()
        .filter(|policy| {
            policies.iter().any(|held| {
                held.source == policy.source
                    && held.destination == policy.destination
                    && held.direction == policy.direction
            })
        })
        .count();
    let bytes = |to: IpAddr| -> u64 {
        own.iter()
            .filter(|state| state.destination == to)
            .map(|state| state.bytes)
            .sum()
    };
    IpsecNodeStatus {
        name: peer.name.clone(),
        address: peer.address.to_string(),
        outbound_key: outbound_key(peer, &in_force.keys).unwrap_or(0),
        states: own.len(),
        states_expected: in_force
            .plan
            .states
            .iter()
            .filter(|sa| sa.peer == peer.name)
            .count(),
        policies: present_policies,
        policies_expected: planned_policies.len(),
        tx_bytes: bytes(peer.address),
        rx_bytes: bytes(in_force.local.address),
    }
}

/// `/proc/net/xfrm_stat`: `Name value` per line; empty when unreadable.
fn read_xfrm_stats() -> BTreeMap<String, u64> {
    std::fs::read_to_string(XFRM_STAT)
        .map(|text| parse_xfrm_stats(&text))
        .unwrap_or_default()
}

/// The counters of an `xfrm_stat` text.
fn parse_xfrm_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let value = fields.next()?.parse().ok()?;
            Some((name.to_owned(), value))
        })
        .collect()
}

/// Removes every state and policy of palisade's (its request id), for stop
/// and `palisaded --cleanup`; anyone else's stay. Returns how many.
///
/// # Errors
///
/// When the kernel's tables cannot be read or written.
pub fn remove_all() -> anyhow::Result<usize> {
    let policies = xfrm::held_policies().context("reading the XFRM policies")?;
    for policy in &policies {
        xfrm::delete_policy(policy).context("removing an IPsec policy")?;
    }
    let states = xfrm::held_states().context("reading the XFRM states")?;
    for state in &states {
        xfrm::delete_state(state).context("removing an IPsec state")?;
    }
    Ok(policies.len() + states.len())
}

/// The SPIs of `keys`, comma-separated.
fn spis(keys: &IpsecKeys) -> String {
    keys.keys()
        .iter()
        .map(|key| key.spi.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encryption::ipsec_keys::parse_keys;

    fn in_force(peer_key: Option<u8>) -> InForce {
        let node = |name: &str, address: &str| MeshNode {
            name: name.to_owned(),
            address: address.parse().expect("address"),
            pod_cidrs: Vec::new(),
            newest_key: peer_key,
        };
        InForce {
            local: node("a", "10.0.0.1"),
            peers: vec![node("b", "10.0.0.2")],
            keys: parse_keys(
                "keys",
                "3 rfc4106(gcm(aes)) 0x0102030405060708090a0b0c0d0e0f1011121314 128\n\
                 4 rfc4106(gcm(aes)) 0x1112131415161718191a1b1c1d1e1f2021222324 128\n",
            )
            .expect("keys"),
            window: Duration::from_secs(300),
            plan: XfrmPlan::default(),
            retiring: BTreeMap::new(),
        }
    }

    #[test]
    fn an_old_key_goes_a_window_after_the_last_node_stopped_being_sent_it() {
        let start = Instant::now();
        let held = BTreeSet::from([2, 3, 4]);
        let mut mesh = in_force(Some(3));
        assert_eq!(
            mesh.retired_keys(&held, start),
            BTreeSet::new(),
            "key 3 is in use; key 2 (no longer in the file) just started its window"
        );
        assert_eq!(
            mesh.retired_keys(&held, start + Duration::from_secs(300)),
            BTreeSet::from([2])
        );
        // The node says it has 4: key 3's window starts now, not when key
        // 4 was installed.
        mesh.peers[0].newest_key = Some(4);
        let switched = start + Duration::from_secs(400);
        assert_eq!(mesh.retired_keys(&held, switched), BTreeSet::from([2]));
        assert_eq!(
            mesh.retired_keys(&held, switched + Duration::from_secs(299)),
            BTreeSet::from([2])
        );
        assert_eq!(
            mesh.retired_keys(&held, switched + Duration::from_secs(300)),
            BTreeSet::from([2, 3])
        );
        // Back in use: its window starts again when it is left again.
        mesh.peers[0].newest_key = Some(3);
        let later = switched + Duration::from_secs(301);
        assert_eq!(mesh.retired_keys(&held, later), BTreeSet::from([2]));
        mesh.peers[0].newest_key = None;
        assert_eq!(
            mesh.retired_keys(&held, later + Duration::from_secs(1)),
            BTreeSet::from([2])
        );
    }

    #[test]
    fn xfrm_stat_counters_are_read_by_name() {
        let stats =
            parse_xfrm_stats("XfrmInError             \t0\nXfrmInNoStates          \t7\nbroken\n");
        assert_eq!(stats.get("XfrmInNoStates"), Some(&7));
        assert_eq!(stats.get("XfrmInError"), Some(&0));
        assert_eq!(stats.len(), 2);
    }
}
