//! The eBPF backend: the XDP ingress program and its maps.
//!
//! Tables are double-buffered. Each install writes the slot packets are not
//! using, then switches `ACTIVE_SLOT` with one map update, so a packet is
//! judged by exactly one complete table.

use std::ffi::CString;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{Xdp, XdpMode},
};
use ipnet::IpNet;
use palisade_api::{Counters, InterfaceStatus, PacketCount};
use palisade_common::{
    ACTIVE_SLOT_MAP, Address, COUNTERS_MAP, Counter, CounterValue, DEFAULT_PREFIX_CAPACITY,
    DEFAULT_RULE_SET_CAPACITY, FLOW_EVENTS_MAP, INGRESS_PREFIX_MAPS, INGRESS_RULE_SET_MAPS,
    IPV4_MAPPED_PREFIX_LEN, MAX_ENTRIES_PER_RULE_SET, PortEntry, RuleSet, SLOT_SETTINGS_MAP,
    SlotSettings, XDP_INGRESS_PROGRAM,
};
use palisade_policy::CompiledTable;
use tracing::{info, warn};

use super::{Datapath, MapUsage};
use crate::config::{DatapathConfig, XdpModeConfig};

/// The compiled eBPF object, built by build.rs.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade"));

/// The loaded programs and the maps userspace writes.
pub struct EbpfDatapath {
    /// Owns the programs and their XDP links; dropping it detaches them.
    ebpf: Ebpf,
    interfaces: Vec<InterfaceStatus>,
    active_slot: Array<MapData, u32>,
    slot_settings: Array<MapData, SlotSettings>,
    prefixes: [LpmTrie<MapData, Address, u32>; 2],
    rule_sets: [Array<MapData, RuleSet>; 2],
    counters: PerCpuArray<MapData, CounterValue>,
    /// Rule sets written to each slot by the last install there.
    rule_sets_written: [usize; 2],
    /// Keys written to each slot's trie, so the next install can remove them.
    written_keys: [Vec<Key<Address>>; 2],
    /// Whether forwarded packets produce flow events.
    forward_events: bool,
    active: u32,
}

impl EbpfDatapath {
    /// Loads the programs (attached nowhere yet) and hands back the
    /// flow-event ring buffer for the reader task. `forward_events`: whether
    /// forwarded packets produce flow events (drops and audits always do).
    ///
    /// # Errors
    ///
    /// When loading fails: no BPF permission, or a verifier rejection.
    pub fn load(forward_events: bool) -> anyhow::Result<(Self, RingBuf<MapData>)> {
        let mut ebpf = EbpfLoader::new()
            .load(PROGRAMS)
            .context("loading the eBPF programs (palisaded needs CAP_BPF and CAP_NET_ADMIN)")?;
        let program: &mut Xdp = ebpf
            .program_mut(XDP_INGRESS_PROGRAM)
            .ok_or_else(|| anyhow!("program {XDP_INGRESS_PROGRAM} missing from the eBPF object"))?
            .try_into()?;
        program
            .load()
            .context("the kernel refused the XDP program")?;
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
        };
        let flow_events = RingBuf::try_from(take(FLOW_EVENTS_MAP)?)?;
        let datapath = Self {
            active_slot: Array::try_from(take(ACTIVE_SLOT_MAP)?)?,
            slot_settings: Array::try_from(take(SLOT_SETTINGS_MAP)?)?,
            prefixes: [
                LpmTrie::try_from(take(INGRESS_PREFIX_MAPS[0])?)?,
                LpmTrie::try_from(take(INGRESS_PREFIX_MAPS[1])?)?,
            ],
            rule_sets: [
                Array::try_from(take(INGRESS_RULE_SET_MAPS[0])?)?,
                Array::try_from(take(INGRESS_RULE_SET_MAPS[1])?)?,
            ],
            counters: PerCpuArray::try_from(take(COUNTERS_MAP)?)?,
            written_keys: [Vec::new(), Vec::new()],
            rule_sets_written: [0, 0],
            active: 0,
            forward_events,
            interfaces: Vec::new(),
            ebpf,
        };
        Ok((datapath, flow_events))
    }
}

impl EbpfDatapath {
    /// The loaded XDP program, for `BPF_PROG_TEST_RUN` (tests, benchmarks).
    ///
    /// # Errors
    ///
    /// When the object has no XDP ingress program (a build error).
    pub fn xdp_program(&self) -> anyhow::Result<&Xdp> {
        Ok(self
            .ebpf
            .program(XDP_INGRESS_PROGRAM)
            .ok_or_else(|| anyhow!("program {XDP_INGRESS_PROGRAM} missing from the eBPF object"))?
            .try_into()?)
    }
}

fn attach_xdp(
    program: &mut Xdp,
    ifindex: u32,
    mode: XdpModeConfig,
) -> anyhow::Result<&'static str> {
    match mode {
        XdpModeConfig::Native => {
            program.attach(ifindex, XdpMode::Driver)?;
            Ok("native")
        }
        XdpModeConfig::Generic => {
            program.attach(ifindex, XdpMode::Skb)?;
            Ok("generic")
        }
        XdpModeConfig::Auto => match program.attach(ifindex, XdpMode::Driver) {
            Ok(_) => Ok("native"),
            Err(error) => {
                info!(ifindex, %error, "native XDP unavailable, using generic mode");
                program.attach(ifindex, XdpMode::Skb)?;
                Ok("generic")
            }
        },
    }
}

/// The trie key of a prefix: IPv4 as IPv4-mapped IPv6.
fn prefix_key(prefix: &IpNet) -> Key<Address> {
    match prefix {
        IpNet::V4(net) => Key::new(
            IPV4_MAPPED_PREFIX_LEN + u32::from(net.prefix_len()),
            net.network().to_ipv6_mapped().octets(),
        ),
        IpNet::V6(net) => Key::new(u32::from(net.prefix_len()), net.network().octets()),
    }
}

/// The key covering every IPv4 address (`::ffff:0:0/96`).
fn all_ipv4_key() -> Key<Address> {
    prefix_key(&IpNet::V4(ipnet::Ipv4Net::default()))
}

fn rule_set(entries: &[PortEntry]) -> anyhow::Result<RuleSet> {
    let mut set = RuleSet::default();
    if entries.len() > MAX_ENTRIES_PER_RULE_SET {
        return Err(anyhow!(
            "rule set of {} entries is too large",
            entries.len()
        ));
    }
    set.entries[..entries.len()].copy_from_slice(entries);
    set.len = u32::try_from(entries.len())?;
    Ok(set)
}

impl Datapath for EbpfDatapath {
    fn name(&self) -> &'static str {
        "ebpf-xdp"
    }

    fn install(&mut self, table: &CompiledTable, generation: u32) -> anyhow::Result<()> {
        let slot = 1 - self.active;
        let index = slot as usize;
        for key in self.written_keys[index].drain(..) {
            self.prefixes[index].remove(&key)?;
        }
        for (i, entries) in table.ingress.rule_sets.iter().enumerate() {
            self.rule_sets[index]
                .set(u32::try_from(i)?, &rule_set(entries)?, 0)
                .context("writing a rule set (raise the rule-set capacity)")?;
        }
        let mut keys = Vec::with_capacity(table.ingress.prefixes.len() + 1);
        // IPv6 prefixes that contain the IPv4-mapped range (::/0 and the like)
        // must not apply to IPv4 packets: an IPv4 root with no rules stops the
        // lookup there. A real IPv4 /0, written after it, replaces it.
        let all_ipv4 = all_ipv4_key();
        if table.ingress.prefixes.iter().any(|p| {
            matches!(p.prefix, IpNet::V6(net) if net.prefix_len() <= 96
                && net.contains(&std::net::Ipv4Addr::UNSPECIFIED.to_ipv6_mapped()))
        }) {
            self.prefixes[index].insert(&all_ipv4, &0, 0)?;
            keys.push(all_ipv4);
        }
        for entry in &table.ingress.prefixes {
            let key = prefix_key(&entry.prefix);
            self.prefixes[index]
                .insert(&key, &entry.rule_set, 0)
                .with_context(|| format!("writing prefix {}", entry.prefix))?;
            keys.push(key);
        }
        self.written_keys[index] = keys;
        self.rule_sets_written[index] = table.ingress.rule_sets.len();
        let settings = SlotSettings {
            generation,
            ingress_default_deny: u8::from(table.ingress.default_deny),
            audit: u8::from(table.audit),
            forward_events: u8::from(self.forward_events),
            pad: 0,
        };
        self.slot_settings.set(slot, &settings, 0)?;
        // The switch: one 4-byte map update.
        self.active_slot.set(0, &slot, 0)?;
        self.active = slot;
        Ok(())
    }

    fn attach(&mut self, config: &DatapathConfig) -> anyhow::Result<()> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(XDP_INGRESS_PROGRAM)
            .ok_or_else(|| anyhow!("program {XDP_INGRESS_PROGRAM} missing from the eBPF object"))?
            .try_into()?;
        for name in &config.interfaces {
            let c_name = CString::new(name.as_str())
                .with_context(|| format!("interface name {name:?} contains a NUL byte"))?;
            // SAFETY: c_name is a valid NUL-terminated string.
            let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
            if ifindex == 0 {
                return Err(anyhow!(
                    "interface {name:?} does not exist; fix `datapath.interfaces` in the config"
                ));
            }
            let mode = attach_xdp(program, ifindex, config.xdp_mode)
                .with_context(|| format!("attaching XDP to {name}"))?;
            info!(interface = %name, ifindex, mode, "XDP attached");
            self.interfaces.push(InterfaceStatus {
                name: name.clone(),
                ifindex,
                xdp_mode: mode.to_owned(),
            });
        }
        if self.interfaces.is_empty() {
            warn!("no interfaces configured in `datapath.interfaces`: nothing is enforced");
        }
        Ok(())
    }

    fn interfaces(&self) -> Vec<InterfaceStatus> {
        self.interfaces.clone()
    }

    fn counters(&self) -> anyhow::Result<Counters> {
        let read = |counter: Counter| -> anyhow::Result<PacketCount> {
            let per_cpu = self.counters.get(&(counter as u32), 0)?;
            Ok(PacketCount {
                packets: per_cpu.iter().map(|value| value.packets).sum(),
                bytes: per_cpu.iter().map(|value| value.bytes).sum(),
            })
        };
        Ok(Counters {
            forwarded: read(Counter::Forwarded)?,
            dropped_policy_denied: read(Counter::DroppedPolicyDenied)?,
            dropped_policy_deny: read(Counter::DroppedPolicyDeny)?,
            audited_policy_denied: read(Counter::AuditedPolicyDenied)?,
            audited_policy_deny: read(Counter::AuditedPolicyDeny)?,
            events_lost: read(Counter::EventsLost)?.packets,
        })
    }

    fn map_usage(&self) -> Vec<MapUsage> {
        let active = self.active as usize;
        vec![
            MapUsage {
                map: "ingress_prefixes",
                entries: self.written_keys[active].len(),
                capacity: DEFAULT_PREFIX_CAPACITY as usize,
            },
            MapUsage {
                map: "ingress_rule_sets",
                entries: self.rule_sets_written[active],
                capacity: DEFAULT_RULE_SET_CAPACITY as usize,
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_keys_are_mapped() {
        let key = prefix_key(&"10.1.0.0/16".parse().unwrap());
        assert_eq!(key.prefix_len(), 112);
        assert_eq!(key.data()[10..14], [0xff, 0xff, 10, 1]);
        assert_eq!(all_ipv4_key().prefix_len(), 96);
        let key = prefix_key(&"2001:db8::/32".parse().unwrap());
        assert_eq!((key.prefix_len(), key.data()[0]), (32, 0x20));
    }
}
