//! Impact preview for `palisadectl diff`: replays recent flows through the
//! reference evaluator under the rules in force and under the proposed ones,
//! and lists those whose verdict would change.

use std::{collections::BTreeMap, net::IpAddr};

use palisade_api::{Flow, FlowChange, Layer4, TrafficDirection};
use palisade_common::{drop_reason, protocol};
use palisade_policy::{CompiledTable, Connection, Direction, Verdict, evaluate};

use crate::flows::verdict_of;

/// Recent flows whose verdict differs between `old` and `new`, the latest
/// flow of each connection once, in the order they were seen. Flows the
/// policy did not decide (failsafe services, malformed packets, fragments
/// without their first) are left out: new rules do not change them.
pub fn changed_flows(old: &CompiledTable, new: &CompiledTable, flows: &[Flow]) -> Vec<FlowChange> {
    let mut latest: BTreeMap<(Direction, ConnectionKey), (usize, &Flow)> = BTreeMap::new();
    for (order, flow) in flows.iter().enumerate() {
        if let Some((direction, connection)) = replayable(flow) {
            latest.insert((direction, ConnectionKey::of(&connection)), (order, flow));
        }
    }
    let mut changes: Vec<(usize, FlowChange)> = latest
        .into_iter()
        .filter_map(|((direction, key), (order, flow))| {
            let connection = key.connection();
            let before = evaluate(old, direction, &connection);
            let after = evaluate(new, direction, &connection);
            (outcome(&before) != outcome(&after)).then(|| {
                let rule = new.rule(after.rule_id).map(ToString::to_string);
                (
                    order,
                    FlowChange {
                        flow: flow.clone(),
                        new_verdict: verdict_of(after.verdict),
                        new_drop_reason: drop_reason::name(after.drop_reason).map(str::to_owned),
                        new_rule: rule,
                    },
                )
            })
        })
        .collect();
    changes.sort_by_key(|(order, _)| *order);
    changes.into_iter().map(|(_, change)| change).collect()
}

/// What an operator sees of a verdict: the verdict and the drop reason.
fn outcome(verdict: &Verdict) -> (u8, u8) {
    (verdict.verdict, verdict.drop_reason)
}

/// A connection as an orderable key (the evaluator's [`Connection`] fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ConnectionKey {
    protocol: u8,
    source: IpAddr,
    destination: IpAddr,
    destination_port: u16,
}

impl ConnectionKey {
    fn of(connection: &Connection) -> Self {
        Self {
            protocol: connection.protocol,
            source: connection.source,
            destination: connection.destination,
            destination_port: connection.destination_port,
        }
    }

    fn connection(self) -> Connection {
        Connection {
            protocol: self.protocol,
            source: self.source,
            destination: self.destination,
            destination_port: self.destination_port,
        }
    }
}

/// The direction and new connection a policy-decided flow stands for.
fn replayable(flow: &Flow) -> Option<(Direction, Connection)> {
    let by_policy = matches!(
        flow.drop_reason_desc.as_deref(),
        None | Some("POLICY_DENIED" | "POLICY_DENY" | "PREFILTER")
    );
    if !by_policy || flow.decided_by().any(|rule| rule.name == "failsafe") {
        return None;
    }
    let direction = match flow.traffic_direction {
        TrafficDirection::Ingress => Direction::Ingress,
        TrafficDirection::Egress => Direction::Egress,
    };
    let (protocol, destination_port) = match flow.l4.as_ref()? {
        Layer4::Tcp {
            destination_port, ..
        } => (protocol::TCP, *destination_port),
        Layer4::Udp(ports) => (protocol::UDP, ports.destination_port),
        Layer4::Sctp(ports) => (protocol::SCTP, ports.destination_port),
        Layer4::IcmpV4(icmp) => (protocol::ICMP, u16::from(icmp.kind)),
        Layer4::IcmpV6(icmp) => (protocol::ICMPV6, u16::from(icmp.kind)),
    };
    Some((
        direction,
        Connection {
            protocol,
            source: flow.ip.source,
            destination: flow.ip.destination,
            destination_port,
        },
    ))
}

#[cfg(test)]
mod tests {
    use palisade_api::{FlowIp, Interface, IpVersion, PortPair};
    use palisade_policy::{NodeContext, compile, policy_from_toml};

    use super::*;

    fn table(body: &str) -> CompiledTable {
        let text = format!(
            "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = {{ name = \"p\" }}\n[spec]\nnodeSelector = {{}}\n{body}"
        );
        compile(
            &[policy_from_toml("p.toml", &text).unwrap()],
            &NodeContext::default(),
        )
        .unwrap()
    }

    fn udp_flow(source: &str, port: u16, verdict: &str) -> Flow {
        Flow {
            time: "2026-11-25T00:00:00Z".into(),
            verdict: verdict.parse().expect("a verdict"),
            drop_reason_desc: None,
            ip: FlowIp {
                source: source.parse().expect("an address"),
                destination: [10, 0, 0, 1].into(),
                ip_version: IpVersion::V4,
            },
            l4: Some(Layer4::Udp(PortPair {
                source_port: 40000,
                destination_port: port,
            })),
            traffic_direction: TrafficDirection::Ingress,
            interface: Interface {
                index: 2,
                name: "eth0".into(),
            },
            ingress_allowed_by: Vec::new(),
            ingress_denied_by: Vec::new(),
            egress_allowed_by: Vec::new(),
            egress_denied_by: Vec::new(),
            source: None,
            destination: None,
            node_name: "n".into(),
            policy_generation: 1,
            packet_length: 60,
            summary: "UDP".into(),
        }
    }

    #[test]
    fn a_deny_for_a_seen_peer_lists_its_flow_once() {
        let old = table("[[spec.ingress]]\nfromCIDR = [\"192.0.2.0/24\"]\n");
        let new = table(
            "[[spec.ingress]]\nfromCIDR = [\"192.0.2.0/24\"]\n[[spec.ingressDeny]]\nfromCIDR = [\"192.0.2.7/32\"]\ntoPorts = [{ ports = [{ port = \"53\", protocol = \"UDP\" }] }]\n",
        );
        let flows = [
            udp_flow("192.0.2.7", 53, "FORWARDED"),
            udp_flow("192.0.2.8", 53, "FORWARDED"),
            udp_flow("192.0.2.7", 53, "FORWARDED"),
            udp_flow("192.0.2.7", 54, "FORWARDED"),
        ];
        let changes = changed_flows(&old, &new, &flows);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].flow.ip.source.to_string(), "192.0.2.7");
        assert_eq!(changes[0].new_verdict, palisade_api::Verdict::Dropped);
        assert_eq!(changes[0].new_drop_reason.as_deref(), Some("POLICY_DENY"));
        assert_eq!(
            changes[0].new_rule.as_deref(),
            Some("p spec.ingressDeny[0]")
        );
    }

    #[test]
    fn the_same_rules_change_nothing() {
        let rules = table("[[spec.ingress]]\nfromCIDR = [\"192.0.2.0/24\"]\n");
        let flows = [udp_flow("198.51.100.1", 53, "DROPPED")];
        assert!(changed_flows(&rules, &rules, &flows).is_empty());
    }
}
