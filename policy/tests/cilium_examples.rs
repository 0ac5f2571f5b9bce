//! Every example policy Cilium publishes (tests/fixtures/cilium-examples)
//! either loads or is refused with its file:line:col and reason. Host
//! policies also convert YAML → TOML → YAML without loss and compile; the
//! compiled table is a snapshot (tests/snapshots). Endpoint policies are
//! accepted and kept for the CNI.

mod support;

use std::fmt::Write as _;

use palisade_common::action;
use palisade_policy::{
    CompiledTable, Direction, compile, describe::protocol_name, policies_from_text,
    policies_to_yaml, policy_to_toml,
};
use support::{Fixture, filled_in, fixtures, has_host_rules, node_for};

/// The compiled table, one line per rule row group: direction, action,
/// protocol and ports, origin, then the peer prefixes.
fn render(table: &CompiledTable) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "policies: {}",
        table
            .policies
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "default deny: ingress {}, egress {}; audit {}",
        table.ingress.default_deny, table.egress.default_deny, table.audit
    );
    for direction in [Direction::Ingress, Direction::Egress] {
        let rows = &table.direction(direction).entries;
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for row in rows {
            let port = row.port;
            let verdict = if port.action == action::DENY {
                "deny"
            } else {
                "allow"
            };
            let what = match port.protocol {
                palisade_common::protocol::ALL => "all".to_owned(),
                code if port.port_lo == 0 && port.port_hi == u16::MAX => {
                    format!("{}/any", protocol_name(code))
                }
                code if port.port_lo == port.port_hi => {
                    format!("{}/{}", protocol_name(code), port.port_lo)
                }
                code => format!("{}/{}-{}", protocol_name(code), port.port_lo, port.port_hi),
            };
            let origin = table
                .rule(port.rule_id)
                .map_or_else(String::new, ToString::to_string);
            let key = format!("{direction:?} {verdict} {what} ({origin})").to_lowercase();
            match groups.iter_mut().find(|(existing, _)| *existing == key) {
                Some((_, prefixes)) => prefixes.push(row.prefix.to_string()),
                None => groups.push((key, vec![row.prefix.to_string()])),
            }
        }
        for (key, prefixes) in groups {
            let _ = writeln!(out, "{key}: {}", prefixes.join(" "));
        }
        let flat = table.direction(direction);
        // The empty set (index 0) and the distinct sets of this direction.
        let rule_sets: std::collections::BTreeSet<u32> = flat
            .prefixes
            .values()
            .map(|prefix| prefix.rule_set)
            .chain([0])
            .collect();
        let _ = writeln!(
            out,
            "{direction:?} flattened: {} prefixes, {} rule sets",
            flat.prefixes.len(),
            rule_sets.len()
        );
    }
    let prefilter: Vec<String> = table
        .prefilter
        .iter()
        .map(|entry| format!("{} (rule {})", entry.prefix, entry.rule_id))
        .collect();
    let _ = writeln!(out, "prefilter: {}", prefilter.join(" "));
    out
}

/// What palisade makes of one file, as a snapshot.
fn outcome(fixture: &Fixture) -> String {
    let mut out = String::new();
    let policies = match policies_from_text(&fixture.name, &fixture.text) {
        Ok(policies) => policies,
        Err(problems) => {
            let _ = writeln!(out, "refused:\n{problems}");
            // A template of Cilium's test suite loads once filled in.
            let filled = filled_in(&fixture.text);
            if filled == fixture.text {
                return out;
            }
            let _ = writeln!(out, "with its placeholders filled in:");
            match policies_from_text(&fixture.name, &filled) {
                Ok(policies) => policies,
                Err(problems) => {
                    let _ = writeln!(out, "refused:\n{problems}");
                    return out;
                }
            }
        }
    };
    for policy in &policies {
        let rules: Vec<&str> = policy
            .rules()
            .map(|(_, rule)| {
                if rule.is_host_rule() {
                    "host"
                } else {
                    "endpoint"
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "accepted: {:?} {}{} ({} rules)",
            policy.kind,
            policy
                .metadata
                .namespace
                .as_deref()
                .map(|namespace| format!("{namespace}/"))
                .unwrap_or_default(),
            policy.metadata.name,
            rules.join(", ")
        );
    }
    if has_host_rules(&policies) {
        let table = compile(&policies, &node_for(&policies))
            .unwrap_or_else(|error| panic!("{}: {error}", fixture.name));
        out.push_str(&render(&table));
    }
    out
}

#[test]
fn every_example_loads_or_is_refused_with_its_position() {
    let all = fixtures();
    assert_eq!(all.len(), 150, "the corpus has 150 examples");
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        for fixture in &all {
            insta::assert_snapshot!(fixture.name.clone(), outcome(fixture));
        }
    });
}

#[test]
fn refusals_carry_file_line_and_column() {
    for fixture in fixtures() {
        if let Err(problems) = policies_from_text(&fixture.name, &fixture.text) {
            for problem in &problems.0 {
                assert!(
                    problem.line.is_some()
                        && problem.column.is_some()
                        && !problem.message.is_empty(),
                    "{problem}"
                );
            }
        }
    }
}

#[test]
fn host_examples_convert_to_toml_and_back_without_loss() {
    let mut host = 0;
    for fixture in fixtures() {
        let text = filled_in(&fixture.text);
        let Ok(policies) = policies_from_text(&fixture.name, &text) else {
            continue;
        };
        if !has_host_rules(&policies) {
            continue;
        }
        host += 1;
        let node = node_for(&policies);
        let table = compile(&policies, &node).expect("compiles");
        let mut through_toml = Vec::new();
        for policy in &policies {
            let toml = policy_to_toml(policy).expect("TOML");
            let back = policies_from_text("converted.toml", &toml)
                .unwrap_or_else(|problems| panic!("{}: {problems}\n{toml}", fixture.name));
            assert_eq!(&back, std::slice::from_ref(policy), "{}", fixture.name);
            through_toml.extend(back);
        }
        let yaml = policies_to_yaml(&through_toml).expect("YAML");
        let again = policies_from_text("converted.yaml", &yaml).expect("YAML reads back");
        assert_eq!(again, policies, "{}", fixture.name);
        assert_eq!(
            compile(&again, &node).expect("compiles"),
            table,
            "{}",
            fixture.name
        );
    }
    assert_eq!(host, 14, "every host example counted");
}
