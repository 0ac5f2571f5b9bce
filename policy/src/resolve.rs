//! Peers → prefixes: what `fromEntities`, `fromEndpoints`, `fromNodes` and
//! `fromCIDRSet` (and their `to` forms) mean on this node, given what it
//! knows about itself and its cluster ([`NodeContext`]).
//!
//! Entities follow Cilium's definitions (Documentation/security/policy/
//! language.rst "Entities Based", pkg/policy/api/entity.go): `cluster` is
//! this host, the other nodes, the pod CIDRs, health endpoints and the API
//! server; `world` is everything else; `init`, `ingress` and `unmanaged`
//! name Cilium-managed identities a node without Cilium does not have, and
//! resolve to nothing, as does `none`.

use std::collections::BTreeMap;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::model::{CidrRule, Entity, LabelSelector, PeerRule, PeerSelection, Peers};

/// What the compiler needs to know about this node and its cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// This node's labels, matched against `nodeSelector` and `fromNodes`.
    pub labels: BTreeMap<String, String>,
    /// Forward would-be drops and report them as AUDIT (`policy-audit-mode`).
    pub audit_mode: bool,
    /// Accept `toFQDNs` in host policies in audit-only form: the rule
    /// matches no address yet, and the table runs in audit mode.
    pub fqdn_audit: bool,
    /// This node's addresses: the `host` entity.
    pub addresses: Vec<IpNet>,
    /// The rest of the cluster.
    pub cluster: ClusterContext,
    /// Prefixes whose traffic must go through the WireGuard tunnel (the
    /// nodes' `allowed_ips` in strict mode): seen unencrypted on an enforced
    /// interface, it is dropped as `UNENCRYPTED_TRAFFIC`. Empty: no strict mode.
    pub strict_prefixes: Vec<IpNet>,
}

/// What this node knows about its cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterContext {
    /// Pod CIDRs: part of `cluster`.
    pub pod_cidrs: Vec<IpNet>,
    /// The other nodes: `remote-node`, and `fromNodes` by their labels.
    pub nodes: Vec<KnownNode>,
    /// Health endpoint addresses: `health`.
    pub health: Vec<IpNet>,
    /// API server addresses: `kube-apiserver`.
    pub kube_apiserver: Vec<IpNet>,
    /// Pods by labels: `fromEndpoints`.
    pub endpoints: Vec<KnownEndpoint>,
    /// CiliumCIDRGroups: `cidrGroupRef` and `cidrGroupSelector`.
    pub cidr_groups: Vec<CidrGroup>,
}

/// Another node of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnownNode {
    /// The node's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its addresses.
    pub addresses: Vec<IpNet>,
}

/// A pod (or other endpoint) by its labels, including
/// `io.kubernetes.pod.namespace`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnownEndpoint {
    /// The endpoint's labels.
    pub labels: BTreeMap<String, String>,
    /// Its addresses.
    pub addresses: Vec<IpNet>,
}

/// A CiliumCIDRGroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CidrGroup {
    /// The group's name (`cidrGroupRef`).
    pub name: String,
    /// Its labels (`cidrGroupSelector`).
    pub labels: BTreeMap<String, String>,
    /// Its prefixes.
    pub cidrs: Vec<IpNet>,
}

/// Both whole address spaces.
pub fn everything() -> [IpNet; 2] {
    [IpNet::V4(Ipv4Net::default()), IpNet::V6(Ipv6Net::default())]
}

/// A reserved identity's labels (`reserved:host`, ...), which
/// `fromEndpoints` selectors may name.
fn reserved(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(format!("reserved:{name}"), String::new())])
}

impl NodeContext {
    /// The prefixes an entity stands for.
    pub fn entity(&self, entity: Entity) -> Vec<IpNet> {
        let cluster = &self.cluster;
        match entity {
            Entity::All => everything().to_vec(),
            Entity::World => subtract_all(&everything(), &self.cluster_prefixes()),
            Entity::WorldIpv4 => subtract_all(&everything()[..1], &self.cluster_prefixes()),
            Entity::WorldIpv6 => subtract_all(&everything()[1..], &self.cluster_prefixes()),
            Entity::Cluster | Entity::ClusterMesh => self.cluster_prefixes(),
            Entity::Host => self.addresses.clone(),
            Entity::RemoteNode => cluster
                .nodes
                .iter()
                .flat_map(|node| node.addresses.iter().copied())
                .collect(),
            Entity::Health => cluster.health.clone(),
            Entity::KubeApiserver => cluster.kube_apiserver.clone(),
            Entity::Init | Entity::Ingress | Entity::Unmanaged | Entity::None => Vec::new(),
        }
    }

    /// Everything `cluster` covers.
    fn cluster_prefixes(&self) -> Vec<IpNet> {
        let cluster = &self.cluster;
        let mut prefixes = self.addresses.clone();
        prefixes.extend(cluster.pod_cidrs.iter().copied());
        prefixes.extend(cluster.health.iter().copied());
        prefixes.extend(cluster.kube_apiserver.iter().copied());
        for node in &cluster.nodes {
            prefixes.extend(node.addresses.iter().copied());
        }
        for endpoint in &cluster.endpoints {
            prefixes.extend(endpoint.addresses.iter().copied());
        }
        normalise(prefixes)
    }

    /// The identities an endpoint selector can pick, as (labels, prefixes):
    /// the known pods, then the reserved identities.
    fn identities(&self) -> Vec<(BTreeMap<String, String>, Vec<IpNet>)> {
        let mut identities: Vec<_> = self
            .cluster
            .endpoints
            .iter()
            .map(|endpoint| (endpoint.labels.clone(), endpoint.addresses.clone()))
            .collect();
        for entity in [
            Entity::Host,
            Entity::RemoteNode,
            Entity::Health,
            Entity::KubeApiserver,
            Entity::World,
        ] {
            identities.push((reserved(entity.name()), self.entity(entity)));
        }
        identities
    }

    /// What one `fromEndpoints` selector picks. The empty selector picks
    /// every identity in the cluster, not the world (Cilium: "all endpoints").
    pub fn endpoints(&self, selector: &LabelSelector) -> Vec<IpNet> {
        if selector.is_empty() {
            return self.cluster_prefixes();
        }
        self.identities()
            .into_iter()
            .filter(|(labels, _)| selector.matches(labels))
            .flat_map(|(_, prefixes)| prefixes)
            .collect()
    }

    /// What one `fromNodes` selector picks: this node and the known ones
    /// whose labels match.
    pub fn nodes(&self, selector: &LabelSelector) -> Vec<IpNet> {
        let this = if selector.matches(&self.labels) {
            self.addresses.clone()
        } else {
            Vec::new()
        };
        let others = self
            .cluster
            .nodes
            .iter()
            .filter(|node| selector.matches(&node.labels))
            .flat_map(|node| node.addresses.iter().copied());
        this.into_iter().chain(others).collect()
    }

    /// What one `fromCIDRSet` entry covers: its prefix (or its CIDR groups'
    /// prefixes) without the `except` prefixes. A group that does not exist
    /// covers nothing, as in Cilium.
    pub fn cidr_rule(&self, rule: &CidrRule) -> Vec<IpNet> {
        let mut bases: Vec<IpNet> = rule.cidr.iter().map(|cidr| cidr.0).collect();
        for group in &self.cluster.cidr_groups {
            let by_name = rule.cidr_group_ref.as_deref() == Some(group.name.as_str());
            let by_label = rule
                .cidr_group_selector
                .as_ref()
                .is_some_and(|selector| selector.matches(&group.labels));
            if by_name || by_label {
                bases.extend(group.cidrs.iter().map(IpNet::trunc));
            }
        }
        let holes: Vec<IpNet> = rule.except.iter().map(|cidr| cidr.0).collect();
        subtract_all(&bases, &holes)
    }

    /// Every prefix the peers of one entry stand for, as Cilium reads the
    /// entry ([`PeerRule::selection`]): none when it selects nothing, both
    /// whole address spaces when it selects every peer. Sorted, without
    /// duplicates.
    pub fn peers(&self, rule: &PeerRule<'_>) -> Vec<IpNet> {
        match rule.selection() {
            PeerSelection::Nothing(_) => Vec::new(),
            PeerSelection::Every => everything().to_vec(),
            PeerSelection::Named => self.named_peers(&rule.peers),
        }
    }

    /// The prefixes of the peers an entry names.
    fn named_peers(&self, peers: &Peers<'_>) -> Vec<IpNet> {
        let mut prefixes: Vec<IpNet> = peers.cidr.iter().map(|cidr| cidr.0).collect();
        for rule in peers.cidr_set {
            prefixes.extend(self.cidr_rule(rule));
        }
        for entity in peers.entities {
            prefixes.extend(self.entity(*entity));
        }
        for selector in peers.endpoints {
            prefixes.extend(self.endpoints(selector));
        }
        for selector in peers.nodes {
            prefixes.extend(self.nodes(selector));
        }
        normalise(prefixes)
    }
}

/// Sorted, host bits cleared, without prefixes another one covers.
fn normalise(prefixes: Vec<IpNet>) -> Vec<IpNet> {
    let mut prefixes: Vec<IpNet> = prefixes.into_iter().map(|prefix| prefix.trunc()).collect();
    // By address, then length: a prefix comes right after those covering it.
    prefixes.sort_unstable();
    let mut kept: Vec<IpNet> = Vec::with_capacity(prefixes.len());
    for prefix in prefixes {
        if !kept.last().is_some_and(|last| last.contains(&prefix)) {
            kept.push(prefix);
        }
    }
    kept
}

/// `bases` without `holes`, as the fewest prefixes.
pub fn subtract_all(bases: &[IpNet], holes: &[IpNet]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for base in bases {
        subtract(base.trunc(), holes, &mut out);
    }
    normalise(out)
}

fn subtract(base: IpNet, holes: &[IpNet], out: &mut Vec<IpNet>) {
    let relevant: Vec<IpNet> = holes
        .iter()
        .filter(|hole| hole.contains(&base) || base.contains(*hole))
        .copied()
        .collect();
    if relevant.is_empty() {
        out.push(base);
        return;
    }
    if relevant.iter().any(|hole| hole.contains(&base)) {
        return;
    }
    // A hole lies strictly inside: split in two halves and look again.
    let Ok(halves) = base.subnets(base.prefix_len() + 1) else {
        return;
    };
    for half in halves {
        subtract(half, &relevant, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|text| text.parse().unwrap()).collect()
    }

    #[test]
    fn subtracting_leaves_the_fewest_prefixes() {
        assert_eq!(
            subtract_all(&nets(&["10.0.0.0/8"]), &nets(&["10.0.0.0/9"])),
            nets(&["10.128.0.0/9"])
        );
        assert_eq!(
            subtract_all(&nets(&["10.0.0.0/30"]), &nets(&["10.0.0.1/32"])),
            nets(&["10.0.0.0/32", "10.0.0.2/31"])
        );
        assert!(subtract_all(&nets(&["10.1.0.0/16"]), &nets(&["10.0.0.0/8"])).is_empty());
        // Other families and disjoint holes change nothing.
        assert_eq!(
            subtract_all(
                &nets(&["10.0.0.0/8"]),
                &nets(&["2001:db8::/32", "11.0.0.0/8"])
            ),
            nets(&["10.0.0.0/8"])
        );
    }

    #[test]
    fn entities_resolve_from_the_node_context() {
        let node = NodeContext {
            addresses: nets(&["192.0.2.10/32"]),
            cluster: ClusterContext {
                pod_cidrs: nets(&["10.0.0.0/8"]),
                nodes: vec![KnownNode {
                    name: "b".into(),
                    labels: BTreeMap::from([("role".into(), "db".into())]),
                    addresses: nets(&["192.0.2.11/32"]),
                }],
                ..ClusterContext::default()
            },
            ..NodeContext::default()
        };
        assert_eq!(node.entity(Entity::Host), nets(&["192.0.2.10/32"]));
        assert_eq!(node.entity(Entity::RemoteNode), nets(&["192.0.2.11/32"]));
        assert_eq!(
            node.entity(Entity::Cluster),
            nets(&["10.0.0.0/8", "192.0.2.10/32", "192.0.2.11/32"])
        );
        // A prefix inside another one adds nothing.
        assert_eq!(
            normalise(nets(&[
                "10.1.0.0/16",
                "10.0.0.0/8",
                "10.1.2.3/32",
                "10.0.0.0/8"
            ])),
            nets(&["10.0.0.0/8"])
        );
        let world = node.entity(Entity::World);
        assert!(world.contains(&"::/0".parse().unwrap()));
        for inside in ["10.1.2.3", "192.0.2.10", "192.0.2.11"] {
            let address: std::net::IpAddr = inside.parse().unwrap();
            assert!(!world.iter().any(|p| p.contains(&address)), "{inside}");
        }
        for outside in ["192.0.2.12", "8.8.8.8", "11.0.0.1"] {
            let address: std::net::IpAddr = outside.parse().unwrap();
            assert!(world.iter().any(|p| p.contains(&address)), "{outside}");
        }
        assert!(node.entity(Entity::Init).is_empty());
        let db = LabelSelector {
            match_labels: BTreeMap::from([("role".into(), "db".into())]),
            ..LabelSelector::default()
        };
        assert_eq!(node.nodes(&db), nets(&["192.0.2.11/32"]));
        let host = LabelSelector {
            match_labels: BTreeMap::from([("reserved:host".into(), String::new())]),
            ..LabelSelector::default()
        };
        assert_eq!(node.endpoints(&host), nets(&["192.0.2.10/32"]));
    }
}
