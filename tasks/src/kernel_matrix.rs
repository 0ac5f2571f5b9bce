//! The kernel matrix: the kernel-only tests run on the distributions' own
//! kernels, booted under qemu (TCG: this machine's /dev/kvm does not boot a
//! stock kernel).
//!
//! A guest boots a kernel from Debian's archive (`apt-get download`,
//! extracted and `depmod`ed once into a cache outside the repository) with a
//! small initramfs: busybox, the modules that mount 9p, and an `/init` that
//! mounts this machine's root read-only over 9p under an overlay (writes
//! stay in guest memory), chroots into it and runs a script from a second,
//! writable share. So the guest runs the very test binaries and tools (`ip`, `nft`,
//! `tc`, `wg`, `tcpdump`) of the host, on its own kernel; modules load on
//! demand through the initramfs's busybox `modprobe` from the kernel's own
//! module tree. The console streams to this process's output; each suite's
//! exit status comes back in a file of the writable share.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cargo, setup::check, workspace};

/// The Debian packages booted: the kernel of Debian 12 (6.1), the oldest
/// kernel the archive here serves and palisade's minimum.
const KERNEL_PACKAGES: &[&str] = &["linux-image-amd64"];

/// The modules that mount the host's root over 9p (virtio-pci transport)
/// under an overlay, loaded from the initramfs with their dependencies.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// Longest a guest may run before it is killed.
const GUEST_TIMEOUT: Duration = Duration::from_secs(25 * 60);

/// One test binary run in the guest.
struct Suite {
    /// The cargo package.
    package: &'static str,
    /// `--test NAME`, or `None` for the library's unit tests.
    test: Option<&'static str>,
    /// Test name filters (all tests when empty).
    filters: &'static [&'static str],
    /// Tests left out in the guest, with why in a comment at the suite.
    skip: &'static [&'static str],
    /// Tests run at once (the guest has 2 CPUs; the namespace tests each
    /// use the node's whole network, one at a time).
    threads: u8,
}

/// The kernel-only tests: the programs load and pass this kernel's
/// verifier, the differential corpus through `BPF_PROG_TEST_RUN`, the
/// namespace host-firewall tests, and the kernel WireGuard mesh.
const SUITES: &[Suite] = &[
    Suite {
        package: "palisade-daemon",
        test: None,
        // The programs through this kernel's verifier; IPsec's XFRM states,
        // policies and ESP traffic (this host's kernel has no ESP).
        filters: &["differential", ESP_ONLY],
        skip: &[],
        threads: 2,
    },
    Suite {
        package: "palisade-e2e",
        test: Some("host_firewall"),
        filters: &[],
        skip: &[],
        threads: 1,
    },
    Suite {
        package: "palisade-e2e",
        test: Some("datapath"),
        filters: &[],
        // Half a million datagrams under TCG take eight minutes and
        // overflow the sink's socket buffer; the swap guarantee is the
        // kernel-independent part, proven on the host.
        skip: &["traffic_flows_while_the_table_is_swapped_a_thousand_times"],
        threads: 1,
    },
    Suite {
        package: "palisade-e2e",
        test: Some("enforcement_guard"),
        filters: &[],
        // The first switches to TCX links, which 6.1 lacks (the guest runs
        // every other test on cls_bpf filters, its only path); the second
        // fills a table within a deadline TCG cannot meet.
        skip: &[
            "cls_bpf_filters_switch_with_tcx_come_back_when_deleted_and_go_at_cleanup",
            "a_nearly_full_connection_table_is_shown_and_reported",
        ],
        threads: 1,
    },
    Suite {
        package: "palisade-e2e",
        test: Some("ipsec"),
        filters: &[ESP_ONLY],
        skip: &[],
        threads: 1,
    },
    Suite {
        package: "palisade-e2e",
        test: Some("wireguard"),
        filters: &["two_nodes_form_a_mesh"],
        skip: &[],
        threads: 1,
    },
];

/// The ending of the names of tests that need ESP in the kernel: the guest
/// runs them, the host's `cargo xtask test` skips them.
pub const ESP_ONLY: &str = "in_a_kernel_with_esp";

/// The scenario that boots Debian 12 with the .deb installed.
pub const PACKAGE_SCENARIO: &str = "package";

/// Runs the suites (those named in `only`, or all) on every kernel of the
/// matrix, and, unless `only` leaves it out, the package scenario with
/// `deb`: Debian 12's userland booted by systemd on Debian 12's kernel.
///
/// # Errors
///
/// When a kernel cannot be fetched or booted, or a suite fails.
pub fn run(only: &[String], deb: &Path) -> anyhow::Result<()> {
    let binaries = build_suites(only)?;
    let package = only.is_empty() || only.iter().any(|name| name == PACKAGE_SCENARIO);
    let mut failures = Vec::new();
    for package_name in KERNEL_PACKAGES {
        let kernel = GuestKernel::fetch(package_name)?;
        eprintln!(
            "== kernel matrix: Linux {} ({package_name})",
            kernel.release
        );
        let mut results = if binaries.is_empty() {
            Vec::new()
        } else {
            kernel.run_suites(&binaries)?
        };
        if package {
            let booted = kernel.run_package(deb);
            if let Err(error) = &booted {
                eprintln!("   {PACKAGE_SCENARIO}: {error:#}");
            }
            results.push((PACKAGE_SCENARIO.to_owned(), booted.is_ok()));
        }
        for (suite, passed) in results {
            eprintln!("   {suite}: {}", if passed { "ok" } else { "FAILED" });
            if !passed {
                failures.push(format!("{suite} on Linux {}", kernel.release));
            }
        }
    }
    if !failures.is_empty() {
        bail!("kernel matrix failures: {}", failures.join(", "));
    }
    Ok(())
}

/// Runs the benchmark `executable` in a guest on the matrix's first kernel
/// and copies the result file it writes (`result`, under
/// `$PALISADE_BENCH_RESULTS`) to `destination`.
///
/// # Errors
///
/// When the kernel cannot be fetched or booted, or the benchmark wrote no
/// result.
pub fn run_benchmark(executable: &Path, result: &str, destination: &Path) -> anyhow::Result<()> {
    let kernel = GuestKernel::fetch(KERNEL_PACKAGES[0])?;
    eprintln!("== benchmark in the guest: Linux {}", kernel.release);
    let directory = std::env::temp_dir().join(format!(
        "palisade-bench-{}-{}",
        kernel.release,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&directory);
    let share = directory.join("share");
    std::fs::create_dir_all(&share)?;
    let initramfs = kernel.initramfs(&directory, INIT)?;
    let script = format!(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
         PALISADE_BENCH_RESULTS=/tmp/guest PALISADE_E2E_KERNEL_WIREGUARD=1\n\
         cd {dir}; {exe}\n",
        dir = shell_quote(&workspace()),
        exe = shell_quote(executable),
    );
    std::fs::write(share.join("run.sh"), script)?;
    kernel.boot(
        &initramfs,
        &[],
        &[("hostroot", Path::new("/"), true), ("guest", &share, false)],
        false,
    )?;
    let written = share.join(result);
    let copied = std::fs::copy(&written, destination)
        .with_context(|| format!("the benchmark wrote no {result} in the guest"));
    let _ = std::fs::remove_dir_all(&directory);
    copied?;
    eprintln!("wrote {}", destination.display());
    Ok(())
}

/// Builds the suites' test binaries; returns (suite name, executable,
/// test arguments).
fn build_suites(only: &[String]) -> anyhow::Result<Vec<(String, PathBuf, Vec<String>)>> {
    cargo(&["build", "--bins"])?;
    let mut binaries = Vec::new();
    for suite in SUITES {
        let name = suite.test.unwrap_or(suite.package).to_owned();
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        let mut args = vec![
            "test",
            "--no-run",
            "--message-format=json",
            "-p",
            suite.package,
        ];
        match suite.test {
            Some(test) => args.extend(["--test", test]),
            None => args.push("--lib"),
        }
        let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(&args)
            .current_dir(workspace())
            .stderr(Stdio::inherit())
            .output()
            .context("cargo test --no-run")?;
        if !output.status.success() {
            bail!("cargo {} failed", args.join(" "));
        }
        let executable = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|message| message["reason"] == "compiler-artifact")
            .filter_map(|message| message["executable"].as_str().map(PathBuf::from))
            .next_back()
            .with_context(|| format!("no test executable from cargo {}", args.join(" ")))?;
        let mut arguments = vec![format!("--test-threads={}", suite.threads)];
        arguments.extend(suite.filters.iter().map(|f| (*f).to_owned()));
        for skipped in suite.skip {
            arguments.extend(["--skip".to_owned(), (*skipped).to_owned()]);
        }
        binaries.push((name, executable, arguments));
    }
    Ok(binaries)
}

/// Where fetched kernels are kept between runs (outside the repository).
fn cache_directory() -> PathBuf {
    std::env::var_os("PALISADE_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/palisade"))
        })
        .unwrap_or_else(|| PathBuf::from("/var/cache/palisade"))
}

/// A Debian kernel package extracted for booting.
struct GuestKernel {
    /// `uname -r` of the kernel.
    release: String,
    /// The package's extracted tree (`boot/`, `lib/modules/`).
    root: PathBuf,
}

impl GuestKernel {
    /// The kernel `package` depends on (a meta-package such as
    /// `linux-image-amd64`), downloaded and extracted into the cache once.
    fn fetch(package: &str) -> anyhow::Result<Self> {
        let image = apt_dependency(package)?;
        let release = image
            .strip_prefix("linux-image-")
            .with_context(|| format!("{package} depends on {image}, not a linux-image package"))?
            .to_owned();
        let root = cache_directory().join("kernels").join(&image);
        let kernel = Self { release, root };
        if kernel.root.join(".ready").exists() {
            return Ok(kernel);
        }
        let download = cache_directory().join("downloads");
        std::fs::create_dir_all(&download)
            .with_context(|| format!("creating {}", download.display()))?;
        check(
            Command::new("apt-get")
                .args(["download", "-q", &image])
                .current_dir(&download),
        )?;
        let deb = std::fs::read_dir(&download)?
            .flatten()
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with(&format!("{image}_")))
            })
            .with_context(|| format!("apt-get download left no {image} package"))?;
        let _ = std::fs::remove_dir_all(&kernel.root);
        std::fs::create_dir_all(&kernel.root)
            .with_context(|| format!("creating {}", kernel.root.display()))?;
        check(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(&kernel.root),
        )?;
        check(
            Command::new("depmod")
                .arg("-b")
                .arg(&kernel.root)
                .arg(&kernel.release),
        )?;
        std::fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
        std::fs::write(kernel.root.join(".ready"), "")?;
        Ok(kernel)
    }

    fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// The initramfs: busybox, the 9p modules in load order, `/init`
    /// ([`INIT_PRELUDE`], then `init_script`).
    fn initramfs(&self, directory: &Path, init_script: &str) -> anyhow::Result<PathBuf> {
        let tree = directory.join("initramfs");
        for dir in [
            "bin",
            "sbin",
            "proc",
            "sys",
            "dev",
            "host",
            "lib/modules",
            "boot-modules",
        ] {
            std::fs::create_dir_all(tree.join(dir))?;
        }
        std::fs::copy("/usr/bin/busybox", tree.join("bin/busybox"))
            .context("copying /usr/bin/busybox (busybox-static)")?;
        std::os::unix::fs::symlink("busybox", tree.join("bin/sh"))?;
        // The kernel's module loader runs /sbin/modprobe in the initramfs.
        std::os::unix::fs::symlink("../bin/busybox", tree.join("sbin/modprobe"))?;
        let order = load_order(&self.modules(), BOOT_MODULES)?;
        for (index, module) in order.iter().enumerate() {
            let name = module
                .file_name()
                .context("a module without a name")?
                .to_string_lossy()
                .into_owned();
            std::fs::copy(
                self.modules().join(module),
                tree.join(format!("boot-modules/{index:02}-{name}")),
            )
            .with_context(|| format!("copying {}", module.display()))?;
        }
        let init = tree.join("init");
        std::fs::write(&init, format!("{INIT_PRELUDE}{init_script}"))?;
        std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let image = directory.join("initramfs.cpio");
        let cpio = Command::new("sh")
            .arg("-c")
            .arg("find . | cpio -o -H newc --quiet > \"$1\"")
            .arg("sh")
            .arg(&image)
            .current_dir(&tree)
            .status()
            .context("running cpio")?;
        if !cpio.success() {
            bail!("building the initramfs failed");
        }
        Ok(image)
    }

    /// Boots the kernel, runs the suites in one guest and returns each
    /// suite's result.
    fn run_suites(
        &self,
        binaries: &[(String, PathBuf, Vec<String>)],
    ) -> anyhow::Result<Vec<(String, bool)>> {
        let directory = std::env::temp_dir().join(format!(
            "palisade-guest-{}-{}",
            self.release,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&directory);
        let share = directory.join("share");
        std::fs::create_dir_all(&share)?;
        let initramfs = self.initramfs(&directory, INIT)?;
        let mut script = String::from(
            "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
             CI=true RUST_BACKTRACE=1 PALISADE_E2E_KERNEL_WIREGUARD=1\n\
             echo \"guest: Linux $(uname -r)\"\n",
        );
        for (name, executable, filters) in binaries {
            writeln!(
                script,
                "echo \"guest: == {name}\"; cd {dir}; {exe} --include-ignored {filters}; \
                 echo \"{name} $?\" >> /tmp/guest/results",
                dir = shell_quote(&workspace()),
                exe = shell_quote(executable),
                filters = filters
                    .iter()
                    .map(|f| shell_quote(Path::new(f)))
                    .collect::<Vec<_>>()
                    .join(" "),
            )?;
        }
        std::fs::write(share.join("run.sh"), script)?;
        self.boot(
            &initramfs,
            &[],
            &[("hostroot", Path::new("/"), true), ("guest", &share, false)],
            false,
        )?;
        let results = std::fs::read_to_string(share.join("results")).unwrap_or_default();
        let codes: BTreeMap<&str, &str> = results
            .lines()
            .filter_map(|line| line.rsplit_once(' '))
            .collect();
        let outcome = binaries
            .iter()
            .map(|(name, ..)| (name.clone(), codes.get(name.as_str()) == Some(&"0")))
            .collect();
        let _ = std::fs::remove_dir_all(&directory);
        Ok(outcome)
    }

    /// Boots the kernel with `initramfs` and the 9p `shares` (tag, host
    /// directory, read-only), `append` added to the command line and, with
    /// `nic`, a virtio NIC with no way out (`restrict=on`); waits until the
    /// guest powers off.
    fn boot(
        &self,
        initramfs: &Path,
        append: &[&str],
        shares: &[(&str, &Path, bool)],
        nic: bool,
    ) -> anyhow::Result<()> {
        let modules = self.root.join("lib/modules");
        let modules = modules
            .strip_prefix("/")
            .context("the kernel cache must be an absolute path")?;
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "3072",
        ])
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(self.root.join(format!("boot/vmlinuz-{}", self.release)))
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet PALISADE_KERNEL_MODULES={} {}",
            modules.display(),
            append.join(" ")
        ))
        .stdin(Stdio::null());
        for (tag, path, read_only) in shares {
            qemu.arg("-virtfs").arg(format!(
                "local,path={},mount_tag={tag},security_model=none,multidevs=remap{}",
                path.display(),
                if *read_only { ",readonly=on" } else { "" }
            ));
        }
        if nic {
            qemu.args(["-nic", "user,model=virtio-net-pci,restrict=on"]);
        } else {
            qemu.args(["-nic", "none"]);
        }
        eprintln!("+ {qemu:?}");
        let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("qemu failed ({status})");
                }
                break;
            }
            if started.elapsed() > GUEST_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the Linux {} guest ran over {GUEST_TIMEOUT:?}; killed",
                    self.release
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("   guest ran {:.0?}", started.elapsed());
        Ok(())
    }

    /// The package scenario: a copy of the Debian 12 root booted by
    /// systemd on this kernel (over 9p, with a NIC `eth0`) installs the
    /// .deb, enforces on `eth0` and is purged; a unit in the root runs
    /// [`PACKAGE_CHECK`] and powers off; its findings come back in the
    /// root's /root/results.
    fn run_package(&self, deb: &Path) -> anyhow::Result<()> {
        let template = palisade_e2e::debian_root().context("a Debian root from debootstrap")?;
        let directory = workspace()
            .join("target/nspawn")
            .join(format!("guest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory)?;
        let root = directory.join("root");
        check(Command::new("cp").arg("-a").arg(&template).arg(&root))?;
        let outcome = (|| {
            std::fs::copy(deb, root.join("root/palisade.deb")).context("copying the .deb")?;
            std::fs::write(root.join("root/check.sh"), PACKAGE_CHECK)?;
            std::fs::write(
                root.join("etc/systemd/system/palisade-guest-check.service"),
                PACKAGE_CHECK_UNIT,
            )?;
            let wants = root.join("etc/systemd/system/multi-user.target.wants");
            std::fs::create_dir_all(&wants)?;
            std::os::unix::fs::symlink(
                "/etc/systemd/system/palisade-guest-check.service",
                wants.join("palisade-guest-check.service"),
            )?;
            let initramfs = self.initramfs(&directory, INIT_SYSTEMD)?;
            self.boot(
                &initramfs,
                &["net.ifnames=0", "systemd.show_status=0"],
                &[
                    ("hostroot", Path::new("/"), true),
                    ("debroot", &root, false),
                ],
                true,
            )?;
            let results = root.join("root/results");
            let read = |name: &str| std::fs::read_to_string(results.join(name)).unwrap_or_default();
            let log = read("log");
            if read("done").trim() != "ok" {
                bail!("the check in the booted Debian did not finish:\n{log}");
            }
            let failed: Vec<&str> = log
                .lines()
                .filter(|line| line.starts_with("FAIL"))
                .collect();
            if !failed.is_empty() {
                bail!("{}\n{log}", failed.join("\n"));
            }
            eprint!("{log}");
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&directory);
        outcome
    }
}

/// The package `package` depends on (`apt-cache depends`).
fn apt_dependency(package: &str) -> anyhow::Result<String> {
    let output = Command::new("apt-cache")
        .args(["depends", package])
        .output()
        .context("running apt-cache")?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.trim().strip_prefix("Depends: "))
        .map(str::to_owned)
        .with_context(|| format!("apt-cache knows no dependency of {package}"))
}

/// `roots` and their dependencies from `modules.dep`, each after what it
/// needs (paths relative to the module directory).
fn load_order(modules: &Path, roots: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(modules.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", modules.display()))?;
    let dependencies: BTreeMap<&str, Vec<&str>> = text
        .lines()
        .filter_map(|line| {
            let (module, needs) = line.split_once(':')?;
            Some((module, needs.split_whitespace().collect()))
        })
        .collect();
    let by_name = |name: &str| {
        dependencies
            .keys()
            .find(|path| {
                Path::new(path)
                    .file_stem()
                    .is_some_and(|stem| stem.to_string_lossy() == name)
            })
            .copied()
    };
    fn visit<'a>(
        module: &'a str,
        dependencies: &BTreeMap<&'a str, Vec<&'a str>>,
        order: &mut Vec<&'a str>,
    ) {
        if order.contains(&module) {
            return;
        }
        for need in dependencies.get(module).into_iter().flatten() {
            visit(need, dependencies, order);
        }
        order.push(module);
    }
    let mut order = Vec::new();
    for root in roots {
        let module = by_name(root).with_context(|| format!("module {root} not in modules.dep"))?;
        visit(module, &dependencies, &mut order);
    }
    Ok(order.into_iter().map(PathBuf::from).collect())
}

/// `path` quoted for sh.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

/// The start of every guest's `/init`: the kernel's file systems and the
/// 9p modules.
const INIT_PRELUDE: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
busybox mount -t proc proc /proc
busybox mount -t sysfs sysfs /sys
busybox mount -t devtmpfs devtmpfs /dev
for module in /boot-modules/*.ko; do
    busybox insmod "$module" || echo "init: insmod $module failed"
done
"#;

/// The package scenario's `/init` after [`INIT_PRELUDE`]: preload what the
/// root cannot load itself (it has no modprobe: the NIC, clsact, cls_bpf),
/// mount the Debian root (read-write, a copy) and the kernel's modules in
/// it, and hand over to its systemd.
const INIT_SYSTEMD: &str = r#"busybox mkdir -p /newroot
busybox mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144 hostroot /host
busybox mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 debroot /newroot
busybox mount --bind "/host/$PALISADE_KERNEL_MODULES" /lib/modules
for module in virtio_net sch_ingress cls_bpf; do
    busybox modprobe "$module" || echo "init: modprobe $module failed"
done
busybox mkdir -p /newroot/lib/modules
busybox mount --bind "/host/$PALISADE_KERNEL_MODULES" /newroot/lib/modules
exec busybox switch_root /newroot /lib/systemd/systemd
"#;

/// The unit that runs [`PACKAGE_CHECK`] once the system is up, then powers
/// off.
const PACKAGE_CHECK_UNIT: &str = "[Unit]
Description=palisade kernel matrix: the package on this kernel
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/sh /root/check.sh
ExecStartPost=/bin/systemctl poweroff --no-block
StandardOutput=journal+console
[Install]
WantedBy=multi-user.target
";

/// The package scenario's check, in the booted Debian: install, enforce
/// on eth0 (cls_bpf filters on 6.1), purge. Each finding is a line of
/// /root/results/log; `FAIL` lines fail the scenario.
const PACKAGE_CHECK: &str = r#"#!/bin/sh
mkdir -p /root/results
exec >/root/results/log 2>&1
say() { echo "$*"; }
fail() { echo "FAIL: $*"; }
say "kernel: $(uname -r)"
palisade_status() { palisadectl status -o json; }
dpkg -i /root/palisade.deb || fail "dpkg -i"
/usr/sbin/palisaded --check-kernel || fail "palisaded --check-kernel"
sed -i 's/^interfaces = \[\]/interfaces = ["eth0"]/' /etc/palisade/palisade.toml
grep -q '^interfaces = \["eth0"\]' /etc/palisade/palisade.toml || fail "could not name eth0 in the config"
systemctl restart palisade
state=$(systemctl is-active palisade)
[ "$state" = active ] || fail "palisade.service is $state"
status=$(palisade_status)
say "status: $status"
echo "$status" | grep -Eq '"hooks": *"tc ingress/egress' || fail "eth0 is not enforced through cls_bpf filters"
echo "$status" | grep -Eq '"state": *"enforcing"' || fail "eth0 is not enforced"
journalctl -u palisade --no-pager -o cat | grep -E 'enforcing|error|ERROR' | head -20
ls /sys/fs/bpf/palisade/links
dpkg --purge palisade || fail "dpkg --purge"
[ -e /sys/fs/bpf/palisade ] && fail "the pins stayed after purge"
echo ok > /root/results/done
"#;

/// The test guest's `/init` after [`INIT_PRELUDE`]: mount the host's root
/// read-only under an overlay whose writes go to guest memory (nothing of
/// the host is hidden, wherever the repository or the cache lie), chroot
/// into it, run the script, power off.
const INIT: &str = r#"busybox mkdir -p /lower /rw
if ! busybox mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower; then
    echo "init: cannot mount the host's root"
    busybox poweroff -f
fi
busybox mount -t tmpfs tmpfs /rw
busybox mkdir -p /rw/upper /rw/work
busybox mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /host
busybox mount --bind "/host/$PALISADE_KERNEL_MODULES" /lib/modules
busybox mount -t proc proc /host/proc
busybox mount -t sysfs sysfs /host/sys
busybox mount -t bpf bpf /host/sys/fs/bpf
busybox mount -t cgroup2 cgroup2 /host/sys/fs/cgroup
busybox mount -t devtmpfs devtmpfs /host/dev
busybox mkdir -p /host/dev/pts /host/dev/shm /host/tmp/guest
busybox mount -t devpts devpts /host/dev/pts
busybox mount -t tmpfs tmpfs /host/dev/shm
busybox mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 guest /host/tmp/guest
busybox chroot /host /bin/sh /tmp/guest/run.sh
echo "init: the tests ran (exit $?)"
busybox sync
busybox poweroff -f
"#;
