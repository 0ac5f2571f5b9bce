//! Checks that serde cannot express, mirroring Cilium's `Rule.Sanitize()`
//! (pkg/policy/api/rule_validation.go; see shared/policy/VALIDATION_RULES.md).

use crate::{
    compile::{FQDN_AUDIT_HINT, FQDN_NOT_ENFORCED},
    model::{
        AuthenticationMode, CidrRule, LabelSelector, PeerRule, Policy, PolicyKind, Port,
        PortProtocol, PortRule, Protocol, Rule, Section,
    },
};

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
    /// How to fix it, when palisade has more to say than Cilium's message.
    pub hint: Option<String>,
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

/// What validation accepts beyond Cilium's rules, from palisade's config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValidateOptions {
    /// Accept `toFQDNs` and DNS rules in host policies in audit-only form
    /// (`[policy] fqdn_audit`).
    pub fqdn_audit: bool,
}

/// Longest `log.value` Cilium accepts.
pub const MAX_LOG_VALUE: usize = 32;

/// Every problem in `policy`, in document order, with default options.
pub fn validate(policy: &Policy) -> Vec<Problem> {
    validate_with(policy, ValidateOptions::default())
}

/// Every problem in `policy`, in document order.
pub fn validate_with(policy: &Policy, options: ValidateOptions) -> Vec<Problem> {
    let mut problems = Problems::default();
    if let Err(message) = check_name(&policy.metadata.name) {
        problems.add("metadata.name", message);
    }
    if policy.spec.is_none() && policy.specs.is_empty() {
        // Cilium cnp_types.go ErrEmptyCNP / ErrEmptyCCNP.
        problems.add("", format!("Empty {:?} is invalid", policy.kind));
    }
    for (path, rule) in policy.rules() {
        check_rule(policy, &path, rule, options, &mut problems);
    }
    problems.0
}

/// Collects problems.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
            hint: None,
        });
    }

    fn add_with_hint(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
            hint: Some(hint.into()),
        });
    }
}

fn check_rule(
    policy: &Policy,
    path: &str,
    rule: &Rule,
    options: ValidateOptions,
    problems: &mut Problems,
) {
    // Rule 2: exactly one selector (rule_validation.go Rule.Sanitize).
    match (&rule.endpoint_selector, &rule.node_selector) {
        (None, None) => problems.add_with_hint(
            path,
            "rule must have one of EndpointSelector or NodeSelector",
            "a host policy selects nodes with `nodeSelector`; `{}` selects every node",
        ),
        (Some(_), Some(_)) => problems.add(
            format!("{path}.nodeSelector"),
            "rule cannot have both EndpointSelector and NodeSelector",
        ),
        _ => {}
    }
    if rule.node_selector.is_some() && policy.kind == PolicyKind::CiliumNetworkPolicy {
        problems.add_with_hint(
            format!("{path}.nodeSelector"),
            "a CiliumNetworkPolicy cannot select nodes",
            "host policies are of kind CiliumClusterwideNetworkPolicy",
        );
    }
    for (field, selector) in [
        ("endpointSelector", &rule.endpoint_selector),
        ("nodeSelector", &rule.node_selector),
    ] {
        if let Some(selector) = selector {
            check_selector(&format!("{path}.{field}"), selector, problems);
        }
    }
    if let Some(log) = &rule.log {
        let printable = log.value.chars().all(|c| c.is_ascii_graphic() || c == ' ');
        if log.value.chars().count() > MAX_LOG_VALUE || !printable {
            problems.add(
                format!("{path}.log.value"),
                format!("log value must be at most {MAX_LOG_VALUE} printable characters"),
            );
        }
    }
    let sections = rule.sections();
    // Rule 1: at least one rule section (rule_validation.go, Rule.Sanitize).
    if sections.iter().all(|(_, entries)| entries.is_empty()) {
        problems.add(
            path,
            "rule must have at least one of ingress, ingressDeny, egress or egressDeny",
        );
    }
    let host = rule.is_host_rule();
    for (section, peer_rules) in sections {
        for (i, peer_rule) in peer_rules.iter().enumerate() {
            let at = format!("{path}.{}[{i}]", section.field());
            check_entry(&at, section, host, peer_rule, options, problems);
        }
    }
}

fn check_selector(path: &str, selector: &LabelSelector, problems: &mut Problems) {
    for (field, message) in selector.problems() {
        problems.add(format!("{path}.{field}"), message);
    }
}

fn check_entry(
    at: &str,
    section: Section,
    host: bool,
    rule: &PeerRule<'_>,
    options: ValidateOptions,
    problems: &mut Problems,
) {
    let peers = &rule.peers;
    // Rule 4: one peer kind per entry (IngressCommonRule.sanitize).
    if let [first, second, ..] = peers.kinds().as_slice() {
        problems.add_with_hint(
            at,
            format!("combining {first} and {second} is not supported yet"),
            "write one rule per kind of peer",
        );
    }
    if !peers.requires.is_empty() {
        problems.add_with_hint(
            format!("{at}.{}", peers.field("Requires")),
            format!(
                "{} is deprecated in Cilium and not supported by palisade",
                peers.field("Requires")
            ),
            format!(
                "add the required labels to each {} selector",
                peers.field("Endpoints")
            ),
        );
    }
    if !peers.groups.is_empty() {
        problems.add_with_hint(
            format!("{at}.{}", peers.field("Groups")),
            format!(
                "{} needs a cloud provider integration palisade does not have",
                peers.field("Groups")
            ),
            format!("write the group's addresses with {}", peers.field("CIDR")),
        );
    }
    if host && !peers.services.is_empty() {
        problems.add_with_hint(
            format!("{at}.toServices"),
            "toServices is not supported in host policies",
            "palisade does not resolve Kubernetes services for the host; write the service's addresses with toCIDR",
        );
    }
    if !peers.fqdns.is_empty() {
        if section.is_deny() {
            // Rule 22: EgressDenyRule has no toFQDNs.
            problems.add(
                format!("{at}.toFQDNs"),
                "toFQDNs is not allowed in egressDeny rules",
            );
        } else if host && !options.fqdn_audit {
            problems.add_with_hint(format!("{at}.toFQDNs"), FQDN_NOT_ENFORCED, FQDN_AUDIT_HINT);
        }
    }
    for (j, selector) in peers.endpoints.iter().enumerate() {
        check_selector(
            &format!("{at}.{}[{j}]", peers.field("Endpoints")),
            selector,
            problems,
        );
    }
    for (j, selector) in peers.nodes.iter().enumerate() {
        check_selector(
            &format!("{at}.{}[{j}]", peers.field("Nodes")),
            selector,
            problems,
        );
    }
    for (j, cidr_rule) in peers.cidr_set.iter().enumerate() {
        check_cidr_rule(
            &format!("{at}.{}[{j}]", peers.field("CIDRSet")),
            cidr_rule,
            problems,
        );
    }
    if let Some(authentication) = rule.authentication {
        if section.is_deny() {
            problems.add(
                format!("{at}.authentication"),
                "authentication is not allowed in deny rules",
            );
        } else if authentication.mode != AuthenticationMode::Disabled {
            problems.add(
                format!("{at}.authentication"),
                "mutual authentication needs Cilium's authentication manager, which palisade does not have",
            );
        }
    }
    for (j, port_rule) in rule.to_ports.iter().enumerate() {
        check_port_rule(
            &format!("{at}.toPorts[{j}]"),
            section,
            host,
            port_rule,
            options,
            problems,
        );
    }
    // Rule 23: icmps and toPorts are exclusive (ICMPRule.verify).
    if !rule.icmps.is_empty() && !rule.to_ports.is_empty() {
        problems.add_with_hint(
            format!("{at}.icmps"),
            "the ICMPs block may only be present without ToPorts",
            "write a separate rule for the ports",
        );
    }
    for (j, icmp) in rule.icmps.iter().enumerate() {
        // Rule 24: at most 40 fields per ICMP rule; names per family.
        if icmp.fields.len() > MAX_ICMP_FIELDS {
            problems.add(
                format!("{at}.icmps[{j}].fields"),
                format!("too many types, the max is {MAX_ICMP_FIELDS}"),
            );
        }
        for (k, field) in icmp.fields.iter().enumerate() {
            if field.icmp_type.code(field.family).is_none() {
                problems.add_with_hint(
                    format!("{at}.icmps[{j}].fields[{k}].type"),
                    format!(
                        "ICMP type {} does not exist for family {:?}",
                        field.icmp_type, field.family
                    ),
                    "set `family` or use the number",
                );
            }
        }
    }
}

/// Rule 8: a CIDRRule names exactly one source of prefixes, and every
/// exception lies inside its prefix (rule_validation.go CIDRRule.sanitize).
fn check_cidr_rule(at: &str, rule: &CidrRule, problems: &mut Problems) {
    let sources = [
        rule.cidr.is_some(),
        rule.cidr_group_ref.is_some(),
        rule.cidr_group_selector.is_some(),
    ];
    if sources.iter().filter(|set| **set).count() != 1 {
        problems.add(
            at,
            "exactly one of cidr, cidrGroupRef or cidrGroupSelector must be set",
        );
    }
    if let Some(selector) = &rule.cidr_group_selector {
        check_selector(&format!("{at}.cidrGroupSelector"), selector, problems);
    }
    let Some(cidr) = rule.cidr else {
        return;
    };
    for (k, except) in rule.except.iter().enumerate() {
        if !cidr.0.contains(&except.0) {
            problems.add(
                format!("{at}.except[{k}]"),
                format!("allow CIDR prefix {cidr} does not contain exclude CIDR prefix {except}"),
            );
        }
    }
}

/// Rules 9-22 for one `toPorts` entry (PortRule.sanitize, L7Rules.sanitize
/// and the host checks of rule_validation.go).
fn check_port_rule(
    at: &str,
    section: Section,
    host: bool,
    rule: &PortRule,
    options: ValidateOptions,
    problems: &mut Problems,
) {
    // Rule 9: at most 40 ports per toPorts entry.
    if rule.ports.len() > MAX_PORTS_PER_RULE {
        problems.add(
            format!("{at}.ports"),
            format!("too many ports, the max is {MAX_PORTS_PER_RULE}"),
        );
    }
    // L7Rules.sanitize: generic `l7` rules need their parser named.
    if let Some(rules) = &rule.rules
        && !rules.l7.is_empty()
        && rules.l7_proto.is_none()
    {
        problems.add(
            format!("{at}.rules.l7proto"),
            "'l7' may only be specified when a 'l7proto' is also specified",
        );
    }
    let l7 = rule
        .rules
        .as_ref()
        .filter(|rules| !rules.kinds().is_empty());
    let has_dns = l7.is_some_and(|rules| !rules.dns.is_empty());
    for (k, port) in rule.ports.iter().enumerate() {
        let here = format!("{at}.ports[{k}]");
        check_port(&here, port, host, problems);
        // Rule 14: L7 rules only on TCP, except DNS.
        if l7.is_some() && !has_dns && port.protocol != Protocol::Tcp {
            problems.add(
                format!("{here}.protocol"),
                format!(
                    "L7 rules can only apply to TCP (not {}) except for DNS rules",
                    port.protocol
                ),
            );
        }
        // Rule 13: no L7 rules on port 0.
        if l7.is_some() && matches!(port.port, Some(Port::Number(0))) {
            problems.add(
                format!("{here}.port"),
                "L7 rules can not be used when a port is 0",
            );
        }
        // Rule 12: DNS rules and ranges.
        if has_dns
            && port
                .end_port
                .is_some_and(|end| port.range().is_some_and(|(lo, _)| end > lo))
        {
            problems.add(
                format!("{here}.endPort"),
                "DNS rules do not support port ranges",
            );
        }
    }
    if section.is_deny() {
        // Rule 22: PortDenyRule has only `ports`.
        for (field, present) in [
            ("rules", rule.rules.is_some()),
            ("serverNames", !rule.server_names.is_empty()),
            ("terminatingTLS", rule.terminating_tls.is_some()),
            ("originatingTLS", rule.originating_tls.is_some()),
            ("listener", rule.listener.is_some()),
        ] {
            if present {
                problems.add_with_hint(
                    format!("{at}.{field}"),
                    format!("deny rules do not support {field}"),
                    "the toPorts entries of ingressDeny and egressDeny have only ports",
                );
            }
        }
        return;
    }
    // Rule 17: server names and listeners.
    if rule.server_names.iter().any(String::is_empty) {
        problems.add(
            format!("{at}.serverNames"),
            "Empty server name is not allowed",
        );
    }
    if !rule.server_names.is_empty() && l7.is_some() && rule.terminating_tls.is_none() {
        problems.add(
            format!("{at}.serverNames"),
            "ServerNames are not allowed with L7 rules without TLS termination",
        );
    }
    if let Some(listener) = &rule.listener {
        if section.is_ingress() {
            problems.add(
                format!("{at}.listener"),
                format!("Listener is not allowed on ingress ({})", listener.name),
            );
        } else if l7.is_some() {
            problems.add(
                format!("{at}.listener"),
                format!("Listener is not allowed with L7 rules ({})", listener.name),
            );
        }
    }
    if host
        && (!rule.server_names.is_empty()
            || rule.terminating_tls.is_some()
            || rule.originating_tls.is_some()
            || rule.listener.is_some())
    {
        problems.add_with_hint(
            at,
            "serverNames, TLS and listener settings are not supported in host policies",
            "they need Cilium's L7 proxy; palisade enforces L3 and L4 on the host",
        );
    }
    let Some(rules) = l7 else {
        return;
    };
    let rules_at = format!("{at}.rules");
    // Rule 16: one L7 kind per port rule.
    if rules.kinds().len() > 1 {
        problems.add(
            &rules_at,
            "multiple L7 protocol rule types specified in single rule",
        );
    }
    // Rule 15: DNS rules need ports and are egress only.
    if has_dns && rule.ports.is_empty() {
        problems.add(&rules_at, "port 53 must be specified for DNS rules");
    }
    if has_dns && section.is_ingress() {
        problems.add(
            format!("{rules_at}.dns"),
            "DNS rules are not allowed on ingress",
        );
    }
    // Rule 18: HTTP method, path and host are regular expressions.
    for (k, http) in rules.http.iter().enumerate() {
        for (field, value) in [
            ("path", &http.path),
            ("method", &http.method),
            ("host", &http.host),
        ] {
            if let Some(value) = value
                && let Err(error) = regex::Regex::new(value)
            {
                let reason = error.to_string();
                let reason = reason.lines().last().unwrap_or_default().trim();
                problems.add(
                    format!("{rules_at}.http[{k}].{field}"),
                    format!("invalid regular expression {value:?}: {reason}"),
                );
            }
        }
    }
    if host {
        // Rules 19-20 (rule_validation.go): none on host ingress, DNS only on
        // host egress.
        if section.is_ingress() {
            problems.add_with_hint(
                &rules_at,
                "L7 policy is not supported on host ingress yet",
                "leave out `rules`: the ports alone are enforced",
            );
        } else {
            for kind in rules.kinds().into_iter().filter(|kind| *kind != "dns") {
                let name = match kind {
                    "http" => "HTTP",
                    "kafka" => "Kafka",
                    other => other,
                };
                problems.add(
                    format!("{rules_at}.{kind}"),
                    format!("L7 protocol {name} is not supported on host egress yet"),
                );
            }
            if has_dns && !options.fqdn_audit {
                problems.add_with_hint(
                    format!("{rules_at}.dns"),
                    "DNS rules are not yet enforced by palisade: they need a DNS proxy",
                    FQDN_AUDIT_HINT,
                );
            }
        }
    }
}

/// Rules 10-11 for one port, and named ports in host policies.
fn check_port(at: &str, port: &PortProtocol, host: bool, problems: &mut Problems) {
    match &port.port {
        // Rule 10 (l4.go PortProtocol.sanitize): only the extended IP
        // protocols may leave the port out.
        None if !port.protocol.is_extended() => problems.add(at, "Port must be specified"),
        Some(Port::Number(number)) if *number != 0 && port.protocol.is_extended() => problems
            .add_with_hint(
                format!("{at}.port"),
                format!("protocol {} has no ports", port.protocol),
                "leave `port` out or write 0",
            ),
        Some(Port::Name(name)) if host => problems.add_with_hint(
            format!("{at}.port"),
            format!("named port {name:?} cannot be resolved for a host policy"),
            "write the port number",
        ),
        _ => {}
    }
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
