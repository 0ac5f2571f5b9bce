//! Links, addresses and routes through rtnetlink, in whichever namespace
//! the handle lives.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
};

use futures_util::TryStreamExt as _;
use ipnet::IpNet;
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags},
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope, RouteType},
};
use rscni_types::error::Error;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netns::Netns;

/// What palisade-cni needs to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its hardware address, `aa:bb:...`.
    pub mac: String,
    /// Whether it is administratively up.
    pub up: bool,
    /// The index of its peer (`IFLA_LINK`: for a veth, the other end's
    /// index in the other end's namespace).
    pub peer_index: Option<u32>,
    /// Whether it is a veth.
    pub veth: bool,
}

/// A route of the main table, as far as palisade-cni reads one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination.
    pub destination: IpNet,
    /// Gateway, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface, if any.
    pub interface: Option<u32>,
}

/// The negative errno of a netlink error.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| -code.get()),
        _ => None,
    }
}

fn failed(what: impl std::fmt::Display, error: &rtnetlink::Error) -> Error {
    Error::Custom(
        100,
        "netlink request failed".to_owned(),
        format!("{what}: {error}"),
    )
}

fn from_message(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: String::new(),
        up: message.header.flags.contains(LinkFlags::Up),
        peer_index: None,
        veth: false,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Address(bytes) => {
                link.mac = bytes
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
            }
            LinkAttribute::Link(index) => link.peer_index = Some(*index),
            LinkAttribute::LinkInfo(infos) => {
                link.veth = infos.iter().any(|info| {
                    matches!(
                        info,
                        netlink_packet_route::link::LinkInfo::Kind(InfoKind::Veth)
                    )
                });
            }
            _ => {}
        }
    }
    link
}

/// The link named `name`, if there is one.
///
/// # Errors
///
/// When netlink fails otherwise.
pub async fn by_name(handle: &Handle, name: &str) -> Result<Option<Link>, Error> {
    found(
        handle.link().get().match_name(name.to_owned()),
        format_args!("looking up link {name}"),
    )
    .await
}

/// The link of index `index`, if there is one.
///
/// # Errors
///
/// When netlink fails otherwise.
pub async fn by_index(handle: &Handle, index: u32) -> Result<Option<Link>, Error> {
    found(
        handle.link().get().match_index(index),
        format_args!("looking up link {index}"),
    )
    .await
}

/// The one link `request` asks for; none (ENODEV) is no error.
async fn found(
    request: rtnetlink::LinkGetRequest,
    what: std::fmt::Arguments<'_>,
) -> Result<Option<Link>, Error> {
    match request.execute().try_next().await {
        Ok(message) => Ok(message.as_ref().map(from_message)),
        Err(error) if errno(&error) == Some(libc_enodev()) => Ok(None),
        Err(error) => Err(failed(what, &error)),
    }
}

const fn libc_enodev() -> i32 {
    19
}

/// Makes a veth pair: `host_name` here, `pod_name` created directly in
/// `pod` (so it never clashes with a host interface of that name).
///
/// # Errors
///
/// When the pair cannot be made (an existing `host_name`, say).
pub async fn create_veth(
    host: &Handle,
    host_name: &str,
    pod: &Netns,
    pod_name: &str,
    mtu: Option<u32>,
) -> Result<(), Error> {
    let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(pod_name.to_owned())
        .setns_by_fd(pod.file().as_raw_fd());
    let mut pair = LinkVeth::new(host_name, pod_name);
    if let Some(mtu) = mtu {
        peer = peer.mtu(mtu);
        pair = pair.mtu(mtu);
    }
    let message = pair
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
        .build();
    host.link().add(message).execute().await.map_err(|error| {
        failed(
            format_args!("creating veth pair {host_name}/{pod_name}"),
            &error,
        )
    })
}

/// Sets the link of `index` up.
///
/// # Errors
///
/// When netlink refuses.
pub async fn set_up(handle: &Handle, index: u32) -> Result<(), Error> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|error| failed(format_args!("setting link {index} up"), &error))
}

/// Deletes the link of `index`; gone already is no error.
///
/// # Errors
///
/// When netlink refuses otherwise.
pub async fn delete(handle: &Handle, index: u32) -> Result<(), Error> {
    match handle.link().del(index).execute().await {
        Err(error) if errno(&error) != Some(libc_enodev()) => {
            Err(failed(format_args!("deleting link {index}"), &error))
        }
        _ => Ok(()),
    }
}

/// Adds `address` to the link of `index`, without duplicate address
/// detection (a veth's other end is the only neighbour).
///
/// # Errors
///
/// When netlink refuses (an address already there is no error).
pub async fn add_address(handle: &Handle, index: u32, address: IpNet) -> Result<(), Error> {
    let mut request = handle
        .address()
        .add(index, address.addr(), address.prefix_len())
        .replace();
    if address.addr().is_ipv6() {
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    request
        .execute()
        .await
        .map_err(|error| failed(format_args!("adding {address} to link {index}"), &error))
}

/// The addresses on the link of `index`.
///
/// # Errors
///
/// When netlink fails.
pub async fn addresses(handle: &Handle, index: u32) -> Result<Vec<IpNet>, Error> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|error| {
            failed(
                format_args!("listing the addresses of link {index}"),
                &error,
            )
        })?;
    Ok(messages
        .iter()
        .filter_map(|message| {
            message
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    AddressAttribute::Address(address) => {
                        IpNet::new(*address, message.header.prefix_len).ok()
                    }
                    _ => None,
                })
        })
        .collect())
}

/// Adds a route to `destination` through the link of `index`, via
/// `gateway` or (without one) on the link itself.
///
/// # Errors
///
/// When netlink refuses (the same route already there is no error).
pub async fn add_route(
    handle: &Handle,
    destination: IpNet,
    gateway: Option<IpAddr>,
    index: u32,
) -> Result<(), Error> {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(destination.addr(), destination.prefix_len())
        .map_err(|error| Error::InvalidNetworkConfig(error.to_string()))?
        .output_interface(index);
    builder = match gateway {
        Some(gateway) => builder
            .gateway(gateway)
            .map_err(|error| Error::InvalidNetworkConfig(error.to_string()))?,
        None => builder.scope(RouteScope::Link),
    };
    handle
        .route()
        .add(builder.build())
        .replace()
        .execute()
        .await
        .map_err(|error| failed(format_args!("adding a route to {destination}"), &error))
}

/// The unicast routes of the main table, both families.
///
/// # Errors
///
/// When netlink fails.
pub async fn routes(handle: &Handle) -> Result<Vec<RouteEntry>, Error> {
    let mut entries = Vec::new();
    for query in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let messages: Vec<RouteMessage> = handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|error| failed("listing routes", &error))?;
        entries.extend(messages.iter().filter_map(route_entry));
    }
    Ok(entries)
}

fn route_entry(message: &RouteMessage) -> Option<RouteEntry> {
    if message.header.kind != RouteType::Unicast
        || message.header.table != netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN
    {
        return None;
    }
    let address = |address: &RouteAddress| match address {
        RouteAddress::Inet(address) => Some(IpAddr::V4(*address)),
        RouteAddress::Inet6(address) => Some(IpAddr::V6(*address)),
        _ => None,
    };
    let mut destination = None;
    let mut gateway = None;
    let mut interface = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(value) => destination = address(value),
            RouteAttribute::Gateway(value) => gateway = address(value),
            RouteAttribute::Oif(index) => interface = Some(*index),
            _ => {}
        }
    }
    let destination = match destination {
        Some(destination) => destination,
        None if message.header.address_family == netlink_packet_route::AddressFamily::Inet6 => {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        }
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    Some(RouteEntry {
        destination: IpNet::new(destination, message.header.destination_prefix_length).ok()?,
        gateway,
        interface,
    })
}
