//! The reference evaluator against a naive reading of the policies: for
//! every host example (tests/fixtures/cilium-examples), 100,000 random new
//! connections per direction get the same verdict, drop reason and deciding
//! rule from `evaluate` on the compiled table as from walking the policy
//! model directly, with entities, endpoints and nodes looked up in the
//! node's context address by address (no prefix arithmetic, no flattening).
//! The same again with every example's policies in audit mode
//! (`cilium.io/policy-audit-mode`) beside an enforced policy.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use palisade_common::{NO_RULE, drop_reason, protocol, verdict};
use palisade_policy::{
    Connection, Direction, NodeContext, Policy, Verdict, compile, evaluate,
    model::{AUDIT_ANNOTATION, Entity, IcmpFamily, LabelSelector, PeerRule, Protocol, Section},
    policies_from_text, policy_from_toml,
};
use proptest::{
    prelude::{Rng as _, RngExt as _},
    test_runner::{RngAlgorithm, TestRng},
};
use support::{filled_in, fixtures, has_host_rules, node_for};

const PACKETS_PER_DIRECTION: usize = 100_000;

/// proptest's deterministic generator, seeded by the fixture's name, so a
/// failure reproduces.
fn generator(name: &str) -> TestRng {
    let mut seed = [0x5a_u8; 16];
    for (i, byte) in name.bytes().enumerate() {
        seed[i % seed.len()] ^= byte;
    }
    TestRng::from_seed(RngAlgorithm::XorShift, &seed)
}

/// One of `items`, which is not empty.
fn pick<'a, T>(random: &mut TestRng, items: &'a [T]) -> &'a T {
    &items[random.random_range(0..items.len())]
}

/// Whether an address is inside any of `prefixes`.
fn within(prefixes: &[IpNet], address: IpAddr) -> bool {
    prefixes.iter().any(|prefix| prefix.contains(&address))
}

/// The naive reading: which addresses a peer list stands for, asked one
/// address at a time.
struct Naive<'a> {
    node: &'a NodeContext,
}

impl Naive<'_> {
    fn in_cluster(&self, address: IpAddr) -> bool {
        let cluster = &self.node.cluster;
        within(&self.node.addresses, address)
            || within(&cluster.pod_cidrs, address)
            || within(&cluster.health, address)
            || within(&cluster.kube_apiserver, address)
            || cluster
                .nodes
                .iter()
                .any(|node| within(&node.addresses, address))
            || cluster
                .endpoints
                .iter()
                .any(|endpoint| within(&endpoint.addresses, address))
    }

    fn entity(&self, entity: Entity, address: IpAddr) -> bool {
        let cluster = &self.node.cluster;
        match entity {
            Entity::All => true,
            Entity::World => !self.in_cluster(address),
            Entity::WorldIpv4 => address.is_ipv4() && !self.in_cluster(address),
            Entity::WorldIpv6 => address.is_ipv6() && !self.in_cluster(address),
            Entity::Cluster | Entity::ClusterMesh => self.in_cluster(address),
            Entity::Host => within(&self.node.addresses, address),
            Entity::RemoteNode => cluster
                .nodes
                .iter()
                .any(|node| within(&node.addresses, address)),
            Entity::Health => within(&cluster.health, address),
            Entity::KubeApiserver => within(&cluster.kube_apiserver, address),
            Entity::Init | Entity::Ingress | Entity::Unmanaged | Entity::None => false,
        }
    }

    fn endpoint(&self, selector: &LabelSelector, address: IpAddr) -> bool {
        if selector.is_empty() {
            return self.in_cluster(address);
        }
        let pods = self.node.cluster.endpoints.iter().any(|endpoint| {
            selector.matches(&endpoint.labels) && within(&endpoint.addresses, address)
        });
        let reserved = [
            Entity::Host,
            Entity::RemoteNode,
            Entity::Health,
            Entity::KubeApiserver,
            Entity::World,
        ]
        .into_iter()
        .any(|entity| {
            let labels = [(format!("reserved:{}", entity.name()), String::new())].into();
            selector.matches(&labels) && self.entity(entity, address)
        });
        pods || reserved
    }

    fn node(&self, selector: &LabelSelector, address: IpAddr) -> bool {
        (selector.matches(&self.node.labels) && within(&self.node.addresses, address))
            || self
                .node
                .cluster
                .nodes
                .iter()
                .any(|node| selector.matches(&node.labels) && within(&node.addresses, address))
    }

    fn peer(&self, rule: &PeerRule<'_>, address: IpAddr) -> bool {
        let peers = &rule.peers;
        // Cilium pkg/policy/utils/utils.go mergeEndpointSelectors: a peer
        // list written empty selects no identity.
        if peers.written_empty.is_some() {
            return false;
        }
        // pkg/policy/rule.go mergeIngress/mergeEgress: no peer at all is the
        // wildcard beside toPorts or icmps, and nothing on its own.
        if peers.is_wildcard() {
            return !(rule.to_ports.is_empty() && rule.icmps.is_empty());
        }
        peers.cidr.iter().any(|cidr| cidr.0.contains(&address))
            || peers.cidr_set.iter().any(|set| {
                set.cidr.is_some_and(|cidr| cidr.0.contains(&address))
                    && !set.except.iter().any(|except| except.0.contains(&address))
            })
            || peers
                .entities
                .iter()
                .any(|entity| self.entity(*entity, address))
            || peers
                .endpoints
                .iter()
                .any(|selector| self.endpoint(selector, address))
            || peers
                .nodes
                .iter()
                .any(|selector| self.node(selector, address))
    }
}

/// Whether the entry's ports or ICMP types match the connection.
fn l4(rule: &PeerRule<'_>, connection: &Connection) -> bool {
    if rule.to_ports.is_empty() && rule.icmps.is_empty() {
        return true;
    }
    let ports = rule
        .to_ports
        .iter()
        .flat_map(|port_rule| &port_rule.ports)
        .any(|port| {
            let protocol_matches = match port.protocol {
                Protocol::Any => matches!(
                    connection.protocol,
                    protocol::TCP | protocol::UDP | protocol::SCTP
                ),
                other => other.code() == connection.protocol,
            };
            let (lo, hi) = port.range().expect("host examples have numeric ports");
            protocol_matches && (lo..=hi).contains(&connection.destination_port)
        });
    let icmps = rule
        .icmps
        .iter()
        .flat_map(|icmp| &icmp.fields)
        .any(|field| {
            let wanted = match field.family {
                IcmpFamily::IPv4 => protocol::ICMP,
                IcmpFamily::IPv6 => protocol::ICMPV6,
            };
            wanted == connection.protocol
                && field.icmp_type.code(field.family).map(u16::from)
                    == Some(connection.destination_port)
        });
    ports || icmps
}

/// What the naive reading decides, and the rule ids a prefilter drop may name.
struct Expected {
    verdict: Verdict,
    /// L3-only ingress deny rules that match: the XDP prefilter (or, for a
    /// whole address space, the table) drops with any of them.
    prefilter_ids: Vec<u32>,
}

fn naive(
    policies: &[Policy],
    node: &NodeContext,
    direction: Direction,
    connection: &Connection,
) -> Expected {
    let lookup = Naive { node };
    let peer = match direction {
        Direction::Ingress => connection.source,
        Direction::Egress => connection.destination,
    };
    let mut next_id = 0u32;
    let (mut default_deny, mut audited_default_deny) = (false, false);
    let (mut deny, mut audited_deny, mut allow) = (None, None, None);
    let mut prefilter_ids = Vec::new();
    for policy in policies {
        let audited = policy.audit_annotation();
        for (_, rule) in policy.rules() {
            if !rule
                .node_selector
                .as_ref()
                .is_some_and(|s| s.matches(&node.labels))
            {
                continue;
            }
            let asks = match direction {
                Direction::Ingress => rule.default_deny_ingress(),
                Direction::Egress => rule.default_deny_egress(),
            };
            if audited {
                audited_default_deny |= asks;
            } else {
                default_deny |= asks;
            }
            for (section, entries) in rule.sections() {
                for entry in &entries {
                    let id = next_id;
                    next_id += 1;
                    let wanted = section.is_ingress() == (direction == Direction::Ingress);
                    if !wanted || !lookup.peer(entry, peer) {
                        continue;
                    }
                    let l3_only = entry.to_ports.is_empty() && entry.icmps.is_empty();
                    if section == Section::IngressDeny && l3_only && !audited {
                        prefilter_ids.push(id);
                    }
                    if !l4(entry, connection) {
                        continue;
                    }
                    let slot = match (section.is_deny(), audited) {
                        (true, false) => &mut deny,
                        (true, true) => &mut audited_deny,
                        (false, _) => &mut allow,
                    };
                    slot.get_or_insert(id);
                }
            }
        }
    }
    let dropped = |reason, rule_id| Verdict {
        verdict: if node.audit_mode {
            verdict::AUDIT
        } else {
            verdict::DROPPED
        },
        drop_reason: reason,
        rule_id,
    };
    let audit = |reason, rule_id| Verdict {
        verdict: verdict::AUDIT,
        drop_reason: reason,
        rule_id,
    };
    let verdict = match (deny, audited_deny, allow) {
        (Some(id), _, _) => dropped(drop_reason::POLICY_DENY, id),
        (None, Some(id), _) => audit(drop_reason::POLICY_DENY, id),
        (None, None, Some(id)) => Verdict {
            verdict: verdict::FORWARDED,
            drop_reason: drop_reason::NONE,
            rule_id: id,
        },
        (None, None, None) if default_deny => dropped(drop_reason::POLICY_DENIED, NO_RULE),
        (None, None, None) if audited_default_deny => audit(drop_reason::POLICY_DENIED, NO_RULE),
        (None, None, None) => Verdict {
            verdict: verdict::FORWARDED,
            drop_reason: drop_reason::NONE,
            rule_id: NO_RULE,
        },
    };
    if direction == Direction::Egress || node.audit_mode {
        prefilter_ids.clear();
    }
    Expected {
        verdict,
        prefilter_ids,
    }
}

/// Addresses worth trying: the edges of every prefix of the table and of
/// the context, one step outside them, and anything at all.
fn interesting_addresses(prefixes: &[IpNet]) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    for prefix in prefixes {
        let (first, last) = (prefix.network(), prefix.broadcast());
        addresses.push(first);
        addresses.push(last);
        match (first, last) {
            (IpAddr::V4(first), IpAddr::V4(last)) => {
                let (lo, hi) = (u32::from(first), u32::from(last));
                addresses.push(IpAddr::V4(Ipv4Addr::from(lo.wrapping_sub(1))));
                addresses.push(IpAddr::V4(Ipv4Addr::from(hi.wrapping_add(1))));
                addresses.push(IpAddr::V4(Ipv4Addr::from(lo + (hi - lo) / 2)));
            }
            (IpAddr::V6(first), IpAddr::V6(last)) => {
                let (lo, hi) = (u128::from(first), u128::from(last));
                addresses.push(IpAddr::V6(Ipv6Addr::from(lo.wrapping_sub(1))));
                addresses.push(IpAddr::V6(Ipv6Addr::from(hi.wrapping_add(1))));
                addresses.push(IpAddr::V6(Ipv6Addr::from(lo + (hi - lo) / 2)));
            }
            _ => {}
        }
    }
    addresses
}

fn random_connection(
    random: &mut TestRng,
    addresses: &[IpAddr],
    ports: &[u16],
    direction: Direction,
) -> Connection {
    let peer = if random.random_range(0..4) == 0 {
        if random.random_range(0..2) == 0 {
            IpAddr::V4(Ipv4Addr::from(
                u32::try_from(random.next_u64() >> 32).unwrap_or(0),
            ))
        } else {
            IpAddr::V6(Ipv6Addr::from(
                u128::from(random.next_u64()) << 64 | u128::from(random.next_u64()),
            ))
        }
    } else {
        *pick(random, addresses)
    };
    let protocols = [
        protocol::TCP,
        protocol::UDP,
        protocol::SCTP,
        protocol::ICMP,
        protocol::ICMPV6,
        112,
        47,
        u8::try_from(random.next_u64() & 0xff).unwrap_or(0),
    ];
    let chosen = *pick(random, &protocols);
    let port = if random.random_range(0..3) == 0 {
        u16::try_from(random.next_u64() & 0xffff).unwrap_or(0)
    } else {
        *pick(random, ports)
    };
    let port = match chosen {
        protocol::ICMP | protocol::ICMPV6 => port & 0xff,
        protocol::TCP | protocol::UDP | protocol::SCTP => port,
        _ => 0,
    };
    let local = match peer {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        IpAddr::V6(_) => "fd00::1".parse().expect("an address"),
    };
    let (source, destination) = match direction {
        Direction::Ingress => (peer, local),
        Direction::Egress => (local, peer),
    };
    Connection {
        protocol: chosen,
        source,
        destination,
        destination_port: port,
    }
}

/// Checks `packets` random connections each way on `policies`.
fn agree(name: &str, policies: &[Policy], packets: usize) {
    let node = node_for(policies);
    let table = compile(policies, &node).expect("compiles");
    let mut prefixes: Vec<IpNet> = [&table.ingress, &table.egress]
        .iter()
        .flat_map(|direction| direction.entries.iter().map(|row| row.prefix))
        .collect();
    let cluster = &node.cluster;
    prefixes.extend(
        node.addresses
            .iter()
            .chain(&cluster.pod_cidrs)
            .chain(&cluster.health),
    );
    for known in &cluster.endpoints {
        prefixes.extend(&known.addresses);
    }
    let addresses = interesting_addresses(&prefixes);
    let mut ports: Vec<u16> = [&table.ingress, &table.egress]
        .iter()
        .flat_map(|direction| &direction.entries)
        .flat_map(|row| {
            let (lo, hi) = (row.port.port_lo, row.port.port_hi);
            [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)]
        })
        .collect();
    ports.push(0);
    let mut random = generator(name);
    for direction in [Direction::Ingress, Direction::Egress] {
        for _ in 0..packets {
            let connection = random_connection(&mut random, &addresses, &ports, direction);
            let got = evaluate(&table, direction, &connection);
            let expected = naive(policies, &node, direction, &connection);
            let prefiltered = got.verdict == verdict::DROPPED
                && matches!(
                    got.drop_reason,
                    drop_reason::PREFILTER | drop_reason::POLICY_DENY
                )
                && expected.prefilter_ids.contains(&got.rule_id);
            assert!(
                got == expected.verdict || prefiltered,
                "{}: {direction:?} {connection:?}: evaluator {got:?}, naive {:?} (prefilter {:?})",
                name,
                expected.verdict,
                expected.prefilter_ids
            );
        }
    }
}

/// An enforced policy to put beside an example in audit mode: a deny that
/// overlaps the examples' addresses and a rule each way.
const ENFORCED: &str = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "enforced" }
[spec]
nodeSelector = {}
[[spec.ingressDeny]]
fromCIDR = ["10.0.0.0/9", "fd00::/9"]
toPorts = [{ ports = [{ port = 22, protocol = "TCP" }, { port = 53, protocol = "ANY" }] }]
[[spec.egress]]
toCIDR = ["192.0.2.0/24"]
"#;

#[test]
fn the_evaluator_agrees_with_the_naive_reading_on_every_host_example() {
    let mut checked = 0;
    for fixture in fixtures() {
        let Ok(policies) = policies_from_text(&fixture.name, &filled_in(&fixture.text)) else {
            continue;
        };
        if !has_host_rules(&policies) {
            continue;
        }
        agree(&fixture.name, &policies, PACKETS_PER_DIRECTION);
        checked += 1;
    }
    assert_eq!(checked, 14, "every host example checked");
}

#[test]
fn the_evaluator_agrees_on_every_host_example_in_audit_mode_beside_an_enforced_policy() {
    let enforced = policy_from_toml("enforced.toml", ENFORCED).expect("parses");
    for fixture in fixtures() {
        let Ok(mut policies) = policies_from_text(&fixture.name, &filled_in(&fixture.text)) else {
            continue;
        };
        if !has_host_rules(&policies) {
            continue;
        }
        for policy in &mut policies {
            policy
                .metadata
                .annotations
                .insert(AUDIT_ANNOTATION.to_owned(), "true".to_owned());
        }
        policies.push(enforced.clone());
        agree(&fixture.name, &policies, PACKETS_PER_DIRECTION / 5);
    }
}
