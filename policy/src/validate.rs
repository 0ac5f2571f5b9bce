//! Checks that serde cannot express, mirroring Cilium's `Rule.Sanitize()`
//! (pkg/policy/api/rule_validation.go; see shared/policy/VALIDATION_RULES.md).

use crate::model::Policy;

/// Most ports one `toPorts` entry may list (Cilium: "too many ports, the max is 40").
pub const MAX_PORTS_PER_RULE: usize = 40;

/// A validation problem at a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path such as `spec.ingress[0].toPorts[0].ports`.
    pub path: String,
    /// What is wrong, in Cilium's words where Cilium has them.
    pub message: String,
}

/// Every problem in `policy`, in document order.
pub fn validate(policy: &Policy) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |path: String, message: String| problems.push(Problem { path, message });
    if policy.metadata.name.trim().is_empty() {
        problem(
            "metadata.name".into(),
            "a policy needs a non-empty name".into(),
        );
    }
    if policy.spec.is_none() && policy.specs.is_empty() {
        problem(
            String::new(),
            "a policy needs `spec` or `specs` with at least one rule".into(),
        );
    }
    for (path, rule) in policy.rules() {
        // Rule 1: at least one rule section (rule_validation.go, Rule.Sanitize).
        if rule.ingress.is_empty() && rule.ingress_deny.is_empty() {
            problem(
                path.clone(),
                "rule must have at least one of ingress or ingressDeny".into(),
            );
        }
        let sections = [
            ("ingress", &rule.ingress),
            ("ingressDeny", &rule.ingress_deny),
        ];
        for (section, ingress_rules) in sections {
            for (i, ingress_rule) in ingress_rules.iter().enumerate() {
                for (j, port_rule) in ingress_rule.to_ports.iter().enumerate() {
                    // Rule 9: at most 40 ports per toPorts entry.
                    if port_rule.ports.len() > MAX_PORTS_PER_RULE {
                        problem(
                            format!("{path}.{section}[{i}].toPorts[{j}].ports"),
                            format!("too many ports, the max is {MAX_PORTS_PER_RULE}"),
                        );
                    }
                }
            }
        }
    }
    problems
}
