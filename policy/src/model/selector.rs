//! Kubernetes label selectors with Cilium's label sources.
//!
//! Cilium keys may carry a source prefix: `k8s:app`, `reserved:host`,
//! `any:app`. A key without a known source means `any` (Cilium
//! pkg/labels `ParseSelectLabel`), which matches a label of every source.
//! Labels palisade is given (node labels, pod labels) without a source are
//! `k8s` labels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A Kubernetes label selector: `matchLabels` and `matchExpressions`, ANDed.
/// An empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSelector {
    /// Every label here must be present with this value.
    #[serde(
        rename = "matchLabels",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub match_labels: BTreeMap<String, String>,
    /// Every requirement here must hold.
    #[serde(
        rename = "matchExpressions",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// How the key relates to `values`.
    pub operator: Operator,
    /// The values (non-empty for In and NotIn, empty for Exists and DoesNotExist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A requirement's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    /// The label is present with one of the values.
    In,
    /// The label is absent or has none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// Label sources Cilium knows (pkg/labels); a key prefix naming one of them
/// is a source, anything else is part of the key.
const SOURCES: [&str; 9] = [
    "any",
    "k8s",
    "reserved",
    "unspec",
    "container",
    "cidr",
    "fqdn",
    "cilium-generated",
    "cilium",
];

/// Splits `k8s:app` into (`k8s`, `app`); a key without a known source is `any`.
fn source_and_key(key: &str) -> (&str, &str) {
    match key.split_once(':') {
        Some((source, rest)) if SOURCES.contains(&source) => (source, rest),
        _ => ("any", key),
    }
}

/// The value of the label a selector `key` names, if `labels` has it.
/// `labels` keys without a source are `k8s` labels.
fn lookup<'a>(labels: &'a BTreeMap<String, String>, key: &str) -> Option<&'a String> {
    let (want_source, want_key) = source_and_key(key);
    labels.iter().find_map(|(label, value)| {
        let (source, name) = match source_and_key(label) {
            ("any", name) => ("k8s", name),
            found => found,
        };
        let source_matches = want_source == "any" || want_source == source;
        (source_matches && name == want_key).then_some(value)
    })
}

/// Whether `labels` has the label a selector writes as `key: value`.
pub fn label_matches(labels: &BTreeMap<String, String>, key: &str, value: &str) -> bool {
    lookup(labels, key).is_some_and(|found| found == value)
}

impl LabelSelector {
    /// Whether a set of labels satisfies this selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| label_matches(labels, key, value))
            && self
                .match_expressions
                .iter()
                .all(|requirement| requirement.matches(labels))
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Problems Kubernetes' label selector validation would report, as
    /// (field path under the selector, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        self.match_expressions
            .iter()
            .enumerate()
            .filter_map(|(i, requirement)| {
                let needs_values = matches!(requirement.operator, Operator::In | Operator::NotIn);
                match (needs_values, requirement.values.is_empty()) {
                    (true, true) => Some((
                        format!("matchExpressions[{i}]"),
                        format!(
                            "values: Required value: must be specified when `operator` is '{:?}'",
                            requirement.operator
                        ),
                    )),
                    (false, false) => Some((
                        format!("matchExpressions[{i}].values"),
                        format!(
                            "Forbidden: may not be specified when `operator` is '{:?}'",
                            requirement.operator
                        ),
                    )),
                    _ => None,
                }
            })
            .collect()
    }
}

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let found = lookup(labels, &self.key);
        match self.operator {
            Operator::In => found.is_some_and(|value| self.values.contains(value)),
            Operator::NotIn => found.is_none_or(|value| !self.values.contains(value)),
            Operator::Exists => found.is_some(),
            Operator::DoesNotExist => found.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn sources_match_as_cilium_does() {
        let pod = labels(&[("app", "web"), ("io.kubernetes.pod.namespace", "prod")]);
        assert!(label_matches(&pod, "app", "web"));
        assert!(label_matches(&pod, "k8s:app", "web"));
        assert!(label_matches(&pod, "any:app", "web"));
        assert!(!label_matches(&pod, "reserved:app", "web"));
        assert!(label_matches(
            &pod,
            "k8s:io.kubernetes.pod.namespace",
            "prod"
        ));
        let host = labels(&[("reserved:host", "")]);
        assert!(label_matches(&host, "reserved:host", ""));
        assert!(!label_matches(&host, "k8s:host", ""));
        // A colon that is not a source stays in the key.
        let odd = labels(&[("example.com:tier", "a")]);
        assert!(label_matches(&odd, "example.com:tier", "a"));
    }

    #[test]
    fn expressions_follow_kubernetes() {
        let requirement = |operator, values: &[&str]| LabelSelector {
            match_expressions: vec![Requirement {
                key: "tier".into(),
                operator,
                values: values.iter().map(|v| (*v).to_owned()).collect(),
            }],
            ..LabelSelector::default()
        };
        let web = labels(&[("tier", "web")]);
        let none = labels(&[]);
        assert!(requirement(Operator::In, &["web", "db"]).matches(&web));
        assert!(!requirement(Operator::In, &["db"]).matches(&web));
        assert!(!requirement(Operator::In, &["web"]).matches(&none));
        assert!(requirement(Operator::NotIn, &["db"]).matches(&web));
        assert!(requirement(Operator::NotIn, &["db"]).matches(&none));
        assert!(!requirement(Operator::NotIn, &["web"]).matches(&web));
        assert!(requirement(Operator::Exists, &[]).matches(&web));
        assert!(!requirement(Operator::Exists, &[]).matches(&none));
        assert!(requirement(Operator::DoesNotExist, &[]).matches(&none));
        assert!(LabelSelector::default().matches(&none));
        assert_eq!(
            requirement(Operator::In, &[]).problems(),
            [(
                "matchExpressions[0]".to_owned(),
                "values: Required value: must be specified when `operator` is 'In'".to_owned()
            )]
        );
    }
}
