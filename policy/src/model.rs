//! The policy model: CiliumClusterwideNetworkPolicy, field for field.
//!
//! Field names are Cilium's YAML names (`fromCIDR`, `toPorts`, `endPort`), so a
//! TOML policy reads like the CRD it mirrors. Unknown fields are refused rather
//! than ignored: a typo must never silently widen or narrow a firewall.
//! Field meanings follow Cilium's `pkg/policy/api` documentation.

use std::{collections::BTreeMap, fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// The Kubernetes API version Cilium's policy CRDs use.
pub const API_VERSION: &str = "cilium.io/v2";

/// One policy document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Always `cilium.io/v2`.
    #[serde(rename = "apiVersion", default = "default_api_version")]
    pub api_version: String,
    /// The policy kind.
    pub kind: PolicyKind,
    /// Name and labels.
    pub metadata: Metadata,
    /// The rule, when the document has a single one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Rule>,
    /// More rules, evaluated together with `spec`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub specs: Vec<Rule>,
}

fn default_api_version() -> String {
    API_VERSION.to_owned()
}

impl Policy {
    /// `spec` followed by `specs`, each with the path it has in the document.
    pub fn rules(&self) -> impl Iterator<Item = (String, &Rule)> {
        self.spec
            .iter()
            .map(|rule| ("spec".to_owned(), rule))
            .chain(
                self.specs
                    .iter()
                    .enumerate()
                    .map(|(i, rule)| (format!("specs[{i}]"), rule)),
            )
    }
}

/// Policy kinds palisade understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyKind {
    /// A cluster-wide policy; with `nodeSelector` it is a host policy.
    CiliumClusterwideNetworkPolicy,
}

/// Object metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The policy's name; applying a policy with the same name replaces it.
    pub name: String,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One rule: what it selects and what it allows or denies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Selects the nodes this host policy applies to; `{}` selects every node.
    #[serde(rename = "nodeSelector")]
    pub node_selector: LabelSelector,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Traffic to allow into the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    /// Traffic to deny into the node; beats any allow.
    #[serde(rename = "ingressDeny", default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_deny: Vec<IngressRule>,
    /// Allowed traffic from this node (to peers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
    /// Denied traffic from this node; beats every allow rule.
    #[serde(rename = "egressDeny", default, skip_serializing_if = "Vec::is_empty")]
    pub egress_deny: Vec<EgressRule>,
}

/// A Kubernetes label selector (the `matchLabels` part).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSelector {
    /// Every label here must be present with this value.
    #[serde(
        rename = "matchLabels",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub match_labels: BTreeMap<String, String>,
}

impl LabelSelector {
    /// Whether a set of labels satisfies this selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }
}

/// One ingress (or ingress deny) rule: peers and ports, both optional.
/// No peer means every peer; no ports means every protocol and port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressRule {
    /// Source prefixes this rule applies to.
    #[serde(rename = "fromCIDR", default, skip_serializing_if = "Vec::is_empty")]
    pub from_cidr: Vec<Cidr>,
    /// Destination ports this rule applies to.
    #[serde(rename = "toPorts", default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
    /// ICMP types matched (instead of `toPorts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmps: Vec<IcmpRule>,
}

/// One entry of `egress` / `egressDeny`: peers and the ports on them.
/// Either list empty means "any" (Cilium's L3-only / L4-only rules).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    /// Destination prefixes.
    #[serde(rename = "toCIDR", default, skip_serializing_if = "Vec::is_empty")]
    pub to_cidr: Vec<Cidr>,
    /// Destination ports and protocols.
    #[serde(rename = "toPorts", default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
    /// ICMP types matched (instead of `toPorts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmps: Vec<IcmpRule>,
}

/// One of a rule's four lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Section {
    /// `ingress`.
    Ingress,
    /// `ingressDeny`.
    IngressDeny,
    /// `egress`.
    Egress,
    /// `egressDeny`.
    EgressDeny,
}

impl Section {
    /// The field name, as in the policy.
    pub fn field(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::IngressDeny => "ingressDeny",
            Self::Egress => "egress",
            Self::EgressDeny => "egressDeny",
        }
    }

    /// Whether the section denies.
    pub fn is_deny(self) -> bool {
        matches!(self, Self::IngressDeny | Self::EgressDeny)
    }

    /// Whether the section is about traffic to this node.
    pub fn is_ingress(self) -> bool {
        matches!(self, Self::Ingress | Self::IngressDeny)
    }
}

/// An `ingress` or `egress` entry seen without its direction: the peers
/// (`fromCIDR` or `toCIDR`), ports and ICMP types.
#[derive(Debug, Clone, Copy)]
pub struct PeerRule<'a> {
    /// The peer prefixes; none means every peer.
    pub peers: &'a [Cidr],
    /// The ports.
    pub to_ports: &'a [PortRule],
    /// The ICMP types.
    pub icmps: &'a [IcmpRule],
}

impl<'a> From<&'a IngressRule> for PeerRule<'a> {
    fn from(rule: &'a IngressRule) -> Self {
        Self {
            peers: &rule.from_cidr,
            to_ports: &rule.to_ports,
            icmps: &rule.icmps,
        }
    }
}

impl<'a> From<&'a EgressRule> for PeerRule<'a> {
    fn from(rule: &'a EgressRule) -> Self {
        Self {
            peers: &rule.to_cidr,
            to_ports: &rule.to_ports,
            icmps: &rule.icmps,
        }
    }
}

impl Rule {
    /// The rule's four lists with their entries, in document order.
    pub fn sections(&self) -> [(Section, Vec<PeerRule<'_>>); 4] {
        [
            (
                Section::Ingress,
                self.ingress.iter().map(PeerRule::from).collect(),
            ),
            (
                Section::IngressDeny,
                self.ingress_deny.iter().map(PeerRule::from).collect(),
            ),
            (
                Section::Egress,
                self.egress.iter().map(PeerRule::from).collect(),
            ),
            (
                Section::EgressDeny,
                self.egress_deny.iter().map(PeerRule::from).collect(),
            ),
        ]
    }
}

/// One `icmps` entry: the ICMP types it matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpRule {
    /// The matched types.
    #[serde(default)]
    pub fields: Vec<IcmpField>,
}

/// One ICMP or ICMPv6 type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpField {
    /// IPv4 (ICMP, the default) or IPv6 (ICMPv6).
    #[serde(default)]
    pub family: IcmpFamily,
    /// The type, by number or by Cilium's CamelCase name.
    #[serde(rename = "type")]
    pub icmp_type: IcmpType,
}

impl IcmpField {
    /// The IP protocol number this field matches.
    pub fn protocol(&self) -> u8 {
        match self.family {
            IcmpFamily::IPv4 => palisade_common::protocol::ICMP,
            IcmpFamily::IPv6 => palisade_common::protocol::ICMPV6,
        }
    }
}

/// The address family of an [`IcmpField`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IcmpFamily {
    /// ICMP.
    #[default]
    IPv4,
    /// ICMPv6.
    IPv6,
}

/// An ICMP type number. Names are resolved when the policy is compiled, per
/// family, as Cilium's `ICMPField` does (pkg/policy/api/icmp.go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpType {
    /// A number 0-255.
    Number(u8),
    /// One of Cilium's names, kept as written for the round trip.
    Name(&'static str),
}

/// Cilium's ICMP (IPv4) type names (icmp.go `icmpIpv4TypeNameToCode`).
const ICMPV4_TYPE_NAMES: [(&str, u8); 14] = [
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("Echo", 8),
    ("EchoRequest", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];

/// Cilium's ICMPv6 type names (icmp.go `icmpIpv6TypeNameToCode`).
const ICMPV6_TYPE_NAMES: [(&str, u8); 20] = [
    ("DestinationUnreachable", 1),
    ("PacketTooBig", 2),
    ("TimeExceeded", 3),
    ("ParameterProblem", 4),
    ("EchoRequest", 128),
    ("EchoReply", 129),
    ("MulticastListenerQuery", 130),
    ("MulticastListenerReport", 131),
    ("MulticastListenerDone", 132),
    ("RouterSolicitation", 133),
    ("RouterAdvertisement", 134),
    ("NeighborSolicitation", 135),
    ("NeighborAdvertisement", 136),
    ("RedirectMessage", 137),
    ("RouterRenumbering", 138),
    ("ICMPNodeInformationQuery", 139),
    ("ICMPNodeInformationResponse", 140),
    ("InverseNeighborDiscoverySolicitation", 141),
    ("InverseNeighborDiscoveryAdvertisement", 142),
    ("Version2MulticastListenerReport", 143),
];

impl IcmpType {
    /// The type number for `family`; `None` for a name that family lacks.
    pub fn code(self, family: IcmpFamily) -> Option<u8> {
        match self {
            Self::Number(number) => Some(number),
            Self::Name(name) => {
                let names: &[(&str, u8)] = match family {
                    IcmpFamily::IPv4 => &ICMPV4_TYPE_NAMES,
                    IcmpFamily::IPv6 => &ICMPV6_TYPE_NAMES,
                };
                names
                    .iter()
                    .find(|(known, _)| *known == name)
                    .map(|(_, code)| *code)
            }
        }
    }
}

impl fmt::Display for IcmpType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(number) => number.fmt(f),
            Self::Name(name) => name.fmt(f),
        }
    }
}

impl Serialize for IcmpType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Number(number) => serializer.serialize_u8(*number),
            Self::Name(name) => serializer.serialize_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for IcmpType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IcmpTypeVisitor;
        impl de::Visitor<'_> for IcmpTypeVisitor {
            type Value = IcmpType;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ICMP type 0-255 or a name such as \"EchoRequest\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IcmpType, E> {
                u8::try_from(v)
                    .map(IcmpType::Number)
                    .map_err(|_| E::custom(format!("ICMP type {v} is out of range 0-255")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IcmpType, E> {
                u8::try_from(v)
                    .map(IcmpType::Number)
                    .map_err(|_| E::custom(format!("ICMP type {v} is out of range 0-255")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IcmpType, E> {
                if let Ok(number) = v.parse::<u64>() {
                    return self.visit_u64(number);
                }
                ICMPV4_TYPE_NAMES
                    .iter()
                    .chain(ICMPV6_TYPE_NAMES.iter())
                    .find(|(name, _)| *name == v)
                    .map(|(name, _)| IcmpType::Name(name))
                    .ok_or_else(|| {
                        E::custom(format!(
                            "unknown ICMP type name {v:?}: use a number or a name such as \"EchoRequest\""
                        ))
                    })
            }
        }
        deserializer.deserialize_any(IcmpTypeVisitor)
    }
}

/// A list of ports (Cilium allows at most 40 per entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRule {
    /// The ports.
    #[serde(default)]
    pub ports: Vec<PortProtocol>,
}

/// A port or port range and its protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortProtocol {
    /// The port; 0 means every port.
    pub port: Port,
    /// Last port of a range; at or below `port` means the single `port`.
    #[serde(rename = "endPort", default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    /// The protocol; `ANY` (the default) means TCP, UDP and SCTP.
    #[serde(default)]
    pub protocol: Protocol,
}

impl PortProtocol {
    /// The inclusive port range this entry covers.
    pub fn range(&self) -> (u16, u16) {
        match (self.port.0, self.end_port) {
            (0, _) => (0, u16::MAX),
            (port, Some(end)) if end > port => (port, end),
            (port, _) => (port, port),
        }
    }
}

/// L4 protocols a port rule can name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP, UDP and SCTP.
    #[default]
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The datapath code of this protocol (see `palisade_common::protocol`).
    pub fn code(self) -> u8 {
        use palisade_common::protocol;
        match self {
            Self::Any => protocol::ANY,
            Self::Tcp => protocol::TCP,
            Self::Udp => protocol::UDP,
            Self::Sctp => protocol::SCTP,
        }
    }
}

/// A port number, written as a number or a numeric string as Cilium allows.
///
/// Named ports (`"http"`) are refused: they resolve through a pod's container
/// ports, which a host does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port(pub u16);

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl de::Visitor<'_> for PortVisitor {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number 0-65535")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
                u16::try_from(v)
                    .map(Port)
                    .map_err(|_| E::custom(format!("port {v} is out of range 0-65535")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
                u16::try_from(v)
                    .map(Port)
                    .map_err(|_| E::custom(format!("port {v} is out of range 0-65535")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Port, E> {
                match v.parse::<u64>() {
                    Ok(number) => self.visit_u64(number),
                    Err(_) => Err(E::custom(format!(
                        "named port {v:?} cannot be resolved for a host policy: write the port number"
                    ))),
                }
            }
        }
        deserializer.deserialize_any(PortVisitor)
    }
}

/// An IP prefix as Cilium accepts it: `a.b.c.d/n`, `x::/n`, or a bare address
/// (a /32 or /128). Host bits are cleared, as Cilium does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr(pub IpNet);

impl FromStr for Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        if let Ok(address) = text.parse::<IpAddr>() {
            return Ok(Cidr(IpNet::from(address)));
        }
        Err(format!(
            "invalid CIDR {text:?}: expected an address with a prefix length such as \"192.0.2.0/24\" or \"2001:db8::/32\""
        ))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}
