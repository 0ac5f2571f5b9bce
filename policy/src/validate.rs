//! Checks that serde cannot express, mirroring Cilium's `Rule.Sanitize()`
//! (pkg/policy/api/rule_validation.go; see shared/policy/VALIDATION_RULES.md).

use crate::model::Policy;

/// Most ports one `toPorts` entry may list (Cilium: "too many ports, the max is 40").
pub const MAX_PORTS_PER_RULE: usize = 40;
/// Most types one `icmps` entry may list (Cilium: `ICMPRule` max 40 fields).
pub const MAX_ICMP_FIELDS: usize = 40;

/// A validation problem at a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path such as `spec.ingress[0].toPorts[0].ports`.
    pub path: String,
    /// What is wrong, in Cilium's words where Cilium has them.
    pub message: String,
}

/// Longest `metadata.name` Kubernetes accepts (a DNS subdomain, RFC 1123).
pub const MAX_NAME_LENGTH: usize = 253;

/// Kubernetes' rule for object names (`IsDNS1123Subdomain`): lower-case
/// letters, digits, '-' and '.', starting and ending with a letter or digit.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a policy needs a non-empty name".into());
    }
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = name.len() <= MAX_NAME_LENGTH
        && name
            .chars()
            .all(|c| alphanumeric(c) || c == '-' || c == '.')
        && name.starts_with(alphanumeric)
        && name.ends_with(alphanumeric);
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (at most {MAX_NAME_LENGTH} characters)"
        ))
    }
}

/// Every problem in `policy`, in document order.
pub fn validate(policy: &Policy) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |path: String, message: String| problems.push(Problem { path, message });
    if let Err(message) = check_name(&policy.metadata.name) {
        problem("metadata.name".into(), message);
    }
    if policy.spec.is_none() && policy.specs.is_empty() {
        problem(
            String::new(),
            "a policy needs `spec` or `specs` with at least one rule".into(),
        );
    }
    for (path, rule) in policy.rules() {
        let sections = rule.sections();
        // Rule 1: at least one rule section (rule_validation.go, Rule.Sanitize).
        if sections.iter().all(|(_, entries)| entries.is_empty()) {
            problem(
                path.clone(),
                "rule must have at least one of ingress, ingressDeny, egress or egressDeny".into(),
            );
        }
        for (section, peer_rules) in sections {
            for (i, peer_rule) in peer_rules.iter().enumerate() {
                let (to_ports, icmps) = (peer_rule.to_ports, peer_rule.icmps);
                let section = section.field();
                let at = format!("{path}.{section}[{i}]");
                for (j, port_rule) in to_ports.iter().enumerate() {
                    // Rule 9: at most 40 ports per toPorts entry.
                    if port_rule.ports.len() > MAX_PORTS_PER_RULE {
                        problem(
                            format!("{at}.toPorts[{j}].ports"),
                            format!("too many ports, the max is {MAX_PORTS_PER_RULE}"),
                        );
                    }
                }
                // Rule 23: icmps and toPorts are exclusive (ICMPRule.verify).
                if !icmps.is_empty() && !to_ports.is_empty() {
                    problem(
                        format!("{at}.icmps"),
                        "the ICMPs block may only be present without ToPorts; write a separate rule for the ports".into(),
                    );
                }
                for (j, icmp) in icmps.iter().enumerate() {
                    // Rule 24: at most 40 fields per ICMP rule; names per family.
                    if icmp.fields.len() > MAX_ICMP_FIELDS {
                        problem(
                            format!("{at}.icmps[{j}].fields"),
                            format!("too many types, the max is {MAX_ICMP_FIELDS}"),
                        );
                    }
                    for (k, field) in icmp.fields.iter().enumerate() {
                        if field.icmp_type.code(field.family).is_none() {
                            problem(
                                format!("{at}.icmps[{j}].fields[{k}].type"),
                                format!(
                                    "ICMP type {} does not exist for family {:?}; set `family` or use the number",
                                    field.icmp_type, field.family
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use crate::codec::policy_from_toml;

    fn problems(body: &str) -> Vec<String> {
        let text = format!(
            "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = {{ name = \"v\" }}\n[spec]\nnodeSelector = {{}}\n{body}"
        );
        match policy_from_toml("v.toml", &text) {
            Ok(_) => Vec::new(),
            Err(diagnostics) => diagnostics.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn icmps_beside_ports_is_refused() {
        let found = problems(
            "[[spec.egress]]\ntoPorts = [{ ports = [{ port = 53 }] }]\nicmps = [{ fields = [{ type = 8 }] }]\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains(
                "spec.egress[0].icmps: the ICMPs block may only be present without ToPorts"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn names_are_kubernetes_object_names() {
        let named = |name: &str| {
            let text = format!(
                "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = {{ name = \"{name}\" }}\n[spec]\nnodeSelector = {{}}\n[[spec.ingress]]\n"
            );
            match policy_from_toml("n.toml", &text) {
                Ok(_) => Vec::new(),
                Err(diagnostics) => diagnostics.0.iter().map(ToString::to_string).collect(),
            }
        };
        assert!(named("allow-ssh.v2").is_empty());
        for bad in ["Allow", "-a", "a-", "../etc", "a_b"] {
            let found = named(bad);
            assert_eq!(found.len(), 1, "{bad}: {found:?}");
            assert!(
                found[0].starts_with("n.toml:2:")
                    && found[0].contains("metadata.name: invalid name"),
                "{bad}: {found:?}"
            );
        }
        assert!(named("")[0].contains("metadata.name: a policy needs a non-empty name"));
    }

    #[test]
    fn icmp_names_belong_to_a_family() {
        assert!(problems("[[spec.ingress]]\nicmps = [{ fields = [{ family = \"IPv6\", type = \"PacketTooBig\" }] }]\n").is_empty());
        let found =
            problems("[[spec.ingress]]\nicmps = [{ fields = [{ type = \"PacketTooBig\" }] }]\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("spec.ingress[0].icmps[0].fields[0].type: ICMP type PacketTooBig does not exist for family IPv4"), "{found:?}");
        let found = problems("[[spec.ingress]]\nicmps = [{ fields = [{ type = \"Ping\" }] }]\n");
        assert!(
            found[0].contains("unknown ICMP type name \"Ping\""),
            "{found:?}"
        );
    }

    #[test]
    fn an_egress_only_rule_is_a_rule() {
        assert!(problems("[[spec.egress]]\ntoCIDR = [\"192.0.2.0/24\"]\n").is_empty());
    }
}
