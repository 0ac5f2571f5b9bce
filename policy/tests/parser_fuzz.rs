//! Fuzzing the TOML and YAML readers with proptest, bounded so it runs in
//! CI: random text and valid policies with bytes changed, cut or repeated
//! must give policies or positioned problems, never a panic.

use palisade_policy::policies_from_text;
use proptest::prelude::*;

const TOML: &str = r#"
apiVersion = "cilium.io/v2"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "fuzz", annotations = { "cilium.io/policy-audit-mode" = "true" } }
[spec]
nodeSelector = { matchLabels = { role = "edge" }, matchExpressions = [{ key = "zone", operator = "NotIn", values = ["dmz"] }] }
description = "ssh and dns"
enableDefaultDeny = { ingress = true, egress = false }
[[spec.ingress]]
fromCIDR = ["10.0.0.0/8", "2001:db8::/32"]
toPorts = [{ ports = [{ port = "22", protocol = "TCP" }, { port = 8000, endPort = 8080 }] }]
[[spec.ingress]]
fromEntities = ["remote-node", "health"]
[[spec.ingress]]
fromNodes = [{ matchLabels = { "node-role.kubernetes.io/control-plane" = "" } }]
toPorts = [{ ports = [{ port = "0", protocol = "VRRP" }] }]
[[spec.ingressDeny]]
fromCIDRSet = [{ cidr = "10.66.0.0/16", except = ["10.66.1.0/24"] }]
[[spec.egress]]
toCIDR = ["192.0.2.53"]
icmps = [{ fields = [{ family = "IPv6", type = "EchoRequest" }, { type = 8 }] }]
[[spec.egress]]
toEndpoints = [{ matchLabels = { "k8s:io.kubernetes.pod.namespace" = "kube-system" } }]
toPorts = [{ ports = [{ port = "53", protocol = "ANY" }] }]
"#;

const YAML: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: fuzz
spec:
  nodeSelector:
    matchLabels: {role: edge}
  ingress:
    - fromCIDR: [10.0.0.0/8, "2001:db8::/32"]
      toPorts:
        - ports:
            - {port: "22", protocol: TCP}
            - {port: 8000, endPort: 8080}
    - fromEntities: [cluster, kube-apiserver]
  egressDeny:
    - toCIDR: [192.0.2.53/32]
      icmps: [{fields: [{family: IPv6, type: EchoRequest}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
specs:
  - endpointSelector:
      matchExpressions:
        - {key: app, operator: In, values: [web, api]}
        - {key: canary, operator: DoesNotExist}
    ingress:
      - fromEndpoints: [{matchLabels: {app: lb}}]
        toPorts:
          - ports: [{port: http, protocol: TCP}]
            rules:
              http: [{method: GET, path: "/api/.*"}]
    egress:
      - toFQDNs: [{matchName: example.com}, {matchPattern: "*.example.org"}]
      - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
        toPorts:
          - ports: [{port: "53", protocol: UDP}]
            rules:
              dns: [{matchPattern: "*"}]
---
apiVersion: v1
kind: List
items:
  - apiVersion: cilium.io/v2
    kind: CiliumClusterwideNetworkPolicy
    metadata: {name: listed}
    spec:
      nodeSelector: {}
      egress: [{toEntities: [world]}]
"#;

/// A change to a text: overwrite, cut out, or repeat a stretch of it.
#[derive(Debug, Clone)]
enum Mutation {
    Overwrite(usize, u8),
    Cut(usize, usize),
    Repeat(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Overwrite(at, byte)),
        (any::<usize>(), 0usize..40).prop_map(|(at, n)| Mutation::Cut(at, n)),
        (any::<usize>(), 0usize..40).prop_map(|(at, n)| Mutation::Repeat(at, n)),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for mutation in mutations {
        if bytes.is_empty() {
            break;
        }
        match *mutation {
            Mutation::Overwrite(at, byte) => {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            Mutation::Cut(at, n) => {
                let at = at % bytes.len();
                let end = (at + n).min(bytes.len());
                bytes.drain(at..end);
            }
            Mutation::Repeat(at, n) => {
                let at = at % bytes.len();
                let end = (at + n).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Reading must not panic; problems must be positioned inside the text.
fn read(file: &str, text: &str) {
    if let Err(problems) = policies_from_text(file, text) {
        assert!(!problems.0.is_empty());
        let lines = text.lines().count() + 1;
        for problem in &problems.0 {
            assert_eq!(problem.file, file);
            if let Some(line) = problem.line {
                assert!(line >= 1 && line <= lines + 1, "{problem} in\n{text}");
            }
        }
    }
}

#[test]
fn the_seeds_are_valid() {
    assert_eq!(
        policies_from_text("seed.toml", TOML).map(|p| p.len()),
        Ok(1)
    );
    assert_eq!(
        policies_from_text("seed.yaml", YAML).map(|p| p.len()),
        Ok(3)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn mutated_toml_never_panics(mutations in proptest::collection::vec(mutation(), 1..6)) {
        read("m.toml", &mutate(TOML, &mutations));
    }

    #[test]
    fn mutated_yaml_never_panics(mutations in proptest::collection::vec(mutation(), 1..6)) {
        read("m.yaml", &mutate(YAML, &mutations));
    }

    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}", yaml in any::<bool>()) {
        read(if yaml { "r.yaml" } else { "r.toml" }, &text);
    }
}
