//! Traffic between namespaces: TCP listeners and connections, UDP, ICMP,
//! raw frames, HTTP and datagram sockets.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use socket2::{Domain, Socket, Type};

use crate::netns::Netns;

/// `GET path` over HTTP/1.0 to `address` from inside `netns`: the whole
/// response, head and body.
///
/// # Errors
///
/// When the namespace cannot be entered or the request fails.
pub fn http_get(netns: &Netns, address: &str, path: &str) -> anyhow::Result<String> {
    let (address, request) = (
        address.to_owned(),
        format!("GET {path} HTTP/1.0\r\nHost: palisade\r\n\r\n"),
    );
    netns
        .spawn(move || -> anyhow::Result<String> {
            let mut stream = std::net::TcpStream::connect(&address)
                .with_context(|| format!("connecting to {address}"))?;
            stream.write_all(request.as_bytes())?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })?
        .join()
        .map_err(|_| anyhow!("the request thread panicked"))?
}

/// A thread inside a namespace that binds a socket, then serves it one step
/// at a time until dropped.
#[derive(Debug)]
struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Runs `bind` on a new thread inside `netns`, then `step` with what it
    /// bound until the returned value is dropped. Returns once `bind` has
    /// succeeded; its error (with `address`) otherwise.
    fn start<S: 'static>(
        netns: &Netns,
        address: SocketAddr,
        bind: impl FnOnce() -> std::io::Result<S> + Send + 'static,
        mut step: impl FnMut(&S) + Send + 'static,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = Arc::clone(&stop);
            netns.spawn(move || {
                let bound = match bind() {
                    Ok(bound) => {
                        let _ = bound_tx.send(Ok(()));
                        bound
                    }
                    Err(error) => {
                        let _ = bound_tx.send(Err(error));
                        return;
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    step(&bound);
                }
            })?
        };
        bound_rx
            .recv()
            .context("server thread died")?
            .with_context(|| format!("binding {address}"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A non-blocking TCP listener on `address` (bound in the calling thread's
/// namespace).
fn nonblocking_listener(address: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A TCP listener inside a namespace that records who connected, stopped on drop.
#[derive(Debug)]
pub struct Listener {
    peers: Arc<Mutex<Vec<IpAddr>>>,
    _server: Background,
}

impl Listener {
    /// Listens on `address` inside `netns`.
    ///
    /// # Errors
    ///
    /// When the namespace cannot be entered or the address cannot be bound.
    pub fn start(netns: &Netns, address: SocketAddr) -> anyhow::Result<Self> {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&peers);
        let server = Background::start(
            netns,
            address,
            move || nonblocking_listener(address),
            move |listener: &TcpListener| match listener.accept() {
                Ok((_, peer)) => {
                    if let Ok(mut peers) = recorded.lock() {
                        peers.push(peer.ip());
                    }
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            },
        )?;
        Ok(Self {
            peers,
            _server: server,
        })
    }

    /// Addresses that connected so far.
    pub fn peers(&self) -> Vec<IpAddr> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// Outcome of a TCP connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    /// The handshake completed.
    Established,
    /// The peer answered with a reset (nothing listening).
    Refused,
    /// No answer within the timeout (dropped).
    TimedOut,
}

/// Connects from `source` (an address of `netns`) to `destination`.
///
/// # Errors
///
/// When the namespace cannot be entered or the socket cannot be set up.
pub fn tcp_connect(
    netns: &Netns,
    source: IpAddr,
    destination: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<Connect> {
    let attempt = netns.spawn(move || -> anyhow::Result<Connect> {
        let socket = Socket::new(Domain::for_address(destination), Type::STREAM, None)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
        Ok(match socket.connect_timeout(&destination.into(), timeout) {
            Ok(()) => Connect::Established,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => Connect::Refused,
            Err(error)
                if error.kind() == std::io::ErrorKind::TimedOut
                    || error.kind() == std::io::ErrorKind::WouldBlock =>
            {
                Connect::TimedOut
            }
            Err(error) => return Err(error.into()),
        })
    })?;
    attempt
        .join()
        .map_err(|_| anyhow!("connect thread panicked"))?
}

/// Sends one UDP datagram from `source` (an address of `netns`) to `destination`.
///
/// # Errors
///
/// When the namespace cannot be entered or the datagram cannot be sent.
pub fn send_udp(netns: &Netns, source: IpAddr, destination: SocketAddr) -> anyhow::Result<()> {
    send_udp_sized(netns, source, destination, 8)
}

/// Sends one UDP datagram of `length` bytes from `source` (an address of
/// `netns`, any port) to `destination`; past the MTU the kernel fragments it.
///
/// # Errors
///
/// When the namespace cannot be entered or the datagram cannot be sent.
pub fn send_udp_sized(
    netns: &Netns,
    source: IpAddr,
    destination: SocketAddr,
    length: usize,
) -> anyhow::Result<()> {
    let sent = netns.spawn(move || -> anyhow::Result<()> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(source, 0))?;
        socket.send_to(&vec![b'p'; length], destination)?;
        Ok(())
    })?;
    sent.join().map_err(|_| anyhow!("send thread panicked"))?
}

/// A UDP socket inside a namespace that records the source and length of
/// every datagram it receives; stopped on drop.
#[derive(Debug)]
pub struct UdpSink {
    received: Arc<Mutex<Vec<(IpAddr, usize)>>>,
    _server: Background,
}

impl UdpSink {
    /// Binds `address` inside `netns`.
    ///
    /// # Errors
    ///
    /// When the namespace cannot be entered or the address cannot be bound.
    pub fn start(netns: &Netns, address: SocketAddr) -> anyhow::Result<Self> {
        let received = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&received);
        let mut buffer = vec![0u8; 65536];
        let server = Background::start(
            netns,
            address,
            move || {
                let socket = std::net::UdpSocket::bind(address)?;
                socket.set_read_timeout(Some(Duration::from_millis(20)))?;
                Ok(socket)
            },
            move |socket: &std::net::UdpSocket| {
                if let Ok((n, peer)) = socket.recv_from(&mut buffer)
                    && let Ok(mut received) = recorded.lock()
                {
                    received.push((peer.ip(), n));
                }
            },
        )?;
        Ok(Self {
            received,
            _server: server,
        })
    }

    /// Source and length of each datagram received so far.
    pub fn received(&self) -> Vec<(IpAddr, usize)> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Waits up to `timeout` until `count` datagrams have arrived, and
    /// returns what arrived.
    pub fn wait_for(&self, count: usize, timeout: Duration) -> Vec<(IpAddr, usize)> {
        let deadline = Instant::now() + timeout;
        while self.received().len() < count && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        self.received()
    }
}

/// A TCP server inside a namespace that echoes what each connection sends;
/// stopped on drop.
#[derive(Debug)]
pub struct EchoServer {
    _server: Background,
}

impl EchoServer {
    /// Listens on `address` inside `netns`.
    ///
    /// # Errors
    ///
    /// When the namespace cannot be entered or the address cannot be bound.
    pub fn start(netns: &Netns, address: SocketAddr) -> anyhow::Result<Self> {
        let server = Background::start(
            netns,
            address,
            move || nonblocking_listener(address),
            |listener: &TcpListener| match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    // Threads made here stay in this namespace.
                    thread::spawn(move || {
                        let mut buffer = [0u8; 4096];
                        while let Ok(n) = stream.read(&mut buffer) {
                            if n == 0 || stream.write_all(&buffer[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            },
        )?;
        Ok(Self { _server: server })
    }
}

/// Opens a TCP connection from `source` (an address of `netns`) to
/// `destination`; the stream can then be used from any thread.
///
/// # Errors
///
/// When the connection cannot be made within `timeout`.
pub fn tcp_stream(
    netns: &Netns,
    source: IpAddr,
    destination: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<std::net::TcpStream> {
    let attempt = netns.spawn(move || -> anyhow::Result<std::net::TcpStream> {
        let socket = Socket::new(Domain::for_address(destination), Type::STREAM, None)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
        socket.connect_timeout(&destination.into(), timeout)?;
        let stream: std::net::TcpStream = socket.into();
        stream.set_read_timeout(Some(timeout))?;
        Ok(stream)
    })?;
    attempt
        .join()
        .map_err(|_| anyhow!("connect thread panicked"))?
}

/// Sends `message` on `stream` and reads the echo back; false when no echo
/// comes within the stream's read timeout.
pub fn echoes(stream: &mut std::net::TcpStream, message: &[u8]) -> bool {
    if stream.write_all(message).is_err() {
        return false;
    }
    let mut echo = vec![0u8; message.len()];
    stream.read_exact(&mut echo).is_ok() && echo == message
}

/// Sends an ICMP message of `icmp_type` (echo request 8 or timestamp request
/// 13) from `source` to `destination` and says whether the matching reply
/// (0 or 14) came back within `timeout`.
///
/// # Errors
///
/// When the namespace cannot be entered or the packet cannot be sent.
pub fn icmp_answered(
    netns: &Netns,
    source: std::net::Ipv4Addr,
    destination: std::net::Ipv4Addr,
    icmp_type: u8,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let reply_type = match icmp_type {
        8 => 0,
        13 => 14,
        other => bail!("no reply is defined for ICMP type {other}"),
    };
    let exchange = netns.spawn(move || -> anyhow::Result<bool> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(socket2::Protocol::ICMPV4))?;
        socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
        let mut message = vec![icmp_type, 0, 0, 0, 0x51, 0x7e, 0, 1];
        if icmp_type == 13 {
            message.extend_from_slice(&[0u8; 12]);
        } else {
            message.extend_from_slice(b"palisade");
        }
        let checksum = crate::frames::internet_checksum(&message);
        message[2..4].copy_from_slice(&checksum.to_be_bytes());
        socket.send_to(
            &message,
            &SocketAddr::new(IpAddr::V4(destination), 0).into(),
        )?;
        let std_socket: std::net::UdpSocket = socket.into();
        let deadline = Instant::now() + timeout;
        let mut buffer = [0u8; 2048];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            std_socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let Ok(n) = std_socket.recv(&mut buffer) else {
                break;
            };
            // Raw sockets receive the IPv4 header too.
            let header = usize::from(buffer[0] & 0x0f) * 4;
            let from = std::net::Ipv4Addr::new(buffer[12], buffer[13], buffer[14], buffer[15]);
            if n > header + 6
                && from == destination
                && buffer[header] == reply_type
                && buffer[header + 4..header + 6] == [0x51, 0x7e]
            {
                return Ok(true);
            }
        }
        Ok(false)
    })?;
    exchange
        .join()
        .map_err(|_| anyhow!("ICMP thread panicked"))?
}

/// Sends one ICMP echo request from `source` (an IPv4 address of `netns`) to
/// `destination`, over a raw socket.
///
/// # Errors
///
/// When the namespace cannot be entered or the packet cannot be sent.
pub fn send_icmp_echo(
    netns: &Netns,
    source: std::net::Ipv4Addr,
    destination: std::net::Ipv4Addr,
) -> anyhow::Result<()> {
    let sent = netns.spawn(move || -> anyhow::Result<()> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(socket2::Protocol::ICMPV4))?;
        socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
        let mut echo = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'a', b'l', b'i'];
        let checksum = crate::frames::internet_checksum(&echo);
        echo[2..4].copy_from_slice(&checksum.to_be_bytes());
        socket.send_to(&echo, &SocketAddr::new(IpAddr::V4(destination), 0).into())?;
        Ok(())
    })?;
    sent.join().map_err(|_| anyhow!("send thread panicked"))?
}

/// Sends `frame` (a whole Ethernet frame) out of `interface` in `netns`
/// through a packet socket, as a host with a broken or hostile stack would.
///
/// # Errors
///
/// When the namespace cannot be entered or the socket refuses.
pub fn send_frame(netns: &Netns, interface: &str, frame: Vec<u8>) -> anyhow::Result<()> {
    let interface = std::ffi::CString::new(interface)?;
    let sent = netns.spawn(move || -> anyhow::Result<()> {
        // SAFETY: plain socket calls on a socket this closure owns; the
        // address and buffer outlive the calls.
        unsafe {
            let ifindex = libc::if_nametoindex(interface.as_ptr());
            if ifindex == 0 {
                bail!("no interface {interface:?}");
            }
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            let socket = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
            let mut address: libc::sockaddr_ll = std::mem::zeroed();
            address.sll_family = u16::try_from(libc::AF_PACKET)?;
            address.sll_ifindex = i32::try_from(ifindex)?;
            address.sll_halen = 6;
            address.sll_addr[..6].copy_from_slice(&frame[..6]);
            let sent = libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const address).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_ll>())?,
            );
            if sent < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
        Ok(())
    })?;
    sent.join().map_err(|_| anyhow!("send thread panicked"))?
}

/// The MAC address of `interface` in `netns`.
///
/// # Errors
///
/// When `ip link show` fails or prints no address.
pub fn mac_address(netns: &Netns, interface: &str) -> anyhow::Result<[u8; 6]> {
    let text = netns.ip(&["link", "show", interface])?;
    let address = text
        .split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .ok_or_else(|| anyhow!("no MAC address in {text}"))?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(address.split(':')) {
        *byte = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

/// Datagrams received on `socket` until `done` holds for them or `timeout`
/// passes (empty datagrams, such as a sender's connection probe, included).
pub fn datagrams_until(
    socket: &std::os::unix::net::UnixDatagram,
    timeout: Duration,
    done: impl Fn(&[Vec<u8>]) -> bool,
) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 65536];
    while !done(&received) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        let _ = socket.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        if let Ok(n) = socket.recv(&mut buffer) {
            received.push(buffer[..n].to_vec());
        }
    }
    received
}
