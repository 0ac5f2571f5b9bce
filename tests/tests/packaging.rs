//! The packages as users meet them. `cargo xtask package` (run by `cargo
//! xtask test` before the tests) leaves them in target/packages/.
//!
//! - the rpm's file list, scriptlets and conffile flags (`rpm -qp`);
//! - lintian and rpmlint find no errors;
//! - the .deb in a Debian root made with debootstrap, booted with
//!   systemd-nspawn (private network): the service becomes active through
//!   sd_notify, journald has palisade's structured fields, the control
//!   socket answers a member of the `palisade` group and refuses another
//!   user, the hardened unit scores under 4.0 in `systemd-analyze security`,
//!   an upgrade keeps an edited conffile and restarts the service, and purge
//!   leaves no state.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use palisade_e2e::{ChildGuard, Netns, debian_root, repo, require_root, require_tools, run};

/// Where `cargo xtask package` puts the packages.
fn packages_dir() -> PathBuf {
    repo().join("target/packages")
}

/// The built .deb and .rpm.
///
/// # Panics
///
/// When they have not been built (`cargo xtask test` builds them first).
fn packages() -> (PathBuf, PathBuf) {
    let find = |extension: &str| {
        std::fs::read_dir(packages_dir())
            .ok()?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .find(|path| path.extension().is_some_and(|ext| ext == extension))
    };
    match (find("deb"), find("rpm")) {
        (Some(deb), Some(rpm)) => (deb, rpm),
        _ => panic!(
            "no packages in {}; `cargo xtask test` builds them with `cargo xtask package`",
            packages_dir().display()
        ),
    }
}

fn rpm_query(rpm: &Path, args: &[&str]) -> String {
    run(Command::new("rpm").arg("-qp").args(args).arg(rpm)).expect("rpm -qp")
}

#[test]
#[ignore = "needs the built packages: `cargo xtask test` builds and runs it"]
fn the_rpm_has_its_files_scriptlets_and_noreplace_conffiles() {
    let (_, rpm) = packages();
    require_tools(&["rpm"]);
    let files = rpm_query(&rpm, &["-l"]);
    for expected in [
        "/usr/sbin/palisaded",
        "/usr/bin/palisadectl",
        "/usr/lib/systemd/system/palisade.service",
        "/usr/lib/sysusers.d/palisade.conf",
        "/usr/lib/tmpfiles.d/palisade.conf",
        "/etc/palisade/palisade.toml",
        "/etc/palisade/policies.d/README",
        "/usr/share/man/man8/palisaded.8.gz",
        "/usr/share/man/man8/palisade-cni.8.gz",
        "/usr/share/man/man1/palisadectl.1.gz",
        "/usr/share/man/man1/palisadectl-policy-explain.1.gz",
        "/usr/share/bash-completion/completions/palisadectl",
        "/usr/share/zsh/site-functions/_palisadectl",
        "/usr/share/fish/vendor_completions.d/palisadectl.fish",
        "/usr/share/licenses/palisade/LICENSE",
        "/usr/share/doc/palisade/examples/host-ssh-from-bastion.toml",
        "/usr/share/doc/palisade/examples/10-palisade.conflist",
        "/opt/cni/bin/palisade-cni",
    ] {
        assert!(
            files.lines().any(|line| line == expected),
            "{expected} missing from:\n{files}"
        );
    }

    let scripts = rpm_query(&rpm, &["--scripts"]);
    assert!(
        scripts.contains("postinstall scriptlet"),
        "no %post:\n{scripts}"
    );
    for (scriptlet, must_contain) in [
        ("postinstall scriptlet", "systemd-sysusers palisade.conf"),
        ("postinstall scriptlet", "preset palisade.service"),
        ("preuninstall scriptlet", "disable --now palisade.service"),
        (
            "preuninstall scriptlet",
            "palisaded --config /etc/palisade/palisade.toml --cleanup",
        ),
        ("postuninstall scriptlet", "try-restart palisade.service"),
    ] {
        let start = scripts
            .find(scriptlet)
            .unwrap_or_else(|| panic!("no {scriptlet} in:\n{scripts}"));
        let body = &scripts[start..];
        let end = body[scriptlet.len()..]
            .find("scriptlet (using")
            .map_or(body.len(), |end| end + scriptlet.len());
        assert!(
            body[..end].contains(must_contain),
            "{scriptlet} lacks {must_contain:?}:\n{scripts}"
        );
    }

    let config_files = rpm_query(&rpm, &["--configfiles"]);
    let mut config_files: Vec<&str> = config_files.lines().collect();
    config_files.sort_unstable();
    assert_eq!(
        config_files,
        [
            "/etc/palisade/palisade.toml",
            "/etc/palisade/policies.d/README"
        ]
    );
    let flags = rpm_query(
        &rpm,
        &["--queryformat", "[%{FILEFLAGS:fflags} %{FILENAMES}\\n]"],
    );
    for config in config_files {
        let line = flags
            .lines()
            .find(|line| line.ends_with(&format!(" {config}")))
            .unwrap_or_else(|| panic!("{config} not in:\n{flags}"));
        let (fflags, _) = line.split_once(' ').unwrap_or_default();
        assert!(
            fflags.contains('c') && fflags.contains('n'),
            "{config} should be %config(noreplace), has flags {fflags:?}"
        );
    }
}

#[test]
#[ignore = "needs the built packages: `cargo xtask test` builds and runs it"]
fn lintian_and_rpmlint_report_no_errors() {
    let (deb, rpm) = packages();
    require_tools(&["lintian", "rpmlint"]);
    let lintian = Command::new("lintian")
        .arg(&deb)
        .output()
        .expect("runs lintian");
    let report = String::from_utf8_lossy(&lintian.stdout);
    eprintln!("lintian:\n{report}");
    assert!(
        !report.lines().any(|line| line.starts_with("E:")),
        "lintian errors:\n{report}"
    );
    let rpmlint = Command::new("rpmlint")
        .arg("-c")
        .arg(repo().join("packaging/rpm/rpmlint.toml"))
        .arg(&rpm)
        .output()
        .expect("runs rpmlint");
    let report = String::from_utf8_lossy(&rpmlint.stdout);
    eprintln!("rpmlint:\n{report}");
    assert!(
        report.contains(" 0 errors,") && !report.contains(": E: "),
        "rpmlint errors:\n{report}"
    );
}

/// A booted systemd-nspawn container with its own bpffs, powered off and
/// removed on drop.
struct Container {
    nspawn: ChildGuard,
    leader: u32,
    root: PathBuf,
    bpffs: PathBuf,
}

impl Container {
    /// Copies `template` and boots it in the network namespace `netns`,
    /// with the BPF capabilities palisaded needs and `files` copied into /root.
    fn boot(template: &Path, netns: &Netns, files: &[PathBuf]) -> anyhow::Result<Self> {
        let work = repo()
            .join("target/nspawn")
            .join(format!("run-{}", std::process::id()));
        let root = work.join("root");
        let bpffs = work.join("bpffs");
        std::fs::create_dir_all(&bpffs)?;
        run(Command::new("cp").arg("-a").arg(template).arg(&root))?;
        for file in files {
            let name = file.file_name().context("a file name")?;
            std::fs::copy(file, root.join("root").join(name))?;
        }
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs))?;
        let child = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(&root)
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--console=pipe",
                "--machine=palisade-test",
                "--capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN",
                "--system-call-filter=bpf perf_event_open",
            ])
            .arg(format!("--bind={}:/sys/fs/bpf", bpffs.display()))
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                netns.name()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting systemd-nspawn")?;
        let mut container = Self {
            nspawn: ChildGuard::new(child),
            leader: 0,
            root,
            bpffs,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while container.leader == 0 {
            let children = std::fs::read_to_string(format!(
                "/proc/{0}/task/{0}/children",
                container.nspawn.id()
            ))
            .unwrap_or_default();
            container.leader = children
                .split_whitespace()
                .next()
                .and_then(|pid| pid.parse().ok())
                .unwrap_or(0);
            if container.nspawn.has_exited() || Instant::now() > deadline {
                bail!("systemd-nspawn did not start a container");
            }
            thread::sleep(Duration::from_millis(100));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let state = container.sh("systemctl is-system-running")?;
            let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                break;
            }
            if Instant::now() > deadline {
                bail!("the container did not finish booting: {state}");
            }
            thread::sleep(Duration::from_millis(250));
        }
        Ok(container)
    }

    /// Runs `script` with sh inside the container, as root.
    fn sh(&self, script: &str) -> anyhow::Result<Output> {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "sh", "-c", script])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .context("running nsenter")
    }

    /// Runs `script` and returns its stdout, failing when it fails.
    fn ok(&self, script: &str) -> String {
        let output = self.sh(script).expect("nsenter");
        assert!(
            output.status.success(),
            "`{script}` failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits until the unit is in `state` (`systemctl is-active`).
    fn wait_for_unit(&self, state: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let output = self.sh("systemctl is-active palisade").expect("nsenter");
            let now = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if now == state {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "palisade.service is {now}, not {state}:\n{}",
                self.ok("journalctl -u palisade --no-pager | tail -30")
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.sh("systemctl poweroff");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.nspawn.has_exited() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        if !self.nspawn.has_exited() && self.leader != 0 {
            // Killing the container's init ends every process in it.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(self.leader).unwrap_or(i32::MAX)),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.nspawn.stop();
        let _ = Command::new("umount").arg(&self.bpffs).status();
        if let Some(work) = self.root.parent() {
            let _ = std::fs::remove_dir_all(work);
        }
    }
}

/// The same .deb with a higher version, as an upgrade would bring.
fn repacked_as_next_version(deb: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    let tree = work.join("tree");
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree))?;
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control)?;
    let version = text
        .lines()
        .find_map(|line| line.strip_prefix("Version: "))
        .context("a Version field")?
        .to_owned();
    std::fs::write(
        &control,
        text.replace(
            &format!("Version: {version}"),
            &format!("Version: {version}+1"),
        ),
    )?;
    let next = work.join("palisade_next.deb");
    run(Command::new("dpkg-deb").arg("-b").arg(&tree).arg(&next))?;
    Ok(next)
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn the_deb_installs_runs_upgrades_and_purges_in_a_booted_debian() {
    require_root();
    let (deb, _) = packages();
    require_tools(&["debootstrap", "systemd-nspawn", "nsenter", "dpkg-deb"]);
    let template = debian_root().expect("a Debian root from debootstrap");
    // The container's network: a veth pair of its own, in a test namespace.
    let netns = Netns::new("pkg").expect("a network namespace");
    netns
        .ip(&[
            "link", "add", "eth1", "type", "veth", "peer", "name", "eth2",
        ])
        .expect("a veth pair");
    for link in ["eth1", "eth2"] {
        netns.ip(&["link", "set", link, "up"]).expect("link up");
    }
    let scratch = repo()
        .join("target/nspawn")
        .join(format!("next-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let next = repacked_as_next_version(&deb, &scratch).expect("a next version");
    let container = match Container::boot(&template, &netns, &[deb.clone(), next]) {
        Ok(container) => container,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&scratch);
            panic!("systemd-nspawn cannot boot the Debian root: {error:#}");
        }
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let deb_name = deb
        .file_name()
        .and_then(|name| name.to_str())
        .expect("a file name")
        .to_owned();

    // Install: enabled, started, and active only once palisaded said READY=1.
    container.ok(&format!("dpkg -i /root/{deb_name}"));
    container.wait_for_unit("active");
    assert_eq!(
        container
            .ok("systemctl show -p Type --value palisade")
            .trim(),
        "notify"
    );
    assert_eq!(
        container.ok("systemctl is-enabled palisade").trim(),
        "enabled"
    );
    assert!(
        container
            .ok("journalctl -u palisade --no-pager")
            .contains("palisaded ready")
    );

    // journald: palisade's own structured fields.
    let journal = container.ok("journalctl -u palisade -o json --no-pager");
    let entries: Vec<serde_json::Value> = journal
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert!(
        entries
            .iter()
            .any(|entry| entry["SYSLOG_IDENTIFIER"] == "palisaded"
                && entry["PALISADE_GENERATION"] == "1"),
        "no palisaded entry with PALISADE_GENERATION in:\n{journal}"
    );

    // The socket: a member of the group may read, another user may not.
    container.ok("useradd -m -G palisade alice && useradd -m mallory");
    let status = container.ok("runuser -u alice -- palisadectl status");
    assert!(status.contains("Generation:"), "{status}");
    assert!(
        status.contains("audit mode"),
        "the package starts in audit mode: {status}"
    );
    let refused = container
        .sh("runuser -u mallory -- palisadectl status")
        .expect("nsenter");
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("permission denied"));

    // The sandboxed service can attach to an interface once one is named.
    container.ok(
        "sed -i 's/^interfaces = \\[\\]$/interfaces = [\"eth1\"]/' /etc/palisade/palisade.toml \
         && systemctl restart palisade",
    );
    container.wait_for_unit("active");
    let status = container.ok("palisadectl status");
    assert!(
        status.contains("eth1") && !status.contains("nothing is enforced"),
        "{status}"
    );
    let links = run(netns
        .command("bpftool")
        .args(["net", "show", "dev", "eth1"]))
    .expect("bpftool net");
    assert!(links.contains("xdp") && links.contains("eth1"), "{links}");

    // The CNI plugin is where runtimes look for it, and answers; STATUS
    // finds the packaged service at the default socket.
    let version = container.ok("CNI_COMMAND=VERSION /opt/cni/bin/palisade-cni </dev/null");
    assert!(version.contains("\"supportedVersions\""), "{version}");
    container.ok(
        "printf '{\"cniVersion\":\"1.1.0\",\"name\":\"palisade\",\"type\":\"palisade-cni\"}' \
         | CNI_COMMAND=STATUS CNI_PATH=/opt/cni/bin /opt/cni/bin/palisade-cni",
    );

    // The sandboxed service runs the userspace WireGuard (this kernel has
    // no module): TUN device, UAPI socket in /run/wireguard, key file.
    container.ok(
        "cp /etc/palisade/palisade.toml /root/palisade.toml.saved && \
         sed -i 's/^# mode = \"none\"$/mode = \"wireguard\"/' /etc/palisade/palisade.toml && \
         printf '\\n[[nodes]]\\nname = \"node-2\"\\npod_cidrs = [\"10.99.2.0/24\"]\\n[nodes.wireguard]\\nendpoint = \"192.0.2.2:51871\"\\npublic_key = \"TDC1nJ5eZctCPhtpgG8II00ItlhsYcrVKYG5K8OW4kY=\"\\n' >> /etc/palisade/palisade.toml && \
         systemctl restart palisade",
    );
    container.wait_for_unit("active");
    let wireguard = container.ok("palisadectl wireguard status -o json");
    let wireguard: serde_json::Value = serde_json::from_str(&wireguard).expect("JSON");
    assert_eq!(wireguard["interface"], "palisade_wg0", "{wireguard}");
    assert_eq!(wireguard["peers"][0]["name"], "node-2", "{wireguard}");
    assert!(
        container
            .ok("ls /run/wireguard")
            .contains("palisade_wg0.sock")
    );
    assert_eq!(
        container
            .ok("stat -c %a /var/lib/palisade/wireguard.key")
            .trim(),
        "600"
    );
    container.ok(
        "cp /root/palisade.toml.saved /etc/palisade/palisade.toml && systemctl restart palisade",
    );
    container.wait_for_unit("active");

    // The unit's sandbox.
    let security = container.ok("systemd-analyze security --no-pager palisade.service");
    let exposure: f64 = security
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for palisade.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{security}"));
    eprintln!("systemd-analyze security palisade.service: {exposure}");
    assert!(exposure < 4.0, "exposure {exposure} is not OK:\n{security}");

    // Upgrade: the edited conffile stays, the service restarts and runs.
    container.ok("echo '# edited by the operator' >> /etc/palisade/palisade.toml");
    let before = container.ok("systemctl show -p MainPID --value palisade");
    container.ok("dpkg -i --force-confold /root/palisade_next.deb");
    container.wait_for_unit("active");
    let after = container.ok("systemctl show -p MainPID --value palisade");
    assert_ne!(before, after, "the upgrade restarts palisaded");
    assert!(
        container
            .ok("tail -1 /etc/palisade/palisade.toml")
            .contains("edited by the operator")
    );
    assert!(container.ok("dpkg -s palisade").contains("+1"));

    // Purge: state (saved policies), runtime and pinned datapath are gone.
    container
        .ok("palisadectl apply -f /usr/share/doc/palisade/examples/host-ssh-from-bastion.toml");
    assert!(
        container
            .ok("ls /var/lib/palisade/policies")
            .contains("host-ssh-from-bastion")
    );
    assert!(!container.ok("ls /sys/fs/bpf/palisade").is_empty());
    container.ok("dpkg --purge palisade");
    let left = container.ok(
        "for path in /var/lib/palisade /run/palisade /etc/palisade /sys/fs/bpf/palisade \
         /usr/lib/systemd/system/palisade.service /usr/sbin/palisaded \
         /etc/systemd/system/multi-user.target.wants/palisade.service; do \
         [ -e $path ] && echo $path; done; true",
    );
    assert_eq!(left.trim(), "", "left behind after purge");
    let active = container
        .sh("systemctl is-active palisade")
        .expect("nsenter");
    assert_ne!(String::from_utf8_lossy(&active.stdout).trim(), "active");
}
