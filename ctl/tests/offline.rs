//! The commands that work without a daemon: `policy validate`, `policy
//! explain`, `completion` and `man`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn palisadectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        // Any daemon contact would fail: these commands must not need one.
        .args(["--socket", "/nonexistent/palisade.sock"])
        .args(args)
        .output()
        .expect("palisadectl runs")
}

fn example_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/policies.d/host-ssh-from-bastion.toml")
}

/// A scratch file with `text`, in cargo's scratch directory for tests
/// (target/tmp, not the system's /tmp, where nothing would remove it); each
/// name is used by one test and written the same on every run.
fn scratch(name: &str, text: &str) -> PathBuf {
    let directory = Path::new(env!("CARGO_TARGET_TMPDIR")).join("palisadectl-offline");
    std::fs::create_dir_all(&directory).expect("scratch dir");
    let path = directory.join(name);
    std::fs::write(&path, text).expect("scratch file");
    path
}

#[test]
fn validate_accepts_a_good_file_and_lists_every_problem_of_a_bad_one() {
    let good = palisadectl(&[
        "policy",
        "validate",
        &example_policy().display().to_string(),
    ]);
    assert!(good.status.success());
    assert!(String::from_utf8_lossy(&good.stdout).contains("valid (policy host-ssh-from-bastion)"));

    let bad = scratch(
        "bad.toml",
        "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = { name = \"Bad_Name\" }\n[spec]\nnodeSelector = {}\n[[spec.ingress]]\nfromCIDR = [\"10.0.0.0/8\"]\nicmps = [{ fields = [{ type = 8 }] }]\ntoPorts = [{ ports = [{ port = \"22\" }] }]\n",
    );
    let output = palisadectl(&["policy", "validate", &bad.display().to_string()]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].contains("bad.toml:2:") && lines[0].contains("metadata.name: invalid name"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("spec.ingress[0]") && lines[1].contains("icmps"),
        "{stderr}"
    );
}

#[test]
fn explain_names_the_verdict_the_policy_and_the_reason() {
    let policy = example_policy().display().to_string();
    let explain = |source: &str| -> serde_json::Value {
        let output = palisadectl(&[
            "policy",
            "explain",
            "-f",
            &policy,
            "--dir",
            "ingress",
            "--proto",
            "tcp",
            "--src",
            source,
            "--dst",
            "10.200.0.1",
            "--dport",
            "22",
            "-o",
            "json",
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON")
    };
    let bastion = explain("10.200.0.10");
    assert_eq!(bastion["verdict"], "FORWARDED");
    assert_eq!(bastion["policy"], "host-ssh-from-bastion");
    assert_eq!(bastion["rule"], "spec.ingress[0]");
    assert!(
        bastion["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("allow rule host-ssh-from-bastion spec.ingress[0] matches")
    );
    let outsider = explain("10.200.0.100");
    assert_eq!(outsider["verdict"], "DROPPED");
    assert_eq!(outsider["drop_reason"], "POLICY_DENIED");
    assert_eq!(outsider["policy"], serde_json::Value::Null);
    assert!(
        outsider["reason"]
            .as_str()
            .unwrap_or("")
            .contains("default deny")
    );

    // A node the policy does not select: nothing applies, default allow.
    let unselected = scratch(
        "selected.toml",
        "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = { name = \"web-only\" }\n[spec]\nnodeSelector = { matchLabels = { role = \"web\" } }\n[[spec.ingress]]\nfromCIDR = [\"10.0.0.0/8\"]\n",
    );
    let run = |labels: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "policy".to_owned(),
            "explain".into(),
            "-f".into(),
            unselected.display().to_string(),
            "--dir".into(),
            "ingress".into(),
            "--proto".into(),
            "udp".into(),
            "--src".into(),
            "192.0.2.1".into(),
            "--dst".into(),
            "10.0.0.1".into(),
            "--dport".into(),
            "53".into(),
            "-o".into(),
            "json".into(),
        ];
        for label in labels {
            args.push("--node-label".into());
            args.push((*label).to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        serde_json::from_slice(&palisadectl(&args).stdout).expect("JSON")
    };
    assert_eq!(run(&[])["verdict"], "FORWARDED");
    assert_eq!(run(&["role=web"])["verdict"], "DROPPED");
}

#[test]
fn explain_says_when_a_policy_in_audit_mode_decides() {
    let audited = scratch(
        "audited.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: trial\n  annotations: {cilium.io/policy-audit-mode: \"true\"}\nspec:\n  nodeSelector: {}\n  ingress:\n    - fromCIDR: [10.0.0.0/8]\n",
    );
    let output = palisadectl(&[
        "policy",
        "explain",
        "-f",
        &audited.display().to_string(),
        "--dir",
        "ingress",
        "--proto",
        "tcp",
        "--src",
        "192.0.2.1",
        "--dst",
        "10.0.0.1",
        "--dport",
        "22",
        "-o",
        "json",
    ]);
    let explained: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(explained["verdict"], "AUDIT");
    assert_eq!(explained["drop_reason"], "POLICY_DENIED");
    assert!(
        explained["reason"]
            .as_str()
            .unwrap_or("")
            .contains("in audit mode (annotation cilium.io/policy-audit-mode)"),
        "{explained}"
    );
}

#[test]
fn completion_and_man_pages_come_from_the_command_definitions() {
    let bash = palisadectl(&["completion", "bash"]);
    assert!(bash.status.success());
    let script = String::from_utf8_lossy(&bash.stdout);
    assert!(
        script.contains("_palisadectl") && script.contains("observe"),
        "{script}"
    );

    let directory = std::env::temp_dir().join(format!("palisadectl-man-{}", std::process::id()));
    let output = palisadectl(&["man", "--dir", &directory.display().to_string()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let page = std::fs::read_to_string(directory.join("palisadectl.1")).expect("palisadectl.1");
    assert!(page.contains("palisadectl"));
    assert!(directory.join("palisadectl-apply.1").exists());
    assert!(directory.join("palisadectl-policy-explain.1").exists());
    let _ = std::fs::remove_dir_all(directory);
}

#[test]
fn convert_goes_from_toml_to_yaml_and_back() {
    let yaml = palisadectl(&[
        "policy",
        "convert",
        "-o",
        "yaml",
        &example_policy().display().to_string(),
    ]);
    assert!(
        yaml.status.success(),
        "{}",
        String::from_utf8_lossy(&yaml.stderr)
    );
    let yaml_text = String::from_utf8_lossy(&yaml.stdout).into_owned();
    assert!(
        yaml_text.contains("name: host-ssh-from-bastion"),
        "{yaml_text}"
    );
    let yaml_file = scratch("converted.yaml", &yaml_text);
    let toml = palisadectl(&[
        "policy",
        "convert",
        "-o",
        "toml",
        &yaml_file.display().to_string(),
    ]);
    assert!(
        toml.status.success(),
        "{}",
        String::from_utf8_lossy(&toml.stderr)
    );
    let toml_file = scratch("converted.toml", &String::from_utf8_lossy(&toml.stdout));
    // Same meaning: the same verdict and rule for the same connection.
    for file in [&yaml_file, &toml_file] {
        let output = palisadectl(&[
            "policy",
            "explain",
            "-f",
            &file.display().to_string(),
            "--dir",
            "ingress",
            "--proto",
            "tcp",
            "--src",
            "10.200.0.10",
            "--dst",
            "10.200.0.1",
            "--dport",
            "22",
            "-o",
            "json",
        ]);
        let explained: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
        assert_eq!(explained["rule"], "spec.ingress[0]", "{file:?}");
    }
    let two = scratch(
        "two.yaml",
        &format!(
            "{yaml_text}---\n{}",
            yaml_text.replace("host-ssh-from-bastion", "second")
        ),
    );
    let refused = palisadectl(&[
        "policy",
        "convert",
        "-o",
        "toml",
        &two.display().to_string(),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("TOML holds one policy per file"));
}

#[test]
fn validate_warns_of_rules_that_would_enforce_nothing_on_a_node() {
    let pods = scratch(
        "pods.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: all-ingress-deny\nspec:\n  endpointSelector: {}\n  ingress:\n    - {}\n",
    );
    let output = palisadectl(&["policy", "validate", &pods.display().to_string()]);
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("all-ingress-deny spec would enforce nothing on a node: it selects pods"),
        "{stderr}"
    );
}

/// `explain --config` judges as the daemon with that configuration would:
/// its node labels select the policy, its `[node] addresses` make `host`,
/// its failsafe services pass, and its `fqdn_audit` lets toFQDNs in.
#[test]
fn explain_with_the_daemons_config_gives_the_daemons_verdict() {
    let policies = scratch(
        "explain-config.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: edge\nspec:\n  nodeSelector:\n    matchLabels:\n      role: edge\n  ingress:\n    - fromEntities: [host]\n  egress:\n    - toFQDNs: [{ matchName: example.com }]\n",
    );
    let config = scratch(
        "explain-config.toml",
        "[node]\nlabels = { role = \"edge\" }\naddresses = [\"192.0.2.10/32\"]\n[failsafe]\ninbound = [\"tcp:22\"]\noutbound = []\n[policy]\nfqdn_audit = true\n",
    );
    let explain = |with_config: bool, source: &str, port: &str| -> serde_json::Value {
        let mut args = vec![
            "policy".to_owned(),
            "explain".into(),
            "-f".into(),
            policies.display().to_string(),
            "--dir".into(),
            "ingress".into(),
            "--proto".into(),
            "tcp".into(),
            "--src".into(),
            source.into(),
            "--dst".into(),
            "192.0.2.10".into(),
            "--dport".into(),
            port.into(),
            "-o".into(),
            "json".into(),
        ];
        if with_config {
            args.push("--config".into());
            args.push(config.display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = palisadectl(&args);
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&output.stderr)))
    };
    // Without the config the file is refused (toFQDNs without fqdn_audit).
    let refused = palisadectl(&[
        "policy",
        "explain",
        "-f",
        &policies.display().to_string(),
        "--fqdn-audit",
    ]);
    assert!(
        refused.status.success(),
        "--fqdn-audit lets toFQDNs in: {refused:?}"
    );
    // The node itself (`host`) is allowed; another source is dropped.
    let host = explain(true, "192.0.2.10", "8080");
    assert_eq!(host["verdict"], "FORWARDED", "{host}");
    assert_eq!(host["policy"], "edge");
    assert_eq!(explain(true, "198.51.100.7", "8080")["verdict"], "AUDIT");
    // SSH is a failsafe service in that config.
    let ssh = explain(true, "198.51.100.7", "22");
    assert_eq!(ssh["verdict"], "FORWARDED", "{ssh}");
    assert!(
        ssh["reason"]
            .as_str()
            .unwrap_or("")
            .contains("failsafe service"),
        "{ssh}"
    );
    let missing = palisadectl(&[
        "policy",
        "explain",
        "-f",
        &policies.display().to_string(),
        "--config",
        "/nonexistent/palsade.toml",
    ]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/palsade.toml"),
        "{missing:?}"
    );
}
