//! Ingress and egress entries and their peers (Cilium ingress.go, egress.go,
//! cidr.go, entity.go, service.go, groups.go, fqdn.go).

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::{Cidr, IcmpRule, LabelSelector, PortRule};

/// One `ingress` or `ingressDeny` entry: peers, ports and ICMP types.
/// What the entry selects is [`PeerRule::selection`]: a peer list written
/// empty (`fromEntities: []`) selects nothing; no peer at all selects every
/// peer only beside `toPorts` or `icmps` (`ingress: [{}]` selects nothing);
/// neither ports nor ICMP types means every protocol and port (Cilium's
/// L3-only rule). The five lists Cilium tells absent from empty are
/// `Option`s for that reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressRule {
    /// Pods (and reserved identities) by label.
    #[serde(
        rename = "fromEndpoints",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    /// Labels every peer must also have (deprecated in Cilium; refused here).
    #[serde(
        rename = "fromRequires",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub from_requires: Vec<LabelSelector>,
    /// Source prefixes.
    #[serde(rename = "fromCIDR", default, skip_serializing_if = "Option::is_none")]
    pub from_cidr: Option<Vec<Cidr>>,
    /// Source prefixes with exceptions, or CIDR groups.
    #[serde(
        rename = "fromCIDRSet",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Source entities (`world`, `cluster`, `host`, ...).
    #[serde(
        rename = "fromEntities",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub from_entities: Option<Vec<Entity>>,
    /// Cloud security groups.
    #[serde(rename = "fromGroups", default, skip_serializing_if = "Vec::is_empty")]
    pub from_groups: Vec<Groups>,
    /// Nodes by node label.
    #[serde(rename = "fromNodes", default, skip_serializing_if = "Option::is_none")]
    pub from_nodes: Option<Vec<LabelSelector>>,
    /// Destination ports (and L7 rules).
    #[serde(rename = "toPorts", default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
    /// ICMP types matched (instead of `toPorts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmps: Vec<IcmpRule>,
    /// Mutual authentication required of the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
}

/// One `egress` or `egressDeny` entry: peers, ports and ICMP types.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    /// Pods (and reserved identities) by label.
    #[serde(
        rename = "toEndpoints",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    /// Labels every peer must also have (deprecated in Cilium; refused here).
    #[serde(rename = "toRequires", default, skip_serializing_if = "Vec::is_empty")]
    pub to_requires: Vec<LabelSelector>,
    /// Destination prefixes.
    #[serde(rename = "toCIDR", default, skip_serializing_if = "Option::is_none")]
    pub to_cidr: Option<Vec<Cidr>>,
    /// Destination prefixes with exceptions, or CIDR groups.
    #[serde(rename = "toCIDRSet", default, skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    /// Destination entities.
    #[serde(
        rename = "toEntities",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub to_entities: Option<Vec<Entity>>,
    /// Kubernetes services.
    #[serde(rename = "toServices", default, skip_serializing_if = "Vec::is_empty")]
    pub to_services: Vec<Service>,
    /// Cloud security groups.
    #[serde(rename = "toGroups", default, skip_serializing_if = "Vec::is_empty")]
    pub to_groups: Vec<Groups>,
    /// Nodes by node label.
    #[serde(rename = "toNodes", default, skip_serializing_if = "Option::is_none")]
    pub to_nodes: Option<Vec<LabelSelector>>,
    /// DNS names (resolved through a DNS proxy in Cilium).
    #[serde(rename = "toFQDNs", default, skip_serializing_if = "Vec::is_empty")]
    pub to_fqdns: Vec<FqdnSelector>,
    /// Destination ports (and L7 rules).
    #[serde(rename = "toPorts", default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
    /// ICMP types matched (instead of `toPorts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmps: Vec<IcmpRule>,
    /// Mutual authentication required of the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
}

/// A `fromCIDRSet` / `toCIDRSet` entry: exactly one of `cidr`,
/// `cidrGroupRef` and `cidrGroupSelector`, and sub-prefixes to leave out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrRule {
    /// The prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<Cidr>,
    /// A CiliumCIDRGroup by name.
    #[serde(
        rename = "cidrGroupRef",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cidr_group_ref: Option<String>,
    /// CiliumCIDRGroups by label.
    #[serde(
        rename = "cidrGroupSelector",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cidr_group_selector: Option<LabelSelector>,
    /// Prefixes inside `cidr` that the entry does not cover.
    #[serde(rename = "except", default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<Cidr>,
}

/// An entity: a class of peers without their own identity (Cilium entity.go
/// `EntitySelectorMapping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    /// Every peer.
    All,
    /// Everything outside the cluster.
    World,
    /// The IPv4 part of `world`.
    WorldIpv4,
    /// The IPv6 part of `world`.
    WorldIpv6,
    /// Everything in the cluster: this host, other nodes, pods, health
    /// endpoints, the API server.
    Cluster,
    /// The cluster and the clusters meshed with it.
    ClusterMesh,
    /// This node (and its host-network pods).
    Host,
    /// Endpoints whose identity is not resolved yet.
    Init,
    /// Cilium's ingress proxy.
    Ingress,
    /// Pods not managed by Cilium.
    Unmanaged,
    /// Every other node.
    RemoteNode,
    /// Cilium health endpoints.
    Health,
    /// Nothing.
    None,
    /// The Kubernetes API server.
    KubeApiserver,
}

const ENTITY_NAMES: [(Entity, &str); 14] = [
    (Entity::All, "all"),
    (Entity::World, "world"),
    (Entity::WorldIpv4, "world-ipv4"),
    (Entity::WorldIpv6, "world-ipv6"),
    (Entity::Cluster, "cluster"),
    (Entity::ClusterMesh, "cluster-mesh"),
    (Entity::Host, "host"),
    (Entity::Init, "init"),
    (Entity::Ingress, "ingress"),
    (Entity::Unmanaged, "unmanaged"),
    (Entity::RemoteNode, "remote-node"),
    (Entity::Health, "health"),
    (Entity::None, "none"),
    (Entity::KubeApiserver, "kube-apiserver"),
];

impl Entity {
    /// The name as policies write it.
    pub fn name(self) -> &'static str {
        ENTITY_NAMES
            .iter()
            .find(|(entity, _)| *entity == self)
            .map_or("none", |(_, name)| name)
    }

    /// Every entity.
    pub fn all() -> impl Iterator<Item = Self> {
        ENTITY_NAMES.iter().map(|(entity, _)| *entity)
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Entity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Entity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ENTITY_NAMES
            .iter()
            .find(|(_, name)| *name == text)
            .map(|(entity, _)| *entity)
            // Cilium entity.go: "unsupported entity: X".
            .ok_or_else(|| de::Error::custom(format!("unsupported entity: {text}")))
    }
}

/// `fromGroups` / `toGroups`: cloud security groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Groups {
    /// AWS security groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsGroup>,
}

/// AWS security groups by label, id or name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsGroup {
    /// Group labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Group ids.
    #[serde(
        rename = "securityGroupsIds",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub security_groups_ids: Vec<String>,
    /// Group names.
    #[serde(
        rename = "securityGroupsNames",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub security_groups_names: Vec<String>,
    /// The region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// `toServices`: a Kubernetes service by name or by label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// A service by name.
    #[serde(
        rename = "k8sService",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub k8s_service: Option<K8sService>,
    /// Services by label.
    #[serde(
        rename = "k8sServiceSelector",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub k8s_service_selector: Option<K8sServiceSelector>,
}

/// A Kubernetes service by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sService {
    /// The service's name.
    #[serde(
        rename = "serviceName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub service_name: Option<String>,
    /// Its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Kubernetes services by label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sServiceSelector {
    /// The label selector.
    pub selector: LabelSelector,
    /// The namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A DNS name (`matchName`) or pattern with `*` (`matchPattern`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FqdnSelector {
    /// An exact name.
    #[serde(rename = "matchName", default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    /// A pattern; `*` matches any run of DNS characters.
    #[serde(
        rename = "matchPattern",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub match_pattern: Option<String>,
}

/// `authentication`: mutual authentication of the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authentication {
    /// `disabled`, `required` or `test-always-fail`.
    pub mode: AuthenticationMode,
}

/// Authentication modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthenticationMode {
    /// No authentication.
    Disabled,
    /// Mutual authentication required.
    Required,
    /// Always fails (Cilium's tests).
    TestAlwaysFail,
}

/// The peers of one entry, whatever its direction. Field names are the
/// ingress ones without `from`: [`Peers::field`] gives the written name.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peers<'a> {
    /// Whether this is an ingress entry (names start with `from`).
    pub ingress: bool,
    /// `fromEndpoints` / `toEndpoints`.
    pub endpoints: &'a [LabelSelector],
    /// `fromRequires` / `toRequires`.
    pub requires: &'a [LabelSelector],
    /// `fromCIDR` / `toCIDR`.
    pub cidr: &'a [Cidr],
    /// `fromCIDRSet` / `toCIDRSet`.
    pub cidr_set: &'a [CidrRule],
    /// `fromEntities` / `toEntities`.
    pub entities: &'a [Entity],
    /// `fromGroups` / `toGroups`.
    pub groups: &'a [Groups],
    /// `fromNodes` / `toNodes`.
    pub nodes: &'a [LabelSelector],
    /// `toServices` (egress only).
    pub services: &'a [Service],
    /// `toFQDNs` (egress only).
    pub fqdns: &'a [FqdnSelector],
    /// The first of the lists Cilium tells apart from absent (`Endpoints`,
    /// `Nodes`, `Entities`, `CIDR`, `CIDRSet`) that is written empty, by
    /// kind name as [`Peers::field`] takes it.
    pub written_empty: Option<&'static str>,
}

impl Peers<'_> {
    /// The written field name of a peer kind (`Endpoints` → `fromEndpoints`).
    pub fn field(&self, kind: &str) -> String {
        let prefix = if self.ingress { "from" } else { "to" };
        format!("{prefix}{kind}")
    }

    /// The peer kinds present, by written field name, in Cilium's order.
    pub fn kinds(&self) -> Vec<String> {
        [
            ("Endpoints", !self.endpoints.is_empty()),
            ("CIDR", !self.cidr.is_empty()),
            ("CIDRSet", !self.cidr_set.is_empty()),
            ("Entities", !self.entities.is_empty()),
            ("Services", !self.services.is_empty()),
            ("Groups", !self.groups.is_empty()),
            ("Nodes", !self.nodes.is_empty()),
            ("FQDNs", !self.fqdns.is_empty()),
        ]
        .into_iter()
        .filter(|(_, present)| *present)
        .map(|(kind, _)| self.field(kind))
        .collect()
    }

    /// Whether no peer is named at all: the entry selects every peer.
    /// (`fromRequires` only narrows other peers.)
    pub fn is_wildcard(&self) -> bool {
        self.kinds().is_empty()
    }
}

/// What the peers of one entry select, as Cilium reads an entry
/// (pkg/policy/utils/utils.go `mergeEndpointSelectors`: "Explicitly check
/// for empty non-nil slices, it should not result in any identity being
/// selected"; pkg/policy/rule.go `mergeIngress`/`mergeEgress`: a nil peer
/// slice short-circuits, an L3-only rule needs at least one peer, and with
/// `toPorts`/`icmps` an empty peer slice becomes the wildcard selector).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerSelection {
    /// No peer: the entry only turns default deny on for its direction.
    Nothing(NothingSelected),
    /// Every peer (no peer named, beside ports or ICMP types).
    Every,
    /// The peers the entry names.
    Named,
}

/// Why an entry selects no peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NothingSelected {
    /// A peer list is written empty.
    EmptyList {
        /// Its kind (`Entities`, `CIDR`, ...).
        kind: &'static str,
        /// Whether the entry is an ingress one (`from...`).
        ingress: bool,
    },
    /// Neither a peer nor `toPorts`/`icmps` (`ingress: [{}]`, Cilium's
    /// deny-all idiom).
    EmptyEntry,
}

impl fmt::Display for NothingSelected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyList { kind, ingress } => {
                let prefix = if *ingress { "from" } else { "to" };
                write!(f, "{prefix}{kind} is an empty list, which selects no peer")
            }
            Self::EmptyEntry => f.write_str(
                "an entry without peers, toPorts or icmps selects no peer (it only turns default deny on)",
            ),
        }
    }
}

/// An `ingress` or `egress` entry seen without its direction.
#[derive(Debug, Clone, Copy)]
pub struct PeerRule<'a> {
    /// The peers.
    pub peers: Peers<'a>,
    /// The ports.
    pub to_ports: &'a [PortRule],
    /// The ICMP types.
    pub icmps: &'a [IcmpRule],
    /// Mutual authentication, if asked for.
    pub authentication: Option<&'a Authentication>,
}

impl PeerRule<'_> {
    /// What this entry's peers select (see [`PeerSelection`]).
    pub fn selection(&self) -> PeerSelection {
        if let Some(kind) = self.peers.written_empty {
            return PeerSelection::Nothing(NothingSelected::EmptyList {
                kind,
                ingress: self.peers.ingress,
            });
        }
        if !self.peers.is_wildcard() {
            PeerSelection::Named
        } else if self.to_ports.is_empty() && self.icmps.is_empty() {
            PeerSelection::Nothing(NothingSelected::EmptyEntry)
        } else {
            PeerSelection::Every
        }
    }
}

/// The first list written empty, in Cilium's `mergeEndpointSelectors` order.
fn written_empty<A, B, C, D, E>(
    endpoints: Option<&Vec<A>>,
    nodes: Option<&Vec<B>>,
    entities: Option<&Vec<C>>,
    cidr: Option<&Vec<D>>,
    cidr_set: Option<&Vec<E>>,
) -> Option<&'static str> {
    [
        ("Endpoints", endpoints.is_some_and(Vec::is_empty)),
        ("Nodes", nodes.is_some_and(Vec::is_empty)),
        ("Entities", entities.is_some_and(Vec::is_empty)),
        ("CIDR", cidr.is_some_and(Vec::is_empty)),
        ("CIDRSet", cidr_set.is_some_and(Vec::is_empty)),
    ]
    .into_iter()
    .find_map(|(kind, empty)| empty.then_some(kind))
}

impl<'a> From<&'a IngressRule> for PeerRule<'a> {
    fn from(rule: &'a IngressRule) -> Self {
        Self {
            peers: Peers {
                ingress: true,
                endpoints: rule.from_endpoints.as_deref().unwrap_or_default(),
                requires: &rule.from_requires,
                cidr: rule.from_cidr.as_deref().unwrap_or_default(),
                cidr_set: rule.from_cidr_set.as_deref().unwrap_or_default(),
                entities: rule.from_entities.as_deref().unwrap_or_default(),
                groups: &rule.from_groups,
                nodes: rule.from_nodes.as_deref().unwrap_or_default(),
                services: &[],
                fqdns: &[],
                written_empty: written_empty(
                    rule.from_endpoints.as_ref(),
                    rule.from_nodes.as_ref(),
                    rule.from_entities.as_ref(),
                    rule.from_cidr.as_ref(),
                    rule.from_cidr_set.as_ref(),
                ),
            },
            to_ports: &rule.to_ports,
            icmps: &rule.icmps,
            authentication: rule.authentication.as_ref(),
        }
    }
}

impl<'a> From<&'a EgressRule> for PeerRule<'a> {
    fn from(rule: &'a EgressRule) -> Self {
        Self {
            peers: Peers {
                ingress: false,
                endpoints: rule.to_endpoints.as_deref().unwrap_or_default(),
                requires: &rule.to_requires,
                cidr: rule.to_cidr.as_deref().unwrap_or_default(),
                cidr_set: rule.to_cidr_set.as_deref().unwrap_or_default(),
                entities: rule.to_entities.as_deref().unwrap_or_default(),
                groups: &rule.to_groups,
                nodes: rule.to_nodes.as_deref().unwrap_or_default(),
                services: &rule.to_services,
                fqdns: &rule.to_fqdns,
                written_empty: written_empty(
                    rule.to_endpoints.as_ref(),
                    rule.to_nodes.as_ref(),
                    rule.to_entities.as_ref(),
                    rule.to_cidr.as_ref(),
                    rule.to_cidr_set.as_ref(),
                ),
            },
            to_ports: &rule.to_ports,
            icmps: &rule.icmps,
            authentication: rule.authentication.as_ref(),
        }
    }
}
