//! Property: any valid policy survives toml → yaml → toml and yaml → toml →
//! yaml unchanged (the model compares field by field), and a policy's text in
//! either format compiles to the same rule table.

use std::collections::BTreeMap;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use palisade_policy::{
    NodeContext, compile,
    model::{
        Cidr, EgressRule, IcmpFamily, IcmpField, IcmpRule, IcmpType, IngressRule, LabelSelector,
        Metadata, Policy, PolicyKind, Port, PortProtocol, PortRule, Protocol, Rule,
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

fn port() -> impl Strategy<Value = PortProtocol> {
    (
        any::<u16>(),
        proptest::option::of(any::<u16>()),
        prop_oneof![
            Just(Protocol::Any),
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Sctp)
        ],
    )
        .prop_map(|(port, end, protocol)| PortProtocol {
            port: Port(port),
            // endPort only above a non-zero port (Cilium refuses the rest).
            end_port: end.filter(|end| port != 0 && *end > port),
            protocol,
        })
}

fn icmp() -> impl Strategy<Value = IcmpRule> {
    proptest::collection::vec(
        (any::<bool>(), any::<u8>()).prop_map(|(v6, number)| IcmpField {
            family: if v6 {
                IcmpFamily::IPv6
            } else {
                IcmpFamily::IPv4
            },
            icmp_type: IcmpType::Number(number),
        }),
        1..4,
    )
    .prop_map(|fields| IcmpRule { fields })
}

/// Peers, and either ports or ICMP types (never both, as Cilium requires).
fn l4() -> impl Strategy<Value = (Vec<Cidr>, Vec<PortRule>, Vec<IcmpRule>)> {
    (
        proptest::collection::vec(cidr(), 0..3),
        prop_oneof![
            proptest::collection::vec(port(), 1..4)
                .prop_map(|ports| (vec![PortRule { ports }], Vec::new())),
            icmp().prop_map(|rule| (Vec::new(), vec![rule])),
            Just((Vec::new(), Vec::new())),
        ],
    )
        .prop_map(|(peers, (ports, icmps))| (peers, ports, icmps))
}

fn ingress() -> impl Strategy<Value = IngressRule> {
    l4().prop_map(|(from_cidr, to_ports, icmps)| IngressRule {
        from_cidr,
        to_ports,
        icmps,
    })
}

fn egress() -> impl Strategy<Value = EgressRule> {
    l4().prop_map(|(to_cidr, to_ports, icmps)| EgressRule {
        to_cidr,
        to_ports,
        icmps,
    })
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        proptest::collection::btree_map("[a-z]{1,6}", "[a-z0-9]{0,6}", 0..3),
        proptest::option::of("[a-zA-Z ,.:#'\"-]{0,30}"),
        proptest::collection::vec(ingress(), 1..3),
        proptest::collection::vec(ingress(), 0..2),
        proptest::collection::vec(egress(), 0..2),
        proptest::collection::vec(egress(), 0..2),
    )
        .prop_map(
            |(labels, description, ingress, ingress_deny, egress, egress_deny)| Rule {
                node_selector: LabelSelector {
                    match_labels: labels,
                },
                description,
                ingress,
                ingress_deny,
                egress,
                egress_deny,
            },
        )
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        "[a-z][a-z0-9-]{0,20}[a-z0-9]",
        proptest::collection::btree_map("[a-z./]{1,12}", "[a-z0-9 ]{0,8}", 0..2),
        rule(),
        proptest::collection::vec(rule(), 0..2),
    )
        .prop_map(|(name, annotations, spec, specs)| Policy {
            api_version: "cilium.io/v2".to_owned(),
            kind: PolicyKind::CiliumClusterwideNetworkPolicy,
            metadata: Metadata {
                name,
                labels: BTreeMap::new(),
                annotations,
            },
            spec: Some(spec),
            specs,
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
        let yaml = policies_to_yaml(&[from_toml]).expect("YAML");
        let from_yaml = one("p.yaml", &yaml);
        prop_assert_eq!(&from_yaml, &policy);
        let back = one("again.toml", &policy_to_toml(&from_yaml).expect("TOML"));
        prop_assert_eq!(&back, &policy);
        let node = NodeContext::default();
        prop_assert_eq!(compile(&[from_yaml], &node), compile(&[back], &node));
    }
}
