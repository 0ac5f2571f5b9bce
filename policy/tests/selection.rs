//! Which rules apply to a node and to a pod, on Cilium's own examples.

mod support;

use std::collections::BTreeMap;

use palisade_policy::{Policy, policies_from_text, rules_for_endpoint, rules_for_node};
use support::{filled_in, fixtures};

fn load(name: &str) -> Vec<Policy> {
    let fixture = fixtures()
        .into_iter()
        .find(|fixture| fixture.name == name)
        .unwrap_or_else(|| panic!("no fixture {name}"));
    policies_from_text(&fixture.name, &filled_in(&fixture.text))
        .unwrap_or_else(|problems| panic!("{name}: {problems}"))
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

/// The names and paths of the rules that select a pod.
fn for_pod(policies: &[Policy], pod: &[(&str, &str)], namespace: &str) -> Vec<String> {
    rules_for_endpoint(policies, &labels(pod), namespace)
        .iter()
        .map(|selected| format!("{}/{}", selected.policy.metadata.name, selected.path))
        .collect()
}

/// The names and paths of the rules that select a node.
fn for_node(policies: &[Policy], node: &[(&str, &str)]) -> Vec<String> {
    rules_for_node(policies, &labels(node))
        .iter()
        .map(|selected| format!("{}/{}", selected.policy.metadata.name, selected.path))
        .collect()
}

#[test]
fn a_namespaced_policy_selects_pods_of_its_own_namespace_only() {
    let policies = load("ex-l3-simple-l3.yaml");
    assert_eq!(
        for_pod(&policies, &[("role", "backend")], "default"),
        ["l3-rule/spec"]
    );
    assert!(for_pod(&policies, &[("role", "backend")], "shop").is_empty());
    assert!(for_pod(&policies, &[("role", "frontend")], "default").is_empty());
    assert!(for_node(&policies, &[("role", "backend")]).is_empty());
}

#[test]
fn an_empty_endpoint_selector_selects_every_pod_of_the_namespace() {
    let policies = load("ex-kubernetes-namespace-isolate-namespaces.yaml");
    assert_eq!(for_pod(&policies, &[], "ns1"), ["isolate-ns1/spec"]);
    assert_eq!(
        for_pod(&policies, &[("app", "x")], "ns2"),
        ["isolate-ns1/spec"]
    );
    assert!(for_pod(&policies, &[], "ns3").is_empty());
}

#[test]
fn a_clusterwide_policy_selects_pods_of_every_namespace_and_by_namespace_label() {
    let policies = load("ex-kubernetes-clusterwide-clusterscope-policy.yaml");
    assert_eq!(
        for_pod(&policies, &[("name", "leia")], "anywhere"),
        ["clusterwide-policy-example/spec"]
    );
    assert!(for_pod(&policies, &[("name", "luke")], "anywhere").is_empty());

    let policies = load("cli-allow-egress-specific-ns-ccnp.yaml");
    let selected = ["allow-egress-specific-namespace-ccnp/spec"];
    assert_eq!(
        for_pod(&policies, &[("kind", "ccnp")], "cilium-test-ccnp1"),
        selected
    );
    assert!(for_pod(&policies, &[("kind", "ccnp")], "cilium-test-ccnp2").is_empty());
}

#[test]
fn host_rules_select_nodes_by_label_and_never_pods() {
    let policies = load("ex-host-demo-host-policy.yaml");
    let name = policies[0].metadata.name.clone();
    assert_eq!(
        for_node(&policies, &[("node-access", "ssh"), ("zone", "a")]),
        [format!("{name}/spec")]
    );
    assert!(for_node(&policies, &[("node-access", "none")]).is_empty());
    assert!(for_pod(&policies, &[("node-access", "ssh")], "default").is_empty());

    let every_node = load("ex-host-lock-down-dev-vms.yaml");
    assert_eq!(for_node(&every_node, &[]).len(), 1);
    assert!(for_pod(&every_node, &[], "default").is_empty());
}

#[test]
fn every_rule_of_a_multi_rule_policy_is_selected_on_its_own() {
    let policies = load("k8stest-fqdn-proxy-multiple-specs.yaml");
    let mut all: Vec<String> = Vec::new();
    for policy in &policies {
        for (path, rule) in policy.rules() {
            let Some(selector) = &rule.endpoint_selector else {
                continue;
            };
            let pod: Vec<(&str, &str)> = selector
                .match_labels
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str()))
                .collect();
            let namespace = policy.metadata.namespace.as_deref().unwrap_or("default");
            let found = for_pod(&policies, &pod, namespace);
            let this = format!("{}/{path}", policy.metadata.name);
            assert!(found.contains(&this), "{this} not in {found:?}");
            all.extend(found);
        }
    }
    assert!(all.iter().any(|rule| rule.contains("specs[1]")), "{all:?}");
}
