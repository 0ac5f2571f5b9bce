//! Network interfaces over rtnetlink: bringing one up (`ip link set NAME
//! up`), deleting one (`ip link del NAME`).

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkFlags, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, constants::NETLINK_ROUTE};

/// Sets interface `name` up.
///
/// # Errors
///
/// When there is no such interface or the kernel refuses.
pub fn set_up(name: &str) -> std::io::Result<()> {
    let index = nix::net::if_::if_nametoindex(name).map_err(std::io::Error::from)?;
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
    request(RouteNetlinkMessage::SetLink(message))
}

/// Deletes interface `name`; one already gone is not an error.
///
/// # Errors
///
/// When the kernel refuses.
pub fn delete(name: &str) -> std::io::Result<()> {
    let Ok(index) = nix::net::if_::if_nametoindex(name) else {
        return Ok(());
    };
    let mut message = LinkMessage::default();
    message.header.index = index;
    match request(RouteNetlinkMessage::DelLink(message)) {
        Err(error) if error.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        result => result,
    }
}

/// Sends `message` with `flags` on a new rtnetlink socket, returned for
/// the replies.
///
/// # Errors
///
/// When the socket cannot be opened or the send fails.
pub fn send(message: RouteNetlinkMessage, flags: u16) -> std::io::Result<Socket> {
    let mut request = NetlinkMessage::from(message);
    request.header.flags = flags;
    request.finalize();
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);
    let socket = Socket::new(NETLINK_ROUTE)?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&buffer, 0)?;
    Ok(socket)
}

/// Sends one rtnetlink request and reads its acknowledgement.
fn request(message: RouteNetlinkMessage) -> std::io::Result<()> {
    let socket = send(message, NLM_F_REQUEST | NLM_F_ACK)?;
    let mut reply = vec![0; 4096];
    let length = socket.recv(&mut &mut reply[..], 0)?;
    let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..length])
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
    match answer.payload {
        NetlinkPayload::Error(error) if error.code.is_some() => Err(error.to_io()),
        _ => Ok(()),
    }
}
