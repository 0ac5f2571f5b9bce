//! One bad policy per validation rule (the numbers are those of
//! shared/policy/VALIDATION_RULES.md, which cites Cilium's
//! `pkg/policy/api/rule_validation.go`), each with the exact problems it
//! must give: file, line, column, field path, message and hint.
//!
//! Rules not here: 3 fills in `enableDefaultDeny` and refuses nothing
//! (tested in the compiler); 5 and 7 allow what they describe (ports on
//! every egress peer, `fromNodes` always on); 21's "ingress L7 is HTTP
//! only" is rule 15's DNS case, the one Cilium's T2 still has.

use palisade_policy::{
    ValidateOptions, policies_from_yaml, policies_from_yaml_with, policy_from_toml,
};

/// A host policy (CCNP selecting every node) whose rule has `body` under
/// `spec`; the body starts on line 7, indented by two spaces.
fn host(body: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: bad\nspec:\n  nodeSelector: {{}}\n{body}"
    )
}

/// An endpoint policy (CNP selecting every pod of its namespace) whose
/// rule has `body` under `spec`; the body starts on line 8.
fn endpoint(body: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: bad\n  namespace: default\nspec:\n  endpointSelector: {{}}\n{body}"
    )
}

/// Every problem `text` gives, one rendered line each.
fn problems(text: &str) -> Vec<String> {
    match policies_from_yaml("bad.yaml", text) {
        Ok(_) => Vec::new(),
        Err(diagnostics) => diagnostics.0.iter().map(ToString::to_string).collect(),
    }
}

/// Asserts that `text` gives exactly `expected`, in order.
#[track_caller]
fn refused(text: &str, expected: &[&str]) {
    assert_eq!(problems(text), expected, "for:\n{text}");
}

#[test]
fn rule_1_a_rule_needs_a_section() {
    refused(
        &host(""),
        &[
            "bad.yaml:5:1: spec: rule must have at least one of ingress, ingressDeny, egress or egressDeny",
        ],
    );
}

#[test]
fn rule_2_a_rule_has_exactly_one_selector() {
    refused(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: bad\nspec:\n  ingress: [{}]\n",
        &[
            "bad.yaml:5:1: spec: rule must have one of EndpointSelector or NodeSelector (hint: a host policy selects nodes with `nodeSelector`; `{}` selects every node)",
        ],
    );
    refused(
        &host("  endpointSelector: {}\n  ingress: [{}]\n"),
        &[
            "bad.yaml:6:3: spec.nodeSelector: rule cannot have both EndpointSelector and NodeSelector",
        ],
    );
    refused(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: bad\nspec:\n  nodeSelector: {}\n  ingress: [{}]\n",
        &[
            "bad.yaml:6:3: spec.nodeSelector: a CiliumNetworkPolicy cannot select nodes (hint: host policies are of kind CiliumClusterwideNetworkPolicy)",
        ],
    );
}

#[test]
fn rule_2_selectors_are_kubernetes_label_selectors() {
    refused(
        &host(
            "  ingress:\n    - fromNodes:\n        - matchExpressions:\n            - {key: role, operator: in, values: [edge]}\n",
        ),
        &[
            "bad.yaml:10:37: spec.ingress[0].fromNodes[0].matchExpressions[0].operator: unknown variant `in`, expected one of `In`, `NotIn`, `Exists`, `DoesNotExist`",
        ],
    );
    refused(
        &host(
            "  ingress:\n    - fromEndpoints:\n        - matchExpressions:\n            - {key: role, operator: Exists, values: [edge]}\n",
        ),
        &[
            "bad.yaml:10:45: spec.ingress[0].fromEndpoints[0].matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists'",
        ],
    );
    refused(
        &host(
            "  ingress:\n    - fromEndpoints:\n        - matchExpressions:\n            - {key: role, operator: In}\n",
        ),
        &[
            "bad.yaml:10:15: spec.ingress[0].fromEndpoints[0].matchExpressions[0]: values: Required value: must be specified when `operator` is 'In'",
        ],
    );
}

#[test]
fn rule_4_one_kind_of_peer_per_rule() {
    refused(
        &host("  ingress:\n    - fromCIDR: [192.0.2.0/24]\n      fromEntities: [world]\n"),
        &[
            "bad.yaml:8:7: spec.ingress[0]: combining fromCIDR and fromEntities is not supported yet (hint: write one rule per kind of peer)",
        ],
    );
    refused(
        &host("  egress:\n    - toEndpoints: [{}]\n      toNodes: [{}]\n"),
        &[
            "bad.yaml:8:7: spec.egress[0]: combining toEndpoints and toNodes is not supported yet (hint: write one rule per kind of peer)",
        ],
    );
}

#[test]
fn rule_6_entities_are_cilium_entities() {
    refused(
        &host("  ingress:\n    - fromEntities: [world, everything]\n"),
        &["bad.yaml:8:29: spec.ingress[0].fromEntities[1]: unsupported entity: everything"],
    );
}

#[test]
fn rule_8_cidrs_parse_and_cidr_sets_are_well_formed() {
    refused(
        &host("  ingress:\n    - fromCIDR: [192.0.2.0/33]\n"),
        &[
            "bad.yaml:8:18: spec.ingress[0].fromCIDR[0]: invalid CIDR \"192.0.2.0/33\": expected an address with a prefix length such as \"192.0.2.0/24\" or \"2001:db8::/32\"",
        ],
    );
    refused(
        &host("  ingress:\n    - fromCIDR: [\"\"]\n"),
        &[
            "bad.yaml:8:18: spec.ingress[0].fromCIDR[0]: invalid CIDR \"\": expected an address with a prefix length such as \"192.0.2.0/24\" or \"2001:db8::/32\"",
        ],
    );
    refused(
        &host("  egress:\n    - toCIDRSet:\n        - {cidr: 10.0.0.0/8, cidrGroupRef: office}\n"),
        &[
            "bad.yaml:9:11: spec.egress[0].toCIDRSet[0]: exactly one of cidr, cidrGroupRef or cidrGroupSelector must be set",
        ],
    );
    refused(
        &host("  egress:\n    - toCIDRSet:\n        - {except: [10.1.0.0/16]}\n"),
        &[
            "bad.yaml:9:11: spec.egress[0].toCIDRSet[0]: exactly one of cidr, cidrGroupRef or cidrGroupSelector must be set",
        ],
    );
    refused(
        &host(
            "  egress:\n    - toCIDRSet:\n        - cidr: 10.0.0.0/8\n          except: [10.1.0.0/16, 192.168.0.0/16]\n",
        ),
        &[
            "bad.yaml:10:33: spec.egress[0].toCIDRSet[0].except[1]: allow CIDR prefix 10.0.0.0/8 does not contain exclude CIDR prefix 192.168.0.0/16",
        ],
    );
}

/// Forty-one ports in one `toPorts` entry.
fn many_ports() -> String {
    let ports: Vec<String> = (1..=41)
        .map(|port| format!("{{port: \"{port}\"}}"))
        .collect();
    format!(
        "  ingress:\n    - toPorts:\n        - ports: [{}]\n",
        ports.join(", ")
    )
}

#[test]
fn rule_9_at_most_40_ports_per_entry() {
    refused(
        &host(&many_ports()),
        &["bad.yaml:9:11: spec.ingress[0].toPorts[0].ports: too many ports, the max is 40"],
    );
}

#[test]
fn rule_10_ports_are_set_numbers_or_names() {
    refused(
        &host("  ingress:\n    - toPorts:\n        - ports: [{protocol: TCP}]\n"),
        &["bad.yaml:9:19: spec.ingress[0].toPorts[0].ports[0]: Port must be specified"],
    );
    refused(
        &host("  ingress:\n    - toPorts:\n        - ports: [{port: \"70000\"}]\n"),
        &[
            "bad.yaml:9:26: spec.ingress[0].toPorts[0].ports[0].port: Unable to parse port: \"70000\" is not a port number 0-65535 or a service name",
        ],
    );
    refused(
        &host("  ingress:\n    - toPorts:\n        - ports: [{port: \"http\"}]\n"),
        &[
            "bad.yaml:9:20: spec.ingress[0].toPorts[0].ports[0].port: named port \"http\" cannot be resolved for a host policy (hint: write the port number)",
        ],
    );
    refused(
        &host("  ingress:\n    - toPorts:\n        - ports: [{port: \"112\", protocol: VRRP}]\n"),
        &[
            "bad.yaml:9:20: spec.ingress[0].toPorts[0].ports[0].port: protocol VRRP has no ports (hint: leave `port` out or write 0)",
        ],
    );
}

#[test]
fn rule_11_protocols_are_known() {
    refused(
        &host("  ingress:\n    - toPorts:\n        - ports: [{port: \"80\", protocol: QUIC}]\n"),
        &[
            "bad.yaml:9:42: spec.ingress[0].toPorts[0].ports[0].protocol: invalid protocol \"QUIC\", must be one of TCP, UDP, SCTP, ICMP, ICMPV6, ANY, VRRP, IGMP, GRE, IPIP, IPV6, ESP, AH",
        ],
    );
}

#[test]
fn rule_12_end_ports_are_ports_and_dns_takes_no_range() {
    refused(
        &host("  ingress:\n    - toPorts:\n        - ports: [{port: \"80\", endPort: 65536}]\n"),
        &[
            "bad.yaml:9:41: spec.ingress[0].toPorts[0].ports[0].endPort: invalid value: integer `65536`, expected u16",
        ],
    );
    refused(
        &endpoint(
            "  egress:\n    - toPorts:\n        - ports: [{port: \"53\", endPort: 54, protocol: UDP}]\n          rules:\n            dns: [{matchPattern: \"*\"}]\n",
        ),
        &[
            "bad.yaml:10:32: spec.egress[0].toPorts[0].ports[0].endPort: DNS rules do not support port ranges",
        ],
    );
}

#[test]
fn rule_13_no_l7_rules_on_port_0() {
    refused(
        &endpoint(
            "  ingress:\n    - toPorts:\n        - ports: [{port: \"0\", protocol: TCP}]\n          rules:\n            http: [{method: GET}]\n",
        ),
        &[
            "bad.yaml:10:20: spec.ingress[0].toPorts[0].ports[0].port: L7 rules can not be used when a port is 0",
        ],
    );
}

#[test]
fn rule_14_l7_rules_only_on_tcp_except_dns() {
    refused(
        &endpoint(
            "  ingress:\n    - toPorts:\n        - ports: [{port: \"80\", protocol: UDP}]\n          rules:\n            http: [{method: GET}]\n",
        ),
        &[
            "bad.yaml:10:32: spec.ingress[0].toPorts[0].ports[0].protocol: L7 rules can only apply to TCP (not UDP) except for DNS rules",
        ],
    );
}

#[test]
fn rule_15_dns_rules_need_ports_and_are_egress_only() {
    refused(
        &endpoint(
            "  egress:\n    - toPorts:\n        - rules:\n            dns: [{matchPattern: \"*\"}]\n",
        ),
        &[
            "bad.yaml:10:11: spec.egress[0].toPorts[0].rules: port 53 must be specified for DNS rules",
        ],
    );
    refused(
        &endpoint(
            "  ingress:\n    - toPorts:\n        - ports: [{port: \"53\", protocol: UDP}]\n          rules:\n            dns: [{matchPattern: \"*\"}]\n",
        ),
        &[
            "bad.yaml:12:13: spec.ingress[0].toPorts[0].rules.dns: DNS rules are not allowed on ingress",
        ],
    );
}

#[test]
fn rule_16_one_l7_kind_per_port_rule() {
    refused(
        &endpoint(
            "  ingress:\n    - toPorts:\n        - ports: [{port: \"80\", protocol: TCP}]\n          rules:\n            http: [{method: GET}]\n            kafka: [{topic: logs}]\n",
        ),
        &[
            "bad.yaml:11:11: spec.ingress[0].toPorts[0].rules: multiple L7 protocol rule types specified in single rule",
        ],
    );
}

#[test]
fn rule_17_server_names_and_listeners() {
    refused(
        &endpoint(
            "  egress:\n    - toPorts:\n        - ports: [{port: \"443\", protocol: TCP}]\n          serverNames: [\"\"]\n",
        ),
        &[
            "bad.yaml:11:11: spec.egress[0].toPorts[0].serverNames: Empty server name is not allowed",
        ],
    );
    refused(
        &endpoint(
            "  egress:\n    - toPorts:\n        - ports: [{port: \"443\", protocol: TCP}]\n          serverNames: [example.com]\n          rules:\n            http: [{method: GET}]\n",
        ),
        &[
            "bad.yaml:11:11: spec.egress[0].toPorts[0].serverNames: ServerNames are not allowed with L7 rules without TLS termination",
        ],
    );
    refused(
        &endpoint(
            "  ingress:\n    - toPorts:\n        - ports: [{port: \"80\", protocol: TCP}]\n          listener:\n            envoyConfig: {kind: CiliumEnvoyConfig, name: lb}\n            name: web\n",
        ),
        &[
            "bad.yaml:11:11: spec.ingress[0].toPorts[0].listener: Listener is not allowed on ingress (web)",
        ],
    );
    refused(
        &endpoint(
            "  egress:\n    - toPorts:\n        - ports: [{port: \"80\", protocol: TCP}]\n          listener:\n            envoyConfig: {kind: CiliumEnvoyConfig, name: lb}\n            name: web\n          rules:\n            http: [{method: GET}]\n",
        ),
        &[
            "bad.yaml:11:11: spec.egress[0].toPorts[0].listener: Listener is not allowed with L7 rules (web)",
        ],
    );
}

#[test]
fn rule_18_http_fields_are_regular_expressions() {
    refused(
        &endpoint(
            "  ingress:\n    - toPorts:\n        - ports: [{port: \"80\", protocol: TCP}]\n          rules:\n            http: [{method: \"*\", path: \"/ok\"}, {path: \"*\"}]\n",
        ),
        &[
            "bad.yaml:12:21: spec.ingress[0].toPorts[0].rules.http[0].method: invalid regular expression \"*\": error: repetition operator missing expression",
            "bad.yaml:12:49: spec.ingress[0].toPorts[0].rules.http[1].path: invalid regular expression \"*\": error: repetition operator missing expression",
        ],
    );
}

#[test]
fn rule_19_no_l7_on_host_ingress() {
    refused(
        &host(
            "  ingress:\n    - toPorts:\n        - ports: [{port: \"80\", protocol: TCP}]\n          rules:\n            http: [{method: GET}]\n",
        ),
        &[
            "bad.yaml:10:11: spec.ingress[0].toPorts[0].rules: L7 policy is not supported on host ingress yet (hint: leave out `rules`: the ports alone are enforced)",
        ],
    );
}

#[test]
fn rule_20_host_egress_l7_is_dns_only() {
    refused(
        &host(
            "  egress:\n    - toPorts:\n        - ports: [{port: \"80\", protocol: TCP}]\n          rules:\n            http: [{method: GET}]\n",
        ),
        &[
            "bad.yaml:11:13: spec.egress[0].toPorts[0].rules.http: L7 protocol HTTP is not supported on host egress yet",
        ],
    );
}

#[test]
fn rule_22_deny_rules_have_no_l7_and_no_fqdns() {
    refused(
        &endpoint(
            "  ingressDeny:\n    - toPorts:\n        - ports: [{port: \"80\", protocol: TCP}]\n          rules:\n            http: [{method: GET}]\n",
        ),
        &[
            "bad.yaml:11:11: spec.ingressDeny[0].toPorts[0].rules: deny rules do not support rules (hint: the toPorts entries of ingressDeny and egressDeny have only ports)",
        ],
    );
    refused(
        &endpoint("  egressDeny:\n    - toFQDNs: [{matchName: example.com}]\n"),
        &["bad.yaml:9:7: spec.egressDeny[0].toFQDNs: toFQDNs is not allowed in egressDeny rules"],
    );
}

#[test]
fn rule_23_icmps_beside_ports_is_refused() {
    refused(
        &host(
            "  ingress:\n    - toPorts:\n        - ports: [{port: \"22\", protocol: TCP}]\n      icmps:\n        - fields: [{type: 8}]\n",
        ),
        &[
            "bad.yaml:10:7: spec.ingress[0].icmps: the ICMPs block may only be present without ToPorts (hint: write a separate rule for the ports)",
        ],
    );
}

/// Forty-one ICMP types in one `icmps` entry.
fn many_icmp_types() -> String {
    let types: Vec<String> = (0..41).map(|code| format!("{{type: {code}}}")).collect();
    format!(
        "  ingress:\n    - icmps:\n        - fields: [{}]\n",
        types.join(", ")
    )
}

#[test]
fn rule_24_icmp_fields() {
    refused(
        &host(&many_icmp_types()),
        &["bad.yaml:9:11: spec.ingress[0].icmps[0].fields: too many types, the max is 40"],
    );
    refused(
        &host("  ingress:\n    - icmps:\n        - fields: [{family: IPv5, type: 8}]\n"),
        &[
            "bad.yaml:9:29: spec.ingress[0].icmps[0].fields[0].family: unknown variant `IPv5`, expected `IPv4` or `IPv6`",
        ],
    );
    refused(
        &host("  ingress:\n    - icmps:\n        - fields: [{type: NeighborSolicitation}]\n"),
        &[
            "bad.yaml:9:21: spec.ingress[0].icmps[0].fields[0].type: ICMP type NeighborSolicitation does not exist for family IPv4 (hint: set `family` or use the number)",
        ],
    );
    refused(
        &host("  ingress:\n    - icmps:\n        - fields: [{type: 256}]\n"),
        &[
            "bad.yaml:9:27: spec.ingress[0].icmps[0].fields[0].type: ICMP type 256 is out of range 0-255",
        ],
    );
}

#[test]
fn kubernetes_names_log_values_and_empty_policies() {
    refused(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: Bad_Name\nspec:\n  nodeSelector: {}\n  ingress: [{}]\n",
        &[
            "bad.yaml:4:3: metadata.name: invalid name \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (at most 253 characters)",
        ],
    );
    refused(
        &host(
            "  log:\n    value: \"a value longer than thirty-two characters\"\n  ingress: [{}]\n",
        ),
        &["bad.yaml:8:5: spec.log.value: log value must be at most 32 printable characters"],
    );
    refused(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: bad\n",
        &["bad.yaml:1:1: Empty CiliumClusterwideNetworkPolicy is invalid"],
    );
}

#[test]
fn what_palisade_cannot_enforce_is_refused_with_a_reason() {
    refused(
        &endpoint("  ingress:\n    - fromRequires: [{matchLabels: {env: prod}}]\n"),
        &[
            "bad.yaml:9:7: spec.ingress[0].fromRequires: fromRequires is deprecated in Cilium and not supported by palisade (hint: add the required labels to each fromEndpoints selector)",
        ],
    );
    refused(
        &endpoint("  egress:\n    - toGroups:\n        - aws: {securityGroupsIds: [sg-1]}\n"),
        &[
            "bad.yaml:9:7: spec.egress[0].toGroups: toGroups needs a cloud provider integration palisade does not have (hint: write the group's addresses with toCIDR)",
        ],
    );
    refused(
        &host(
            "  egress:\n    - toServices:\n        - k8sService: {serviceName: api, namespace: default}\n",
        ),
        &[
            "bad.yaml:8:7: spec.egress[0].toServices: toServices is not supported in host policies (hint: palisade does not resolve Kubernetes services for the host; write the service's addresses with toCIDR)",
        ],
    );
    refused(
        &host("  egress:\n    - toFQDNs: [{matchName: example.com}]\n"),
        &[
            "bad.yaml:8:7: spec.egress[0].toFQDNs: toFQDNs is not yet enforced by palisade: it needs a DNS proxy (hint: set `fqdn_audit = true` under [policy] in palisade.toml to accept them in audit-only form: they then match no address and the node runs in audit mode)",
        ],
    );
    refused(
        &host(
            "  egress:\n    - toPorts:\n        - ports: [{port: \"53\", protocol: UDP}]\n          rules:\n            dns: [{matchPattern: \"*\"}]\n",
        ),
        &[
            "bad.yaml:11:13: spec.egress[0].toPorts[0].rules.dns: DNS rules are not yet enforced by palisade: they need a DNS proxy (hint: set `fqdn_audit = true` under [policy] in palisade.toml to accept them in audit-only form: they then match no address and the node runs in audit mode)",
        ],
    );
    refused(
        &endpoint(
            "  ingress:\n    - fromEndpoints: [{}]\n      authentication: {mode: required}\n",
        ),
        &[
            "bad.yaml:10:7: spec.ingress[0].authentication: mutual authentication needs Cilium's authentication manager, which palisade does not have",
        ],
    );
    refused(
        &host(
            "  egress:\n    - toPorts:\n        - ports: [{port: \"443\", protocol: TCP}]\n          serverNames: [example.com]\n",
        ),
        &[
            "bad.yaml:9:11: spec.egress[0].toPorts[0]: serverNames, TLS and listener settings are not supported in host policies (hint: they need Cilium's L7 proxy; palisade enforces L3 and L4 on the host)",
        ],
    );
}

#[test]
fn fqdn_rules_are_accepted_in_audit_form_when_the_config_says_so() {
    let text = host("  egress:\n    - toFQDNs: [{matchName: example.com}]\n");
    let options = ValidateOptions { fqdn_audit: true };
    assert!(policies_from_yaml_with("ok.yaml", &text, options).is_ok());
}

#[test]
fn every_problem_in_a_file_is_reported_in_document_order() {
    refused(
        &host(
            "  ingress:\n    - fromCIDR: [192.0.2.0/24]\n      fromEntities: [world]\n    - toPorts:\n        - ports: [{protocol: TCP}]\n  egress:\n    - toPorts:\n        - ports: [{port: \"53\", protocol: UDP}]\n      icmps:\n        - fields: [{type: 8}]\n",
        ),
        &[
            "bad.yaml:8:7: spec.ingress[0]: combining fromCIDR and fromEntities is not supported yet (hint: write one rule per kind of peer)",
            "bad.yaml:11:19: spec.ingress[1].toPorts[0].ports[0]: Port must be specified",
            "bad.yaml:15:7: spec.egress[0].icmps: the ICMPs block may only be present without ToPorts (hint: write a separate rule for the ports)",
        ],
    );
}

#[test]
fn toml_problems_point_into_the_toml_text() {
    let text = "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = { name = \"bad\" }\n[spec]\nnodeSelector = {}\n[[spec.ingress]]\nfromCIDR = [\"192.0.2.0/24\"]\nfromEntities = [\"world\"]\n[[spec.ingress.toPorts]]\nports = [{ protocol = \"TCP\" }]\n";
    let found: Vec<String> = match policy_from_toml("bad.toml", text) {
        Ok(_) => Vec::new(),
        Err(diagnostics) => diagnostics.0.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(
        found,
        [
            "bad.toml:5:1: spec.ingress[0]: combining fromCIDR and fromEntities is not supported yet (hint: write one rule per kind of peer)",
            "bad.toml:9:10: spec.ingress[0].toPorts[0].ports[0]: Port must be specified"
        ]
    );
}

#[test]
fn generic_l7_rules_need_their_parser_and_an_absent_field_points_at_its_mapping() {
    // Cilium L7Rules.sanitize; `l7proto` is absent, so the position is the
    // enclosing `rules` mapping's (its first key).
    refused(
        &endpoint(
            "  ingress:\n    - toPorts:\n        - ports: [{ port: \"80\", protocol: TCP }]\n          rules:\n            l7:\n              - method: GET\n",
        ),
        &[
            "bad.yaml:12:13: spec.ingress[0].toPorts[0].rules.l7proto: 'l7' may only be specified when a 'l7proto' is also specified",
        ],
    );
    let toml = "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = { name = \"bad\" }\n[spec]\nnodeSelector = {}\n[[spec.ingress]]\ntoPorts = [{ ports = [{ port = \"80\" }], rules = { l7 = [{ a = \"b\" }] } }]\n";
    let problems: Vec<String> = policy_from_toml("bad.toml", toml)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        problems,
        [
            "bad.toml:6:41: spec.ingress[0].toPorts[0].rules.l7proto: 'l7' may only be specified when a 'l7proto' is also specified"
        ]
    );
}
