//! One human-readable line per compiled rule row, for `palisadectl diff`
//! and `explain`: direction, action, peer, protocol, ports and the rule's origin.

use palisade_common::{action, protocol};

use crate::compile::{CompiledTable, Direction, TableEntry};

/// The rows of `table`, ingress then egress, each as
/// `ingress allow 10.0.0.0/8 tcp/22 (policy spec.ingress[0])`, then the
/// entries that select no peer, each as `ingress selects nothing (policy
/// spec.ingress[1]): <why>`.
pub fn rule_lines(table: &CompiledTable) -> Vec<String> {
    let rows = [Direction::Ingress, Direction::Egress]
        .into_iter()
        .flat_map(|direction| {
            table
                .direction(direction)
                .entries
                .iter()
                .map(move |entry| rule_line(table, direction, entry))
        });
    let empty = table.empty_entries.iter().map(|entry| {
        format!(
            "{} selects nothing ({}): {}",
            direction_name(entry.direction),
            entry.origin,
            entry.reason
        )
    });
    rows.chain(empty).collect()
}

fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

fn rule_line(table: &CompiledTable, direction: Direction, entry: &TableEntry) -> String {
    let direction = direction_name(direction);
    let verdict = match entry.port.action {
        action::DENY => "deny",
        action::AUDIT_DENY => "audit-deny",
        _ => "allow",
    };
    let port = &entry.port;
    let what = match port.protocol {
        protocol::ALL => "all".to_owned(),
        protocol::ICMP | protocol::ICMPV6 => {
            format!("{} type {}", protocol_name(port.protocol), port.port_lo)
        }
        code if port.port_lo == 0 && port.port_hi == u16::MAX => {
            format!("{}/any", protocol_name(code))
        }
        code if port.port_lo == port.port_hi => format!("{}/{}", protocol_name(code), port.port_lo),
        code => format!("{}/{}-{}", protocol_name(code), port.port_lo, port.port_hi),
    };
    let origin = table
        .rule(port.rule_id)
        .map_or_else(String::new, |origin| format!(" ({origin})"));
    format!("{direction} {verdict} {} {what}{origin}", entry.prefix)
}

/// Lower-case name of an IP protocol code as policies write it.
pub fn protocol_name(code: u8) -> String {
    match code {
        protocol::ANY => "any".to_owned(),
        protocol::TCP => "tcp".to_owned(),
        protocol::UDP => "udp".to_owned(),
        protocol::SCTP => "sctp".to_owned(),
        protocol::ICMP => "icmp".to_owned(),
        protocol::ICMPV6 => "icmpv6".to_owned(),
        other => format!("proto-{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeContext, compile, policy_from_toml};

    #[test]
    fn each_row_names_its_peer_ports_and_origin() {
        let policy = policy_from_toml(
            "p.toml",
            r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "p" }
[spec]
nodeSelector = {}
[[spec.ingress]]
fromCIDR = ["10.0.0.0/8"]
toPorts = [{ ports = [{ port = "22", protocol = "TCP" }, { port = "8000", endPort = 8080, protocol = "UDP" }] }]
[[spec.ingress]]
[[spec.egressDeny]]
toCIDR = ["192.0.2.1/32"]
[[spec.egress]]
toEntities = []
"#,
        )
        .unwrap();
        let table = compile(&[policy], &NodeContext::default()).unwrap();
        assert_eq!(
            rule_lines(&table),
            [
                "ingress allow 10.0.0.0/8 tcp/22 (p spec.ingress[0])",
                "ingress allow 10.0.0.0/8 udp/8000-8080 (p spec.ingress[0])",
                "egress deny 192.0.2.1/32 all (p spec.egressDeny[0])",
                "ingress selects nothing (p spec.ingress[1]): an entry without peers, toPorts or icmps selects no peer (it only turns default deny on)",
                "egress selects nothing (p spec.egress[0]): toEntities is an empty list, which selects no peer",
            ]
        );
    }
}
