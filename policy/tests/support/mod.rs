//! Cilium's own example policies (tests/fixtures/cilium-examples, Apache-2.0,
//! provenance in its SOURCES.md) and the node they are compiled for.
//! Each test crate uses a part of it.
#![allow(dead_code)]

use std::{collections::BTreeMap, path::PathBuf};

use ipnet::IpNet;
use palisade_policy::{ClusterContext, KnownEndpoint, KnownNode, NodeContext, Policy};

/// One example file.
pub struct Fixture {
    /// The file name.
    pub name: String,
    /// Its text, as published.
    pub text: String,
}

/// Every example, in name order.
pub fn fixtures() -> Vec<Fixture> {
    // From the workspace root, so the daemon's datapath tests (which
    // include this module) find them too.
    let directory =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/fixtures/cilium-examples");
    let mut names: Vec<_> = std::fs::read_dir(&directory)
        .expect("the examples directory")
        .map(|entry| entry.expect("a directory entry").file_name())
        .filter_map(|name| name.to_str().map(str::to_owned))
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| Fixture {
            text: std::fs::read_to_string(directory.join(&name)).expect("an example"),
            name,
        })
        .collect()
}

/// Placeholders Cilium's test suite replaces before applying a manifest
/// (test/k8s: `NODE_WITHOUT_CILIUM_IP` is an outside node's address), and
/// what these tests put there.
pub const PLACEHOLDERS: [(&str, &str); 1] = [("NODE_WITHOUT_CILIUM_IP", "192.0.2.200")];

/// `text` with the placeholders filled in.
pub fn filled_in(text: &str) -> String {
    PLACEHOLDERS
        .iter()
        .fold(text.to_owned(), |text, (placeholder, value)| {
            text.replace(placeholder, value)
        })
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter()
        .map(|text| text.parse().expect("a prefix"))
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

/// The node the host examples are compiled for: it carries the labels the
/// policies' node selectors ask for, lives in a cluster whose pods and
/// nodes are all inside 10.0.0.0/8 and fd00::/8 (so `world` is the rest:
/// eight prefixes per family), and knows the pods the examples name.
pub fn node_for(policies: &[Policy]) -> NodeContext {
    let mut node_labels = BTreeMap::new();
    for policy in policies {
        for (_, rule) in policy.rules() {
            if let Some(selector) = &rule.node_selector {
                node_labels.extend(selector.match_labels.clone());
            }
        }
    }
    let endpoint = |pairs: &[(&str, &str)], address: &str| KnownEndpoint {
        labels: labels(pairs),
        addresses: nets(&[address]),
    };
    NodeContext {
        labels: node_labels,
        audit_mode: false,
        fqdn_audit: false,
        addresses: nets(&["10.0.0.1/32", "fd00::1/128"]),
        cluster: ClusterContext {
            pod_cidrs: nets(&["10.0.0.0/8", "fd00::/8"]),
            nodes: vec![KnownNode {
                name: "node-2".into(),
                labels: labels(&[("type", "worker"), ("role", "worker")]),
                addresses: nets(&["10.0.0.2/32", "fd00::2/128"]),
            }],
            health: nets(&["10.1.0.5/32"]),
            kube_apiserver: nets(&["10.0.0.100/32"]),
            endpoints: vec![
                endpoint(
                    &[
                        ("io.kubernetes.pod.namespace", "kube-system"),
                        ("k8s-app", "kube-dns"),
                    ],
                    "10.1.0.10/32",
                ),
                endpoint(&[("name", "echo-b")], "10.1.0.20/32"),
                endpoint(
                    &[
                        ("name", "client"),
                        ("io.cilium.k8s.policy.cluster", "default"),
                    ],
                    "10.1.0.30/32",
                ),
                endpoint(&[("name", "pod-to-b-intra-node-nodeport")], "10.1.0.40/32"),
                endpoint(&[("zgroup", "testClient")], "10.1.0.50/32"),
                endpoint(&[("zgroup", "testServer")], "10.1.0.51/32"),
                endpoint(&[("test", "hostfw")], "10.1.0.52/32"),
            ],
            cidr_groups: Vec::new(),
        },
        strict_prefixes: Vec::new(),
    }
}

/// Whether any rule of the policies is a host rule.
pub fn has_host_rules(policies: &[Policy]) -> bool {
    policies
        .iter()
        .any(|policy| policy.rules().any(|(_, rule)| rule.is_host_rule()))
}
