//! Property: any valid policy survives toml → yaml → toml and yaml → toml →
//! yaml unchanged (the model compares field by field), and a policy's text in
//! either format compiles to the same rule table.

use std::collections::BTreeMap;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use palisade_policy::{
    NodeContext, compile,
    model::{
        Cidr, CidrRule, DefaultDeny, EgressRule, Entity, FqdnSelector, HttpRule, IcmpFamily,
        IcmpField, IcmpRule, IcmpType, IngressRule, L7Rules, LabelSelector, LogConfig, Metadata,
        Operator, Policy, PolicyKind, Port, PortProtocol, PortRule, Protocol, Requirement, Rule,
        RuleLabel,
    },
    policies_from_text, policies_to_yaml, policy_to_toml,
};
use proptest::prelude::*;

fn cidr() -> impl Strategy<Value = Cidr> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(octets, length)| {
            Cidr(IpNet::V4(
                Ipv4Net::new(octets.into(), length)
                    .map(|net| net.trunc())
                    .unwrap_or_default(),
            ))
        }),
        (any::<[u8; 16]>(), 0u8..=128).prop_map(|(octets, length)| {
            Cidr(IpNet::V6(
                Ipv6Net::new(octets.into(), length)
                    .map(|net| net.trunc())
                    .unwrap_or_default(),
            ))
        }),
    ]
}

/// A CIDR set entry whose exceptions lie inside its prefix.
fn cidr_rule() -> impl Strategy<Value = CidrRule> {
    (cidr(), proptest::collection::vec(any::<u8>(), 0..3)).prop_map(|(cidr, extra)| {
        let except = extra
            .into_iter()
            .filter_map(|bits| {
                let length = (cidr.0.prefix_len() + 1 + bits % 8).min(cidr.0.max_prefix_len());
                (length > cidr.0.prefix_len())
                    .then(|| cidr.0.subnets(length).ok()?.last())
                    .flatten()
                    .map(Cidr)
            })
            .collect();
        CidrRule {
            cidr: Some(cidr),
            except,
            ..CidrRule::default()
        }
    })
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    (
        proptest::collection::btree_map("(k8s:)?[a-z]{1,6}", "[a-z0-9]{0,6}", 0..3),
        proptest::collection::vec(
            (
                "[a-z]{1,6}",
                prop_oneof![
                    Just(Operator::In),
                    Just(Operator::NotIn),
                    Just(Operator::Exists),
                    Just(Operator::DoesNotExist)
                ],
                proptest::collection::vec("[a-z0-9]{1,5}", 1..3),
            )
                .prop_map(|(key, operator, values)| Requirement {
                    key,
                    operator,
                    values: if matches!(operator, Operator::In | Operator::NotIn) {
                        values
                    } else {
                        Vec::new()
                    },
                }),
            0..2,
        ),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

fn entity() -> impl Strategy<Value = Entity> {
    proptest::sample::select(Entity::all().collect::<Vec<_>>())
}

/// One peer kind at most, as Cilium requires; a list may be written empty
/// (`fromEntities: []`), which must survive the round trip.
#[derive(Debug, Clone, Default)]
struct Peer {
    cidr: Option<Vec<Cidr>>,
    cidr_set: Option<Vec<CidrRule>>,
    entities: Option<Vec<Entity>>,
    endpoints: Option<Vec<LabelSelector>>,
    nodes: Option<Vec<LabelSelector>>,
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        Just(Peer::default()),
        Just(Peer {
            entities: Some(Vec::new()),
            ..Peer::default()
        }),
        Just(Peer {
            cidr: Some(Vec::new()),
            ..Peer::default()
        }),
        proptest::collection::vec(cidr(), 1..3).prop_map(|cidr| Peer {
            cidr: Some(cidr),
            ..Peer::default()
        }),
        proptest::collection::vec(cidr_rule(), 1..3).prop_map(|cidr_set| Peer {
            cidr_set: Some(cidr_set),
            ..Peer::default()
        }),
        proptest::collection::vec(entity(), 1..3).prop_map(|entities| Peer {
            entities: Some(entities),
            ..Peer::default()
        }),
        proptest::collection::vec(selector(), 1..3).prop_map(|endpoints| Peer {
            endpoints: Some(endpoints),
            ..Peer::default()
        }),
        proptest::collection::vec(selector(), 1..3).prop_map(|nodes| Peer {
            nodes: Some(nodes),
            ..Peer::default()
        }),
    ]
}

fn port(named: bool) -> impl Strategy<Value = PortProtocol> {
    (
        any::<u16>(),
        proptest::option::of(any::<u16>()),
        proptest::sample::select(Protocol::all().collect::<Vec<_>>()),
        "[a-z]{1,4}(-[a-z0-9]{1,4})?",
        any::<bool>(),
    )
        .prop_map(move |(port, end, protocol, name, use_name)| {
            if protocol.is_extended() {
                return PortProtocol {
                    port: None,
                    end_port: None,
                    protocol,
                };
            }
            let port = if named && use_name {
                Port::Name(name)
            } else {
                Port::Number(port)
            };
            PortProtocol {
                // endPort only above a non-zero port (Cilium refuses the rest).
                end_port: end.filter(|end| matches!(port, Port::Number(n) if n != 0 && *end > n)),
                port: Some(port),
                protocol,
            }
        })
}

fn icmp() -> impl Strategy<Value = IcmpRule> {
    proptest::collection::vec(
        (any::<bool>(), any::<u8>(), any::<bool>()).prop_map(|(v6, number, by_name)| {
            let family = if v6 {
                IcmpFamily::IPv6
            } else {
                IcmpFamily::IPv4
            };
            let icmp_type = match (by_name, v6) {
                (true, true) => IcmpType::Name("EchoRequest"),
                (true, false) => IcmpType::Name("TimeExceeded"),
                _ => IcmpType::Number(number),
            };
            IcmpField { family, icmp_type }
        }),
        1..4,
    )
    .prop_map(|fields| IcmpRule { fields })
}

/// Ports (with HTTP rules on TCP ports of endpoint rules), ICMP types or
/// neither; never both, as Cilium requires.
fn l4(endpoint: bool) -> impl Strategy<Value = (Vec<PortRule>, Vec<IcmpRule>)> {
    prop_oneof![
        proptest::collection::vec(port(endpoint), 1..4).prop_map(|ports| (
            vec![PortRule {
                ports,
                ..PortRule::default()
            }],
            Vec::new()
        )),
        ("/[a-z]{0,8}", 1u16..).prop_map(move |(path, number)| {
            let http = endpoint.then(|| L7Rules {
                http: vec![HttpRule {
                    path: Some(path),
                    method: Some("GET".into()),
                    ..HttpRule::default()
                }],
                ..L7Rules::default()
            });
            (
                vec![PortRule {
                    ports: vec![PortProtocol {
                        port: Some(Port::Number(number)),
                        end_port: None,
                        protocol: Protocol::Tcp,
                    }],
                    rules: http,
                    ..PortRule::default()
                }],
                Vec::new(),
            )
        }),
        icmp().prop_map(|rule| (Vec::new(), vec![rule])),
        Just((Vec::new(), Vec::new())),
    ]
}

fn ingress(endpoint: bool, deny: bool) -> impl Strategy<Value = IngressRule> {
    (peer(), l4(endpoint && !deny)).prop_map(|(peer, (to_ports, icmps))| IngressRule {
        from_cidr: peer.cidr,
        from_cidr_set: peer.cidr_set,
        from_entities: peer.entities,
        from_endpoints: peer.endpoints,
        from_nodes: peer.nodes,
        to_ports,
        icmps,
        ..IngressRule::default()
    })
}

fn egress(endpoint: bool, deny: bool) -> impl Strategy<Value = EgressRule> {
    (
        peer(),
        l4(endpoint && !deny),
        proptest::collection::vec("[a-z]{1,8}\\.example\\.com", 0..2),
    )
        .prop_map(move |(peer, (to_ports, icmps), names)| {
            let mut rule = EgressRule {
                to_cidr: peer.cidr,
                to_cidr_set: peer.cidr_set,
                to_entities: peer.entities,
                to_endpoints: peer.endpoints,
                to_nodes: peer.nodes,
                to_ports,
                icmps,
                ..EgressRule::default()
            };
            // toFQDNs: endpoint allow rules only, and as their only peer.
            let bare = rule.to_cidr.is_none()
                && rule.to_cidr_set.is_none()
                && rule.to_entities.is_none()
                && rule.to_endpoints.is_none()
                && rule.to_nodes.is_none();
            if endpoint && !deny && bare {
                rule.to_fqdns = names
                    .into_iter()
                    .map(|name| FqdnSelector {
                        match_name: Some(name),
                        match_pattern: None,
                    })
                    .collect();
            }
            rule
        })
}

fn rule(endpoint: bool) -> impl Strategy<Value = Rule> {
    (
        selector(),
        proptest::option::of("[a-zA-Z ,.:#'\"-]{0,30}"),
        proptest::collection::vec(ingress(endpoint, false), 1..3),
        proptest::collection::vec(ingress(endpoint, true), 0..2),
        proptest::collection::vec(egress(endpoint, false), 0..2),
        proptest::collection::vec(egress(endpoint, true), 0..2),
        proptest::option::of((
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>()),
        )),
        proptest::option::of("[a-z-]{1,20}"),
        proptest::collection::vec(("[a-z]{1,6}", proptest::option::of("[a-z]{0,6}")), 0..2),
    )
        .prop_map(
            move |(
                selector,
                description,
                ingress,
                ingress_deny,
                egress,
                egress_deny,
                default_deny,
                log,
                labels,
            )| Rule {
                endpoint_selector: endpoint.then(|| selector.clone()),
                node_selector: (!endpoint).then_some(selector),
                description,
                ingress,
                ingress_deny,
                egress,
                egress_deny,
                enable_default_deny: default_deny
                    .map(|(ingress, egress)| DefaultDeny { ingress, egress }),
                log: log.map(|value| LogConfig { value }),
                labels: labels
                    .into_iter()
                    .map(|(key, value)| RuleLabel {
                        key,
                        value,
                        source: Some("k8s".into()),
                    })
                    .collect(),
            },
        )
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        "[a-z][a-z0-9-]{0,20}[a-z0-9]",
        proptest::collection::btree_map("[a-z./]{1,12}", "[a-z0-9 ]{0,8}", 0..2),
        any::<bool>(),
        proptest::option::of("[a-z]{1,8}"),
    )
        .prop_flat_map(|(name, annotations, namespaced, namespace)| {
            // A CiliumNetworkPolicy holds endpoint rules only.
            let endpoint = if namespaced {
                Just(true).boxed()
            } else {
                any::<bool>().boxed()
            };
            endpoint.prop_flat_map(move |endpoint| {
                let (name, annotations, namespace) =
                    (name.clone(), annotations.clone(), namespace.clone());
                (
                    rule(endpoint),
                    proptest::collection::vec(rule(endpoint), 0..2),
                )
                    .prop_map(move |(spec, specs)| Policy {
                        api_version: "cilium.io/v2".to_owned(),
                        kind: if namespaced {
                            PolicyKind::CiliumNetworkPolicy
                        } else {
                            PolicyKind::CiliumClusterwideNetworkPolicy
                        },
                        metadata: Metadata {
                            name: name.clone(),
                            namespace: namespace.clone().filter(|_| namespaced),
                            labels: BTreeMap::new(),
                            annotations: annotations.clone(),
                        },
                        description: None,
                        spec: Some(spec),
                        specs,
                    })
            })
        })
}

fn one(file: &str, text: &str) -> Policy {
    let mut policies = policies_from_text(file, text)
        .unwrap_or_else(|problems| panic!("{problems}\n--- {file}:\n{text}"));
    assert_eq!(policies.len(), 1);
    policies.remove(0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn toml_and_yaml_round_trips_lose_nothing(policy in policy()) {
        let toml = policy_to_toml(&policy).expect("TOML");
        let from_toml = one("p.toml", &toml);
        prop_assert_eq!(&from_toml, &policy);
        let yaml = policies_to_yaml(std::slice::from_ref(&from_toml)).expect("YAML");
        let from_yaml = one("p.yaml", &yaml);
        prop_assert_eq!(&from_yaml, &policy);
        let back = one("again.toml", &policy_to_toml(&from_yaml).expect("TOML"));
        prop_assert_eq!(&back, &policy);
        let node = NodeContext::default();
        prop_assert_eq!(compile(&[from_yaml], &node), compile(&[back], &node));
    }
}
