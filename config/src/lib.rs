//! palisaded's configuration file (`/etc/palisade/palisade.toml`), read by
//! palisaded and by palisadectl's offline commands (`policy explain --config`).
//!
//! Every key has a default; a missing file means all defaults. `etc/palisade.toml`
//! in the source tree documents each key and must stay in step with this file
//! (a test parses it).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use palisade_policy::{Diagnostics, from_toml};
use serde::{Deserialize, Serialize};

/// Where the configuration is read from unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/palisade/palisade.toml";

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node.
    pub node: NodeConfig,
    /// The enforcing datapath.
    pub datapath: DatapathConfig,
    /// Where policies come from and how they are enforced.
    pub policy: PolicyConfig,
    /// The control socket.
    pub control: ControlConfig,
    /// The flow buffer.
    pub flows: FlowsConfig,
    /// The Prometheus listener.
    pub metrics: MetricsConfig,
    /// Services that stay reachable whatever the policies say.
    pub failsafe: FailsafeConfig,
    /// What this node knows about its cluster besides the nodes, for
    /// entities, `fromEndpoints` and CIDR groups.
    pub cluster: ClusterConfig,
    /// Whether and how traffic to the other nodes is encrypted.
    pub encryption: EncryptionConfig,
    /// The WireGuard tunnel, when `encryption.mode` is `wireguard`.
    pub wireguard: WireGuardConfig,
    /// IPsec, when `encryption.mode` is `ipsec`.
    pub ipsec: IpsecConfig,
    /// The other nodes of the cluster (`[[nodes]]`): one list for the
    /// policies (`remote-node`, `fromNodes`) and the encryption.
    pub nodes: Vec<Node>,
}

impl Config {
    /// The prefixes strict mode keeps off the wire unencrypted: with
    /// WireGuard, every tunnel peer's prefixes; with IPsec, the nodes' pod
    /// CIDRs (tunnel mode) or node addresses (transport mode); none when
    /// strict mode is off.
    pub fn strict_prefixes(&self) -> Vec<ipnet::IpNet> {
        match self.encryption.mode {
            EncryptionMode::Wireguard if self.wireguard.strict => self
                .wireguard_peers()
                .iter()
                .flat_map(|peer| peer.allowed_ips.iter().copied())
                .collect(),
            EncryptionMode::Ipsec if self.ipsec.strict => match self.ipsec.mode {
                IpsecMode::Tunnel => self
                    .nodes
                    .iter()
                    .flat_map(|node| node.pod_cidrs.iter().copied())
                    .collect(),
                IpsecMode::Transport => self
                    .nodes
                    .iter()
                    .filter_map(|node| node.addresses.first())
                    .map(|address| ipnet::IpNet::from(address.addr()))
                    .collect(),
            },
            _ => Vec::new(),
        }
    }

    /// What the policies know of the cluster: `[cluster]` with this node's
    /// and the nodes of `[[nodes]]` (their pod CIDRs count as the
    /// cluster's).
    pub fn cluster_context(&self) -> palisade_policy::ClusterContext {
        let cluster = &self.cluster;
        palisade_policy::ClusterContext {
            pod_cidrs: cluster
                .pod_cidrs
                .iter()
                .chain(&self.node.pod_cidrs)
                .chain(self.nodes.iter().flat_map(|node| &node.pod_cidrs))
                .copied()
                .collect(),
            nodes: self
                .nodes
                .iter()
                .map(|node| palisade_policy::KnownNode {
                    name: node.name.clone(),
                    labels: node.labels.clone(),
                    addresses: node.addresses.clone(),
                })
                .collect(),
            health: cluster.health.clone(),
            kube_apiserver: cluster.kube_apiserver.clone(),
            endpoints: cluster.endpoints.clone(),
            cidr_groups: cluster.cidr_groups.clone(),
        }
    }

    /// The WireGuard tunnel's peers: every node with a `[nodes.wireguard]`
    /// table, its pod CIDRs and `allowed_ips` routed through the tunnel.
    pub fn wireguard_peers(&self) -> Vec<WireGuardPeer> {
        self.nodes
            .iter()
            .filter_map(|node| {
                let wireguard = node.wireguard.as_ref()?;
                Some(WireGuardPeer {
                    name: node.name.clone(),
                    endpoint: wireguard.endpoint,
                    public_key: wireguard.public_key.clone(),
                    next_public_key: wireguard.next_public_key.clone(),
                    allowed_ips: node
                        .pod_cidrs
                        .iter()
                        .chain(&wireguard.allowed_ips)
                        .copied()
                        .collect(),
                })
            })
            .collect()
    }

    /// The nodes the WireGuard tunnel cannot reach: those without a
    /// `[nodes.wireguard]` table.
    pub fn nodes_without_wireguard(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|node| node.wireguard.is_none())
    }

    /// With WireGuard on, traffic to every node goes through the tunnel: a
    /// node it cannot reach is a configuration error, not a node left in
    /// the clear. What is wrong, if anything.
    pub fn node_outside_the_tunnel(&self) -> Option<String> {
        if self.encryption.mode != EncryptionMode::Wireguard {
            return None;
        }
        self.nodes_without_wireguard().next().map(|node| {
            format!(
                "[[nodes]] {:?} has no [nodes.wireguard] table (endpoint, public_key): with encryption.mode = \"wireguard\" every node is reached through the tunnel",
                node.name
            )
        })
    }
}

impl Config {
    /// What IPsec needs and the configuration lacks: the node addresses ESP
    /// goes between, and in tunnel mode the pod CIDRs it carries.
    pub fn ipsec_gaps(&self) -> Vec<String> {
        if self.encryption.mode != EncryptionMode::Ipsec {
            return Vec::new();
        }
        let mut gaps = Vec::new();
        if self.node.addresses.is_empty() {
            gaps.push("with encryption.mode = \"ipsec\", node.addresses must name this node's address: ESP goes to and from the first".to_owned());
        }
        if self.ipsec.mode == IpsecMode::Tunnel && self.node.pod_cidrs.is_empty() {
            gaps.push("with ipsec.mode = \"tunnel\", node.pod_cidrs must name this node's pod prefixes: the tunnels carry their traffic".to_owned());
        }
        for node in &self.nodes {
            if node.addresses.is_empty() {
                gaps.push(format!(
                    "[[nodes]] {:?} has no addresses: with encryption.mode = \"ipsec\", ESP goes to a node's first address",
                    node.name
                ));
            }
        }
        gaps
    }
}

/// `[cluster]`: what this node knows about its cluster besides the nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "ClusterTable")]
pub struct ClusterConfig {
    /// Pod CIDRs: part of `cluster`.
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// Health endpoint addresses: `health`.
    pub health: Vec<ipnet::IpNet>,
    /// API server addresses: `kube-apiserver`.
    pub kube_apiserver: Vec<ipnet::IpNet>,
    /// Pods by labels: `fromEndpoints`.
    pub endpoints: Vec<palisade_policy::KnownEndpoint>,
    /// CiliumCIDRGroups: `cidrGroupRef` and `cidrGroupSelector`.
    pub cidr_groups: Vec<palisade_policy::resolve::CidrGroup>,
}

/// `[cluster]` as written, with the key that moved.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ClusterTable {
    pod_cidrs: Vec<ipnet::IpNet>,
    health: Vec<ipnet::IpNet>,
    kube_apiserver: Vec<ipnet::IpNet>,
    endpoints: Vec<palisade_policy::KnownEndpoint>,
    cidr_groups: Vec<palisade_policy::resolve::CidrGroup>,
    nodes: Option<serde::de::IgnoredAny>,
}

impl TryFrom<ClusterTable> for ClusterConfig {
    type Error = String;

    fn try_from(table: ClusterTable) -> Result<Self, String> {
        if table.nodes.is_some() {
            return Err(
                "[[cluster.nodes]] moved to [[nodes]]: one table per node holds its name, addresses, labels, pod_cidrs and its [nodes.wireguard] keys"
                    .to_owned(),
            );
        }
        Ok(Self {
            pod_cidrs: table.pod_cidrs,
            health: table.health,
            kube_apiserver: table.kube_apiserver,
            endpoints: table.endpoints,
            cidr_groups: table.cidr_groups,
        })
    }
}

/// `[encryption]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// How traffic to the other nodes is encrypted.
    pub mode: EncryptionMode,
}

/// `encryption.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionMode {
    /// Not at all.
    #[default]
    None,
    /// Through a WireGuard tunnel to each node in `[[nodes]]`.
    Wireguard,
    /// With IPsec (ESP) to each node in `[[nodes]]`.
    Ipsec,
}

/// `[ipsec]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpsecConfig {
    /// The keys, in Cilium's format (`SPI[+] ALGORITHM KEY ICV_BITS`, one
    /// per line), mode 0600; read at start and at each reload, never
    /// logged or shown.
    pub keys_file: PathBuf,
    /// What is encrypted: the pods' traffic between the nodes (`tunnel`) or
    /// the nodes' own traffic (`transport`).
    pub mode: IpsecMode,
    /// Seconds an older key's states stay after the newest key was
    /// installed and every node uses it (Cilium's
    /// `ipsec-key-rotation-duration`).
    pub key_rotation_window: u64,
    /// Strict mode: traffic of the nodes' encrypted prefixes seen
    /// unencrypted on an enforced interface is dropped as
    /// `UNENCRYPTED_TRAFFIC`.
    pub strict: bool,
}

impl Default for IpsecConfig {
    fn default() -> Self {
        Self {
            keys_file: PathBuf::from("/etc/palisade/ipsec.keys"),
            mode: IpsecMode::default(),
            key_rotation_window: 300,
            strict: false,
        }
    }
}

/// `ipsec.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IpsecMode {
    /// ESP tunnels between the node addresses carry the traffic between
    /// the nodes' pod CIDRs.
    #[default]
    Tunnel,
    /// ESP between the node addresses themselves.
    Transport,
}

/// `[wireguard]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WireGuardConfig {
    /// The tunnel interface's name.
    pub interface: String,
    /// UDP port the tunnel listens on (Cilium's default).
    pub listen_port: u16,
    /// This node's private key, base64 as `wg genkey` writes it; created
    /// (mode 0600) when missing. Never logged or returned by the API.
    pub private_key_file: PathBuf,
    /// Use the in-process userspace WireGuard when the kernel has no
    /// WireGuard module (Cilium's `enable-wireguard-userspace-fallback`).
    pub userspace_fallback: bool,
    /// Worker threads of the userspace WireGuard; unset: half the CPUs, 1 to
    /// 4 (threads beyond the cores the host can spare make it slower).
    pub userspace_threads: Option<std::num::NonZeroUsize>,
    /// Strict mode: traffic of the nodes' `allowed_ips` seen unencrypted on
    /// an enforced interface (`datapath.interfaces`) is dropped as
    /// `UNENCRYPTED_TRAFFIC` (Cilium's `encryption-strict-mode`).
    pub strict: bool,
}

impl Default for WireGuardConfig {
    fn default() -> Self {
        Self {
            interface: "palisade_wg0".into(),
            listen_port: 51871,
            private_key_file: PathBuf::from("/var/lib/palisade/wireguard.key"),
            userspace_fallback: true,
            userspace_threads: None,
            strict: false,
        }
    }
}

/// One `[[nodes]]` entry: another node of the cluster, as the policies see
/// it and as the encryption reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "NodeTable")]
pub struct Node {
    /// The node's name, shown in status.
    pub name: String,
    /// Its addresses: what `remote-node` and `fromNodes` stand for.
    pub addresses: Vec<ipnet::IpNet>,
    /// Its labels, matched by `fromNodes` / `toNodes`.
    pub labels: BTreeMap<String, String>,
    /// Its pods' prefixes: part of `cluster`, and routed through the tunnel.
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// How the WireGuard tunnel reaches it (`[nodes.wireguard]`).
    pub wireguard: Option<NodeWireGuard>,
    /// The newest IPsec key (SPI) it has installed, as its `palisadectl
    /// encryption status` shows: traffic to it is encrypted with the newest
    /// key it has. Unset: it has every key of the key file.
    pub ipsec_key: Option<u8>,
}

/// `[[nodes]]` as written, with the keys that moved.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeTable {
    name: String,
    #[serde(default)]
    addresses: Vec<ipnet::IpNet>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    pod_cidrs: Vec<ipnet::IpNet>,
    #[serde(default)]
    wireguard: Option<NodeWireGuard>,
    #[serde(default)]
    ipsec_key: Option<u8>,
    #[serde(default)]
    endpoint: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    public_key: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    next_public_key: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    allowed_ips: Option<serde::de::IgnoredAny>,
}

impl TryFrom<NodeTable> for Node {
    type Error = String;

    fn try_from(table: NodeTable) -> Result<Self, String> {
        let moved = [
            ("endpoint", table.endpoint.is_some()),
            ("public_key", table.public_key.is_some()),
            ("next_public_key", table.next_public_key.is_some()),
            ("allowed_ips", table.allowed_ips.is_some()),
        ];
        if let Some((key, _)) = moved.iter().find(|(_, present)| *present) {
            return Err(format!(
                "node {:?}: `{key}` moved under [nodes.wireguard] (endpoint, public_key, next_public_key, allowed_ips)",
                table.name
            ));
        }
        Ok(Self {
            name: table.name,
            addresses: table.addresses,
            labels: table.labels,
            pod_cidrs: table.pod_cidrs,
            wireguard: table.wireguard,
            ipsec_key: table.ipsec_key,
        })
    }
}

/// `[nodes.wireguard]`: how the tunnel reaches a node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeWireGuard {
    /// Where its tunnel listens, `ADDRESS:PORT`.
    pub endpoint: std::net::SocketAddr,
    /// Its WireGuard public key (base64, as `wg pubkey` prints it).
    pub public_key: WireGuardKey,
    /// The key it will switch to (what its `palisadectl wireguard rotate-key
    /// --stage` printed): accepted beside `public_key`, and in force from
    /// that key's first handshake, so the switch costs at most a handshake.
    #[serde(default)]
    pub next_public_key: Option<WireGuardKey>,
    /// Prefixes reached through it besides its `pod_cidrs` (its tunnel
    /// address, say).
    #[serde(default)]
    pub allowed_ips: Vec<ipnet::IpNet>,
}

/// A WireGuard tunnel peer: a node with a `[nodes.wireguard]` table, as the
/// tunnel uses it ([`Config::wireguard_peers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireGuardPeer {
    /// The node's name.
    pub name: String,
    /// Where its tunnel listens.
    pub endpoint: std::net::SocketAddr,
    /// Its public key.
    pub public_key: WireGuardKey,
    /// The key it will switch to.
    pub next_public_key: Option<WireGuardKey>,
    /// Everything routed to it through the tunnel: its pod CIDRs and
    /// `allowed_ips`.
    pub allowed_ips: Vec<ipnet::IpNet>,
}

/// A WireGuard key: 32 bytes, written in base64.
#[derive(Clone, PartialEq, Eq)]
pub struct WireGuardKey(pub [u8; 32]);

impl std::fmt::Debug for WireGuardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WireGuardKey({self})")
    }
}

impl std::fmt::Display for WireGuardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use base64::Engine as _;
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl std::str::FromStr for WireGuardKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        use base64::Engine as _;
        let invalid = || {
            format!(
                "invalid WireGuard key {text:?}: expected 32 bytes in base64 (44 characters, as `wg pubkey` prints)"
            )
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| invalid())?;
        Ok(Self(bytes.try_into().map_err(|_| invalid())?))
    }
}

impl Serialize for WireGuardKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WireGuardKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on; no listener when unset.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[node]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Node name shown in flows; the host name when unset.
    pub name: Option<String>,
    /// Labels matched by policies' `nodeSelector`.
    pub labels: BTreeMap<String, String>,
    /// This node's addresses: what the `host` entity stands for; IPsec
    /// goes to and from the first.
    pub addresses: Vec<ipnet::IpNet>,
    /// This node's pods' prefixes: what IPsec tunnel mode encrypts to the
    /// other nodes.
    pub pod_cidrs: Vec<ipnet::IpNet>,
}

/// `[datapath]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatapathConfig {
    /// Interfaces to enforce on. Empty: enforce nowhere (and say so in the log).
    pub interfaces: Vec<String>,
    /// How to attach XDP.
    pub xdp_mode: XdpModeConfig,
    /// How to attach the TC programs.
    pub attach: TcAttachConfig,
    /// bpffs directory for the programs' links and the connection state, so
    /// enforcement survives a restart or crash of palisaded.
    pub pin_path: PathBuf,
    /// Source prefixes the XDP prefilter drops on every interface, also in
    /// audit mode (failsafe services excepted).
    pub prefilter: Vec<ipnet::IpNet>,
    /// Most prefixes of each address family all tables of one policy
    /// generation may hold.
    pub policy_map_max: u32,
    /// Most distinct rule sets (the rows that apply to a prefix, with
    /// those of the prefixes containing it) one policy generation may
    /// hold, both directions together; each of the two table slots holds
    /// this many, at 388 bytes each.
    pub rule_set_max: u32,
    /// Most TCP connections tracked at once (least recently used go first).
    pub ct_tcp_max: u32,
    /// Most non-TCP flows tracked at once.
    pub ct_any_max: u32,
    /// What a new connection gets when conntrack refuses its entry.
    pub ct_full: CtFullAction,
    /// Conntrack timeouts.
    pub ct_timeouts: CtTimeoutsConfig,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            xdp_mode: XdpModeConfig::default(),
            attach: TcAttachConfig::default(),
            pin_path: PathBuf::from("/sys/fs/bpf/palisade"),
            prefilter: Vec::new(),
            policy_map_max: palisade_common::DEFAULT_PREFIX_CAPACITY,
            rule_set_max: palisade_common::DEFAULT_RULE_SET_CAPACITY,
            ct_tcp_max: palisade_common::DEFAULT_CT_TCP_CAPACITY,
            ct_any_max: palisade_common::DEFAULT_CT_ANY_CAPACITY,
            ct_full: CtFullAction::default(),
            ct_timeouts: CtTimeoutsConfig::default(),
        }
    }
}

/// `datapath.ct_full`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CtFullAction {
    /// Drop the packet (reason `CT_MAP_INSERTION_FAILED`): fail closed.
    #[default]
    Drop,
    /// Forward it untracked (its replies are judged as new connections).
    Forward,
}

/// `[datapath.ct_timeouts]`, in seconds (defaults as Cilium's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CtTimeoutsConfig {
    /// TCP connection before its first reply.
    pub tcp_opening: u32,
    /// Established TCP connection, idle.
    pub tcp_established: u32,
    /// TCP connection after FIN both ways or RST.
    pub tcp_closing: u32,
    /// Any other protocol, idle.
    pub other: u32,
}

impl Default for CtTimeoutsConfig {
    fn default() -> Self {
        let defaults = palisade_common::CtTimeouts::default();
        Self {
            tcp_opening: defaults.tcp_opening,
            tcp_established: defaults.tcp_established,
            tcp_closing: defaults.tcp_closing,
            other: defaults.other,
        }
    }
}

impl From<CtTimeoutsConfig> for palisade_common::CtTimeouts {
    fn from(config: CtTimeoutsConfig) -> Self {
        Self {
            tcp_opening: config.tcp_opening,
            tcp_established: config.tcp_established,
            tcp_closing: config.tcp_closing,
            other: config.other,
        }
    }
}

/// `[failsafe]`: services new connections may always reach, whatever the
/// policies say (Calico's failsafe ports). An empty list turns it off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailsafeConfig {
    /// Ports on this node reachable from anywhere: SSH, and DHCP replies.
    pub inbound: Vec<Service>,
    /// Ports this node may always reach: DNS, and DHCP requests.
    pub outbound: Vec<Service>,
}

impl Default for FailsafeConfig {
    fn default() -> Self {
        let service = |protocol, port| Service { protocol, port };
        Self {
            inbound: vec![
                service(ServiceProtocol::Tcp, 22),
                service(ServiceProtocol::Udp, 68),
            ],
            outbound: vec![
                service(ServiceProtocol::Udp, 53),
                service(ServiceProtocol::Tcp, 53),
                service(ServiceProtocol::Udp, 67),
            ],
        }
    }
}

/// A protocol and port, written `"tcp:22"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    /// The protocol.
    pub protocol: ServiceProtocol,
    /// The destination port.
    pub port: u16,
}

/// Protocols a [`Service`] can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl ServiceProtocol {
    /// The IP protocol number.
    pub fn code(self) -> u8 {
        match self {
            Self::Tcp => palisade_common::protocol::TCP,
            Self::Udp => palisade_common::protocol::UDP,
            Self::Sctp => palisade_common::protocol::SCTP,
        }
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let protocol = match self.protocol {
            ServiceProtocol::Tcp => "tcp",
            ServiceProtocol::Udp => "udp",
            ServiceProtocol::Sctp => "sctp",
        };
        write!(f, "{protocol}:{}", self.port)
    }
}

impl std::str::FromStr for Service {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let hint = || format!("invalid service {text:?}: write PROTOCOL:PORT such as \"tcp:22\"");
        let (protocol, port) = text.split_once(':').ok_or_else(hint)?;
        let protocol = match protocol.to_ascii_lowercase().as_str() {
            "tcp" => ServiceProtocol::Tcp,
            "udp" => ServiceProtocol::Udp,
            "sctp" => ServiceProtocol::Sctp,
            _ => return Err(hint()),
        };
        let port = port.parse().map_err(|_| hint())?;
        Ok(Self { protocol, port })
    }
}

impl Serialize for Service {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Service {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `datapath.xdp_mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeConfig {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native mode only; fail if the driver lacks it.
    Native,
    /// Generic (skb) mode.
    Generic,
}

/// `datapath.attach`: how the TC programs are attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcAttachConfig {
    /// TCX links where the kernel has them (6.6 and later), else a clsact
    /// qdisc with cls_bpf filters.
    #[default]
    Auto,
    /// TCX links only; fail on a kernel without them.
    Tcx,
    /// clsact + cls_bpf filters in direct-action mode (any supported kernel).
    Tc,
}

/// `[policy]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Directory whose `*.toml` files are loaded at start and on reload, in
    /// name order.
    pub directory: PathBuf,
    /// Where policies applied through the control socket are saved, to be
    /// restored on start. They replace directory policies of the same name.
    pub state_directory: PathBuf,
    /// Forward would-be drops and report them with verdict AUDIT.
    pub audit_mode: bool,
    /// Accept `toFQDNs` and DNS rules in host policies in audit-only form.
    pub fqdn_audit: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            directory: PathBuf::from("/etc/palisade/policies.d"),
            state_directory: PathBuf::from("/var/lib/palisade"),
            audit_mode: false,
            fqdn_audit: false,
        }
    }
}

/// `[control]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Path of the control socket.
    pub socket: PathBuf,
    /// Group whose members may read (status, policies, flows, conntrack);
    /// the socket is created 0660 with this group. Root may always.
    pub group: String,
    /// Group whose members may also change the rules; empty: root only.
    pub admin_group: String,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(palisade_api::DEFAULT_SOCKET),
            group: "palisade".to_owned(),
            admin_group: String::new(),
        }
    }
}

/// `[flows]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowsConfig {
    /// How many recent flows the daemon keeps for `palisadectl observe`.
    pub buffer: usize,
    /// Drops and audits written to the log (the journal's audit trail) per
    /// second at most; the rest are counted and the count is logged. 0: none.
    pub log_per_second: u32,
    /// One in this many forwarded new connections produces a flow; 0: none.
    /// Drops and audits are not sampled.
    pub forward_sample_rate: u32,
    /// Flow events each CPU may send per second; the rest are counted.
    /// 0: no limit. Over the limit a CPU reads the clock once per
    /// `BUDGET_CLOCK_STRIDE` held-back events (no clock read per packet of a
    /// flood), so a new second is noticed up to that many events late.
    pub events_per_second: u32,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        Self {
            buffer: 4096,
            log_per_second: 10,
            forward_sample_rate: 1,
            events_per_second: 10_000,
        }
    }
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (in the message, not as a source: it would be said twice).
        error: std::io::Error,
    },
    /// A file named with `--config` does not exist.
    #[error(
        "{}: no such configuration file (named with --config; without it palisaded reads {DEFAULT_CONFIG}, or runs on the built-in defaults if that is missing)",
        path.display()
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a valid configuration.
    #[error(transparent)]
    Invalid(#[from] Diagnostics),
}

/// Where palisaded reads its configuration, at start and on every reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    path: PathBuf,
    /// Named with `--config`: it must exist. The default path may be
    /// missing (the built-in defaults then).
    named: bool,
}

impl Config {
    /// Settings that cannot work together, each with what is wrong.
    pub fn conflicts(&self) -> Vec<String> {
        let mut found = Vec::new();
        let (policies, state) = (&self.policy.directory, &self.policy.state_directory);
        if policies.starts_with(state) || state.starts_with(policies) {
            found.push(format!(
                "policy.directory ({}) and policy.state_directory ({}) overlap: palisaded would rewrite the operator's policy files as its own; give them separate directories",
                policies.display(),
                state.display()
            ));
        }
        found.extend(self.node_outside_the_tunnel());
        found.extend(self.ipsec_gaps());
        found
    }
}

impl ConfigFile {
    /// The file named with `--config`, or the default path when `None`.
    pub fn new(named: Option<PathBuf>) -> Self {
        match named {
            Some(path) => Self { path, named: true },
            None => Self {
                path: PathBuf::from(DEFAULT_CONFIG),
                named: false,
            },
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the file cannot be read or is invalid, or when a
    /// file named with `--config` does not exist.
    pub fn load(&self) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(from_toml(&self.path.display().to_string(), &text)?),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !self.named => {
                Ok(Config::default())
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Err(ConfigError::Missing {
                    path: self.path.clone(),
                })
            }
            Err(error) => Err(ConfigError::Read {
                path: self.path.clone(),
                error,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/palisade.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // Every key is commented out at its default, so the file means the defaults...
        let is_key = |key: &str| key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let uncommented: String = text
            .lines()
            .map(|line| {
                line.strip_prefix("# ")
                    .filter(|l| l.split_once(" = ").is_some_and(|(key, _)| is_key(key)))
                    .unwrap_or(line)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: Config = from_toml("palisade.toml", &text).unwrap();
        let spelled_out: Config = from_toml("palisade.toml", &uncommented).unwrap();
        assert_eq!(parsed.policy, PolicyConfig::default());
        // ...and uncommenting every documented key gives the defaults back,
        // except the interface list, which the example fills in, and the node
        // name, whose default (the host name) is only known at run time.
        let mut expected = Config::default();
        expected.datapath.interfaces = vec!["eth0".to_owned()];
        assert_eq!(parsed.failsafe, FailsafeConfig::default());
        expected.node.name = Some("node-1".to_owned());
        assert_eq!(spelled_out, expected);
    }

    #[test]
    fn a_missing_default_file_means_defaults_a_missing_named_file_is_an_error() {
        let default = ConfigFile {
            path: PathBuf::from("/nonexistent/palisade.toml"),
            named: false,
        };
        assert_eq!(default.load().unwrap(), Config::default());
        let named = ConfigFile::new(Some(PathBuf::from("/etc/palisade/palsade.toml")));
        let error = named.load().unwrap_err().to_string();
        assert!(
            error.starts_with("/etc/palisade/palsade.toml: no such configuration file"),
            "{error}"
        );
    }

    #[test]
    fn unknown_key_is_placed() {
        let error =
            from_toml::<Config>("c.toml", "[datapath]\ninterface = [\"eth0\"]\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "c.toml:2:1: datapath.interface: unknown field `interface`, expected one of `interfaces`, `xdp_mode`, `attach`, `pin_path`, `prefilter`, `policy_map_max`, `rule_set_max`, `ct_tcp_max`, `ct_any_max`, `ct_full`, `ct_timeouts`"
        );
    }

    #[test]
    fn bad_failsafe_service_is_placed() {
        let error = from_toml::<Config>("c.toml", "[failsafe]\ninbound = [\"tcp:22\", \"ssh\"]\n")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "c.toml:2:22: failsafe.inbound[1]: invalid service \"ssh\": write PROTOCOL:PORT such as \"tcp:22\""
        );
        let config: Config = from_toml(
            "c.toml",
            "[failsafe]\ninbound = []\noutbound = [\"UDP:53\"]\n",
        )
        .unwrap();
        assert!(config.failsafe.inbound.is_empty());
        assert_eq!(config.failsafe.outbound[0].to_string(), "udp:53");
    }

    /// Tests build configurations as values and write them out: what is
    /// written reads back the same.
    #[test]
    fn a_configuration_written_out_reads_back_the_same() {
        let mut config: Config = from_toml(
            "c.toml",
            "[[nodes]]\nname = \"b\"\naddresses = [\"192.0.2.2/32\"]\npod_cidrs = [\"10.99.2.0/24\"]\n[nodes.wireguard]\nendpoint = \"192.0.2.2:51871\"\npublic_key = \"TDC1nJ5eZctCPhtpgG8II00ItlhsYcrVKYG5K8OW4kY=\"\n\n[[cluster.endpoints]]\nlabels = { app = \"dns\" }\naddresses = [\"10.0.0.10/32\"]\n",
        )
        .unwrap();
        config.datapath.interfaces = vec!["eth0".to_owned()];
        config.failsafe.inbound.clear();
        config.wireguard.userspace_threads = std::num::NonZeroUsize::new(2);
        let text = toml::to_string(&config).unwrap();
        assert_eq!(
            from_toml::<Config>("written.toml", &text).unwrap(),
            config,
            "{text}"
        );
        let defaults = toml::to_string(&Config::default()).unwrap();
        assert_eq!(
            from_toml::<Config>("defaults.toml", &defaults).unwrap(),
            Config::default(),
            "{defaults}"
        );
    }

    #[test]
    fn one_node_list_feeds_the_policies_and_the_tunnel() {
        let config: Config = from_toml(
            "c.toml",
            "[cluster]\npod_cidrs = [\"10.0.0.0/16\"]\n\n[[nodes]]\nname = \"b\"\naddresses = [\"192.0.2.2/32\"]\nlabels = { role = \"db\" }\npod_cidrs = [\"10.99.2.0/24\"]\n[nodes.wireguard]\nendpoint = \"192.0.2.2:51871\"\npublic_key = \"TDC1nJ5eZctCPhtpgG8II00ItlhsYcrVKYG5K8OW4kY=\"\n\n[[nodes]]\nname = \"c\"\naddresses = [\"192.0.2.3/32\"]\n",
        )
        .unwrap();
        let cluster = config.cluster_context();
        assert_eq!(cluster.nodes.len(), 2);
        assert_eq!(cluster.nodes[0].labels["role"], "db");
        assert_eq!(cluster.nodes[1].addresses[0].to_string(), "192.0.2.3/32");
        assert_eq!(
            cluster.pod_cidrs,
            [
                "10.0.0.0/16".parse().unwrap(),
                "10.99.2.0/24".parse().unwrap()
            ]
        );
        let peers = config.wireguard_peers();
        assert_eq!(peers.len(), 1, "c has no [nodes.wireguard]");
        assert_eq!(peers[0].allowed_ips[0].to_string(), "10.99.2.0/24");
        let without: Vec<&str> = config
            .nodes_without_wireguard()
            .map(|node| node.name.as_str())
            .collect();
        assert_eq!(without, ["c"]);
    }

    #[test]
    fn the_keys_that_moved_say_where_they_went() {
        let old_node = from_toml::<Config>(
            "c.toml",
            "[[nodes]]\nname = \"b\"\nendpoint = \"192.0.2.2:51871\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            old_node.starts_with("c.toml:")
                && old_node.contains("nodes[0]")
                && old_node.contains("`endpoint` moved under [nodes.wireguard]"),
            "{old_node}"
        );
        let old_cluster = from_toml::<Config>(
            "c.toml",
            "[[cluster.nodes]]\nname = \"b\"\naddresses = [\"192.0.2.2/32\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            old_cluster.contains("[[cluster.nodes]] moved to [[nodes]]"),
            "{old_cluster}"
        );
    }

    #[test]
    fn bad_wireguard_keys_endpoints_and_prefixes_are_placed() {
        let node = |field: &str| {
            let mut entry = vec![
                "name = \"b\"".to_owned(),
                "pod_cidrs = [\"10.99.2.0/24\"]".to_owned(),
                "[nodes.wireguard]".to_owned(),
                "endpoint = \"192.0.2.2:51871\"".to_owned(),
                "public_key = \"TDC1nJ5eZctCPhtpgG8II00ItlhsYcrVKYG5K8OW4kY=\"".to_owned(),
                "allowed_ips = [\"10.99.3.1/32\"]".to_owned(),
            ];
            let key = field.split(" = ").next().unwrap_or_default();
            for line in &mut entry {
                if line.starts_with(&format!("{key} = ")) {
                    field.clone_into(line);
                }
            }
            format!(
                "[encryption]\nmode = \"wireguard\"\n[[nodes]]\n{}\n",
                entry.join("\n")
            )
        };
        let good: Config = from_toml("c.toml", &node("name = \"b\"")).unwrap();
        assert_eq!(good.encryption.mode, EncryptionMode::Wireguard);
        let peers = good.wireguard_peers();
        assert_eq!(peers[0].endpoint.port(), 51871);
        assert_eq!(
            peers[0].allowed_ips,
            [
                "10.99.2.0/24".parse().unwrap(),
                "10.99.3.1/32".parse().unwrap()
            ],
            "the pod CIDRs and allowed_ips go through the tunnel"
        );
        for (field, expected) in [
            (
                "public_key = \"nope\"",
                "c.toml:8:14: nodes[0].wireguard.public_key: invalid WireGuard key \"nope\": expected 32 bytes in base64 (44 characters, as `wg pubkey` prints)",
            ),
            (
                "endpoint = \"192.0.2.2\"",
                "c.toml:7:12: nodes[0].wireguard.endpoint: invalid socket address syntax",
            ),
            (
                "allowed_ips = [\"10.99.2.0/33\"]",
                "c.toml:9:16: nodes[0].wireguard.allowed_ips[0]: invalid IP address syntax",
            ),
        ] {
            let error = from_toml::<Config>("c.toml", &node(field)).unwrap_err();
            assert_eq!(error.to_string(), expected, "{field}");
        }
        let next = node(
            "public_key = \"TDC1nJ5eZctCPhtpgG8II00ItlhsYcrVKYG5K8OW4kY=\"\nnext_public_key = \"short\"",
        );
        let error = from_toml::<Config>("c.toml", &next).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "c.toml:9:19: nodes[0].wireguard.next_public_key: invalid WireGuard key \"short\""
            ),
            "{error}"
        );
        let threads =
            from_toml::<Config>("c.toml", "[wireguard]\nuserspace_threads = 0\n").unwrap_err();
        assert!(
            threads
                .to_string()
                .starts_with("c.toml:2:21: wireguard.userspace_threads: "),
            "{threads}"
        );
    }

    #[test]
    fn ipsec_names_what_it_lacks_and_strict_covers_the_mode_s_prefixes() {
        let bare = from_toml::<Config>("c.toml", "[encryption]\nmode = \"ipsec\"\n").unwrap();
        let gaps = bare.conflicts();
        assert!(
            gaps.iter().any(|gap| gap.contains("node.addresses")),
            "{gaps:?}"
        );
        assert!(
            gaps.iter().any(|gap| gap.contains("node.pod_cidrs")),
            "{gaps:?}"
        );
        let mesh = |mode: &str| {
            from_toml::<Config>(
                "c.toml",
                &format!(
                    "[encryption]\nmode = \"ipsec\"\n[ipsec]\nmode = \"{mode}\"\nstrict = true\nkey_rotation_window = 60\n\
                     [node]\naddresses = [\"192.0.2.1/24\"]\npod_cidrs = [\"10.1.0.0/24\"]\n\
                     [[nodes]]\nname = \"b\"\naddresses = [\"192.0.2.2/24\"]\npod_cidrs = [\"10.2.0.0/24\"]\nipsec_key = 3\n\
                     [[nodes]]\nname = \"c\"\n"
                ),
            )
            .unwrap()
        };
        let tunnel = mesh("tunnel");
        assert_eq!(tunnel.ipsec.key_rotation_window, 60);
        assert_eq!(tunnel.nodes[0].ipsec_key, Some(3));
        assert_eq!(
            tunnel.conflicts(),
            [
                "[[nodes]] \"c\" has no addresses: with encryption.mode = \"ipsec\", ESP goes to a node's first address"
            ]
        );
        assert_eq!(
            tunnel.strict_prefixes(),
            ["10.2.0.0/24".parse::<ipnet::IpNet>().unwrap()]
        );
        let transport = mesh("transport");
        assert_eq!(
            transport.strict_prefixes(),
            ["192.0.2.2/32".parse::<ipnet::IpNet>().unwrap()]
        );
        let mode = from_toml::<Config>("c.toml", "[ipsec]\nmode = \"beet\"\n").unwrap_err();
        assert!(
            mode.to_string()
                .starts_with("c.toml:2:8: ipsec.mode: unknown variant `beet`"),
            "{mode}"
        );
    }
}
