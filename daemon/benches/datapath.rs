//! The datapath benchmark (`cargo xtask bench datapath`), in two parts:
//!
//! 1. ns/packet through `BPF_PROG_TEST_RUN`: an empty TC program against
//!    palisade's TC ingress program holding 10, 1k, 10k and 100k CIDR rules
//!    (prefixes of five lengths). Two packets per table: one that matches
//!    none of the prefixes (every length probed: the longest walk our layout
//!    has) and one that matches a /32 with a deny rule; the slower counts.
//! 2. Drop rate on a veth pair whose sink drops UDP from the generator by
//!    the XDP prefilter, by the TC program, or by an equivalent nftables
//!    rule. Two figures per method, both from `BPF_PROG_TEST_RUN` in
//!    live-frames mode (as xdp-trafficgen sends):
//!    - receive path (the drop rate reported): frames handed to the sink's
//!      veth as a driver hands them over. For XDP the live frames run the
//!      prefilter itself; for TC and nftables a constant XDP_PASS program
//!      sends them up the sink's stack (skb, TC ingress, netfilter). This is
//!      what one core of the sink spends per dropped packet.
//!    - harness ceiling: the same frames through a constant XDP_DROP
//!      program, the fastest any XDP program can drop in this harness (the
//!      live-frames machinery costs far more per frame than a NIC driver).
//!    - through the pair: the generator namespace transmits (XDP_TX) and the
//!      sink receives. On a veth both run on the generator's CPU, so this
//!      figure adds the generator's and the veth's own cost to every packet
//!      and compresses the differences.
//!
//! Writes `target/bench/datapath.json`.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd as _, BorrowedFd},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod support;

use anyhow::{Context as _, bail};
use aya::{TestRun as _, TestRunOptions};
use palisade_common::protocol;
use palisade_daemon::{
    config::Config,
    datapath::{
        Datapath as _,
        ebpf::{EbpfDatapath, pinning},
    },
};
use palisade_e2e::{Netns, Topology, frames::frame};
use palisade_policy::{Connection, Direction, NodeContext, compile, policy_from_toml};

/// Runs per measurement; the kernel reports the mean time of one run.
const REPEAT: u32 = 1_000_000;
/// Measurements per setting; the median is reported.
const ROUNDS: usize = 5;
/// Table sizes measured.
const RULE_COUNTS: [usize; 4] = [10, 1_000, 10_000, 100_000];
/// Prefix lengths the generated tables use, in turn.
const LENGTHS: [u8; 5] = [32, 28, 24, 20, 16];
/// Packets the generator sends per drop-rate measurement.
const BLAST: u32 = 4_000_000;
/// `XDP_DROP`.
const XDP_DROP: i32 = 1;
/// `XDP_PASS`.
const XDP_PASS: i32 = 2;
/// `XDP_TX`.
const XDP_TX: i32 = 3;
/// `TC_ACT_SHOT`.
const TC_DROP: u32 = 2;
/// `TC_ACT_UNSPEC` (-1): pass on.
const TC_PASS: u32 = u32::MAX;

/// Raw `bpf(2)` for what aya does not offer: loading a two-instruction
/// program, and `BPF_PROG_TEST_RUN` in XDP live-frames mode.
mod raw_bpf {
    use std::os::fd::{FromRawFd as _, OwnedFd};

    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    /// `BPF_PROG_TYPE_SCHED_CLS`.
    pub const SCHED_CLS: u32 = 3;
    /// `BPF_PROG_TYPE_XDP`.
    pub const XDP: u32 = 6;
    /// `BPF_F_TEST_XDP_LIVE_FRAMES`.
    pub const LIVE_FRAMES: u32 = 1 << 1;

    fn bpf(command: libc::c_long, attr: &mut [u8; 160]) -> std::io::Result<i64> {
        // SAFETY: attr is a zeroed bpf_attr-sized buffer filled per the uapi layout.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                command,
                attr.as_mut_ptr(),
                attr.len() as libc::c_uint,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(rc)
    }

    fn put(attr: &mut [u8; 160], offset: usize, bytes: &[u8]) {
        attr[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// Loads `r0 = value; exit` as a program of `prog_type`.
    pub fn load_constant(prog_type: u32, value: i32) -> std::io::Result<OwnedFd> {
        let mut insns = [0u8; 16];
        insns[0] = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
        insns[4..8].copy_from_slice(&value.to_le_bytes());
        insns[8] = 0x95; // BPF_JMP | BPF_EXIT
        let license = c"GPL";
        let mut attr = [0u8; 160];
        put(&mut attr, 0, &prog_type.to_le_bytes());
        put(&mut attr, 4, &2u32.to_le_bytes());
        put(&mut attr, 8, &(insns.as_ptr() as u64).to_le_bytes());
        put(&mut attr, 16, &(license.as_ptr() as u64).to_le_bytes());
        let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
        // SAFETY: the kernel returned a new file descriptor we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).unwrap_or(-1)) })
    }

    /// One `BPF_PROG_TEST_RUN`; returns (return value, mean ns per run).
    pub fn test_run(
        program: std::os::fd::BorrowedFd<'_>,
        data: &[u8],
        repeat: u32,
        context: Option<&[u8]>,
        flags: u32,
    ) -> std::io::Result<(u32, u32)> {
        use std::os::fd::AsRawFd as _;
        let mut attr = [0u8; 160];
        let data_len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        put(&mut attr, 0, &program.as_raw_fd().to_le_bytes());
        put(&mut attr, 8, &data_len.to_le_bytes());
        put(&mut attr, 16, &(data.as_ptr() as u64).to_le_bytes());
        put(&mut attr, 32, &repeat.to_le_bytes());
        if let Some(context) = context {
            let context_len = u32::try_from(context.len()).unwrap_or(u32::MAX);
            put(&mut attr, 40, &context_len.to_le_bytes());
            put(&mut attr, 48, &(context.as_ptr() as u64).to_le_bytes());
        }
        put(&mut attr, 64, &flags.to_le_bytes());
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        let word = |offset: usize| {
            u32::from_le_bytes([
                attr[offset],
                attr[offset + 1],
                attr[offset + 2],
                attr[offset + 3],
            ])
        };
        Ok((word(4), word(36)))
    }
}

/// A policy allowing TCP 443 from `count` generated prefixes, and denying
/// TCP 22 from the first of them (a /32).
fn policy_text(count: usize) -> (String, Ipv4Addr) {
    let mut prefixes = String::new();
    let mut random = fastrand::Rng::with_seed(0x1234_5678);
    let mut first = Ipv4Addr::UNSPECIFIED;
    for i in 0..count {
        // Addresses in 11.0.0.0 - 126.255.255.255.
        let address = Ipv4Addr::from(0x0b00_0000 + random.u32(..0x7400_0000));
        let length = LENGTHS[i % LENGTHS.len()];
        if i == 0 {
            first = address;
        }
        let _ = write!(prefixes, "\"{address}/{length}\",");
    }
    let text = format!(
        r#"kind = "CiliumClusterwideNetworkPolicy"
metadata = {{ name = "bench" }}
[spec]
nodeSelector = {{}}
[[spec.ingress]]
fromCIDR = [{prefixes}]
toPorts = [{{ ports = [{{ port = 443, protocol = "TCP" }}] }}]
[[spec.ingressDeny]]
fromCIDR = ["{first}/32"]
toPorts = [{{ ports = [{{ port = 22, protocol = "TCP" }}] }}]
"#
    );
    (text, first)
}

fn packet(source: Ipv4Addr, port: u16) -> Vec<u8> {
    frame(
        &Connection {
            protocol: protocol::TCP,
            source: IpAddr::V4(source),
            destination: IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1)),
            destination_port: port,
        },
        40000,
    )
}

struct TestRunRow {
    program: &'static str,
    rules: usize,
    ns_per_packet: f64,
    miss_ns: f64,
    deep_hit_ns: f64,
    established_ns: f64,
}

fn prog_test_run() -> anyhow::Result<Vec<TestRunRow>> {
    let mut rows = Vec::new();
    let empty =
        raw_bpf::load_constant(raw_bpf::SCHED_CLS, -1).context("loading an empty TC program")?;
    let miss = packet(Ipv4Addr::new(192, 0, 2, 1), 443);
    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        samples.push(f64::from(
            raw_bpf::test_run(empty.as_fd(), &miss, REPEAT, None, 0)?.1,
        ));
    }
    let empty_ns = support::median(samples);
    rows.push(TestRunRow {
        program: "empty",
        rules: 0,
        ns_per_packet: empty_ns,
        miss_ns: empty_ns,
        deep_hit_ns: empty_ns,
        established_ns: empty_ns,
    });
    for count in RULE_COUNTS {
        let config = support::bench_config(&format!("rules-{count}"));
        let result = measure_table(&config, count);
        pinning::cleanup(&config.datapath.pin_path)?;
        rows.push(result?);
    }
    Ok(rows)
}

fn measure_table(config: &Config, count: usize) -> anyhow::Result<TestRunRow> {
    let (text, first) = policy_text(count);
    let started = Instant::now();
    let policy = policy_from_toml("bench.toml", &text)?;
    let table = compile(&[policy], &NodeContext::default())?;
    let (mut datapath, _ring) = EbpfDatapath::load(config)?;
    datapath.install(&table, 1)?;
    let setup = started.elapsed();
    let program = datapath.tc_program(Direction::Ingress)?;
    let time = |data: &[u8], action: u32| -> anyhow::Result<f64> {
        let mut samples = Vec::new();
        for _ in 0..ROUNDS {
            let result = program.test_run(TestRunOptions {
                data_in: Some(data),
                repeat: REPEAT,
                ..TestRunOptions::default()
            })?;
            if result.return_value != action {
                bail!(
                    "unexpected TC action {} for a benchmark packet",
                    result.return_value
                );
            }
            #[expect(
                clippy::cast_precision_loss,
                reason = "nanoseconds of one run fit an f64"
            )]
            samples.push(result.duration.as_nanos() as f64);
        }
        Ok(support::median(samples))
    };
    let miss_ns = time(&packet(Ipv4Addr::new(192, 0, 2, 1), 443), TC_DROP)?;
    // An allowed packet: the first run opens the connection, the rest are
    // conntrack hits (no policy lookup at all).
    let established_ns = time(&packet(first, 443), TC_PASS)?;
    let deep_hit_ns = time(&packet(first, 22), TC_DROP)?;
    println!(
        "  {count:>7} rules: {} prefixes compiled and installed in {:.0} ms",
        table.ingress.prefixes.len(),
        setup.as_secs_f64() * 1e3
    );
    Ok(TestRunRow {
        program: "palisade",
        rules: count,
        ns_per_packet: miss_ns.max(deep_hit_ns),
        miss_ns,
        deep_hit_ns,
        established_ns,
    })
}

/// The generator's and the sink's addresses: the e2e topology's bastion
/// (client namespace) and node.
const GENERATOR: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
const SINK: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);

fn mac(netns: &Netns, interface: &str) -> anyhow::Result<[u8; 6]> {
    let json = netns.ip(&["-j", "link", "show", interface])?;
    let links: serde_json::Value = serde_json::from_str(&json)?;
    let text = links[0]["address"].as_str().context("no MAC address")?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

/// A UDP frame from the generator to the sink.
fn udp_frame(source_mac: [u8; 6], destination_mac: [u8; 6]) -> Vec<u8> {
    let mut data = frame(
        &Connection {
            protocol: protocol::UDP,
            source: IpAddr::V4(GENERATOR),
            destination: IpAddr::V4(SINK),
            destination_port: 9,
        },
        9,
    );
    data[0..6].copy_from_slice(&destination_mac);
    data[6..12].copy_from_slice(&source_mac);
    // The stack drops IPv4 headers with a bad checksum before any nftables
    // hook; the programs under test do not check it.
    let checksum = ipv4_checksum(&data[14..34]);
    data[24..26].copy_from_slice(&checksum.to_be_bytes());
    data
}

/// The RFC 1071 checksum of an IPv4 header whose checksum field is zero.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

#[derive(Clone, Copy)]
enum Method {
    Xdp,
    Tc,
    Nftables,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::Tc => "tc",
            Self::Nftables => "nftables",
        }
    }
}

const DENY_ALL_BUT_SSH: &str = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "ssh-only" }
[spec]
nodeSelector = {}
[[spec.ingress]]
toPorts = [{ ports = [{ port = 22, protocol = "TCP" }] }]
"#;

/// An nftables ruleset dropping the generator's traffic at the earliest
/// inet hook (prerouting, raw priority), with a counter.
const NFT_DROP: &str = "table inet palisade_bench {
  chain prerouting {
    type filter hook prerouting priority raw; policy accept;
    ip saddr 10.200.0.10 counter drop
  }
}
";

/// Drop rates of one method, packets per second.
struct DropRate {
    receive_path: f64,
    through_pair: f64,
    /// For XDP: the receive-path rate of a constant XDP_DROP program.
    ceiling: Option<f64>,
}

/// Sends [`BLAST`] live frames of `data` through `program` run as if on
/// `eth0` of the calling thread's namespace; returns the time taken.
fn live_frames(program: BorrowedFd<'_>, data: &[u8]) -> anyhow::Result<Duration> {
    // SAFETY: if_nametoindex reads a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
    let mut context = [0u8; 24]; // struct xdp_md
    let data_end = u32::try_from(data.len()).unwrap_or(0);
    context[4..8].copy_from_slice(&data_end.to_le_bytes());
    context[12..16].copy_from_slice(&ifindex.to_le_bytes());
    let started = Instant::now();
    raw_bpf::test_run(program, data, BLAST, Some(&context), raw_bpf::LIVE_FRAMES)
        .context("BPF_PROG_TEST_RUN in live-frames mode")?;
    Ok(started.elapsed())
}

fn veth_drop(method: Method) -> anyhow::Result<DropRate> {
    let topology = Topology::new()?;
    let (generator, sink) = (&topology.client, &topology.node);
    let data = udp_frame(mac(generator, "eth0")?, mac(sink, "eth0")?);
    let mut config = support::bench_config(&format!("veth-{}", method.name()));
    config.datapath.interfaces = vec!["eth0".to_owned()];
    config.datapath.xdp_mode = palisade_daemon::config::XdpModeConfig::Native;
    let policies = match method {
        Method::Xdp => {
            config.datapath.prefilter = vec![ipnet::IpNet::from(IpAddr::V4(GENERATOR))];
            Vec::new()
        }
        Method::Tc => vec![policy_from_toml("ssh-only.toml", DENY_ALL_BUT_SSH)?],
        Method::Nftables => Vec::new(),
    };
    let pins = support::PinsRemoved(config.datapath.pin_path.clone());
    // The sink runs palisade in every case (so frames reach it the same way:
    // through its XDP hook); only what drops differs.
    let datapath = sink
        .spawn(move || -> anyhow::Result<EbpfDatapath> {
            let table = compile(&policies, &NodeContext::default())?;
            let (mut datapath, _ring) = EbpfDatapath::load(&config)?;
            datapath.install(&table, 1)?;
            datapath.attach(&config.datapath)?;
            Ok(datapath)
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("sink thread panicked"))??;
    if let Method::Nftables = method {
        let mut nft = sink
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("running nft")?;
        std::io::Write::write_all(
            nft.stdin.as_mut().context("nft stdin")?,
            NFT_DROP.as_bytes(),
        )?;
        if !nft.wait()?.success() {
            bail!("nft refused the bench ruleset");
        }
    }
    let dropped = |datapath: &EbpfDatapath| -> anyhow::Result<u64> {
        Ok(match method {
            Method::Xdp => datapath.counters()?.ingress.dropped_prefilter.packets,
            Method::Tc => datapath.counters()?.ingress.dropped_policy_denied.packets,
            Method::Nftables => nft_counter(sink)?,
        })
    };
    // Receive path: the frames start at the sink's own veth.
    let injector = match method {
        Method::Xdp => datapath.xdp_program()?.fd()?.as_fd().try_clone_to_owned()?,
        Method::Tc | Method::Nftables => raw_bpf::load_constant(raw_bpf::XDP, XDP_PASS)?,
    };
    let before = dropped(&datapath)?;
    let frames = data.clone();
    let elapsed = sink
        .spawn(move || live_frames(injector.as_fd(), &frames))?
        .join()
        .map_err(|_| anyhow::anyhow!("receive-path thread panicked"))??;
    let receive_path = rate(dropped(&datapath)? - before, elapsed)?;
    let ceiling = if let Method::Xdp = method {
        let frames = data.clone();
        let elapsed = sink
            .spawn(move || -> anyhow::Result<Duration> {
                let program = raw_bpf::load_constant(raw_bpf::XDP, XDP_DROP)?;
                live_frames(program.as_fd(), &frames)
            })?
            .join()
            .map_err(|_| anyhow::anyhow!("ceiling thread panicked"))??;
        Some(f64::from(BLAST) / elapsed.as_secs_f64())
    } else {
        None
    };
    // Through the pair: the generator transmits, the sink receives.
    let before = dropped(&datapath)?;
    let elapsed = generator
        .spawn(move || -> anyhow::Result<Duration> {
            let program = raw_bpf::load_constant(raw_bpf::XDP, XDP_TX)?;
            live_frames(program.as_fd(), &data)
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    // Let the sink finish what is queued.
    std::thread::sleep(Duration::from_millis(200));
    let through_pair = rate(dropped(&datapath)? - before, elapsed)?;
    drop(datapath);
    drop(topology);
    drop(pins);
    println!(
        "{:<10} {receive_path:>14.0} {through_pair:>14.0}{}",
        method.name(),
        ceiling.map_or(String::new(), |pps| format!(
            "   (harness ceiling, constant XDP_DROP: {pps:.0})"
        ))
    );
    Ok(DropRate {
        receive_path,
        through_pair,
        ceiling,
    })
}

/// Packets per second; refuses a run where most frames were not dropped.
fn rate(dropped: u64, elapsed: Duration) -> anyhow::Result<f64> {
    if dropped < u64::from(BLAST) * 9 / 10 {
        bail!("only {dropped} of {BLAST} frames were dropped");
    }
    #[expect(clippy::cast_precision_loss, reason = "packet counts fit an f64")]
    Ok(dropped as f64 / elapsed.as_secs_f64())
}

fn nft_counter(sink: &Netns) -> anyhow::Result<u64> {
    let output = sink
        .command("nft")
        .args(["-j", "list", "table", "inet", "palisade_bench"])
        .output()?;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let rules = json["nftables"].as_array().context("nft -j output")?;
    for item in rules {
        if let Some(expressions) = item["rule"]["expr"].as_array() {
            for expression in expressions {
                if let Some(packets) = expression["counter"]["packets"].as_u64() {
                    return Ok(packets);
                }
            }
        }
    }
    bail!("no counter in the nftables bench table")
}

fn main() -> anyhow::Result<()> {
    support::require_root("datapath")?;
    if Command::new("nft").arg("--version").output().is_err() {
        bail!("nft is missing: `cargo xtask setup` installs nftables");
    }
    println!("datapath: BPF_PROG_TEST_RUN x{REPEAT}, median of {ROUNDS}, TC ingress");
    let rows = prog_test_run()?;
    let empty = rows[0].ns_per_packet;
    let at_ten = rows
        .iter()
        .find(|r| r.rules == 10)
        .map_or(f64::NAN, |r| r.ns_per_packet);
    println!(
        "{:<10} {:>8} {:>10} {:>10} {:>10} {:>12} {:>9} {:>11}",
        "program", "rules", "ns/packet", "miss", "/32 hit", "established", "x empty", "x 10 rules"
    );
    for row in &rows {
        println!(
            "{:<10} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>12.1} {:>9.2} {:>11.2}",
            row.program,
            row.rules,
            row.ns_per_packet,
            row.miss_ns,
            row.deep_hit_ns,
            row.established_ns,
            row.ns_per_packet / empty,
            row.ns_per_packet / at_ten
        );
    }
    println!("veth drop rate, packets/s ({BLAST} UDP frames each):");
    println!(
        "{:<10} {:>14} {:>14}",
        "method", "receive path", "through pair"
    );
    let mut drops = Vec::new();
    for method in [Method::Xdp, Method::Tc, Method::Nftables] {
        let rate =
            veth_drop(method).with_context(|| format!("measuring {} drops", method.name()))?;
        drops.push((method.name(), rate));
    }
    let of = |name: &str| {
        drops
            .iter()
            .find(|(method, _)| *method == name)
            .map(|(_, rate)| (rate.receive_path, rate.through_pair))
    };
    if let (Some(xdp), Some(nft)) = (of("xdp"), of("nftables")) {
        println!(
            "XDP / nftables: {:.1}x on the receive path, {:.1}x through the pair",
            xdp.0 / nft.0,
            xdp.1 / nft.1
        );
    }
    let json = serde_json::json!({
        "prog_test_run": rows.iter().map(|row| serde_json::json!({
            "program": row.program,
            "rules": row.rules,
            "ns_per_packet": row.ns_per_packet,
            "miss_ns_per_packet": row.miss_ns,
            "deep_hit_ns_per_packet": row.deep_hit_ns,
            "established_ns_per_packet": row.established_ns,
        })).collect::<Vec<_>>(),
        "veth_drop": drops.iter().map(|(method, rate)| serde_json::json!({
            "method": method,
            "pps": rate.receive_path,
            "through_pair_pps": rate.through_pair,
        })).collect::<Vec<_>>(),
        "veth_harness_ceiling_pps": drops.iter().find_map(|(_, rate)| rate.ceiling),
    });
    support::write_result("datapath.json", &json)
}
