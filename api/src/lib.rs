//! palisade's control-socket protocol: HTTP/1.1 with JSON bodies over a Unix
//! socket, under versioned paths. The daemon serves it; `palisadectl` and
//! tests use [`Client`]. Everything here is what both sides agree on.

mod client;
mod conntrack;
mod endpoints;
mod filter;
mod flow;
mod policies;

pub use client::{Client, ClientError};
pub use conntrack::{
    CONNTRACK_DEFAULT_LIMIT, CONNTRACK_MAX_LIMIT, ConnectionState, ConntrackEntry, ConntrackFlush,
    ConntrackList,
};
pub use endpoints::{
    Endpoint, EndpointGc, EndpointKey, EndpointList, EndpointRegistration, EndpointsRemoved,
    MAX_CONTAINER_ID_LEN, MAX_ENDPOINT_ADDRESSES, MAX_ENDPOINT_METADATA,
    MAX_ENDPOINT_METADATA_BYTES,
};
pub use filter::{EventType, FilterError, FlowFilter, FlowQuery, ProtocolFilter};
pub use flow::{
    Flow, FlowEndpoint, FlowIp, FlowPolicy, Icmp, Interface, IpVersion, Layer4, PortPair, TcpFlags,
    TrafficDirection, Verdict,
};
pub use palisade_policy::Diagnostic;
pub use policies::{
    ApplyRequest, ApplyResponse, ConfirmResponse, DiffResponse, FlowChange, PendingConfirm,
    PolicyDocument, PolicyFile, PolicyList, PolicySource, PolicySummary, UnenforcedRule,
};
use serde::{Deserialize, Serialize};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/palisade/palisade.sock";

/// Request paths.
pub mod paths {
    /// `GET`: [`super::Status`].
    pub const STATUS: &str = "/v1/status";
    /// `GET`: [`super::Counters`].
    pub const COUNTERS: &str = "/v1/counters";
    /// `GET`: [`super::PolicyList`]; `POST` an [`super::ApplyRequest`]: [`super::ApplyResponse`].
    pub const POLICIES: &str = "/v1/policies";
    /// `GET` with the name appended: [`super::PolicyDocument`]; `DELETE`
    /// (query `dry_run=true` to preview): [`super::ApplyResponse`].
    pub const POLICY: &str = "/v1/policies/";
    /// `POST` an [`super::ApplyRequest`]: [`super::DiffResponse`]; changes nothing.
    pub const DIFF: &str = "/v1/diff";
    /// `POST`: keeps the rules of an apply made with a confirm deadline
    /// ([`super::ConfirmResponse`]).
    pub const CONFIRM: &str = "/v1/confirm";
    /// `POST`: re-reads the policy directory and the applied state
    /// ([`super::ApplyResponse`]).
    pub const RELOAD: &str = "/v1/reload";
    /// `GET` (`?limit=N`): [`super::ConntrackList`]; `DELETE`: [`super::ConntrackFlush`].
    pub const CONNTRACK: &str = "/v1/conntrack";
    /// `GET` with a [`super::FlowQuery`] as query string: newline-delimited [`super::Flow`]s.
    pub const FLOWS: &str = "/v1/flows";
    /// `GET`: [`super::WireGuardStatus`]; 404 when encryption is off.
    pub const WIREGUARD: &str = "/v1/wireguard";
    /// `GET`: [`super::EncryptionStatus`], how traffic to the other nodes is
    /// encrypted, whatever the backend (also when it is not).
    pub const ENCRYPTION: &str = "/v1/encryption";
    /// `POST` ([`super::RotateKeyRequest`]): a new WireGuard key pair,
    /// switched to or staged ([`super::RotatedKey`]).
    pub const WIREGUARD_ROTATE_KEY: &str = "/v1/wireguard/rotate-key";
    /// `GET`: [`super::EndpointList`]; `POST` an [`super::EndpointRegistration`]:
    /// the [`super::Endpoint`] registered.
    pub const ENDPOINTS: &str = "/v1/endpoints";
    /// `DELETE` with `CONTAINER_ID/INTERFACE` appended: [`super::EndpointsRemoved`]
    /// (empty when there was no such endpoint).
    pub const ENDPOINT: &str = "/v1/endpoints/";
    /// `POST` an [`super::EndpointGc`]: [`super::EndpointsRemoved`].
    pub const ENDPOINTS_GC: &str = "/v1/endpoints-gc";
}

/// The body of `POST /v1/wireguard/rotate-key` (optional: no body switches).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateKeyRequest {
    /// Only make the next key pair and publish its public key; the tunnel
    /// keeps the current one until the next rotation without `stage`.
    #[serde(default)]
    pub stage: bool,
}

/// What `POST /v1/wireguard/rotate-key` made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotatedKey {
    /// The node's new public key (base64): give it to the other nodes, as
    /// `public_key`, or as `next_public_key` when it is only staged.
    pub public_key: String,
    /// Whether the key is only staged (the tunnel still uses the old one).
    #[serde(default)]
    pub staged: bool,
}

/// How traffic to the other nodes is encrypted (`GET /v1/encryption`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionStatus {
    /// The backend in force.
    pub mode: EncryptionMode,
    /// The WireGuard tunnel, in mode `wireguard`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireGuardStatus>,
    /// The IPsec mesh, in mode `ipsec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipsec: Option<IpsecStatus>,
}

/// The IPsec mesh: keys, each node's states and policies, the kernel's
/// XFRM error counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpsecStatus {
    /// `tunnel` or `transport`.
    pub mode: String,
    /// The SPIs of the keys installed, lowest first.
    pub keys: Vec<u8>,
    /// The newest key installed: what the other nodes' `ipsec_key` should
    /// say of this node once they have it too.
    pub newest_key: u8,
    /// One entry per configured node.
    pub nodes: Vec<IpsecNodeStatus>,
    /// `/proc/net/xfrm_stat` (XfrmInNoStates, XfrmInStateProtoError, ...).
    pub xfrm_stats: std::collections::BTreeMap<String, u64>,
}

/// One node of the IPsec mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpsecNodeStatus {
    /// The node's name (`[[nodes]] name`).
    pub name: String,
    /// Its address, where ESP goes.
    pub address: String,
    /// The key traffic to it is encrypted with.
    pub outbound_key: u8,
    /// Its security associations in the kernel (both directions).
    pub states: usize,
    /// How many it should have.
    pub states_expected: usize,
    /// Its policies in the kernel.
    pub policies: usize,
    /// How many it should have.
    pub policies_expected: usize,
    /// Bytes encrypted to it.
    pub tx_bytes: u64,
    /// Bytes decrypted from it.
    pub rx_bytes: u64,
}

/// The encryption backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionMode {
    /// Traffic to the other nodes is not encrypted.
    Disabled,
    /// A WireGuard tunnel to each node.
    Wireguard,
    /// IPsec (ESP) to each node.
    Ipsec,
}

impl std::fmt::Display for EncryptionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Disabled => "disabled",
            Self::Wireguard => "wireguard",
            Self::Ipsec => "ipsec",
        })
    }
}

/// The WireGuard tunnel, as `wg show` shows it, with the nodes' names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireGuardStatus {
    /// The tunnel interface.
    pub interface: String,
    /// `kernel` or `userspace`.
    pub backend: String,
    /// Why that backend.
    pub backend_reason: String,
    /// This node's public key (base64).
    pub public_key: String,
    /// The public key staged by `rotate-key --stage`, used from the next
    /// `rotate-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_public_key: Option<String>,
    /// UDP port the tunnel listens on.
    pub listen_port: u16,
    /// One entry per configured node.
    pub peers: Vec<WireGuardPeerStatus>,
}

/// One node of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireGuardPeerStatus {
    /// The node's name (`[[nodes]] name`).
    pub name: String,
    /// Its public key in force (base64).
    pub public_key: String,
    /// Its `next_public_key`, while that waits for its first handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_public_key: Option<String>,
    /// Where its tunnel is reached (the last address it spoke from).
    pub endpoint: String,
    /// Prefixes routed to it through the tunnel.
    pub allowed_ips: Vec<String>,
    /// Seconds since the latest handshake; none before the first.
    pub latest_handshake_seconds_ago: Option<u64>,
    /// Bytes received from it through the tunnel.
    pub rx_bytes: u64,
    /// Bytes sent to it through the tunnel.
    pub tx_bytes: u64,
}

/// What the daemon is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// palisaded's version.
    pub version: String,
    /// This node's name.
    pub node_name: String,
    /// The enforcing backend, such as `ebpf`.
    pub datapath: String,
    /// What the kernel offers the datapath.
    pub kernel: KernelFeatures,
    /// Interfaces the datapath is attached to.
    pub interfaces: Vec<InterfaceStatus>,
    /// Generation of the rule table in force (increases with each apply).
    pub generation: u32,
    /// Names of the policies in force that select this node.
    pub policies: Vec<String>,
    /// Number of compiled rules.
    pub rules: usize,
    /// Whether ingress is default deny.
    pub ingress_default_deny: bool,
    /// Whether would-be drops are forwarded and reported as AUDIT.
    pub audit_mode: bool,
    /// Services reachable whatever the policies say.
    pub failsafe: Failsafe,
    /// An apply that rolls back unless confirmed, if one is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_confirm: Option<PendingConfirm>,
    /// Packet counters since the datapath was loaded.
    pub counters: Counters,
    /// How full the connection-tracking tables are (counted every few
    /// seconds; empty until the first count).
    #[serde(default)]
    pub conntrack: Vec<ConntrackFill>,
    /// Rules in force that enforce nothing on this node, and why.
    #[serde(default)]
    pub unenforced: Vec<UnenforcedRule>,
}

/// How full one connection-tracking table is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackFill {
    /// `tcp` or `other`.
    pub table: String,
    /// Connections tracked (not expired).
    pub entries: usize,
    /// Connections it holds at most (`datapath.ct_tcp_max`, `ct_any_max`).
    pub capacity: usize,
    /// About how many it holds before the kernel evicts the least recently
    /// used entries to make room (the capacity less a per-CPU reserve).
    #[serde(default)]
    pub evicting_from: usize,
}

/// The failsafe services in force (`[failsafe]` in the configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failsafe {
    /// Services on this node any peer may reach, as `tcp:22`.
    pub inbound: Vec<String>,
    /// Services this node may always reach.
    pub outbound: Vec<String>,
    /// Traffic the datapath always passes, whatever the configuration says.
    pub always: Vec<String>,
}

/// The kernel's release and the features palisade uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFeatures {
    /// `uname -r`.
    pub release: String,
    /// Kernel BTF (`/sys/kernel/btf/vmlinux`).
    pub btf: bool,
    /// bpffs mounted at `/sys/fs/bpf` (pinning survives restarts).
    pub bpffs: bool,
}

/// One attached interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub ifindex: u32,
    /// How the backend hooks the interface, in its own words (the eBPF
    /// backend: `tcx ingress/egress, xdp native`).
    pub hooks: String,
    /// Whether the programs are on it now.
    #[serde(default)]
    pub state: InterfaceState,
}

/// Whether a configured interface is enforced on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceState {
    /// The programs are attached.
    #[default]
    Enforcing,
    /// The interface is gone: nothing is enforced on it until it is back.
    Missing,
}

/// Datapath counters, summed over CPUs, since the datapath was loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Traffic to this node.
    pub ingress: DirectionCounters,
    /// Traffic from this node.
    pub egress: DirectionCounters,
}

impl Counters {
    /// All drops, both directions.
    pub fn dropped(&self) -> u64 {
        self.ingress.dropped() + self.egress.dropped()
    }

    /// All audited packets, both directions.
    pub fn audited(&self) -> u64 {
        self.ingress.audited() + self.egress.audited()
    }

    /// New connections forwarded, both directions.
    pub fn forwarded(&self) -> u64 {
        self.ingress.forwarded.packets + self.egress.forwarded.packets
    }

    /// Flow events lost to a full ring buffer, both directions.
    pub fn events_lost(&self) -> u64 {
        self.ingress.events_lost + self.egress.events_lost
    }
}

/// Counters of one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionCounters {
    /// New connections forwarded (by a rule, the default or the failsafe list).
    pub forwarded: PacketCount,
    /// Packets of tracked connections and related ICMP errors.
    pub established: PacketCount,
    /// Dropped because no allow rule matched (`POLICY_DENIED`).
    pub dropped_policy_denied: PacketCount,
    /// Dropped by a deny rule (`POLICY_DENY`).
    pub dropped_policy_deny: PacketCount,
    /// Dropped by the XDP prefilter (`PREFILTER`).
    pub dropped_prefilter: PacketCount,
    /// Dropped as malformed (`INVALID_PACKET`).
    pub dropped_invalid: PacketCount,
    /// Later fragments dropped without their first (`FRAG_NOT_FOUND`).
    pub dropped_fragment: PacketCount,
    /// Unencrypted traffic of an encrypted peer's prefix, in WireGuard
    /// strict mode (`UNENCRYPTED_TRAFFIC`; audited ones too in audit mode).
    #[serde(default)]
    pub dropped_unencrypted: PacketCount,
    /// Forwarded in audit mode that no allow rule matched.
    pub audited_policy_denied: PacketCount,
    /// Forwarded in audit mode that a deny rule matched.
    pub audited_policy_deny: PacketCount,
    /// New connections the conntrack table refused (dropped or forwarded
    /// untracked, as `datapath.ct_full` says).
    pub ct_insert_failed: PacketCount,
    /// Flow events lost to a full ring buffer.
    pub events_lost: u64,
    /// Flow events held back by the per-CPU rate limit.
    pub events_suppressed: u64,
}

impl DirectionCounters {
    /// All drops.
    pub fn dropped(&self) -> u64 {
        self.dropped_policy_denied.packets
            + self.dropped_policy_deny.packets
            + self.dropped_prefilter.packets
            + self.dropped_invalid.packets
            + self.dropped_fragment.packets
            + self.dropped_unencrypted.packets
    }

    /// All audited packets.
    pub fn audited(&self) -> u64 {
        self.audited_policy_denied.packets + self.audited_policy_deny.packets
    }
}

/// Packets and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketCount {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One line saying what went wrong.
    pub error: String,
    /// Positioned problems in the request's files, if that is what went wrong.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<Diagnostic>,
}
