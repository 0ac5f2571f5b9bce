//! The two nodes of [`crate::mesh`] joined by palisaded's IPsec: each pod
//! prefix routed to its node in the clear (what the network does; IPsec
//! encrypts what the routes carry), palisaded on both with one key file.
//! For the IPsec tests and the encryption benchmark, in a kernel with ESP.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{
    Daemon, Netns,
    mesh::{METRICS, Node, nodes},
};

/// Key 3, per node pair (`+`), AES-GCM-128.
pub const KEY_3: &str = "3+ rfc4106(gcm(aes)) 0x0102030405060708090a0b0c0d0e0f1011121314 128\n";

/// Key 4, per node pair, ChaCha20-Poly1305.
pub const KEY_4: &str = "4+ rfc7539esp(chacha20,poly1305) 0x2122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f4041424344 128\n";

/// The SPI of [`add_foreign_ike_objects`]' state, as `ip xfrm state` shows it.
pub const FOREIGN_SPI: &str = "spi 0x00000999";

/// Adds what another IKE daemon would own in `netns`, which palisade must
/// leave alone: an ESP state from `peer` to `local` (request id 7, SPI
/// 0x999) and the inbound policy for `peer_pods` → `local_pods` using it.
///
/// # Errors
///
/// When `ip xfrm` refuses either (a kernel without ESP).
pub fn add_foreign_ike_objects(
    netns: &Netns,
    (peer, local): (&str, &str),
    (peer_pods, local_pods): (&str, &str),
) -> anyhow::Result<()> {
    netns
        .ip(&[
            "xfrm",
            "state",
            "add",
            "src",
            peer,
            "dst",
            local,
            "proto",
            "esp",
            "spi",
            "0x999",
            "reqid",
            "7",
            "mode",
            "tunnel",
            "aead",
            "rfc4106(gcm(aes))",
            "0x2122232425262728292a2b2c2d2e2f3031323334",
            "128",
        ])
        .context("a foreign state")?;
    netns
        .ip(&[
            "xfrm", "policy", "add", "src", peer_pods, "dst", local_pods, "dir", "in", "tmpl",
            "src", peer, "dst", local, "proto", "esp", "reqid", "7", "mode", "tunnel",
        ])
        .context("a foreign policy")?;
    Ok(())
}

/// Writes `text` as a key file of mode 0600.
///
/// # Errors
///
/// When the file cannot be written.
pub fn write_keys(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// The node's name in the configurations: `a` for 192.0.2.1, else `b`.
pub fn node_name(node: &Node) -> &'static str {
    if node.underlay.ends_with(".1") {
        "a"
    } else {
        "b"
    }
}

/// palisaded's configuration for `node` meshed with `peer` over IPsec in
/// `mode` (`tunnel` or `transport`), a 2-second rotation window.
pub fn ipsec_config(node: &Node, peer: &Node, keys: &Path, mode: &str, strict: bool) -> String {
    format!(
        "[datapath]\ninterfaces = [\"eth0\"]\n\n[metrics]\nlisten = \"{METRICS}\"\n\n\
         [node]\nname = \"{name}\"\naddresses = [\"{underlay}/32\"]\npod_cidrs = [\"{pods}\"]\n\n\
         [encryption]\nmode = \"ipsec\"\n\n\
         [ipsec]\nkeys_file = \"{keys}\"\nmode = \"{mode}\"\nkey_rotation_window = 2\nstrict = {strict}\n\n\
         [[nodes]]\nname = \"{peer_name}\"\naddresses = [\"{peer_underlay}/32\"]\npod_cidrs = [\"{peer_pods}\"]\n",
        name = node_name(node),
        underlay = node.underlay,
        pods = node.pod_prefix,
        keys = keys.display(),
        peer_name = node_name(peer),
        peer_underlay = peer.underlay,
        peer_pods = peer.pod_prefix,
    )
}

/// The two nodes, each pod prefix routed to its node.
///
/// # Errors
///
/// When a namespace, link, address or route cannot be made.
pub fn routed_nodes() -> anyhow::Result<(Node, Node)> {
    let (a, b) = nodes()?;
    for (node, peer) in [(&a, &b), (&b, &a)] {
        node.netns
            .ip(&["route", "add", peer.pod_prefix, "via", peer.underlay])?;
    }
    Ok((a, b))
}

/// palisaded on `node` meshed with `peer`, its files in `dir`, its key file
/// holding `keys`.
///
/// # Errors
///
/// When the files cannot be written or palisaded does not come up.
pub fn start_ipsec(
    node: &Node,
    peer: &Node,
    dir: &Path,
    keys: &str,
    mode: &str,
    strict: bool,
) -> anyhow::Result<Daemon> {
    std::fs::create_dir_all(dir.join("policies"))?;
    let key_file = dir.join("ipsec.keys");
    write_keys(&key_file, keys)?;
    Daemon::start_with_config_text(
        &node.netns,
        &ipsec_config(node, peer, &key_file, mode, strict),
        &dir.join("policies"),
        dir,
    )
}

/// Both nodes with palisaded's IPsec, on key 3.
#[derive(Debug)]
pub struct IpsecPair {
    /// Node A (192.0.2.1, pods 10.99.1.0/24).
    pub a: Node,
    /// Node B (192.0.2.2, pods 10.99.2.0/24).
    pub b: Node,
    /// palisaded on A.
    pub a_daemon: Daemon,
    /// palisaded on B.
    pub b_daemon: Daemon,
    /// Where each node's files are (`a/`, `b/`).
    pub dir: PathBuf,
}

impl IpsecPair {
    /// Makes the nodes and starts palisaded on both in `mode`, with their
    /// files in `dir/a` and `dir/b`; A in strict mode when `a_strict`.
    ///
    /// # Errors
    ///
    /// When a node or a daemon cannot be made.
    pub fn start(dir: &Path, mode: &str, a_strict: bool) -> anyhow::Result<Self> {
        let (a, b) = routed_nodes()?;
        let a_daemon = start_ipsec(&a, &b, &dir.join("a"), KEY_3, mode, a_strict)?;
        let b_daemon = start_ipsec(&b, &a, &dir.join("b"), KEY_3, mode, false)?;
        Ok(Self {
            a,
            b,
            a_daemon,
            b_daemon,
            dir: dir.to_owned(),
        })
    }

    /// Both daemons' logs.
    pub fn logs(&self) -> String {
        format!("A:\n{}\nB:\n{}", self.a_daemon.log(), self.b_daemon.log())
    }
}
