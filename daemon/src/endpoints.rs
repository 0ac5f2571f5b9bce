//! The registry of pod endpoints that palisade-cni registers: kept in
//! memory, saved whole to `policy.state_directory/endpoints.json` at every
//! change (so a restart, also after kill -9, re-adopts them), and pruned
//! at start of endpoints whose host interface is gone.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::Context as _;
use palisade_api::{
    Endpoint, EndpointGc, EndpointKey, EndpointList, EndpointRegistration, EndpointsRemoved,
    FlowEndpoint,
};
use serde::{Deserialize, Serialize};

use crate::identities::{Identities, IdentitiesExhausted, security_labels};

/// Most endpoints one node registers (a kubelet's default is 110 pods;
/// this leaves room for several interfaces each and for churn).
pub const MAX_ENDPOINTS: usize = 16_384;
/// Largest saved registry read at start.
const MAX_SAVED_BYTES: u64 = 64 * 1024 * 1024;

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registration is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The node has as many endpoints as it takes.
    #[error("palisaded already holds {MAX_ENDPOINTS} endpoints")]
    Full,
    /// No security identity is left for a new label set.
    #[error(transparent)]
    Identities(#[from] IdentitiesExhausted),
    /// The registry could not be saved; nothing changed.
    #[error("saving the endpoint registry: {0:#}")]
    Save(anyhow::Error),
}

/// The saved form.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    endpoints: Vec<Endpoint>,
}

/// Registered endpoints, by container and interface.
#[derive(Debug)]
pub struct EndpointRegistry {
    file: PathBuf,
    endpoints: BTreeMap<EndpointKey, Endpoint>,
    identities: Identities,
}

impl EndpointRegistry {
    /// The registry saved under `state_directory`, less the endpoints whose
    /// host interface no longer exists with the index it had (returned
    /// apart, and forgotten on the next save).
    ///
    /// # Errors
    ///
    /// When the saved file exists but cannot be read or parsed.
    pub fn load(state_directory: &Path) -> anyhow::Result<(Self, Vec<Endpoint>)> {
        let file = state_directory.join("endpoints.json");
        let saved = match std::fs::metadata(&file) {
            Ok(metadata) if metadata.len() > MAX_SAVED_BYTES => {
                anyhow::bail!("{} is larger than {MAX_SAVED_BYTES} bytes", file.display())
            }
            Ok(_) => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                serde_json::from_str::<Saved>(&text)
                    .with_context(|| format!("parsing {}", file.display()))?
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", file.display()));
            }
        };
        let (live, gone): (Vec<_>, Vec<_>) = saved
            .endpoints
            .into_iter()
            .partition(|endpoint| host_interface_exists(&endpoint.registration));
        let mut identities = Identities::default();
        let mut endpoints = BTreeMap::new();
        for mut endpoint in live {
            // Each keeps its saved identity, unless another set holds it.
            endpoint.identity = identities
                .acquire(
                    &security_labels(&endpoint.registration),
                    Some(endpoint.identity),
                )
                .with_context(|| format!("re-adopting the endpoints of {}", file.display()))?;
            endpoints.insert(endpoint.registration.key.clone(), endpoint);
        }
        Ok((
            Self {
                file,
                endpoints,
                identities,
            },
            gone,
        ))
    }

    /// Every endpoint, in key order.
    pub fn list(&self) -> EndpointList {
        EndpointList {
            endpoints: self.endpoints.values().cloned().collect(),
        }
    }

    /// The pods of the endpoints, by address, as flows name them: those
    /// with a pod name (in namespace `default` when the runtime gave none),
    /// with their identity and security labels as Hubble writes them.
    pub fn flow_pods(&self) -> HashMap<IpAddr, FlowEndpoint> {
        let mut pods = HashMap::new();
        for endpoint in self.endpoints.values() {
            let registration = &endpoint.registration;
            let Some(pod_name) = &registration.pod_name else {
                continue;
            };
            let pod = FlowEndpoint {
                namespace: registration
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".to_owned()),
                pod_name: pod_name.clone(),
                identity: endpoint.identity,
                labels: security_labels(registration)
                    .into_iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect(),
            };
            for address in &registration.addresses {
                pods.insert(*address, pod.clone());
            }
        }
        pods
    }

    /// Registers (or replaces) an endpoint and saves the registry.
    ///
    /// # Errors
    ///
    /// See [`RegistryError`]; on error the registry is as before.
    pub fn register(
        &mut self,
        registration: EndpointRegistration,
    ) -> Result<Endpoint, RegistryError> {
        registration.validate().map_err(RegistryError::Invalid)?;
        let key = registration.key.clone();
        if !self.endpoints.contains_key(&key) && self.endpoints.len() >= MAX_ENDPOINTS {
            return Err(RegistryError::Full);
        }
        let labels = security_labels(&registration);
        let identity = self.identities.acquire(&labels, None)?;
        let endpoint = Endpoint {
            registration,
            identity,
            registered: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        };
        let previous = self.endpoints.insert(key.clone(), endpoint.clone());
        if let Err(error) = self.save() {
            match previous {
                Some(previous) => self.endpoints.insert(key, previous),
                None => self.endpoints.remove(&key),
            };
            self.identities.release(&labels);
            return Err(RegistryError::Save(error));
        }
        if let Some(previous) = previous {
            self.identities
                .release(&security_labels(&previous.registration));
        }
        Ok(endpoint)
    }

    /// Forgets the endpoint of `key` (none is no error) and saves.
    ///
    /// # Errors
    ///
    /// When the registry cannot be saved; it is then as before.
    pub fn remove(&mut self, key: &EndpointKey) -> Result<EndpointsRemoved, RegistryError> {
        self.remove_where(|endpoint| endpoint.registration.key == *key)
    }

    /// Forgets the endpoints of `gc.network` that are not among `gc.valid`.
    ///
    /// # Errors
    ///
    /// As [`EndpointRegistry::remove`].
    pub fn collect(&mut self, gc: &EndpointGc) -> Result<EndpointsRemoved, RegistryError> {
        let valid: BTreeSet<&EndpointKey> = gc.valid.iter().collect();
        self.remove_where(|endpoint| {
            endpoint.registration.network == gc.network
                && !valid.contains(&endpoint.registration.key)
        })
    }

    fn remove_where(
        &mut self,
        doomed: impl Fn(&Endpoint) -> bool,
    ) -> Result<EndpointsRemoved, RegistryError> {
        let removed: Vec<EndpointKey> = self
            .endpoints
            .values()
            .filter(|endpoint| doomed(endpoint))
            .map(|endpoint| endpoint.registration.key.clone())
            .collect();
        if removed.is_empty() {
            return Ok(EndpointsRemoved::default());
        }
        let taken: Vec<Endpoint> = removed
            .iter()
            .filter_map(|key| self.endpoints.remove(key))
            .collect();
        if let Err(error) = self.save() {
            for endpoint in taken {
                self.endpoints
                    .insert(endpoint.registration.key.clone(), endpoint);
            }
            return Err(RegistryError::Save(error));
        }
        for endpoint in &taken {
            self.identities
                .release(&security_labels(&endpoint.registration));
        }
        Ok(EndpointsRemoved { removed })
    }

    /// Writes the registry whole, atomically.
    ///
    /// # Errors
    ///
    /// When the state directory or the file cannot be written.
    pub fn save(&self) -> anyhow::Result<()> {
        if let Some(parent) = self.file.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let saved = Saved {
            endpoints: self.endpoints.values().cloned().collect(),
        };
        let text = serde_json::to_string_pretty(&saved).context("encoding the registry")?;
        crate::atomic_file::write_atomically(&self.file, &text, 0o600)
    }
}

/// Whether the endpoint's host interface exists with the index it had.
fn host_interface_exists(registration: &EndpointRegistration) -> bool {
    nix::net::if_::if_nametoindex(registration.host_interface.as_str())
        .is_ok_and(|index| index == registration.host_ifindex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(
        container: &str,
        host_interface: &str,
        host_ifindex: u32,
    ) -> EndpointRegistration {
        EndpointRegistration {
            key: EndpointKey {
                container_id: container.to_owned(),
                interface: "eth0".to_owned(),
            },
            network: "pods".to_owned(),
            netns: "/run/netns/x".to_owned(),
            host_interface: host_interface.to_owned(),
            host_ifindex,
            addresses: vec!["10.22.0.5".parse().expect("address")],
            namespace: Some("default".to_owned()),
            pod_name: Some(container.to_owned()),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    /// The container ids of `endpoints`, sorted.
    fn container_ids(endpoints: Vec<Endpoint>) -> Vec<String> {
        let mut ids: Vec<String> = endpoints
            .into_iter()
            .map(|endpoint| endpoint.registration.key.container_id)
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_restart_keeps_endpoints_whose_interface_lives_and_drops_the_others() {
        let directory = palisade_e2e::TempDir::new("endpoints").expect("tempdir");
        let loopback = nix::net::if_::if_nametoindex("lo").expect("lo");
        let (mut registry, gone) = EndpointRegistry::load(directory.path()).expect("load");
        assert!(gone.is_empty());
        registry
            .register(registration("alive", "lo", loopback))
            .expect("register");
        registry
            .register(registration("dead", "palnosuchif", 4242))
            .expect("register");
        registry
            .register(registration("reused", "lo", loopback + 1000))
            .expect("register");

        let (registry, gone) = EndpointRegistry::load(directory.path()).expect("reload");
        let kept = container_ids(registry.list().endpoints);
        assert_eq!(kept, ["alive"]);
        let gone = container_ids(gone);
        assert_eq!(gone, ["dead", "reused"]);
    }

    #[test]
    fn gc_removes_only_the_networks_endpoints_the_runtime_no_longer_has() {
        let directory = palisade_e2e::TempDir::new("endpoints").expect("tempdir");
        let (mut registry, _) = EndpointRegistry::load(directory.path()).expect("load");
        for container in ["a", "b", "c"] {
            registry
                .register(registration(container, "lo", 1))
                .expect("register");
        }
        let mut other = registration("d", "lo", 1);
        other.network = "other".to_owned();
        registry.register(other).expect("register");
        let removed = registry
            .collect(&EndpointGc {
                network: "pods".to_owned(),
                valid: vec![EndpointKey {
                    container_id: "b".to_owned(),
                    interface: "eth0".to_owned(),
                }],
            })
            .expect("gc");
        let removed: Vec<_> = removed
            .removed
            .into_iter()
            .map(|key| key.container_id)
            .collect();
        assert_eq!(removed, ["a", "c"]);
        assert_eq!(registry.list().endpoints.len(), 2);
        assert!(
            registry
                .remove(&EndpointKey {
                    container_id: "a".to_owned(),
                    interface: "eth0".to_owned(),
                })
                .expect("remove")
                .removed
                .is_empty()
        );
    }

    #[test]
    fn a_failed_save_leaves_the_registry_as_it_was() {
        let directory = palisade_e2e::TempDir::new("endpoints").expect("tempdir");
        let (mut registry, _) = EndpointRegistry::load(directory.path()).expect("load");
        registry
            .register(registration("a", "lo", 1))
            .expect("register");
        // The file's place taken by a directory: the rename fails.
        registry.file = directory.path().join("blocked");
        std::fs::create_dir_all(registry.file.join("x")).expect("blocker");
        assert!(matches!(
            registry.register(registration("b", "lo", 1)),
            Err(RegistryError::Save(_))
        ));
        assert!(matches!(
            registry.remove(&registration("a", "lo", 1).key),
            Err(RegistryError::Save(_))
        ));
        let kept = container_ids(registry.list().endpoints);
        assert_eq!(kept, ["a"]);
    }

    #[test]
    fn pods_with_one_label_set_share_an_identity_that_a_restart_keeps() {
        let directory = palisade_e2e::TempDir::new("endpoints").expect("tempdir");
        let (mut registry, _) = EndpointRegistry::load(directory.path()).expect("load");
        let mut other_namespace = registration("c", "lo", 1);
        other_namespace.namespace = Some("other".to_owned());
        let mut labelled = registration("d", "lo", 1);
        labelled.labels.insert("app".to_owned(), "web".to_owned());
        let identities: Vec<u32> = [
            registration("a", "lo", 1),
            registration("b", "lo", 1),
            other_namespace,
            labelled,
        ]
        .into_iter()
        .map(|registration| registry.register(registration).expect("register").identity)
        .collect();
        assert_eq!(identities, [256, 256, 257, 258]);
        // The first holder of 256 going leaves it to the other.
        registry
            .remove(&registration("a", "lo", 1).key)
            .expect("remove");
        let mut moved = registration("e", "lo", 1);
        moved.namespace = Some("moved".to_owned());
        assert_eq!(registry.register(moved).expect("register").identity, 259);
        // Saved with the endpoints: the same numbers after a restart, also
        // when one below them has been freed.
        registry
            .remove(&registration("c", "lo", 1).key)
            .expect("remove");
        let (registry, _) = EndpointRegistry::load(directory.path()).expect("reload");
        let kept: Vec<(String, u32)> = registry
            .list()
            .endpoints
            .into_iter()
            .map(|endpoint| (endpoint.registration.key.container_id, endpoint.identity))
            .collect();
        let expected = [("b", 256), ("d", 258), ("e", 259)]
            .map(|(container, identity)| (container.to_owned(), identity));
        assert_eq!(kept, expected);
    }
}
