//! The incremental compiler against compiling from scratch: random
//! sequences of policies added, changed and removed (nested IPv4 and IPv6
//! prefixes, allow and deny, ingress and egress, audit mode, ports and
//! L3-only rules) must give, after every step,
//! - the same rows and origins as a fresh compile of the same policies
//!   (rule ids may differ: each policy keeps its block of ids);
//! - a flattened view equal to flattening those rows naively, prefix by
//!   prefix;
//! - changes that name every prefix and rule set that differ from the
//!   previous table.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use ipnet::IpNet;
use palisade_common::{PortEntry, action};
use palisade_policy::{
    CompiledTable, Direction, NodeContext, Policy, TableCompiler, compile, policy_from_toml,
};
use proptest::{
    prelude::RngExt as _,
    test_runner::{RngAlgorithm, TestRng},
};

const STEPS: usize = 400;
const NAMES: [&str; 5] = ["alpha", "bravo", "charlie", "delta", "echo"];
const PREFIXES: [&str; 12] = [
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.3/32",
    "10.2.0.0/16",
    "192.168.0.0/24",
    "192.168.0.128/25",
    "::/0",
    "fd00::/8",
    "fd00:1::/32",
    "fd00:1::1/128",
];

fn random_policy(random: &mut TestRng, name: &str) -> String {
    let mut text = format!(
        "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = {{ name = \"{name}\"{} }}\n[spec]\nnodeSelector = {}\n",
        if random.random_ratio(1, 6) {
            ", annotations = { \"cilium.io/policy-audit-mode\" = \"true\" }"
        } else {
            ""
        },
        if random.random_ratio(1, 8) {
            "{ matchLabels = { role = \"db\" } }"
        } else {
            "{}"
        }
    );
    for _ in 0..random.random_range(1..6) {
        let section = ["ingress", "ingressDeny", "egress", "egressDeny"][random.random_range(0..4)];
        let field = if section.starts_with("ingress") {
            "fromCIDR"
        } else {
            "toCIDR"
        };
        let cidrs: BTreeSet<&str> = (0..random.random_range(1..4))
            .map(|_| PREFIXES[random.random_range(0..PREFIXES.len())])
            .collect();
        let cidrs: Vec<String> = cidrs.iter().map(|cidr| format!("\"{cidr}\"")).collect();
        text.push_str(&format!(
            "[[spec.{section}]]\n{field} = [{}]\n",
            cidrs.join(", ")
        ));
        if random.random_ratio(2, 3) {
            let port = [22, 53, 80, 443][random.random_range(0..4)];
            let protocol = ["TCP", "UDP"][random.random_range(0..2)];
            text.push_str(&format!(
                "toPorts = [{{ ports = [{{ port = \"{port}\", protocol = \"{protocol}\" }}] }}]\n"
            ));
        }
    }
    text
}

fn parsed(text: &str) -> Policy {
    policy_from_toml("generated.toml", text).expect("a generated policy parses")
}

/// The rows with rule ids replaced by their origins, sorted.
fn rows(table: &CompiledTable, direction: Direction) -> Vec<(IpNet, String, u8, u8, u16, u16)> {
    let mut rows: Vec<_> = table
        .direction(direction)
        .entries
        .iter()
        .map(|row| {
            let origin = table
                .rule(row.port.rule_id)
                .map_or_else(|| "?".to_owned(), ToString::to_string);
            (
                row.prefix,
                origin,
                row.port.action,
                row.port.protocol,
                row.port.port_lo,
                row.port.port_hi,
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Each prefix's rule set, flattened the plain way: every row of every
/// prefix containing it, deny rows first, then audited deny rows, then
/// allow rows, each by rule id, repeats of (action, protocol, ports) dropped.
fn naive_flat(table: &CompiledTable, direction: Direction) -> BTreeMap<IpNet, Vec<PortEntry>> {
    let entries = &table.direction(direction).entries;
    let prefixes: BTreeSet<IpNet> = entries.iter().map(|row| row.prefix).collect();
    prefixes
        .into_iter()
        .map(|prefix| {
            let mut set: Vec<PortEntry> = entries
                .iter()
                .filter(|row| row.prefix.contains(&prefix))
                .map(|row| row.port)
                .collect();
            set.sort_by_key(|entry| {
                let precedence = match entry.action {
                    action::DENY => 0,
                    action::AUDIT_DENY => 1,
                    _ => 2,
                };
                (
                    precedence,
                    entry.rule_id,
                    entry.protocol,
                    entry.port_lo,
                    entry.port_hi,
                )
            });
            let mut seen = BTreeSet::new();
            set.retain(|e| seen.insert((e.action, e.protocol, e.port_lo, e.port_hi)));
            (prefix, set)
        })
        .collect()
}

fn flat(table: &CompiledTable, direction: Direction) -> BTreeMap<IpNet, Vec<PortEntry>> {
    table
        .direction(direction)
        .prefixes
        .iter()
        .map(|(prefix, flat)| (*prefix, table.rule_set(flat.rule_set).to_vec()))
        .collect()
}

/// Every difference between `before` and `after` is among `after`'s changes.
fn check_changes(before: &CompiledTable, after: &CompiledTable, step: usize) {
    let changes = after
        .changes
        .as_ref()
        .expect("an incremental table has changes");
    assert_eq!(
        changes.since, before.serial,
        "step {step}: changes from the wrong table"
    );
    for direction in [Direction::Ingress, Direction::Egress] {
        let (old, new) = (
            &before.direction(direction).prefixes,
            &after.direction(direction).prefixes,
        );
        let keys: BTreeSet<&IpNet> = old.keys().chain(new.keys()).collect();
        for prefix in keys {
            let (was, is) = (
                old.get(prefix).map(|flat| flat.rule_set),
                new.get(prefix).map(|flat| flat.rule_set),
            );
            if was != is {
                assert!(
                    changes.flat.prefixes[direction.index()].contains(prefix),
                    "step {step}: {direction:?} {prefix} changed ({was:?} → {is:?}) but is not in the changes"
                );
            }
        }
    }
    let count = before.rule_sets.len().max(after.rule_sets.len());
    for index in 0..u32::try_from(count).expect("few rule sets") {
        if before.rule_set(index) != after.rule_set(index) {
            assert!(
                changes.flat.rule_sets.contains(&index),
                "step {step}: rule set {index} changed but is not in the changes"
            );
        }
    }
}

#[test]
fn incremental_compiles_match_compiling_from_scratch() {
    let mut random = TestRng::from_seed(RngAlgorithm::XorShift, &[0x17; 16]);
    let node = NodeContext::default();
    let mut compiler = TableCompiler::new(node.clone());
    let mut previous = CompiledTable::default();
    let mut policies: BTreeMap<&str, Arc<Policy>> = BTreeMap::new();
    let mut texts: BTreeMap<&str, String> = BTreeMap::new();
    for step in 0..STEPS {
        let name = NAMES[random.random_range(0..NAMES.len())];
        match random.random_range(0..4) {
            0 => {
                policies.remove(name);
                texts.remove(name);
            }
            // The same rules on other ports: whole rule sets change.
            1 if texts.contains_key(name) => {
                let text = texts[name]
                    .replace("\"22\"", "\"2222\"")
                    .replace("\"80\"", "\"22\"");
                policies.insert(name, Arc::new(parsed(&text)));
                texts.insert(name, text);
            }
            _ => {
                let text = random_policy(&mut random, name);
                policies.insert(name, Arc::new(parsed(&text)));
                texts.insert(name, text);
            }
        }
        let list: Vec<Arc<Policy>> = policies.values().cloned().collect();
        let plain: Vec<Policy> = list.iter().map(|policy| (**policy).clone()).collect();
        let fresh = compile(&plain, &node);
        let (table, next) = match (compiler.compile(&list), fresh) {
            (Ok(compiled), Ok(fresh)) => {
                for direction in [Direction::Ingress, Direction::Egress] {
                    assert_eq!(
                        rows(&compiled.0, direction),
                        rows(&fresh, direction),
                        "step {step}"
                    );
                    assert_eq!(
                        flat(&compiled.0, direction),
                        naive_flat(&compiled.0, direction),
                        "step {step}: {direction:?} flattened view"
                    );
                    assert_eq!(
                        compiled.0.direction(direction).default_deny,
                        fresh.direction(direction).default_deny
                    );
                }
                assert_eq!(compiled.0.policies, fresh.policies, "step {step}");
                assert_eq!(compiled.0.rule_count(), fresh.rule_count(), "step {step}");
                assert_eq!(compiled.0.audit, fresh.audit, "step {step}");
                compiled
            }
            (Err(incremental), Err(fresh)) => {
                assert_eq!(incremental.to_string(), fresh.to_string(), "step {step}");
                policies.remove(name);
                texts.remove(name);
                continue;
            }
            (incremental, fresh) => panic!(
                "step {step}: incremental {:?} but from scratch {:?}",
                incremental.map(|_| ()),
                fresh.map(|_| ())
            ),
        };
        check_changes(&previous, &table, step);
        previous = table;
        compiler = next;
    }
}

fn host_policy(name: &str, rules: &[(&str, u16)]) -> Arc<Policy> {
    let mut text = format!(
        "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = {{ name = \"{name}\" }}\n[spec]\nnodeSelector = {{}}\n"
    );
    for (cidr, port) in rules {
        text.push_str(&format!(
            "[[spec.ingress]]\nfromCIDR = [\"{cidr}\"]\ntoPorts = [{{ ports = [{{ port = \"{port}\", protocol = \"TCP\" }}] }}]\n"
        ));
    }
    Arc::new(policy_from_toml("generated.toml", &text).expect("parses"))
}

#[test]
fn a_policy_keeps_its_rule_ids_and_rule_sets_while_another_changes() {
    let zulu = host_policy("zulu", &[("10.9.0.0/16", 22)]);
    let zulu_ids = |table: &CompiledTable| -> Vec<usize> {
        (0..table.rules.len())
            .filter(|id| {
                table.rules[*id]
                    .as_ref()
                    .is_some_and(|o| o.policy.name == "zulu")
            })
            .collect()
    };
    let mut compiler = TableCompiler::new(NodeContext::default());
    let mut tables = Vec::new();
    // "alpha" sorts before "zulu": from scratch, its rule count would move zulu's id.
    for alpha_rules in [3, 1, 5, 2] {
        let alpha: Vec<(&str, u16)> = (0..alpha_rules)
            .map(|i| ("192.168.0.0/24", 80 + i))
            .collect();
        let (table, next) = compiler
            .compile(&[host_policy("alpha", &alpha), zulu.clone()])
            .expect("compiles");
        compiler = next;
        tables.push(table);
    }
    let first = &tables[0];
    let zulu_prefix: IpNet = "10.9.0.0/16".parse().expect("a prefix");
    let zulu_set = first.ingress.prefixes[&zulu_prefix].rule_set;
    for table in &tables[1..] {
        assert_eq!(zulu_ids(table), zulu_ids(first));
        assert_eq!(table.ingress.prefixes[&zulu_prefix].rule_set, zulu_set);
        let changes = table.changes.as_ref().expect("changes");
        assert!(
            !changes.flat.prefixes[0].contains(&zulu_prefix),
            "{changes:?}"
        );
        assert!(!changes.flat.rule_sets.contains(&zulu_set), "{changes:?}");
    }
}

#[test]
fn a_port_changed_in_a_rule_of_many_prefixes_rewrites_its_set_in_place() {
    let cidrs = ["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"];
    let rule = |port| -> Vec<(&str, u16)> { cidrs.iter().map(|cidr| (*cidr, port)).collect() };
    let (before, compiler) = TableCompiler::new(NodeContext::default())
        .compile(&[host_policy("web", &rule(80))])
        .expect("compiles");
    let (after, _) = compiler
        .compile(&[host_policy("web", &rule(8080))])
        .expect("compiles");
    let changes = after.changes.as_ref().expect("changes");
    assert!(changes.flat.prefixes[0].is_empty(), "{changes:?}");
    for cidr in cidrs {
        let prefix: IpNet = cidr.parse().expect("a prefix");
        let index = after.ingress.prefixes[&prefix].rule_set;
        assert_eq!(before.ingress.prefixes[&prefix].rule_set, index);
        assert_eq!(after.rule_set(index)[0].port_lo, 8080);
        assert!(changes.flat.rule_sets.contains(&index), "{changes:?}");
    }
}
