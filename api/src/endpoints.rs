//! Pod endpoints: what palisade-cni registers with palisaded for each
//! container interface it sets up or chains onto.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

/// Longest container id palisaded takes (the CNI spec sets no limit; the
/// runtimes here send 64 hex digits).
pub const MAX_CONTAINER_ID_LEN: usize = 256;
/// Most addresses one endpoint may hold.
pub const MAX_ENDPOINT_ADDRESSES: usize = 16;
/// Most labels or annotations one endpoint may carry.
pub const MAX_ENDPOINT_METADATA: usize = 256;
/// Most bytes of label and annotation keys and values together (what
/// Kubernetes allows a pod's annotations).
pub const MAX_ENDPOINT_METADATA_BYTES: usize = 256 * 1024;
/// Longest network name or netns path taken.
const MAX_NAME_LEN: usize = 4096;

/// An endpoint's key: the container and its interface inside the container,
/// as the CNI spec identifies an attachment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointKey {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`: the interface inside the container.
    pub interface: String,
}

/// What palisade-cni tells palisaded about one attachment (`POST
/// /v1/endpoints`; registering the same key again replaces it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRegistration {
    /// The container and its interface.
    #[serde(flatten)]
    pub key: EndpointKey,
    /// The CNI network's name (the configuration's `name`).
    pub network: String,
    /// `CNI_NETNS`: the container's network namespace.
    pub netns: String,
    /// The host side of the container's veth pair, where palisade enforces.
    pub host_interface: String,
    /// The host-side interface's index when it was registered: an
    /// interface of that name with another index is somebody else's.
    pub host_ifindex: u32,
    /// The container's addresses on that interface.
    pub addresses: Vec<IpAddr>,
    /// The pod's namespace (`K8S_POD_NAMESPACE` in `CNI_ARGS`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The pod's name (`K8S_POD_NAME` in `CNI_ARGS`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The pod's labels, as far as the runtime passed them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The pod's annotations (containerd's `io.kubernetes.cri.pod-annotations`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl EndpointRegistration {
    /// Why palisaded refuses this registration, if it does.
    ///
    /// # Errors
    ///
    /// A message naming the field that is empty, too long or too large.
    pub fn validate(&self) -> Result<(), String> {
        if self.key.container_id.is_empty() || self.key.container_id.len() > MAX_CONTAINER_ID_LEN {
            return Err(format!(
                "container_id must hold 1 to {MAX_CONTAINER_ID_LEN} characters"
            ));
        }
        for (field, name) in [
            ("interface", &self.key.interface),
            ("host_interface", &self.host_interface),
        ] {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                return Err(format!("{field} {name:?} is not an interface name"));
            }
        }
        if self.addresses.len() > MAX_ENDPOINT_ADDRESSES {
            return Err(format!(
                "an endpoint holds at most {MAX_ENDPOINT_ADDRESSES} addresses"
            ));
        }
        if self.network.is_empty() || self.network.len() > MAX_NAME_LEN {
            return Err(format!("network must hold 1 to {MAX_NAME_LEN} characters"));
        }
        if self.netns.len() > MAX_NAME_LEN {
            return Err(format!("netns is longer than {MAX_NAME_LEN} characters"));
        }
        let metadata_bytes: usize = self
            .labels
            .iter()
            .chain(&self.annotations)
            .map(|(key, value)| key.len() + value.len())
            .sum();
        if metadata_bytes > MAX_ENDPOINT_METADATA_BYTES {
            return Err(format!(
                "labels and annotations take more than {MAX_ENDPOINT_METADATA_BYTES} bytes"
            ));
        }
        if self.labels.len() > MAX_ENDPOINT_METADATA
            || self.annotations.len() > MAX_ENDPOINT_METADATA
        {
            return Err(format!(
                "an endpoint carries at most {MAX_ENDPOINT_METADATA} labels and {MAX_ENDPOINT_METADATA} annotations"
            ));
        }
        Ok(())
    }
}

/// A registered endpoint, as `GET /v1/endpoints` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// What the plugin registered.
    #[serde(flatten)]
    pub registration: EndpointRegistration,
    /// Its security identity: one number per set of security labels (the
    /// pod's labels and namespace), shared by the pods with that set.
    #[serde(default)]
    pub identity: u32,
    /// When it was registered (RFC 3339).
    pub registered: String,
}

/// `GET /v1/endpoints`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointList {
    /// Every registered endpoint, by container id and interface.
    pub endpoints: Vec<Endpoint>,
}

/// `POST /v1/endpoints/gc`: forget the endpoints of `network` that are not
/// among `valid` (the CNI GC command's `cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointGc {
    /// The CNI network whose endpoints are collected.
    pub network: String,
    /// The attachments the runtime still has.
    pub valid: Vec<EndpointKey>,
}

/// What `DELETE /v1/endpoints/...` and `POST /v1/endpoints/gc` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointsRemoved {
    /// The endpoints no longer registered (empty: there were none).
    pub removed: Vec<EndpointKey>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration() -> EndpointRegistration {
        EndpointRegistration {
            key: EndpointKey {
                container_id: "abc".to_owned(),
                interface: "eth0".to_owned(),
            },
            network: "pods".to_owned(),
            netns: "/run/netns/x".to_owned(),
            host_interface: "pal0123456789a".to_owned(),
            host_ifindex: 7,
            addresses: Vec::new(),
            namespace: None,
            pod_name: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn every_field_a_caller_controls_is_bounded() {
        assert_eq!(registration().validate(), Ok(()));
        let refused: [fn(&mut EndpointRegistration); 8] = [
            |r| r.key.container_id.clear(),
            |r| r.key.container_id = "x".repeat(MAX_CONTAINER_ID_LEN + 1),
            |r| r.key.interface = "a/b".to_owned(),
            |r| r.host_interface = "x".repeat(16),
            |r| r.network = "x".repeat(MAX_NAME_LEN + 1),
            |r| r.netns = "x".repeat(MAX_NAME_LEN + 1),
            |r| r.addresses = vec!["10.0.0.1".parse().expect("ip"); MAX_ENDPOINT_ADDRESSES + 1],
            |r| {
                r.annotations
                    .insert("a".to_owned(), "x".repeat(MAX_ENDPOINT_METADATA_BYTES));
            },
        ];
        for (index, change) in refused.iter().enumerate() {
            let mut bad = registration();
            change(&mut bad);
            assert!(bad.validate().is_err(), "case {index} was accepted");
        }
    }
}
