//! The network configuration palisade-cni reads: the CNI spec's fields
//! and palisade's own.

use std::{collections::BTreeMap, path::PathBuf};

use rscni_types::{error::Error, types::NetConf, version::SpecVersion};
use serde::Deserialize;

/// The runtime-config key under which containerd passes a pod's annotations.
const POD_ANNOTATIONS: &str = "io.kubernetes.cri.pod-annotations";

/// palisade's fields of the configuration (besides the spec's).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PalisadeFields {
    /// palisaded's control socket.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// The MTU of the veth pair (main mode); the kernel's default when unset.
    #[serde(default)]
    pub mtu: Option<u32>,
}

fn default_socket() -> PathBuf {
    PathBuf::from(palisade_api::DEFAULT_SOCKET)
}

/// One plugin's configuration, as the runtime passed it.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// The spec's fields, `prevResult` and `runtimeConfig` included.
    pub net: NetConf,
    /// palisade's.
    pub palisade: PalisadeFields,
}

impl PluginConfig {
    /// Parses the configuration.
    ///
    /// # Errors
    ///
    /// Code 6 when it is not a network configuration, 7 when a value is
    /// invalid.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let net: NetConf = serde_json::from_slice(bytes).map_err(|error| {
            Error::FailedToDecode(format!("the network configuration: {error}"))
        })?;
        let custom = serde_json::Value::Object(
            net.custom
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        );
        let palisade: PalisadeFields = serde_json::from_value(custom).map_err(|error| {
            Error::InvalidNetworkConfig(format!("the network configuration: {error}"))
        })?;
        if palisade
            .mtu
            .is_some_and(|mtu| !(68..=65_535).contains(&mtu))
        {
            return Err(Error::InvalidNetworkConfig(
                "mtu must be between 68 and 65535".to_owned(),
            ));
        }
        Ok(Self { net, palisade })
    }

    /// The declared version (the spec's 0.1.0 when none is).
    ///
    /// # Errors
    ///
    /// Code 6 when the version is malformed.
    pub fn version(&self) -> Result<SpecVersion, Error> {
        self.net.version()
    }

    /// Whether palisade-cni runs after another plugin that made the interface.
    pub fn chained(&self) -> bool {
        self.net.prev_result.is_some()
    }

    /// The pod's annotations, when the runtime passed them (containerd's
    /// `io.kubernetes.cri.pod-annotations` capability); values that are not
    /// strings are left out.
    pub fn pod_annotations(&self) -> BTreeMap<String, String> {
        self.net
            .runtime_config
            .as_ref()
            .and_then(|runtime| runtime.custom.get(POD_ANNOTATIONS))
            .and_then(serde_json::Value::as_object)
            .map(|annotations| {
                annotations
                    .iter()
                    .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
                    .take(palisade_api::MAX_ENDPOINT_METADATA)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palisade_fields_default_and_annotations_come_from_the_runtime_config() {
        let config = PluginConfig::parse(
            br#"{"cniVersion":"1.0.0","name":"pods","type":"palisade-cni",
                 "runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"a":"1","n":2}},
                 "ipam":{"type":"host-local"}}"#,
        )
        .expect("config");
        assert_eq!(
            config.palisade.socket,
            PathBuf::from(palisade_api::DEFAULT_SOCKET)
        );
        assert!(!config.chained());
        assert_eq!(
            config.pod_annotations(),
            BTreeMap::from([("a".to_owned(), "1".to_owned())])
        );
    }

    #[test]
    fn bad_values_are_invalid_configurations_and_bad_json_is_undecodable() {
        let error = PluginConfig::parse(
            br#"{"cniVersion":"1.0.0","name":"pods","type":"palisade-cni","mtu":20}"#,
        )
        .expect_err("mtu");
        assert_eq!(u32::from(&error), 7);
        let error = PluginConfig::parse(
            br#"{"cniVersion":"1.0.0","name":"pods","type":"palisade-cni","socket":7}"#,
        )
        .expect_err("socket");
        assert_eq!(u32::from(&error), 7);
        let error = PluginConfig::parse(b"{").expect_err("json");
        assert_eq!(u32::from(&error), 6);
    }
}
