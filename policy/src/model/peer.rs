//! Ingress and egress entries and their peers (Cilium ingress.go, egress.go,
//! cidr.go, entity.go, service.go, groups.go, fqdn.go).

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::{Cidr, IcmpRule, LabelSelector, PortRule};

/// One `ingress` or `ingressDeny` entry: peers, ports and ICMP types.
/// No peer means every peer; neither ports nor ICMP types means every
/// protocol and port (Cilium's L3-only rule).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressRule {
    /// Pods (and reserved identities) by label.
    #[serde(
        rename = "fromEndpoints",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub from_endpoints: Vec<LabelSelector>,
    /// Labels every peer must also have (deprecated in Cilium; refused here).
    #[serde(
        rename = "fromRequires",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub from_requires: Vec<LabelSelector>,
    /// Source prefixes.
    #[serde(rename = "fromCIDR", default, skip_serializing_if = "Vec::is_empty")]
    pub from_cidr: Vec<Cidr>,
    /// Source prefixes with exceptions, or CIDR groups.
    #[serde(rename = "fromCIDRSet", default, skip_serializing_if = "Vec::is_empty")]
    pub from_cidr_set: Vec<CidrRule>,
    /// Source entities (`world`, `cluster`, `host`, ...).
    #[serde(
        rename = "fromEntities",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub from_entities: Vec<Entity>,
    /// Cloud security groups.
    #[serde(rename = "fromGroups", default, skip_serializing_if = "Vec::is_empty")]
    pub from_groups: Vec<Groups>,
    /// Nodes by node label.
    #[serde(rename = "fromNodes", default, skip_serializing_if = "Vec::is_empty")]
    pub from_nodes: Vec<LabelSelector>,
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
    #[serde(rename = "toEndpoints", default, skip_serializing_if = "Vec::is_empty")]
    pub to_endpoints: Vec<LabelSelector>,
    /// Labels every peer must also have (deprecated in Cilium; refused here).
    #[serde(rename = "toRequires", default, skip_serializing_if = "Vec::is_empty")]
    pub to_requires: Vec<LabelSelector>,
    /// Destination prefixes.
    #[serde(rename = "toCIDR", default, skip_serializing_if = "Vec::is_empty")]
    pub to_cidr: Vec<Cidr>,
    /// Destination prefixes with exceptions, or CIDR groups.
    #[serde(rename = "toCIDRSet", default, skip_serializing_if = "Vec::is_empty")]
    pub to_cidr_set: Vec<CidrRule>,
    /// Destination entities.
    #[serde(rename = "toEntities", default, skip_serializing_if = "Vec::is_empty")]
    pub to_entities: Vec<Entity>,
    /// Kubernetes services.
    #[serde(rename = "toServices", default, skip_serializing_if = "Vec::is_empty")]
    pub to_services: Vec<Service>,
    /// Cloud security groups.
    #[serde(rename = "toGroups", default, skip_serializing_if = "Vec::is_empty")]
    pub to_groups: Vec<Groups>,
    /// Nodes by node label.
    #[serde(rename = "toNodes", default, skip_serializing_if = "Vec::is_empty")]
    pub to_nodes: Vec<LabelSelector>,
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

impl<'a> From<&'a IngressRule> for PeerRule<'a> {
    fn from(rule: &'a IngressRule) -> Self {
        Self {
            peers: Peers {
                ingress: true,
                endpoints: &rule.from_endpoints,
                requires: &rule.from_requires,
                cidr: &rule.from_cidr,
                cidr_set: &rule.from_cidr_set,
                entities: &rule.from_entities,
                groups: &rule.from_groups,
                nodes: &rule.from_nodes,
                services: &[],
                fqdns: &[],
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
                endpoints: &rule.to_endpoints,
                requires: &rule.to_requires,
                cidr: &rule.to_cidr,
                cidr_set: &rule.to_cidr_set,
                entities: &rule.to_entities,
                groups: &rule.to_groups,
                nodes: &rule.to_nodes,
                services: &rule.to_services,
                fqdns: &rule.to_fqdns,
            },
            to_ports: &rule.to_ports,
            icmps: &rule.icmps,
            authentication: rule.authentication.as_ref(),
        }
    }
}
