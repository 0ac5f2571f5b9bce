//! Which rules apply to a subject: host rules to a node by its labels,
//! endpoint rules to a pod by its labels and namespace.
//!
//! Cilium's semantics (pkg/policy/api/selector.go, pkg/k8s/apis/cilium.io/v2
//! `ParseToCiliumRule`): a pod carries its namespace as the label
//! `k8s:io.kubernetes.pod.namespace`, so a CiliumClusterwideNetworkPolicy
//! can select pods by namespace like any other label; a
//! CiliumNetworkPolicy only ever selects pods of its own namespace
//! (`default` when the file gives none).

use std::collections::BTreeMap;

use crate::model::{Policy, PolicyKind, Rule};

/// The label Cilium gives every pod with the name of its namespace.
pub const POD_NAMESPACE_LABEL: &str = "k8s:io.kubernetes.pod.namespace";

/// The namespace of a CiliumNetworkPolicy that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One rule that selects a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedRule<'a> {
    /// The policy the rule belongs to.
    pub policy: &'a Policy,
    /// The rule's field path, `spec` or `specs[i]`.
    pub path: String,
    /// The rule.
    pub rule: &'a Rule,
}

/// The host rules (`nodeSelector`) that select a node with `labels`, in
/// document order.
pub fn rules_for_node<'a>(
    policies: &'a [Policy],
    labels: &BTreeMap<String, String>,
) -> Vec<SelectedRule<'a>> {
    selected(policies, |policy, rule| {
        policy.kind == PolicyKind::CiliumClusterwideNetworkPolicy
            && rule
                .node_selector
                .as_ref()
                .is_some_and(|selector| selector.matches(labels))
    })
}

/// The endpoint rules (`endpointSelector`) that select a pod with `labels`
/// in `namespace`, in document order.
pub fn rules_for_endpoint<'a>(
    policies: &'a [Policy],
    labels: &BTreeMap<String, String>,
    namespace: &str,
) -> Vec<SelectedRule<'a>> {
    let mut pod = labels.clone();
    pod.insert(POD_NAMESPACE_LABEL.to_owned(), namespace.to_owned());
    selected(policies, |policy, rule| {
        let in_scope = match policy.kind {
            PolicyKind::CiliumClusterwideNetworkPolicy => true,
            PolicyKind::CiliumNetworkPolicy => {
                policy
                    .metadata
                    .namespace
                    .as_deref()
                    .unwrap_or(DEFAULT_NAMESPACE)
                    == namespace
            }
        };
        in_scope
            && rule
                .endpoint_selector
                .as_ref()
                .is_some_and(|selector| selector.matches(&pod))
    })
}

fn selected(
    policies: &[Policy],
    selects: impl Fn(&Policy, &Rule) -> bool,
) -> Vec<SelectedRule<'_>> {
    policies
        .iter()
        .flat_map(|policy| {
            policy
                .rules()
                .filter(|(_, rule)| selects(policy, rule))
                .map(move |(path, rule)| SelectedRule { policy, path, rule })
        })
        .collect()
}

/// Why a rule puts nothing in force on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unenforced {
    /// It selects pods (`endpointSelector`, or any rule of a
    /// CiliumNetworkPolicy): palisade enforces host policies only until
    /// its CNI plugin enforces pods.
    SelectsPods,
    /// Its `nodeSelector` does not match the node's labels.
    OtherNodes,
}

impl std::fmt::Display for Unenforced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SelectsPods => {
                "it selects pods (endpointSelector); palisade enforces host policies (nodeSelector) only, pods are not enforced yet"
            }
            Self::OtherNodes => {
                "its nodeSelector does not match this node's labels ([node] labels in palisade.toml)"
            }
        })
    }
}

/// The rules of `policy` that put nothing in force on a node with
/// `labels` (all labels unknown, `None`: only pod rules are told), each
/// with its field path and why.
pub fn unenforced_rules(
    policy: &Policy,
    labels: Option<&BTreeMap<String, String>>,
) -> Vec<(String, Unenforced)> {
    policy
        .rules()
        .filter_map(|(path, rule)| {
            let host = policy.kind == PolicyKind::CiliumClusterwideNetworkPolicy;
            match (&rule.node_selector, labels) {
                (Some(_), _) if !host => Some((path, Unenforced::SelectsPods)),
                (Some(selector), Some(labels)) if !selector.matches(labels) => {
                    Some((path, Unenforced::OtherNodes))
                }
                (Some(_), _) => None,
                (None, _) => Some((path, Unenforced::SelectsPods)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies_from_yaml;

    #[test]
    fn pod_rules_and_rules_for_other_nodes_are_told_apart() {
        let policies = policies_from_yaml(
            "p.yaml",
            r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: { name: mixed }
specs:
  - nodeSelector: { matchLabels: { role: edge } }
    ingress: [{}]
  - nodeSelector: {}
    ingress: [{}]
  - endpointSelector: {}
    ingress: [{}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: pods, namespace: default }
spec:
  endpointSelector: {}
  ingress: [{}]
"#,
        )
        .unwrap();
        let core = BTreeMap::from([("role".to_owned(), "core".to_owned())]);
        assert_eq!(
            unenforced_rules(&policies[0], Some(&core)),
            [
                ("specs[0]".to_owned(), Unenforced::OtherNodes),
                ("specs[2]".to_owned(), Unenforced::SelectsPods)
            ]
        );
        assert_eq!(
            unenforced_rules(&policies[0], None),
            [("specs[2]".to_owned(), Unenforced::SelectsPods)]
        );
        assert_eq!(
            unenforced_rules(&policies[1], Some(&core)),
            [("spec".to_owned(), Unenforced::SelectsPods)]
        );
    }
}
