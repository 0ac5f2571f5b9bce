//! palisade-cni's conformance, in the style of containernetworking/plugins'
//! own tests: each command for each spec version in fresh namespaces, exact
//! result JSON, idempotent DEL, CHECK finding a removed address or route,
//! STATUS and GC through libcni (cnitool 1.3), chaining after the stock ptp
//! plugin, palisaded's endpoint registry across restarts, and pods of two
//! nodes through their WireGuard mesh.

use std::path::{Path, PathBuf};

use palisade_cni::commands::host_interface_name;
use palisade_e2e::{
    Netns,
    cni::{CniNode as Node, POD_GATEWAY as GATEWAY, PluginRun, cnitool, invoke, netns_path},
};
use serde_json::{Value, json};

fn env<'a>(command: &'a str, container: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0",
        ),
    ]
}

/// Runs palisade-cni's `command` for `container` in `host`, as a runtime
/// would (the pod `shop/web-0`).
fn run_plugin(
    host: &Netns,
    command: &str,
    container: &str,
    netns: &str,
    config: &Value,
) -> PluginRun {
    invoke(
        host,
        "palisade-cni",
        &env(command, container, netns),
        config,
    )
    .unwrap_or_else(|error| panic!("running palisade-cni {command}: {error:#}"))
}

/// `config` with `add`'s result as its `prevResult`, as runtimes send
/// CHECK and DEL.
fn with_previous(config: &Value, add: &PluginRun) -> Value {
    let mut config = config.clone();
    config["prevResult"] = add.output.clone();
    config
}

fn succeeded(run: &PluginRun, what: &str) {
    assert!(run.success, "{what} failed: {} {}", run.stdout, run.stderr);
}

/// The MAC address of `interface` in `netns`.
fn mac(netns: &Netns, interface: &str) -> String {
    let text = netns
        .ip(&["-j", "link", "show", "dev", interface])
        .expect("ip link");
    let links: Value = serde_json::from_str(&text).expect("ip -j");
    links[0]["address"].as_str().expect("address").to_owned()
}

fn link_exists(netns: &Netns, interface: &str) -> bool {
    netns.ip(&["link", "show", "dev", interface]).is_ok()
}

/// The ADD result palisade-cni gives for `version`: the current layout
/// from 1.0.0 on, the legacy one (with `version` and an empty `dns`) before.
fn expected_add(
    version: &str,
    address: &str,
    host_name: &str,
    host_mac: &str,
    pod_mac: &str,
    netns: &str,
) -> Value {
    let legacy = version.starts_with("0.");
    let mut ip = json!({"interface": 1, "address": format!("{address}/32"), "gateway": GATEWAY});
    if legacy {
        ip["version"] = json!("4");
    }
    let mut result = json!({
        "cniVersion": version,
        "interfaces": [
            {"name": host_name, "mac": host_mac},
            {"name": "eth0", "mac": pod_mac, "sandbox": netns},
        ],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY}],
    });
    if legacy {
        result["dns"] = json!({});
    }
    result
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn each_spec_version_adds_checks_and_deletes_with_exact_results() {
    let node = Node::start("cni-versions");
    for (index, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let pod = Netns::new("pod").expect("pod namespace");
        let netns = netns_path(&pod).display().to_string();
        let container = format!("versions{index}");
        let host_name = host_interface_name(&container, "eth0");
        let config = node.main_config(version);

        let add = run_plugin(node.host(), "ADD", &container, &netns, &config);
        succeeded(&add, &format!("ADD {version}"));
        // host-local hands out addresses round-robin.
        let address = format!("10.77.0.{}", 2 + index);
        let expected = expected_add(
            version,
            &address,
            &host_name,
            &mac(node.host(), &host_name),
            &mac(&pod, "eth0"),
            &netns,
        );
        assert_eq!(add.output, expected, "ADD {version}");

        // The pod reaches its gateway (the node) through the pair.
        pod.ip(&["route", "get", "10.200.0.1"])
            .expect("default route");
        let ping = pod
            .command("ping")
            .args(["-c", "1", "-W", "2", GATEWAY])
            .output()
            .expect("ping");
        assert!(
            ping.status.success(),
            "pod {version} cannot reach its gateway"
        );
        assert!(node.leased(&address), "host-local holds the lease");
        let endpoints = node.endpoints();
        assert_eq!(endpoints.endpoints.len(), 1, "{endpoints:?}");
        let registration = &endpoints.endpoints[0].registration;
        assert_eq!(registration.key.container_id, container);
        assert_eq!(registration.host_interface, host_name);
        assert_eq!(registration.namespace.as_deref(), Some("shop"));
        assert_eq!(registration.pod_name.as_deref(), Some("web-0"));
        assert_eq!(
            registration.addresses,
            [address.parse::<std::net::IpAddr>().expect("ip")]
        );

        let previous = with_previous(&config, &add);
        if version != "0.3.1" {
            let check = run_plugin(node.host(), "CHECK", &container, &netns, &previous);
            succeeded(&check, &format!("CHECK {version}"));
            assert_eq!(check.stdout, "");
        }

        let del = run_plugin(node.host(), "DEL", &container, &netns, &previous);
        succeeded(&del, &format!("DEL {version}"));
        assert_eq!(del.stdout, "");
        assert!(
            !link_exists(node.host(), &host_name),
            "the host side is gone"
        );
        assert!(!link_exists(&pod, "eth0"), "the pod side is gone");
        assert!(!node.leased(&address), "the lease is released");
        assert!(
            node.endpoints().endpoints.is_empty(),
            "the endpoint is gone"
        );

        // containerd's second DEL: no netns, no prevResult.
        let again = run_plugin(node.host(), "DEL", &container, "", &config);
        succeeded(&again, &format!("second DEL {version}"));
        assert_eq!(again.stdout, "");
    }
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn check_finds_a_removed_address_or_route() {
    let node = Node::start("cni-check");
    let pod = Netns::new("pod").expect("pod namespace");
    let netns = netns_path(&pod).display().to_string();
    let config = node.main_config("1.0.0");
    let add = run_plugin(node.host(), "ADD", "checked", &netns, &config);
    succeeded(&add, "ADD");
    let host_name = host_interface_name("checked", "eth0");
    let previous = with_previous(&config, &add);
    let check = || run_plugin(node.host(), "CHECK", "checked", &netns, &previous);
    succeeded(&check(), "CHECK");

    pod.ip(&["addr", "del", "10.77.0.2/32", "dev", "eth0"])
        .expect("remove address");
    let failed = check();
    assert!(!failed.success);
    assert_eq!(failed.code(), Some(104), "{}", failed.stdout);
    assert!(
        failed.details().contains("lacks address 10.77.0.2/32"),
        "{}",
        failed.details()
    );
    pod.ip(&["addr", "add", "10.77.0.2/32", "dev", "eth0"])
        .expect("address back");
    pod.ip(&[
        "route",
        "add",
        &format!("{GATEWAY}/32"),
        "dev",
        "eth0",
        "scope",
        "link",
    ])
    .expect("gateway route back");
    pod.ip(&["route", "add", "default", "via", GATEWAY, "dev", "eth0"])
        .expect("default back");
    succeeded(&check(), "CHECK after repair");

    node.host()
        .ip(&["route", "del", "10.77.0.2/32", "dev", &host_name])
        .expect("remove host route");
    let failed = check();
    assert_eq!(failed.code(), Some(104), "{}", failed.stdout);
    assert!(
        failed
            .details()
            .contains("the host lacks the route to 10.77.0.2/32"),
        "{}",
        failed.details()
    );
    node.host()
        .ip(&[
            "route",
            "add",
            "10.77.0.2/32",
            "dev",
            &host_name,
            "scope",
            "link",
        ])
        .expect("host route back");

    pod.ip(&["route", "del", "default"])
        .expect("remove default");
    let failed = check();
    assert_eq!(failed.code(), Some(104), "{}", failed.stdout);
    assert!(
        failed.details().contains("lacks its route to 0.0.0.0/0"),
        "{}",
        failed.details()
    );

    let del = run_plugin(node.host(), "DEL", "checked", &netns, &previous);
    succeeded(&del, "DEL");
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn add_with_palisaded_down_fails_saying_so_and_leaves_nothing_while_del_succeeds() {
    let mut node = Node::start("cni-down");
    node.daemon.stop();
    let pod = Netns::new("pod").expect("pod namespace");
    let netns = netns_path(&pod).display().to_string();
    let config = node.main_config("1.0.0");
    let add = run_plugin(node.host(), "ADD", "downed", &netns, &config);
    assert!(
        !add.success,
        "ADD without palisaded succeeded: {}",
        add.stdout
    );
    assert_eq!(add.code(), Some(11), "{}", add.stdout);
    assert_eq!(add.output["cniVersion"], "1.0.0");
    assert!(
        add.details().contains("palisaded is not running"),
        "{}",
        add.details()
    );
    assert!(!link_exists(
        node.host(),
        &host_interface_name("downed", "eth0")
    ));
    assert!(!link_exists(&pod, "eth0"));
    assert!(!node.leased("10.77.0.2"));
    for netns in [netns.as_str(), ""] {
        let del = run_plugin(node.host(), "DEL", "downed", netns, &config);
        succeeded(&del, "DEL with palisaded down");
    }
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn versions_are_negotiated_as_the_spec_says() {
    let node = Node::start("cni-negotiate");
    let version = invoke(
        node.host(),
        "palisade-cni",
        &[("CNI_COMMAND", "VERSION")],
        &json!({"cniVersion": "1.0.0"}),
    )
    .expect("VERSION");
    succeeded(&version, "VERSION");
    assert_eq!(
        version.output,
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    // Run by hand, without CNI_COMMAND: what it is, on stderr, and success.
    let by_hand = invoke(node.host(), "palisade-cni", &[], &json!({})).expect("by hand");
    succeeded(&by_hand, "palisade-cni without CNI_COMMAND");
    assert_eq!(by_hand.stdout, "");
    assert!(
        by_hand
            .stderr
            .contains("CNI protocol versions supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"),
        "{}",
        by_hand.stderr
    );
    let pod = Netns::new("pod").expect("pod namespace");
    let netns = netns_path(&pod).display().to_string();
    for (command, version, code, details) in [
        ("ADD", "0.2.0", 1, "plugin supports"),
        ("CHECK", "0.3.1", 1, "config version does not allow CHECK"),
        ("STATUS", "1.0.0", 1, "config version does not allow STATUS"),
        ("GC", "1.0.0", 1, "config version does not allow GC"),
    ] {
        let run = run_plugin(
            node.host(),
            command,
            "negotiated",
            &netns,
            &node.main_config(version),
        );
        assert!(!run.success);
        assert_eq!(
            run.code(),
            Some(code),
            "{command} {version}: {}",
            run.stdout
        );
        assert!(
            run.details().contains(details),
            "{command} {version}: {}",
            run.details()
        );
    }
    let missing = invoke(
        node.host(),
        "palisade-cni",
        &[("CNI_COMMAND", "ADD")],
        &node.main_config("1.0.0"),
    )
    .expect("run");
    assert_eq!(missing.code(), Some(4), "{}", missing.stdout);
    assert_eq!(missing.output["cniVersion"], "1.0.0");
    assert!(!link_exists(&pod, "eth0"));
}

/// Writes `conflist` as the only network configuration in a fresh directory.
fn conf_dir(node: &Node, name: &str, conflist: &Value) -> PathBuf {
    let directory = node.workdir().join(format!("net.d-{name}"));
    std::fs::create_dir_all(&directory).expect("conf dir");
    std::fs::write(
        directory.join(format!("10-{name}.conflist")),
        serde_json::to_vec_pretty(conflist).expect("conflist"),
    )
    .expect("conflist");
    directory
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn libcni_drives_add_check_status_gc_and_del() {
    let mut node = Node::start("cni-libcni");
    let mut plugin = node.main_config("1.1.0");
    plugin.as_object_mut().expect("object").remove("cniVersion");
    plugin.as_object_mut().expect("object").remove("name");
    let conflist = json!({"cniVersion": "1.1.0", "name": "pods", "plugins": [plugin]});
    let directory = conf_dir(&node, "pods", &conflist);
    let pod = Netns::new("pod").expect("pod namespace");
    let netns = netns_path(&pod);
    let tool = |node: &Node, command: &str| {
        cnitool(node.host(), &directory, command, "pods", &netns, &[]).expect("cnitool")
    };

    let add = tool(&node, "add");
    succeeded(&add, "cnitool add");
    assert_eq!(add.output["cniVersion"], "1.1.0");
    assert_eq!(add.output["ips"][0]["address"], "10.77.0.2/32");
    succeeded(&tool(&node, "check"), "cnitool check");
    succeeded(&tool(&node, "status"), "cnitool status");
    assert_eq!(node.endpoints().endpoints.len(), 1);

    node.daemon.stop();
    let status = tool(&node, "status");
    assert!(!status.success, "STATUS with palisaded down succeeded");
    assert!(
        status.stderr.contains("Plugin not available"),
        "{}",
        status.stderr
    );
    node.daemon.restart().expect("palisaded restarts");
    assert_eq!(
        node.endpoints().endpoints.len(),
        1,
        "the endpoint is re-adopted"
    );

    // cnitool's GC names no valid attachment: everything of the network goes.
    succeeded(&tool(&node, "gc"), "cnitool gc");
    assert!(
        node.endpoints().endpoints.is_empty(),
        "GC forgot the endpoint"
    );
    let container_id = node_container_id(&netns);
    assert!(
        !link_exists(node.host(), &host_interface_name(&container_id, "eth0")),
        "GC removed the pair"
    );
    succeeded(&tool(&node, "del"), "cnitool del");
    assert!(!node.leased("10.77.0.2"));
}

/// cnitool's container id for `netns`: `cnitool-` and 10 bytes of its SHA-512.
fn node_container_id(netns: &Path) -> String {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf %s '{}' | sha512sum", netns.display()))
        .output()
        .expect("sha512sum");
    let digest = String::from_utf8_lossy(&output.stdout);
    format!("cnitool-{}", &digest[..20])
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn chained_after_ptp_it_registers_the_ptp_interface_and_passes_the_result_through() {
    let node = Node::start("cni-chained");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "chained",
        "plugins": [
            {
                "type": "ptp",
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.78.0.0/24"}]],
                    "dataDir": node.ipam_dir(),
                }
            },
            {"type": "palisade-cni", "socket": node.daemon.socket()}
        ]
    });
    let directory = conf_dir(&node, "chained", &conflist);
    let pod = Netns::new("pod").expect("pod namespace");
    let netns = netns_path(&pod);
    let add = cnitool(node.host(), &directory, "add", "chained", &netns, &[]).expect("cnitool");
    succeeded(&add, "cnitool add (ptp, palisade-cni)");
    let host_side = add.output["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .find(|interface| interface.get("sandbox").is_none())
        .and_then(|interface| interface["name"].as_str())
        .expect("ptp's host interface")
        .to_owned();
    let endpoints = node.endpoints();
    assert_eq!(endpoints.endpoints.len(), 1);
    let registration = &endpoints.endpoints[0].registration;
    assert_eq!(registration.host_interface, host_side);
    assert_eq!(registration.network, "chained");
    assert_eq!(
        registration.addresses,
        ["10.78.0.2".parse::<std::net::IpAddr>().expect("ip")]
    );
    succeeded(
        &cnitool(node.host(), &directory, "check", "chained", &netns, &[]).expect("cnitool"),
        "cnitool check",
    );
    succeeded(
        &cnitool(node.host(), &directory, "del", "chained", &netns, &[]).expect("cnitool"),
        "cnitool del",
    );
    assert!(node.endpoints().endpoints.is_empty());
    assert!(!link_exists(node.host(), &host_side));
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn a_restart_after_kill_re_adopts_live_endpoints_and_forgets_dead_ones() {
    let mut node = Node::start("cni-restart");
    let config = node.main_config("1.0.0");
    let pods: Vec<Netns> = (0..2).map(|_| Netns::new("pod").expect("pod")).collect();
    for (index, pod) in pods.iter().enumerate() {
        let netns = netns_path(pod).display().to_string();
        let add = run_plugin(node.host(), "ADD", &format!("kept{index}"), &netns, &config);
        succeeded(&add, "ADD");
    }
    node.daemon.kill();
    // A pod whose pair went while palisaded was away.
    node.host()
        .ip(&["link", "del", &host_interface_name("kept1", "eth0")])
        .expect("remove a pair");
    node.daemon.restart().expect("palisaded restarts");
    let kept: Vec<String> = node
        .endpoints()
        .endpoints
        .into_iter()
        .map(|endpoint| endpoint.registration.key.container_id)
        .collect();
    assert_eq!(kept, ["kept0"]);
    assert!(
        node.daemon
            .log()
            .contains("forgetting an endpoint whose host interface is gone"),
        "{}",
        node.daemon.log()
    );
    for (index, pod) in pods.iter().enumerate() {
        let netns = netns_path(pod).display().to_string();
        let del = run_plugin(node.host(), "DEL", &format!("kept{index}"), &netns, &config);
        succeeded(&del, "DEL");
    }
}

/// palisade-cni as the main plugin of `node`'s pod prefix, its addresses
/// from .10 on (the node keeps .1, its pods' gateway, on loopback).
fn mesh_pod_config(node: &palisade_e2e::mesh::Node, socket: &Path, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "pods",
        "type": "palisade-cni",
        "socket": socket,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": node.pod_prefix, "rangeStart": node.pod_prefix.replace(".0/24", ".10"), "gateway": node.pod_address}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": ipam_dir,
        }
    })
}

/// The packets `interface` in `netns` has received and sent.
fn packets(netns: &Netns, interface: &str) -> (u64, u64) {
    let text = netns
        .ip(&["-j", "-s", "link", "show", "dev", interface])
        .expect("ip -s link");
    let links: Value = serde_json::from_str(&text).expect("ip -j");
    let stats = &links[0]["stats64"];
    (
        stats["rx"]["packets"].as_u64().unwrap_or_default(),
        stats["tx"]["packets"].as_u64().unwrap_or_default(),
    )
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF, WireGuard); `cargo xtask test` runs it"]
fn pods_on_two_nodes_reach_each_other_through_the_wireguard_mesh() {
    palisade_e2e::require_root();
    palisade_e2e::require_tools(&["wg", "ping"]);
    let work = palisade_e2e::TempDir::new("cni-mesh").expect("workdir");
    let pair = palisade_e2e::mesh::PalisadePair::start(work.path(), false).expect("two nodes");
    let mut pods = Vec::new();
    for (node, daemon, name) in [
        (&pair.a, &pair.a_daemon, "a"),
        (&pair.b, &pair.b_daemon, "b"),
    ] {
        let pod = Netns::new("meshpod").expect("pod namespace");
        let netns = netns_path(&pod).display().to_string();
        let config = mesh_pod_config(
            node,
            daemon.socket(),
            &work.path().join(format!("ipam-{name}")),
        );
        let add = run_plugin(&node.netns, "ADD", &format!("mesh{name}"), &netns, &config);
        succeeded(&add, "ADD");
        let address = add.output["ips"][0]["address"]
            .as_str()
            .expect("address")
            .trim_end_matches("/32")
            .to_owned();
        pods.push((pod, address, netns, config));
    }
    let before = (
        packets(&pair.a.netns, &pair.a_interface),
        packets(&pair.b.netns, &pair.b_interface),
    );
    let (pod_a, _, _, _) = &pods[0];
    let address_b = &pods[1].1;
    let mut reached = false;
    for _ in 0..30 {
        let ping = pod_a
            .command("ping")
            .args(["-c", "1", "-W", "1", address_b])
            .output()
            .expect("ping");
        if ping.status.success() {
            reached = true;
            break;
        }
    }
    assert!(
        reached,
        "pod a never reached pod b ({address_b}):\n{}",
        pair.logs()
    );
    let after = (
        packets(&pair.a.netns, &pair.a_interface),
        packets(&pair.b.netns, &pair.b_interface),
    );
    // The echo went out of A's tunnel and came in to B's, and back.
    assert!(
        after.0.1 > before.0.1 && after.0.0 > before.0.0,
        "A's tunnel: {before:?} -> {after:?}"
    );
    assert!(
        after.1.0 > before.1.0 && after.1.1 > before.1.1,
        "B's tunnel: {before:?} -> {after:?}"
    );
    for ((node, _, name), (_, _, netns, config)) in [
        (&pair.a, &pair.a_daemon, "a"),
        (&pair.b, &pair.b_daemon, "b"),
    ]
    .into_iter()
    .zip(&pods)
    {
        let del = run_plugin(&node.netns, "DEL", &format!("mesh{name}"), netns, config);
        succeeded(&del, "DEL");
    }
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn a_dual_stack_pod_gets_both_families_and_the_configured_mtu() {
    let node = Node::start("cni-dual");
    let pod = Netns::new("pod").expect("pod namespace");
    let netns = netns_path(&pod).display().to_string();
    let mut config = node.main_config("1.0.0");
    config["mtu"] = json!(1400);
    config["ipam"]["ranges"] = json!([[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]]);
    config["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]);
    let add = run_plugin(node.host(), "ADD", "dual", &netns, &config);
    succeeded(&add, "ADD");
    assert_eq!(
        add.output["ips"],
        json!([
            {"interface": 1, "address": "10.77.0.2/32", "gateway": "10.77.0.1"},
            {"interface": 1, "address": "fd77::2/128", "gateway": "fd77::1"},
        ])
    );
    assert_eq!(
        add.output["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.77.0.1"}, {"dst": "::/0", "gw": "fd77::1"}])
    );
    let host_name = host_interface_name("dual", "eth0");
    for (netns, interface) in [(node.host(), host_name.as_str()), (&pod, "eth0")] {
        let text = netns
            .ip(&["-j", "link", "show", "dev", interface])
            .expect("ip link");
        let links: Value = serde_json::from_str(&text).expect("ip -j");
        assert_eq!(links[0]["mtu"], 1400, "{interface}");
    }
    // Both families reach the node through the pair, IPv6 without waiting
    // for duplicate address detection.
    for gateway in ["10.77.0.1", "fd77::1"] {
        let ping = pod
            .command("ping")
            .args(["-c", "1", "-W", "2", gateway])
            .output()
            .expect("ping");
        assert!(
            ping.status.success(),
            "pod cannot reach {gateway}: {}",
            String::from_utf8_lossy(&ping.stdout)
        );
    }
    let previous = with_previous(&config, &add);
    succeeded(
        &run_plugin(node.host(), "CHECK", "dual", &netns, &previous),
        "CHECK",
    );
    succeeded(
        &run_plugin(node.host(), "DEL", "dual", &netns, &previous),
        "DEL",
    );
    assert!(node.leases().is_empty(), "{:?}", node.leases());
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn flows_name_the_pods_palisaded_knows_and_observe_filters_by_pod() {
    let node = Node::start("cni-flows");
    let pod = Netns::new("pod").expect("pod namespace");
    let netns = netns_path(&pod).display().to_string();
    let add = run_plugin(
        node.host(),
        "ADD",
        "flows",
        &netns,
        &node.main_config("1.0.0"),
    );
    succeeded(&add, "ADD");
    // The node may send only TCP 80 to the client: the pod's ping, routed
    // out of the node's enforced eth0, is dropped there.
    let policy = node.workdir().join("egress.toml");
    std::fs::write(
        &policy,
        "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = { name = \"egress-web-only\" }\n\
         [spec]\nnodeSelector = {}\n[[spec.egress]]\ntoCIDR = [\"10.200.0.100/32\"]\n\
         toPorts = [{ ports = [{ port = \"80\", protocol = \"TCP\" }] }]\n",
    )
    .expect("policy");
    let applied = node
        .daemon
        .ctl(&["apply", "-f", &policy.display().to_string()])
        .expect("palisadectl apply");
    assert!(applied.status.success(), "{applied:?}");
    let ping = pod
        .command("ping")
        .args(["-c", "1", "-W", "1", palisade_e2e::Topology::BASTION])
        .output()
        .expect("ping");
    assert!(
        !ping.status.success(),
        "the node's egress policy let the ping out"
    );

    let named = |filters: &[&str]| {
        let mut filters = filters.to_vec();
        filters.extend(["--verdict", "DROPPED"]);
        node.daemon.flows(&filters).expect("observe")
    };
    let flows = named(&["--from-pod", "shop/web-0"]);
    assert_eq!(flows.len(), 1, "{flows:?}");
    let source = flows[0].source.as_ref().expect("the source pod");
    assert_eq!(
        (source.namespace.as_str(), source.pod_name.as_str()),
        ("shop", "web-0")
    );
    assert_eq!(source.labels, ["k8s:io.kubernetes.pod.namespace=shop"]);
    assert_eq!(source.identity, node.endpoints().endpoints[0].identity);
    assert!(source.identity >= 256, "{source:?}");
    assert!(flows[0].destination.is_none());
    assert_eq!(named(&["--pod", "shop/web"]).len(), 1);
    assert_eq!(named(&["--namespace", "shop"]).len(), 1);
    assert_eq!(
        named(&["--label", "io.kubernetes.pod.namespace=shop"]).len(),
        1
    );
    assert!(named(&["--to-pod", "shop/web-0"]).is_empty());
    assert!(
        named(&["--pod", "web-0"]).is_empty(),
        "--pod without a namespace means default"
    );
    let compact = node
        .daemon
        .ctl(&["observe", "--from-pod", "shop/web-0"])
        .expect("observe");
    let compact = String::from_utf8_lossy(&compact.stdout);
    assert!(
        compact.contains(&format!(
            "shop/web-0 -> {} DROPPED",
            palisade_e2e::Topology::BASTION
        )),
        "{compact}"
    );

    let previous = with_previous(&node.main_config("1.0.0"), &add);
    succeeded(
        &run_plugin(node.host(), "DEL", "flows", &netns, &previous),
        "DEL",
    );
}
