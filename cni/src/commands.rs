//! The CNI commands: ADD, DEL, CHECK, STATUS, GC (VERSION is answered by
//! [`crate::run`]). palisade-cni is the main plugin when its configuration
//! has an `ipam` section (it makes the veth pair and delegates addressing)
//! and is chained after another plugin otherwise (it takes that plugin's
//! interface, found from the container's side, as Cilium's generic-veth
//! chaining does); either way it registers the endpoint with palisaded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use palisade_api::{Client, EndpointGc, EndpointKey, EndpointRegistration};
use rscni_types::{
    error::Error,
    types::{CNIResult, Interface, IpConfig, Route},
};
use rtnetlink::Handle;
use sha2::{Digest as _, Sha256};

use crate::{
    config::PluginConfig,
    endpoint,
    invocation::Invocation,
    ipam,
    link::{self, Link},
    netns::{self, Netns},
};

/// The gateway a pod routes through when its IPAM result names none.
const DEFAULT_GATEWAY_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1));
/// The IPv6 gateway a pod routes through when its IPAM result names none.
const DEFAULT_GATEWAY_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1));

/// The host side of the veth pair palisade-cni makes for a container's
/// interface: `pal` and 11 hex digits of a hash of both, so DEL finds it
/// without a `prevResult`.
pub fn host_interface_name(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("pal{}", &hex[..11])
}

/// One command's context.
pub struct Context<'a> {
    /// The environment.
    pub invocation: &'a Invocation,
    /// The parsed configuration.
    pub config: &'a PluginConfig,
    /// The configuration as the runtime sent it (for delegated plugins).
    pub raw_config: &'a [u8],
}

impl Context<'_> {
    fn client(&self) -> Client {
        Client::new(&self.config.palisade.socket)
    }

    fn ipam_type(&self) -> Option<&str> {
        self.config
            .net
            .ipam
            .as_ref()
            .map(|ipam| ipam.r#type.as_str())
    }

    fn key(&self) -> EndpointKey {
        EndpointKey {
            container_id: self.invocation.container_id.clone(),
            interface: self.invocation.ifname.clone(),
        }
    }

    fn registration(&self, host: &Link, addresses: Vec<IpAddr>) -> EndpointRegistration {
        let args = &self.invocation.args;
        EndpointRegistration {
            key: self.key(),
            network: self.config.net.name.clone(),
            netns: self.invocation.netns.clone(),
            host_interface: host.name.clone(),
            host_ifindex: host.index,
            addresses,
            namespace: args.pod_namespace().map(str::to_owned),
            pod_name: args.pod_name().map(str::to_owned),
            labels: std::collections::BTreeMap::new(),
            annotations: self.config.pod_annotations(),
        }
    }
}

/// ADD: the result to report.
///
/// # Errors
///
/// The CNI error; whatever was made before it is undone.
pub async fn add(context: &Context<'_>) -> Result<CNIResult, Error> {
    // Nothing is made for a pod palisaded cannot enforce on.
    let client = context.client();
    client.status().await.map_err(endpoint::refused)?;
    match context.ipam_type() {
        Some(ipam_type) => add_main(context, &client, ipam_type).await,
        None => add_chained(context, &client).await,
    }
}

async fn add_main(
    context: &Context<'_>,
    client: &Client,
    ipam_type: &str,
) -> Result<CNIResult, Error> {
    let invocation = context.invocation;
    let pod_ns = Netns::open(&invocation.netns)?;
    let pod = pod_ns.handle()?;
    let host = netns::host_handle()?;
    let host_name = host_interface_name(&invocation.container_id, &invocation.ifname);
    let allocated = ipam::delegate(ipam_type, "ADD", invocation, context.raw_config)
        .await?
        .unwrap_or_default();
    let made = plumb(context, &pod_ns, &pod, &host, &host_name, &allocated).await;
    let outcome = match made {
        Ok((result, host_link, addresses)) => {
            endpoint::register(client, &context.registration(&host_link, addresses))
                .await
                .map(|()| result)
        }
        Err(error) => Err(error),
    };
    if outcome.is_err() {
        // Undo in reverse; the first error is the one reported.
        if let Ok(Some(stale)) = link::by_name(&host, &host_name).await {
            let _ = link::delete(&host, stale.index).await;
        }
        let _ = ipam::delegate(ipam_type, "DEL", invocation, context.raw_config).await;
    }
    outcome
}

/// Makes the veth pair and configures both ends from the IPAM result.
async fn plumb(
    context: &Context<'_>,
    pod_ns: &Netns,
    pod: &Handle,
    host: &Handle,
    host_name: &str,
    allocated: &CNIResult,
) -> Result<(CNIResult, Link, Vec<IpAddr>), Error> {
    let ifname = &context.invocation.ifname;
    if allocated.ips.is_empty() {
        return Err(Error::InvalidNetworkConfig(
            "the IPAM plugin allocated no address".to_owned(),
        ));
    }
    link::create_veth(host, host_name, pod_ns, ifname, context.config.palisade.mtu).await?;
    let host_link = link::by_name(host, host_name)
        .await?
        .ok_or_else(|| gone(host_name))?;
    let pod_link = link::by_name(pod, ifname)
        .await?
        .ok_or_else(|| gone(ifname))?;
    link::set_up(host, host_link.index).await?;
    link::set_up(pod, pod_link.index).await?;

    let mut ips = Vec::new();
    let mut addresses = Vec::new();
    for allocation in &allocated.ips {
        let address = allocation.address.addr();
        let gateway = allocation.gateway.unwrap_or(match address {
            IpAddr::V4(_) => DEFAULT_GATEWAY_V4,
            IpAddr::V6(_) => DEFAULT_GATEWAY_V6,
        });
        let pod_address = IpNet::from(address);
        let gateway_host = IpNet::from(gateway);
        link::add_address(pod, pod_link.index, pod_address).await?;
        link::add_address(host, host_link.index, gateway_host).await?;
        link::add_route(pod, gateway_host, None, pod_link.index).await?;
        link::add_route(host, pod_address, None, host_link.index).await?;
        enable_forwarding(address)?;
        ips.push(IpConfig {
            interface: Some(1),
            address: pod_address,
            gateway: Some(gateway),
        });
        addresses.push(address);
    }
    let mut routes = Vec::new();
    for route in &allocated.routes {
        let gateway = match route.gw {
            Some(gateway) => gateway,
            None => ips
                .iter()
                .find(|ip| ip.address.addr().is_ipv4() == route.dst.addr().is_ipv4())
                .and_then(|ip| ip.gateway)
                .ok_or_else(|| {
                    Error::InvalidNetworkConfig(format!(
                        "route {} has no gateway and no address of its family",
                        route.dst
                    ))
                })?,
        };
        link::add_route(pod, route.dst, Some(gateway), pod_link.index).await?;
        routes.push(Route {
            gw: Some(gateway),
            ..route.clone()
        });
    }
    let result = CNIResult {
        interfaces: vec![
            Interface {
                name: host_link.name.clone(),
                mac: host_link.mac.clone(),
                mtu: None,
                sandbox: None,
                socket_path: None,
                pci_id: None,
            },
            Interface {
                name: pod_link.name.clone(),
                mac: pod_link.mac.clone(),
                mtu: None,
                sandbox: Some(context.invocation.netns.clone()),
                socket_path: None,
                pci_id: None,
            },
        ],
        ips,
        routes,
        dns: allocated
            .dns
            .clone()
            .or_else(|| context.config.net.dns.clone()),
    };
    Ok((result, host_link, addresses))
}

fn gone(name: &str) -> Error {
    Error::Custom(
        100,
        "netlink request failed".to_owned(),
        format!("{name} vanished right after it was made"),
    )
}

/// Turns on forwarding for `address`'s family in this (the host's)
/// namespace, as the reference ptp plugin does: pods are routed.
fn enable_forwarding(address: IpAddr) -> Result<(), Error> {
    let file = match address {
        IpAddr::V4(_) => "/proc/sys/net/ipv4/ip_forward",
        IpAddr::V6(_) => "/proc/sys/net/ipv6/conf/all/forwarding",
    };
    if std::fs::read_to_string(file).is_ok_and(|value| value.trim() == "1") {
        return Ok(());
    }
    std::fs::write(file, "1")
        .map_err(|error| Error::IOFailure(format!("enabling forwarding in {file}: {error}")))
}

async fn add_chained(context: &Context<'_>, client: &Client) -> Result<CNIResult, Error> {
    let previous = context.config.net.prev_result.clone().ok_or_else(|| {
        Error::InvalidNetworkConfig(
            "palisade-cni without an ipam section runs chained after another plugin and needs its prevResult".to_owned(),
        )
    })?;
    let host_link = chained_host_link(context).await?;
    let addresses = previous.ips.iter().map(|ip| ip.address.addr()).collect();
    endpoint::register(client, &context.registration(&host_link, addresses)).await?;
    Ok(previous)
}

/// The host side of the interface another plugin made: the peer of
/// `CNI_IFNAME` in the container.
async fn chained_host_link(context: &Context<'_>) -> Result<Link, Error> {
    let ifname = &context.invocation.ifname;
    let pod = Netns::open(&context.invocation.netns)?.handle()?;
    let pod_link = link::by_name(&pod, ifname).await?.ok_or_else(|| {
        Error::InvalidNetworkConfig(format!(
            "the container has no interface {ifname} for palisade-cni to chain onto"
        ))
    })?;
    let peer = pod_link
        .peer_index
        .filter(|_| pod_link.veth)
        .ok_or_else(|| {
            Error::UnsupportedNetworkConfiguration(format!(
                "{ifname} is not a veth: palisade-cni chains onto veth pairs only"
            ))
        })?;
    let host = netns::host_handle()?;
    link::by_index(&host, peer).await?.ok_or_else(|| {
        Error::InvalidNetworkConfig(format!(
            "the host side of {ifname} (index {peer}) is not in palisade-cni's namespace"
        ))
    })
}

/// DEL: undoes ADD; succeeds when there is nothing to undo, with an empty
/// `CNI_NETNS`, without `prevResult`, and with palisaded down.
///
/// # Errors
///
/// When the veth pair cannot be deleted or the IPAM plugin fails.
pub async fn del(context: &Context<'_>) -> Result<(), Error> {
    // palisaded down: it forgets the endpoint at its next start, when
    // the endpoint's interface is gone.
    let _ = endpoint::remove(&context.client(), &context.key()).await;
    let Some(ipam_type) = context.ipam_type() else {
        return Ok(());
    };
    let host = netns::host_handle()?;
    let host_name =
        host_interface_name(&context.invocation.container_id, &context.invocation.ifname);
    if let Some(host_link) = link::by_name(&host, &host_name).await? {
        link::delete(&host, host_link.index).await?;
    }
    ipam::delegate(ipam_type, "DEL", context.invocation, context.raw_config).await?;
    Ok(())
}

fn check_failed(details: String) -> Error {
    Error::Custom(104, "CHECK failed".to_owned(), details)
}

/// CHECK: whether the attachment is as ADD left it.
///
/// # Errors
///
/// Code 104 naming what differs; the IPAM plugin's error; 11 when
/// palisaded is down.
pub async fn check(context: &Context<'_>) -> Result<(), Error> {
    let previous = context.config.net.prev_result.as_ref().ok_or_else(|| {
        Error::InvalidNetworkConfig("CHECK needs the prevResult of ADD".to_owned())
    })?;
    let host_link = match context.ipam_type() {
        Some(ipam_type) => {
            ipam::delegate(ipam_type, "CHECK", context.invocation, context.raw_config).await?;
            check_main(context, previous).await?
        }
        None => chained_host_link(context).await?,
    };
    let endpoints = context
        .client()
        .endpoints()
        .await
        .map_err(endpoint::refused)?;
    let key = context.key();
    let registered = endpoints
        .endpoints
        .iter()
        .find(|endpoint| endpoint.registration.key == key)
        .ok_or_else(|| {
            check_failed(format!(
                "palisaded has no endpoint for {}/{}",
                key.container_id, key.interface
            ))
        })?;
    if registered.registration.host_interface != host_link.name
        || registered.registration.host_ifindex != host_link.index
    {
        return Err(check_failed(format!(
            "palisaded enforces on {} (index {}), the container's peer is {} (index {})",
            registered.registration.host_interface,
            registered.registration.host_ifindex,
            host_link.name,
            host_link.index
        )));
    }
    Ok(())
}

async fn check_main(context: &Context<'_>, previous: &CNIResult) -> Result<Link, Error> {
    let ifname = &context.invocation.ifname;
    let host = netns::host_handle()?;
    let pod = Netns::open(&context.invocation.netns)?.handle()?;
    let host_name = host_interface_name(&context.invocation.container_id, ifname);
    let host_link = link::by_name(&host, &host_name)
        .await?
        .filter(|link| link.up)
        .ok_or_else(|| check_failed(format!("host interface {host_name} is missing or down")))?;
    let pod_link = link::by_name(&pod, ifname)
        .await?
        .filter(|link| link.up)
        .ok_or_else(|| check_failed(format!("container interface {ifname} is missing or down")))?;
    if pod_link.peer_index != Some(host_link.index) {
        return Err(check_failed(format!(
            "{ifname} is not the peer of {host_name}"
        )));
    }
    let pod_addresses = link::addresses(&pod, pod_link.index).await?;
    let pod_routes = link::routes(&pod).await?;
    let host_routes = link::routes(&host).await?;
    let has_route =
        |routes: &[link::RouteEntry], destination: IpNet, gateway: Option<IpAddr>, index: u32| {
            routes.iter().any(|route| {
                route.destination == destination
                    && route.interface == Some(index)
                    && (gateway.is_none() || route.gateway == gateway)
            })
        };
    for ip in &previous.ips {
        if !pod_addresses.contains(&ip.address) {
            return Err(check_failed(format!(
                "{ifname} lacks address {}",
                ip.address
            )));
        }
        let host_route = IpNet::from(ip.address.addr());
        if !has_route(&host_routes, host_route, None, host_link.index) {
            return Err(check_failed(format!(
                "the host lacks the route to {host_route} through {host_name}"
            )));
        }
        if let Some(gateway) = ip.gateway
            && !has_route(&pod_routes, IpNet::from(gateway), None, pod_link.index)
        {
            return Err(check_failed(format!(
                "{ifname} lacks the route to its gateway {gateway}"
            )));
        }
    }
    for route in &previous.routes {
        if !has_route(&pod_routes, route.dst, route.gw, pod_link.index) {
            return Err(check_failed(format!(
                "the container lacks its route to {}",
                route.dst
            )));
        }
    }
    Ok(host_link)
}

/// STATUS: whether ADD would work now.
///
/// # Errors
///
/// Code 50 when palisaded does not answer.
pub async fn status(context: &Context<'_>) -> Result<(), Error> {
    endpoint::available(&context.client()).await
}

/// GC: forgets the endpoints of this network that are not among the
/// runtime's valid attachments, deletes their veth pairs (main mode), and
/// passes GC on to the IPAM plugin (when it speaks spec 1.1).
///
/// # Errors
///
/// Code 11 when palisaded is down; netlink and IPAM errors.
pub async fn gc(context: &Context<'_>) -> Result<(), Error> {
    let valid = context
        .config
        .net
        .valid_attachments
        .iter()
        .flatten()
        .map(|attachment| EndpointKey {
            container_id: attachment.container_id.clone(),
            interface: attachment.ifname.clone(),
        })
        .collect();
    let removed = context
        .client()
        .collect_endpoints(&EndpointGc {
            network: context.config.net.name.clone(),
            valid,
        })
        .await
        .map_err(endpoint::refused)?;
    let Some(ipam_type) = context.ipam_type() else {
        return Ok(());
    };
    let host = netns::host_handle()?;
    for key in &removed.removed {
        let name = host_interface_name(&key.container_id, &key.interface);
        if let Some(stale) = link::by_name(&host, &name).await? {
            link::delete(&host, stale.index).await?;
        }
    }
    ipam::delegate(ipam_type, "GC", context.invocation, context.raw_config).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interface_names_are_short_stable_and_distinct() {
        let name = host_interface_name("abc", "eth0");
        assert_eq!(name.len(), 14);
        assert_eq!(name, host_interface_name("abc", "eth0"));
        assert_ne!(name, host_interface_name("abc", "eth1"));
        assert_ne!(name, host_interface_name("abd", "eth0"));
    }
}
