//! The flow record, modelled on Hubble's `flow.Flow` so that its JSON reads
//! like `hubble observe -o json` (same field names where the meaning is the same).

use std::{fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Serialize};

/// What became of a packet (Hubble's `Verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    /// Let through.
    Forwarded,
    /// Dropped.
    Dropped,
    /// Would have been dropped; let through because the policy is in audit mode.
    Audit,
    /// A verdict code this version does not know.
    VerdictUnknown,
}

impl Verdict {
    /// The name on the wire and in the journal: `FORWARDED`, `DROPPED`, `AUDIT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "FORWARDED",
            Self::Dropped => "DROPPED",
            Self::Audit => "AUDIT",
            Self::VerdictUnknown => "VERDICT_UNKNOWN",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = String;

    /// Reads a verdict's name in any case.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        [Self::Forwarded, Self::Dropped, Self::Audit]
            .into_iter()
            .find(|verdict| verdict.as_str().eq_ignore_ascii_case(value))
            .ok_or_else(|| "expected FORWARDED, DROPPED or AUDIT".to_owned())
    }
}

/// Which way a packet or connection went, seen from this node (Hubble's
/// `TrafficDirection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrafficDirection {
    /// Towards this node.
    Ingress,
    /// From this node.
    Egress,
}

impl TrafficDirection {
    /// The name on the wire: `INGRESS` or `EGRESS`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "INGRESS",
            Self::Egress => "EGRESS",
        }
    }
}

impl fmt::Display for TrafficDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The IP version of a flow, named as Hubble names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpVersion {
    /// IPv4.
    #[serde(rename = "IPv4")]
    V4,
    /// IPv6.
    #[serde(rename = "IPv6")]
    V6,
}

/// One verdict on one packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// When the packet was judged (RFC 3339, UTC).
    pub time: String,
    /// What became of the packet.
    pub verdict: Verdict,
    /// Why it was dropped (`POLICY_DENIED`, `POLICY_DENY`); absent when forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason_desc: Option<String>,
    /// Addresses.
    #[serde(rename = "IP")]
    pub ip: FlowIp,
    /// Transport header fields, when there is a known one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4: Option<Layer4>,
    /// Which way the packet went.
    pub traffic_direction: TrafficDirection,
    /// The interface the packet crossed.
    pub interface: Interface,
    /// The policy rule that allowed it, if a rule did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_allowed_by: Vec<FlowPolicy>,
    /// The policy rule that denied it, if a rule did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_denied_by: Vec<FlowPolicy>,
    /// The egress policy rule that allowed it, if a rule did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_allowed_by: Vec<FlowPolicy>,
    /// The egress policy rule that denied it, if a rule did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_denied_by: Vec<FlowPolicy>,
    /// The pod that sent it, when the source address is a pod's endpoint
    /// on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<FlowEndpoint>,
    /// The pod it was for, when the destination address is a pod's
    /// endpoint on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<FlowEndpoint>,
    /// The node that saw it.
    pub node_name: String,
    /// Generation of the rule table that decided.
    pub policy_generation: u32,
    /// Packet length in bytes.
    pub packet_length: u32,
    /// A one-line description.
    #[serde(rename = "Summary")]
    pub summary: String,
}

/// IP addresses of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowIp {
    /// Source address.
    pub source: IpAddr,
    /// Destination address.
    pub destination: IpAddr,
    /// `IPv4` or `IPv6`.
    #[serde(rename = "ipVersion")]
    pub ip_version: IpVersion,
}

/// Transport header fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layer4 {
    /// TCP ports and flags.
    #[serde(rename = "TCP")]
    Tcp {
        /// Source port.
        source_port: u16,
        /// Destination port.
        destination_port: u16,
        /// Flags that were set.
        flags: TcpFlags,
    },
    /// UDP ports.
    #[serde(rename = "UDP")]
    Udp(PortPair),
    /// SCTP ports.
    #[serde(rename = "SCTP")]
    Sctp(PortPair),
    /// ICMP type and code.
    #[serde(rename = "ICMPv4")]
    IcmpV4(Icmp),
    /// ICMPv6 type and code.
    #[serde(rename = "ICMPv6")]
    IcmpV6(Icmp),
}

/// Source and destination ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortPair {
    /// Source port.
    pub source_port: u16,
    /// Destination port.
    pub destination_port: u16,
}

/// ICMP type and code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Icmp {
    /// ICMP type.
    #[serde(rename = "type")]
    pub kind: u8,
    /// ICMP code.
    pub code: u8,
}

/// TCP flags, as Hubble names them; only set flags are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub struct TcpFlags {
    /// FIN.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fin: bool,
    /// SYN.
    #[serde(default, skip_serializing_if = "is_false")]
    pub syn: bool,
    /// RST.
    #[serde(default, skip_serializing_if = "is_false")]
    pub rst: bool,
    /// PSH.
    #[serde(default, skip_serializing_if = "is_false")]
    pub psh: bool,
    /// ACK.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ack: bool,
    /// URG.
    #[serde(default, skip_serializing_if = "is_false")]
    pub urg: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

impl TcpFlags {
    /// Decodes the TCP header's flags byte.
    pub fn from_byte(byte: u8) -> Self {
        Self {
            fin: byte & 0x01 != 0,
            syn: byte & 0x02 != 0,
            rst: byte & 0x04 != 0,
            psh: byte & 0x08 != 0,
            ack: byte & 0x10 != 0,
            urg: byte & 0x20 != 0,
        }
    }
}

impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (self.syn, "SYN"),
            (self.ack, "ACK"),
            (self.fin, "FIN"),
            (self.rst, "RST"),
            (self.psh, "PSH"),
            (self.urg, "URG"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        f.write_str(&set.join(", "))
    }
}

/// A pod at one end of a flow (Hubble's `Endpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEndpoint {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod_name: String,
    /// Its security identity (palisadectl endpoint list).
    pub identity: u32,
    /// Its labels as Hubble writes them (`k8s:KEY=VALUE`), the namespace
    /// label `k8s:io.kubernetes.pod.namespace` included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

impl FlowEndpoint {
    /// Whether the pod carries label `key` (with `value`, when given),
    /// with or without its `k8s:` source.
    pub fn has_label(&self, key: &str, value: Option<&str>) -> bool {
        let key = key.strip_prefix("k8s:").unwrap_or(key);
        self.labels.iter().any(|label| {
            let label = label.strip_prefix("k8s:").unwrap_or(label);
            let (label_key, label_value) = label.split_once('=').unwrap_or((label, ""));
            label_key == key && value.is_none_or(|value| value == label_value)
        })
    }
}

/// An interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface index.
    pub index: u32,
    /// Interface name, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// The policy rule that decided a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowPolicy {
    /// The policy's name.
    pub name: String,
    /// The namespace of a CiliumNetworkPolicy (as Hubble's `Policy.namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Field path of the rule inside the policy, such as `spec.ingress[0]`.
    pub rule: String,
}

impl FlowPolicy {
    /// The policy as `palisadectl` names it: `NAME` or `NAMESPACE/NAME`.
    pub fn policy(&self) -> String {
        palisade_policy::PolicyName {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
        .to_string()
    }
}

impl Flow {
    /// The pods at either end that this node knows.
    pub fn pods(&self) -> impl Iterator<Item = &FlowEndpoint> {
        self.source.iter().chain(&self.destination)
    }

    /// Every rule named as deciding this flow, either direction.
    pub fn decided_by(&self) -> impl Iterator<Item = &FlowPolicy> {
        self.ingress_allowed_by
            .iter()
            .chain(&self.ingress_denied_by)
            .chain(&self.egress_allowed_by)
            .chain(&self.egress_denied_by)
    }

    /// Source and destination as `address:port` (`[address]:port` for IPv6),
    /// or bare addresses for protocols without ports; a pod this node knows
    /// is named `NAMESPACE/POD` instead of its address, as Hubble names it.
    pub fn endpoints(&self) -> (String, String) {
        let name =
            |address: IpAddr, pod: Option<&FlowEndpoint>, port: Option<u16>| match (pod, port) {
                (Some(pod), Some(port)) => format!("{}/{}:{port}", pod.namespace, pod.pod_name),
                (Some(pod), None) => format!("{}/{}", pod.namespace, pod.pod_name),
                (None, Some(port)) => join_port(address, port),
                (None, None) => address.to_string(),
            };
        let ports = self.l4.as_ref().and_then(Layer4::ports);
        (
            name(
                self.ip.source,
                self.source.as_ref(),
                ports.map(|ports| ports.source_port),
            ),
            name(
                self.ip.destination,
                self.destination.as_ref(),
                ports.map(|ports| ports.destination_port),
            ),
        )
    }

    /// The `hubble observe` compact line for this flow.
    pub fn compact(&self) -> String {
        let (source, destination) = self.endpoints();
        let mut line = format!(
            "{} {} -> {} {} {}",
            self.time, source, destination, self.verdict, self.summary
        );
        if let Some(reason) = &self.drop_reason_desc {
            line.push_str(&format!(" ({reason})"));
        }
        line
    }
}

impl Layer4 {
    /// The source and destination ports, for the protocols that have them.
    pub fn ports(&self) -> Option<PortPair> {
        match self {
            Self::Tcp {
                source_port,
                destination_port,
                ..
            } => Some(PortPair {
                source_port: *source_port,
                destination_port: *destination_port,
            }),
            Self::Udp(ports) | Self::Sctp(ports) => Some(*ports),
            Self::IcmpV4(_) | Self::IcmpV6(_) => None,
        }
    }
}

fn join_port(address: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(address, port).to_string()
}
