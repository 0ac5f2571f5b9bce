//! A policy's identity, as Kubernetes names the object.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which policy a policy is: a CiliumClusterwideNetworkPolicy by its name, a
/// CiliumNetworkPolicy by its namespace and name — two CiliumNetworkPolicies
/// of one name in two namespaces are two policies, as in Kubernetes.
///
/// Written `name` or `namespace/name` (as `kubectl` and Hubble write them);
/// neither part may hold a `/` (Kubernetes names cannot).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyName {
    /// The namespace of a CiliumNetworkPolicy; `None` for a cluster-wide one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

impl PolicyName {
    /// A cluster-wide policy's name.
    pub fn cluster_wide(name: impl Into<String>) -> Self {
        Self {
            namespace: None,
            name: name.into(),
        }
    }

    /// Reads `name` or `namespace/name`.
    pub fn parse(text: &str) -> Self {
        match text.split_once('/') {
            Some((namespace, name)) => Self {
                namespace: Some(namespace.to_owned()),
                name: name.to_owned(),
            },
            None => Self::cluster_wide(text),
        }
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{namespace}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_as_kubectl_writes_them_and_read_back() {
        let namespaced = PolicyName {
            namespace: Some("prod".into()),
            name: "web".into(),
        };
        assert_eq!(namespaced.to_string(), "prod/web");
        assert_eq!(PolicyName::parse("prod/web"), namespaced);
        assert_eq!(PolicyName::cluster_wide("web").to_string(), "web");
        assert_ne!(PolicyName::parse("web"), namespaced);
        assert_ne!(PolicyName::parse("staging/web"), namespaced);
    }
}
