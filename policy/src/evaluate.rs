//! The reference evaluator: the verdict a compiled table gives one new connection.
//!
//! It reads the table's unflattened rows directly (every row whose prefix
//! contains the source), not the flattened rule sets a datapath uses, so it is
//! an independent oracle for every datapath.
//!
//! Semantics (Cilium, Documentation/security/policy/language.rst "Deny Policies"):
//! a matching deny row beats any allow row; otherwise a matching allow row lets
//! the packet through; otherwise the direction's default decides. When several
//! rows of the deciding kind match, the one with the lowest rule id is reported.

use std::net::IpAddr;

use palisade_common::{NO_RULE, PortEntry, action, drop_reason, protocol, verdict};
use serde::{Deserialize, Serialize};

use crate::compile::{CompiledTable, Direction};

/// The first packet of a connection, as the evaluator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6, ...).
    pub protocol: u8,
    /// Source address.
    pub source: IpAddr,
    /// Destination address.
    pub destination: IpAddr,
    /// Destination port; for ICMP and ICMPv6 the type (0 for protocols
    /// without ports).
    pub destination_port: u16,
}

/// What the evaluator decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// One of `palisade_common::verdict`.
    pub verdict: u8,
    /// One of `palisade_common::drop_reason`.
    pub drop_reason: u8,
    /// The deciding rule, or `NO_RULE`.
    pub rule_id: u32,
}

/// Evaluates one new connection in `direction` against `table`. The peer is
/// the source on ingress and the destination on egress. On ingress the
/// prefilter comes first: the longest matching prefilter prefix drops (the
/// lowest rule id among equal prefixes is reported). Then a peer in a
/// strict-mode prefix is dropped as unencrypted, before any rule, unless
/// the packet is ESP.
pub fn evaluate(table: &CompiledTable, direction: Direction, connection: &Connection) -> Verdict {
    let peer = match direction {
        Direction::Ingress => connection.source,
        Direction::Egress => connection.destination,
    };
    if direction == Direction::Ingress {
        let prefiltered = table
            .prefilter
            .iter()
            .filter(|entry| entry.prefix.contains(&peer))
            .max_by_key(|entry| (entry.prefix.prefix_len(), std::cmp::Reverse(entry.rule_id)));
        if let Some(entry) = prefiltered {
            return Verdict {
                verdict: verdict::DROPPED,
                drop_reason: drop_reason::PREFILTER,
                rule_id: entry.rule_id,
            };
        }
    }
    let would_drop = |reason, rule_id| Verdict {
        verdict: if table.audit {
            verdict::AUDIT
        } else {
            verdict::DROPPED
        },
        drop_reason: reason,
        rule_id,
    };
    if connection.protocol != protocol::ESP
        && table.strict.iter().any(|prefix| prefix.contains(&peer))
    {
        return would_drop(drop_reason::UNENCRYPTED_TRAFFIC, NO_RULE);
    }
    let rows = table.direction(direction);
    let matching = |wanted: u8| {
        rows.entries
            .iter()
            .filter(|row| row.prefix.contains(&peer))
            .map(|row| row.port)
            .filter(|entry| entry.action == wanted && entry_matches(entry, connection))
            .map(|entry| entry.rule_id)
            .min()
    };
    let audited = |reason, rule_id| Verdict {
        verdict: verdict::AUDIT,
        drop_reason: reason,
        rule_id,
    };
    if let Some(rule_id) = matching(action::DENY) {
        return would_drop(drop_reason::POLICY_DENY, rule_id);
    }
    if let Some(rule_id) = matching(action::AUDIT_DENY) {
        return audited(drop_reason::POLICY_DENY, rule_id);
    }
    if let Some(rule_id) = matching(action::ALLOW) {
        return Verdict {
            verdict: verdict::FORWARDED,
            drop_reason: drop_reason::NONE,
            rule_id,
        };
    }
    if rows.default_deny_audited {
        audited(drop_reason::POLICY_DENIED, NO_RULE)
    } else if rows.default_deny {
        would_drop(drop_reason::POLICY_DENIED, NO_RULE)
    } else {
        Verdict {
            verdict: verdict::FORWARDED,
            drop_reason: drop_reason::NONE,
            rule_id: NO_RULE,
        }
    }
}

fn entry_matches(entry: &PortEntry, connection: &Connection) -> bool {
    let protocol_matches = match entry.protocol {
        protocol::ALL => true,
        protocol::ANY => matches!(
            connection.protocol,
            protocol::TCP | protocol::UDP | protocol::SCTP
        ),
        code => code == connection.protocol,
    };
    protocol_matches && (entry.port_lo..=entry.port_hi).contains(&connection.destination_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        codec::policy_from_toml,
        compile::{NodeContext, compile},
    };

    const POLICY: &str = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "p" }
[spec]
nodeSelector = {}
[[spec.ingress]]
fromCIDR = ["10.0.0.0/8", "2001:db8::/32"]
toPorts = [{ ports = [{ port = 22, protocol = "TCP" }, { port = 8000, endPort = 8099 }] }]
[[spec.ingressDeny]]
fromCIDR = ["10.66.0.0/16"]
"#;

    fn table(audit_mode: bool) -> CompiledTable {
        let policy = policy_from_toml("p.toml", POLICY).unwrap();
        compile(
            &[policy],
            &NodeContext {
                audit_mode,
                ..NodeContext::default()
            },
        )
        .unwrap()
    }

    fn connection(source: &str, proto: u8, port: u16) -> Connection {
        Connection {
            protocol: proto,
            source: source.parse().unwrap(),
            destination: "10.255.0.1".parse().unwrap(),
            destination_port: port,
        }
    }

    /// Enforced beside [`POLICY`] when that one is in audit mode.
    const ENFORCED: &str = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "enforced" }
[spec]
nodeSelector = {}
[[spec.egress]]
toCIDR = ["192.0.2.0/24"]
[[spec.ingressDeny]]
fromCIDR = ["10.66.1.0/24"]
toPorts = [{ ports = [{ port = 22, protocol = "TCP" }] }]
"#;

    #[test]
    fn strict_mode_drops_a_prefix_in_the_clear_and_lets_esp_pass() {
        let policy = policy_from_toml("p.toml", POLICY).unwrap();
        let table = compile(
            &[policy],
            &NodeContext {
                strict_prefixes: vec!["10.0.0.0/8".parse().unwrap()],
                ..NodeContext::default()
            },
        )
        .unwrap();
        let clear = evaluate(&table, Direction::Ingress, &connection("10.1.2.3", 6, 22));
        assert_eq!(clear.drop_reason, drop_reason::UNENCRYPTED_TRAFFIC);
        let esp = evaluate(
            &table,
            Direction::Ingress,
            &connection("10.1.2.3", protocol::ESP, 0),
        );
        assert_ne!(esp.drop_reason, drop_reason::UNENCRYPTED_TRAFFIC);
    }

    #[test]
    fn a_policy_in_audit_mode_reports_what_it_would_drop_and_forwards_it() {
        let audited = POLICY.replace(
            "metadata = { name = \"p\" }",
            "metadata = { name = \"p\", annotations = { \"cilium.io/policy-audit-mode\" = \"true\" } }",
        );
        let only = compile(
            &[policy_from_toml("a.toml", &audited).unwrap()],
            &NodeContext::default(),
        )
        .unwrap();
        assert!(
            only.prefilter.is_empty(),
            "audited denies are not prefiltered"
        );
        assert!(only.ingress.default_deny && only.ingress.default_deny_audited);
        let v = |t: &CompiledTable, s, p, port| {
            let v = evaluate(t, Direction::Ingress, &connection(s, p, port));
            (v.verdict, v.drop_reason, v.rule_id)
        };
        assert_eq!(
            v(&only, "10.1.2.3", protocol::TCP, 22),
            (verdict::FORWARDED, drop_reason::NONE, 0)
        );
        assert_eq!(
            v(&only, "10.1.2.3", protocol::UDP, 22),
            (verdict::AUDIT, drop_reason::POLICY_DENIED, NO_RULE)
        );
        assert_eq!(
            v(&only, "10.66.1.1", protocol::TCP, 22),
            (verdict::AUDIT, drop_reason::POLICY_DENY, 1)
        );

        let both = compile(
            &[
                policy_from_toml("a.toml", &audited).unwrap(),
                policy_from_toml("e.toml", ENFORCED).unwrap(),
            ],
            &NodeContext::default(),
        )
        .unwrap();
        // The enforced deny wins over the audited one.
        assert_eq!(
            v(&both, "10.66.1.1", protocol::TCP, 22),
            (verdict::DROPPED, drop_reason::POLICY_DENY, 2)
        );
        assert_eq!(
            v(&both, "10.66.2.1", protocol::TCP, 22),
            (verdict::AUDIT, drop_reason::POLICY_DENY, 1)
        );
        // The enforced policy has ingress and egress sections, so both
        // directions are default deny for real.
        assert!(both.ingress.default_deny && !both.ingress.default_deny_audited);
        assert_eq!(
            v(&both, "10.1.2.3", protocol::UDP, 22),
            (verdict::DROPPED, drop_reason::POLICY_DENIED, NO_RULE)
        );
        assert!(both.egress.default_deny && !both.egress.default_deny_audited);
    }

    #[test]
    fn allow_deny_and_default() {
        let t = table(false);
        let v = |s, p, port| evaluate(&t, Direction::Ingress, &connection(s, p, port));
        assert_eq!(v("10.1.2.3", protocol::TCP, 22).verdict, verdict::FORWARDED);
        assert_eq!(v("10.1.2.3", protocol::TCP, 22).rule_id, 0);
        assert_eq!(
            v("2001:db8::1", protocol::TCP, 22).verdict,
            verdict::FORWARDED
        );
        assert_eq!(v("10.1.2.3", protocol::UDP, 22).verdict, verdict::DROPPED);
        assert_eq!(
            v("10.1.2.3", protocol::UDP, 8050).verdict,
            verdict::FORWARDED
        );
        assert_eq!(
            v("10.1.2.3", protocol::SCTP, 8099).verdict,
            verdict::FORWARDED
        );
        assert_eq!(v("10.1.2.3", protocol::TCP, 8100).verdict, verdict::DROPPED);
        assert_eq!(
            v("10.1.2.3", protocol::ICMP, 0).drop_reason,
            drop_reason::POLICY_DENIED
        );
        // An L3-only deny with named peers goes to the prefilter.
        let denied = v("10.66.1.1", protocol::TCP, 22);
        assert_eq!(
            (denied.verdict, denied.drop_reason, denied.rule_id),
            (verdict::DROPPED, drop_reason::PREFILTER, 1)
        );
        assert_eq!(
            v("10.66.1.1", protocol::ICMP, 0).drop_reason,
            drop_reason::PREFILTER
        );
        assert_eq!(v("192.0.2.1", protocol::TCP, 22).verdict, verdict::DROPPED);
    }

    #[test]
    fn audit_mode_turns_drops_into_audits() {
        let t = table(true);
        let v = evaluate(
            &t,
            Direction::Ingress,
            &connection("192.0.2.1", protocol::TCP, 22),
        );
        assert_eq!(
            (v.verdict, v.drop_reason),
            (verdict::AUDIT, drop_reason::POLICY_DENIED)
        );
        // No prefilter in audit mode: the deny rule audits instead.
        let v = evaluate(
            &t,
            Direction::Ingress,
            &connection("10.66.1.1", protocol::TCP, 22),
        );
        assert_eq!(
            (v.verdict, v.drop_reason, v.rule_id),
            (verdict::AUDIT, drop_reason::POLICY_DENY, 1)
        );
    }

    const EGRESS_AND_ICMP: &str = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "e" }
[spec]
nodeSelector = {}
[[spec.ingress]]
icmps = [{ fields = [{ type = "EchoRequest" }, { family = "IPv6", type = 128 }] }]
[[spec.egress]]
toCIDR = ["192.0.2.0/24"]
toPorts = [{ ports = [{ port = 53, protocol = "UDP" }] }]
[[spec.egressDeny]]
toCIDR = ["192.0.2.66"]
"#;

    #[test]
    fn egress_uses_the_destination_and_icmp_matches_types() {
        let policy = policy_from_toml("e.toml", EGRESS_AND_ICMP).unwrap();
        let t = compile(&[policy], &NodeContext::default()).unwrap();
        assert!(t.egress.default_deny && t.ingress.default_deny);
        let out = |destination: &str, proto, port| {
            let c = Connection {
                protocol: proto,
                source: "10.0.0.1".parse().unwrap(),
                destination: destination.parse().unwrap(),
                destination_port: port,
            };
            let v = evaluate(&t, Direction::Egress, &c);
            (v.verdict, v.rule_id)
        };
        assert_eq!(out("192.0.2.1", protocol::UDP, 53), (verdict::FORWARDED, 1));
        assert_eq!(out("192.0.2.1", protocol::TCP, 53).0, verdict::DROPPED);
        assert_eq!(out("192.0.2.66", protocol::UDP, 53), (verdict::DROPPED, 2));
        assert_eq!(out("198.51.100.1", protocol::UDP, 53).0, verdict::DROPPED);
        // egressDeny never feeds the (ingress) prefilter.
        assert!(t.prefilter.is_empty());
        let ping = |source: &str, proto, icmp_type| {
            let c = connection(source, proto, icmp_type);
            evaluate(&t, Direction::Ingress, &c).verdict
        };
        assert_eq!(ping("198.51.100.1", protocol::ICMP, 8), verdict::FORWARDED);
        assert_eq!(ping("198.51.100.1", protocol::ICMP, 13), verdict::DROPPED);
        assert_eq!(
            ping("2001:db8::1", protocol::ICMPV6, 128),
            verdict::FORWARDED
        );
        assert_eq!(ping("198.51.100.1", protocol::TCP, 8), verdict::DROPPED);
    }
}
