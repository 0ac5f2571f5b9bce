//! palisade-cni under the container runtimes its users run: podman 4.3 with
//! its CNI backend, and containerd 1.6's CRI driven as a kubelet drives it
//! (RunPodSandbox → ADD with the pod's namespace and name; StopPodSandbox
//! and RemovePodSandbox → DEL twice, the second without a netns). Pods get
//! addresses, reach each other and the node, are known to palisaded by
//! name (across a kill -9), and leave nothing behind: no pair, no lease, no
//! endpoint.

use std::path::PathBuf;

use palisade_e2e::{
    binary,
    cni::{CniNode, POD_GATEWAY, REFERENCE_PLUGINS},
    runtimes::{BUSYBOX_IMAGE, Containerd, Podman},
};
use serde_json::json;

/// Writes the node's main conflist into a directory of its own.
fn network_dir(node: &CniNode) -> PathBuf {
    let directory = node.workdir().join("net.d");
    std::fs::create_dir_all(&directory).expect("net.d");
    std::fs::write(
        directory.join("10-pods.conflist"),
        node.main_conflist().to_string(),
    )
    .expect("conflist");
    directory
}

fn assert_nothing_left(node: &CniNode) {
    assert!(
        node.endpoints().endpoints.is_empty(),
        "{:?}",
        node.endpoints()
    );
    assert_eq!(node.leases(), Vec::<String>::new(), "leases left");
    assert_eq!(node.pod_interfaces(), Vec::<String>::new(), "pairs left");
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF, podman); `cargo xtask test` runs it"]
fn podman_containers_get_addresses_reach_each_other_and_the_node_and_leave_nothing_behind() {
    let node = CniNode::start("cni-podman");
    let plugin = binary("palisade-cni").expect("palisade-cni");
    let plugin_dirs = [
        plugin.parent().expect("directory").to_owned(),
        PathBuf::from(REFERENCE_PLUGINS),
    ];
    let podman = Podman::new(
        node.host(),
        &node.workdir().join("podman"),
        &network_dir(&node),
        &plugin_dirs,
    )
    .expect("podman");

    podman
        .run(&[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "pods",
            BUSYBOX_IMAGE,
            "sleep",
            "3600",
        ])
        .expect("podman run web");
    let web = podman
        .run(&[
            "inspect",
            "web",
            "--format",
            "{{.NetworkSettings.Networks.pods.IPAddress}}",
        ])
        .expect("inspect");
    assert!(
        node.leased(&web),
        "{web} is not leased: {:?}",
        node.leases()
    );
    let endpoints = node.endpoints();
    assert_eq!(endpoints.endpoints.len(), 1, "{endpoints:?}");
    let registration = &endpoints.endpoints[0].registration;
    assert_eq!(registration.pod_name.as_deref(), Some("web"));
    assert_eq!(
        registration.addresses,
        [web.parse::<std::net::IpAddr>().expect("ip")]
    );

    // A second container reaches the first and the node.
    podman
        .run(&[
            "run",
            "--rm",
            "--network",
            "pods",
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            &format!("ping -c 1 -W 2 {web} && ping -c 1 -W 2 {POD_GATEWAY}"),
        ])
        .expect("a second container reaches the first and the node");
    assert_eq!(node.endpoints().endpoints.len(), 1, "the second is gone");

    podman
        .run(&["rm", "-f", "-t", "0", "web"])
        .expect("podman rm");
    assert_nothing_left(&node);
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF, containerd); `cargo xtask test` runs it"]
fn cri_pods_register_by_name_reach_each_other_survive_a_palisaded_kill_and_leave_nothing() {
    let mut node = CniNode::start("cni-containerd");
    // containerd's bin_dir is one directory, and CNI_PATH too.
    let bin_dir = node.workdir().join("cni-bin");
    std::fs::create_dir_all(&bin_dir).expect("bin dir");
    std::os::unix::fs::symlink(
        binary("palisade-cni").expect("plugin"),
        bin_dir.join("palisade-cni"),
    )
    .expect("link palisade-cni");
    for plugin in ["host-local", "loopback"] {
        std::os::unix::fs::symlink(
            PathBuf::from(REFERENCE_PLUGINS).join(plugin),
            bin_dir.join(plugin),
        )
        .expect("link a reference plugin");
    }
    let directory = node.workdir().join("containerd");
    let containerd = Containerd::start(node.host(), &directory, &network_dir(&node), &bin_dir)
        .expect("containerd");

    let (web, web_container) = containerd
        .run_pod(
            &directory,
            "shop",
            "web-0",
            &json!({"app": "web"}),
            &json!({"team": "blue"}),
        )
        .expect("web pod");
    let (db, _) = containerd
        .run_pod(
            &directory,
            "shop",
            "db-0",
            &json!({"app": "db"}),
            &json!({}),
        )
        .expect("db pod");
    let web_ip = containerd.pod_ip(&web).expect("web address");
    let db_ip = containerd.pod_ip(&db).expect("db address");
    let endpoints = node.endpoints();
    let mut names: Vec<(String, String)> = endpoints
        .endpoints
        .iter()
        .map(|endpoint| {
            (
                endpoint.registration.namespace.clone().unwrap_or_default(),
                endpoint.registration.pod_name.clone().unwrap_or_default(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("shop".to_owned(), "db-0".to_owned()),
            ("shop".to_owned(), "web-0".to_owned())
        ]
    );
    // Neither runtime passes pod labels to CNI: both pods hold the label
    // set of their namespace alone, so one identity.
    assert_eq!(
        endpoints.endpoints[0].identity,
        endpoints.endpoints[1].identity
    );
    let web_endpoint = endpoints
        .endpoints
        .iter()
        .find(|endpoint| endpoint.registration.key.container_id == web)
        .expect("web's endpoint");
    assert_eq!(
        web_endpoint
            .registration
            .annotations
            .get("team")
            .map(String::as_str),
        Some("blue")
    );
    assert_eq!(
        web_endpoint.registration.addresses,
        [web_ip.parse::<std::net::IpAddr>().expect("ip")]
    );

    let ping = |target: &str| {
        containerd.crictl(&["exec", &web_container, "ping", "-c", "1", "-W", "2", target])
    };
    ping(&db_ip).expect("web reaches db");
    ping(POD_GATEWAY).expect("web reaches the node");

    node.daemon.kill();
    ping(&db_ip).expect("web reaches db while palisaded is down");
    node.daemon.restart().expect("palisaded restarts");
    assert_eq!(node.endpoints().endpoints.len(), 2, "both pods re-adopted");

    for pod in [&web, &db] {
        containerd.crictl(&["stopp", pod]).expect("StopPodSandbox");
        containerd.crictl(&["rmp", pod]).expect("RemovePodSandbox");
    }
    assert_nothing_left(&node);
}
