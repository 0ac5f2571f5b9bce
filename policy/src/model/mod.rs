//! The policy model: CiliumClusterwideNetworkPolicy and CiliumNetworkPolicy,
//! field for field.
//!
//! Field names are Cilium's YAML names (`fromCIDR`, `toPorts`, `endPort`), so a
//! TOML policy reads like the CRD it mirrors. Unknown fields are refused rather
//! than ignored: a typo must never silently widen or narrow a firewall.
//! Field meanings follow Cilium's `pkg/policy/api` documentation (rule.go,
//! ingress.go, egress.go, l4.go, l7.go, cidr.go, entity.go, icmp.go).

mod cidr;
mod icmp;
mod name;
mod peer;
mod port;
mod selector;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use cidr::Cidr;
pub use icmp::{IcmpFamily, IcmpField, IcmpRule, IcmpType};
pub use name::PolicyName;
pub use peer::{
    Authentication, AuthenticationMode, AwsGroup, CidrRule, EgressRule, Entity, FqdnSelector,
    Groups, IngressRule, K8sService, K8sServiceSelector, NothingSelected, PeerRule, PeerSelection,
    Peers, Service,
};
pub use port::{
    EnvoyConfigRef, HeaderMatch, HttpRule, KafkaRule, L7Rules, Listener, Port, PortProtocol,
    PortRule, Protocol, SecretRef, TlsContext, is_service_name,
};
pub use selector::{LabelSelector, Operator, Requirement, label_matches};

/// The Kubernetes API version Cilium's policy CRDs use.
pub const API_VERSION: &str = "cilium.io/v2";

/// One policy document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Always `cilium.io/v2`.
    #[serde(rename = "apiVersion", default = "default_api_version")]
    pub api_version: String,
    /// The policy kind.
    pub kind: PolicyKind,
    /// Name, namespace, labels and annotations.
    pub metadata: Metadata,
    /// Free text outside `spec`. Kubernetes prunes it (the CRD has no such
    /// field), several of Cilium's own examples have it; kept for the round trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The rule, when the document has a single one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Rule>,
    /// More rules, evaluated together with `spec`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub specs: Vec<Rule>,
}

fn default_api_version() -> String {
    API_VERSION.to_owned()
}

/// The annotation that puts one policy in audit mode (palisade's extension:
/// Cilium has only the daemon-wide and per-endpoint switch).
pub const AUDIT_ANNOTATION: &str = "cilium.io/policy-audit-mode";

impl Policy {
    /// Which policy this is: its name, and for a CiliumNetworkPolicy its
    /// namespace (`default` when unset).
    pub fn policy_name(&self) -> PolicyName {
        PolicyName {
            namespace: match self.kind {
                PolicyKind::CiliumClusterwideNetworkPolicy => None,
                PolicyKind::CiliumNetworkPolicy => Some(
                    self.metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| crate::select::DEFAULT_NAMESPACE.to_owned()),
                ),
            },
            name: self.metadata.name.clone(),
        }
    }

    /// `spec` followed by `specs`, each with the path it has in the document.
    pub fn rules(&self) -> impl Iterator<Item = (String, &Rule)> {
        self.spec
            .iter()
            .map(|rule| ("spec".to_owned(), rule))
            .chain(
                self.specs
                    .iter()
                    .enumerate()
                    .map(|(i, rule)| (format!("specs[{i}]"), rule)),
            )
    }

    /// Whether the policy asks for audit mode with [`AUDIT_ANNOTATION`].
    pub fn audit_annotation(&self) -> bool {
        self.metadata
            .annotations
            .get(AUDIT_ANNOTATION)
            .is_some_and(|value| value.eq_ignore_ascii_case("true"))
    }
}

/// Policy kinds palisade understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyKind {
    /// A cluster-wide policy; with `nodeSelector` it is a host policy.
    CiliumClusterwideNetworkPolicy,
    /// A namespaced policy for the pods (`endpointSelector`) of its namespace.
    CiliumNetworkPolicy,
}

/// Object metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The policy's name; applying a policy of the same name (and, for a
    /// CiliumNetworkPolicy, namespace) replaces it.
    pub name: String,
    /// The namespace of a CiliumNetworkPolicy (`default` when unset, as
    /// `kubectl apply` does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations; see [`AUDIT_ANNOTATION`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One rule: what it selects and what it allows or denies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Selects the pods this rule applies to (exactly one of the selectors).
    #[serde(
        rename = "endpointSelector",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub endpoint_selector: Option<LabelSelector>,
    /// Selects the nodes this host rule applies to; `{}` selects every node.
    #[serde(
        rename = "nodeSelector",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub node_selector: Option<LabelSelector>,
    /// Traffic to allow into the selected endpoint or node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    /// Traffic to deny into it; beats any allow.
    #[serde(rename = "ingressDeny", default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_deny: Vec<IngressRule>,
    /// Allowed traffic from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
    /// Denied traffic from it; beats every allow rule.
    #[serde(rename = "egressDeny", default, skip_serializing_if = "Vec::is_empty")]
    pub egress_deny: Vec<EgressRule>,
    /// Labels of the rule itself (Cilium: `labels` as key, value, source).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<RuleLabel>,
    /// Whether this rule puts its directions into default deny.
    #[serde(
        rename = "enableDefaultDeny",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_default_deny: Option<DefaultDeny>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A value shown with the verdicts this rule gives (Cilium: `log.value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogConfig>,
}

/// A rule label: `key`, optional `value` and `source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleLabel {
    /// The key.
    pub key: String,
    /// The value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Where the label comes from (`k8s`, `unspec`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// `enableDefaultDeny`: per direction, whether a selecting rule turns on
/// default deny. Unset means "yes if the rule has rules in that direction"
/// (Cilium rule.go `EnableDefaultDeny`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    /// Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    /// Egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

/// `log`: what the verdicts of a rule carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// At most 32 printable characters.
    pub value: String,
}

impl Rule {
    /// Whether this is a host rule (`nodeSelector`).
    pub fn is_host_rule(&self) -> bool {
        self.node_selector.is_some()
    }

    /// Whether the rule puts ingress into default deny when it selects.
    pub fn default_deny_ingress(&self) -> bool {
        let has_rules = !self.ingress.is_empty() || !self.ingress_deny.is_empty();
        self.enable_default_deny
            .and_then(|deny| deny.ingress)
            .unwrap_or(has_rules)
    }

    /// Whether the rule puts egress into default deny when it selects.
    pub fn default_deny_egress(&self) -> bool {
        let has_rules = !self.egress.is_empty() || !self.egress_deny.is_empty();
        self.enable_default_deny
            .and_then(|deny| deny.egress)
            .unwrap_or(has_rules)
    }

    /// The rule's four lists with their entries, in document order.
    pub fn sections(&self) -> [(Section, Vec<PeerRule<'_>>); 4] {
        [
            (
                Section::Ingress,
                self.ingress.iter().map(PeerRule::from).collect(),
            ),
            (
                Section::IngressDeny,
                self.ingress_deny.iter().map(PeerRule::from).collect(),
            ),
            (
                Section::Egress,
                self.egress.iter().map(PeerRule::from).collect(),
            ),
            (
                Section::EgressDeny,
                self.egress_deny.iter().map(PeerRule::from).collect(),
            ),
        ]
    }
}

/// One of a rule's four lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Section {
    /// `ingress`.
    Ingress,
    /// `ingressDeny`.
    IngressDeny,
    /// `egress`.
    Egress,
    /// `egressDeny`.
    EgressDeny,
}

impl Section {
    /// The field name, as in the policy.
    pub fn field(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::IngressDeny => "ingressDeny",
            Self::Egress => "egress",
            Self::EgressDeny => "egressDeny",
        }
    }

    /// Whether the section denies.
    pub fn is_deny(self) -> bool {
        matches!(self, Self::IngressDeny | Self::EgressDeny)
    }

    /// Whether the section is about traffic to the selected node or endpoint.
    pub fn is_ingress(self) -> bool {
        matches!(self, Self::Ingress | Self::IngressDeny)
    }
}
