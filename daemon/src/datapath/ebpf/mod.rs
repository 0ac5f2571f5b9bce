//! The eBPF backend: TC ingress and egress programs with conntrack, the XDP
//! prefilter, and their maps.
//!
//! Tables are double-buffered. Each install writes the slot packets are not
//! using, then switches `ACTIVE_SLOT` with one map update, so a packet is
//! judged by exactly one complete table. Before a slot is rewritten, an RCU
//! grace period (`membarrier(MEMBARRIER_CMD_GLOBAL)`) makes sure no program
//! run that saw it as live is still reading it.

use std::{collections::BTreeMap, ffi::CString, path::PathBuf, sync::Arc};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf},
    programs::{SchedClassifier, TcAttachType, Xdp},
    util::nr_cpus,
};
use ipnet::IpNet;
use palisade_api::{
    Counters, DirectionCounters, InterfaceState, InterfaceStatus, KernelFeatures, PacketCount,
};
use palisade_common::{
    ACTIVE_SLOT_MAP, COUNTER_COUNT, COUNTERS_MAP, CT_ANY_MAP, CT_TCP_MAP, Counter, CounterValue,
    CtEntry, CtKey, CtTimeouts, DEFAULT_RULE_CAPACITY, FAILSAFE_MAP, FAILSAFE_WORDS,
    FLOW_EVENTS_MAP, NO_RULE, PREFIX_MAPS, PREFIX_MASKS_MAP, PREFIX_V4_MAPS, PrefixKey,
    RULE_COUNTER_MAPS, RULE_SET_MAPS, SLOT_SETTINGS_MAP, SlotSettings, TC_EGRESS_PROGRAM,
    TC_INGRESS_PROGRAM, XDP_PREFILTER_PROGRAM, ct_flag, default_deny, direction, failsafe_bit,
    prefix_mask, table,
};
use palisade_policy::{
    CompiledTable,
    compile::{DirectionTable, TableChanges},
};
use tracing::{info, warn};

pub mod conntrack;
pub mod events;
pub mod kernel_probe;
mod map_batch;
pub mod pinning;
mod slot_record;
mod table_slot;
mod tc_filter;

#[cfg(test)]
mod differential_tests;

use self::{
    pinning::{HeldLink, LinkPins},
    slot_record::{SlotPlan, SlotRecord, prefix_key},
    table_slot::{CatchUp, FlatTable, TableSlot},
};
use super::{
    ConnectionTables, Datapath, DatapathError, EnforcementSettings, MapUsage, Repair, TableFill,
    TrackedConnection,
};
use crate::config::{Config, CtFullAction, DatapathConfig, TcAttachConfig, XdpModeConfig};

/// The compiled eBPF object, built by build.rs.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade"));

/// The loaded programs and the maps userspace writes.
pub struct EbpfDatapath {
    /// Owns the programs (their links are pinned, so dropping this leaves
    /// enforcement in place).
    ebpf: Ebpf,
    pin_path: PathBuf,
    /// The configured interfaces and their links.
    attachments: Vec<Attachment>,
    /// How XDP is attached (`datapath.xdp_mode`), for re-attaching.
    xdp_mode: XdpModeConfig,
    /// How TC is attached (`datapath.attach`), for re-attaching.
    tc_attach: TcAttachConfig,
    /// The pinned connection tables, opened from their pins, to pin them
    /// again when the pins are removed.
    pinned_maps: Vec<(PathBuf, std::os::fd::OwnedFd)>,
    /// Capacities of the connection tables (TCP, other).
    connections_capacity: [usize; 2],
    active_slot: Array<MapData, u32>,
    slot_settings: Array<MapData, SlotSettings>,
    /// Each slot's policy maps with the record of what they hold; `None`
    /// while lent to the thread catching the idle slot up.
    slots: [Option<TableSlot>; 2],
    rule_counters: [PerCpuArray<MapData, CounterValue>; 2],
    counters: PerCpuArray<MapData, CounterValue>,
    /// The conntrack tables: TCP, and everything else.
    connections: [HashMap<MapData, CtKey, CtEntry>; 2],
    /// The last table installed (its serial) and its changes, which lead
    /// from the table the idle slot holds when the chain is unbroken.
    last_install: Option<(u64, Arc<TableChanges>)>,
    /// Rules written to each slot by the last install there.
    rules_written: [usize; 2],
    /// What every slot carries besides the policy (staged settings).
    template: SlotSettings,
    /// Prefixes the config's prefilter list adds to every table (staged).
    config_prefilter: Vec<IpNet>,
    /// Each slot's failsafe bitmap ([`FAILSAFE_WORDS`] words a slot).
    failsafe: Array<MapData, u64>,
    /// The staged failsafe bitmap: its non-zero words by index.
    failsafe_words: BTreeMap<u32, u64>,
    /// Indexes of the non-zero words the last install wrote to each slot.
    failsafe_written: [Vec<u32>; 2],
    policy_map_max: u32,
    /// Rule sets each slot holds (`datapath.rule_set_max`).
    rule_set_max: u32,
    active: u32,
    /// Whether a switch happened whose grace period has not been seen to
    /// end: until it has, the idle slot may still have readers.
    switched: bool,
    /// The idle slot, lent right after the switch to a thread that waits
    /// for that grace period and then writes the new table into it too, so
    /// that an apply waits only when it comes before that is done.
    catching_up: Option<CatchUp>,
}

/// The conntrack tables on handles of their own.
struct EbpfConnectionTables {
    tables: Vec<(&'static str, usize, HashMap<MapData, CtKey, CtEntry>)>,
}

impl ConnectionTables for EbpfConnectionTables {
    fn list(&self, limit: usize) -> anyhow::Result<(Vec<TrackedConnection>, usize)> {
        let now = crate::clock::monotonic();
        let mut found = Vec::new();
        let mut total = 0;
        for (_, _, map) in &self.tables {
            // An entry the LRU evicts mid-walk ends the walk early; what
            // was read so far is still true.
            for (key, entry) in map.iter().map_while(Result::ok) {
                if let Some(connection) = conntrack::tracked(&key, &entry, now) {
                    total += 1;
                    if found.len() < limit {
                        found.push(connection);
                    }
                }
            }
        }
        Ok((found, total))
    }

    fn count(&self) -> anyhow::Result<Vec<TableFill>> {
        let now = crate::clock::monotonic();
        let cpus = usize::try_from(nr_cpus().map_err(|(_, e)| e)?.get())?;
        Ok(self
            .tables
            .iter()
            .map(|(table, capacity, map)| TableFill {
                table,
                capacity: *capacity,
                evicting_from: super::lru_evicting_from(*capacity, cpus),
                // An entry the LRU evicts mid-walk ends the walk early.
                entries: map
                    .iter()
                    .map_while(Result::ok)
                    .filter(|(key, entry)| conntrack::tracked(key, entry, now).is_some())
                    .count(),
            })
            .collect())
    }
}

/// One configured interface and the links palisaded holds on it (none
/// while the interface is gone).
struct Attachment {
    name: String,
    /// Its index when the links were made.
    ifindex: u32,
    /// `"tcx"` or `"tc"` (cls_bpf filters).
    tc_hook: &'static str,
    xdp_mode: &'static str,
    links: Vec<HeldLink>,
}

/// The index of interface `name`; 0 when there is none.
fn interface_index(name: &str) -> anyhow::Result<u32> {
    let c_name = CString::new(name)
        .with_context(|| format!("interface name {name:?} contains a NUL byte"))?;
    // SAFETY: c_name is a valid NUL-terminated string.
    Ok(unsafe { libc::if_nametoindex(c_name.as_ptr()) })
}

/// A prefix map or conntrack capacity that the kernel needs at least 1 of.
fn capacity(name: &str, value: u32) -> anyhow::Result<u32> {
    if value == 0 {
        return Err(anyhow!("datapath.{name} must be at least 1"));
    }
    Ok(value)
}

/// A directory in the pin path (bpffs holds no plain files) saying that its
/// conntrack tables hold canonical keys ([`CtKey::canonical`]); an earlier
/// version's pin path lacks it.
const CANONICAL_CONNTRACK_MARKER: &str = "conntrack-canonical";

impl EbpfDatapath {
    /// Loads the programs (attached nowhere yet), reusing the connection
    /// state pinned under `datapath.pin_path` by an earlier run, and hands
    /// back the flow-event ring buffer for the reader task.
    ///
    /// # Errors
    ///
    /// When loading fails: a kernel without what the programs need (one
    /// line naming it), no BPF permission, no bpffs, a verifier rejection,
    /// or pinned state of another size than configured.
    pub fn load(config: &Config) -> anyhow::Result<(Self, RingBuf<MapData>)> {
        kernel_probe::KernelSupport::probe().check()?;
        let datapath = &config.datapath;
        pinning::prepare(&datapath.pin_path)?;
        let policy_map_max = capacity("policy_map_max", datapath.policy_map_max)?;
        let rule_set_max = capacity("rule_set_max", datapath.rule_set_max)?;
        let mut loader = EbpfLoader::new();
        loader
            .default_map_pin_directory(&datapath.pin_path)
            .map_max_entries(PREFIX_MAPS[0], policy_map_max)
            .map_max_entries(PREFIX_MAPS[1], policy_map_max)
            .map_max_entries(PREFIX_V4_MAPS[0], policy_map_max)
            .map_max_entries(PREFIX_V4_MAPS[1], policy_map_max)
            .map_max_entries(RULE_SET_MAPS[0], rule_set_max)
            .map_max_entries(RULE_SET_MAPS[1], rule_set_max)
            .map_max_entries(CT_TCP_MAP, capacity("ct_tcp_max", datapath.ct_tcp_max)?)
            .map_max_entries(CT_ANY_MAP, capacity("ct_any_max", datapath.ct_any_max)?);
        let mut ebpf = loader.load(PROGRAMS).map_err(|error| match error {
            EbpfError::MapError(MapError::IncompatiblePinnedMap { name, property, expected, actual }) => anyhow!(
                "the connection table {name} pinned under {} has {property} {actual}, the config asks for {expected}; \
                 `palisaded --cleanup` removes it (tracked connections are then judged anew), or set the old size back",
                datapath.pin_path.display()
            ),
            error => anyhow::Error::new(error)
                .context("loading the eBPF programs (palisaded needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"),
        })?;
        program_mut::<Xdp>(&mut ebpf, XDP_PREFILTER_PROGRAM)?
            .load()
            .context("the kernel refused the XDP prefilter")?;
        for name in [TC_INGRESS_PROGRAM, TC_EGRESS_PROGRAM] {
            program_mut::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .with_context(|| format!("the kernel refused {name}"))?;
        }
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
        };
        let flow_events = RingBuf::try_from(take(FLOW_EVENTS_MAP)?)?;
        let mut masks: Array<MapData, [u32; 4]> = Array::try_from(take(PREFIX_MASKS_MAP)?)?;
        for length in 0..=128u32 {
            masks.set(length, &prefix_mask(length), 0)?;
        }
        let failsafe = Array::try_from(take(FAILSAFE_MAP)?)?;
        let mut take_slot = |slot: usize| -> anyhow::Result<TableSlot> {
            Ok(TableSlot {
                prefixes: HashMap::try_from(take(PREFIX_MAPS[slot])?)?,
                prefixes_v4: HashMap::try_from(take(PREFIX_V4_MAPS[slot])?)?,
                rule_sets: Array::try_from(take(RULE_SET_MAPS[slot])?)?,
                record: SlotRecord::default(),
            })
        };
        let slots = [Some(take_slot(0)?), Some(take_slot(1)?)];
        let mut datapath = Self {
            active_slot: Array::try_from(take(ACTIVE_SLOT_MAP)?)?,
            slot_settings: Array::try_from(take(SLOT_SETTINGS_MAP)?)?,
            slots,
            rule_counters: [
                PerCpuArray::try_from(take(RULE_COUNTER_MAPS[0])?)?,
                PerCpuArray::try_from(take(RULE_COUNTER_MAPS[1])?)?,
            ],
            counters: PerCpuArray::try_from(take(COUNTERS_MAP)?)?,
            connections: [
                HashMap::try_from(take(CT_TCP_MAP)?)?,
                HashMap::try_from(take(CT_ANY_MAP)?)?,
            ],
            last_install: None,
            rules_written: [0, 0],
            template: SlotSettings::default(),
            config_prefilter: Vec::new(),
            failsafe,
            failsafe_words: BTreeMap::new(),
            failsafe_written: [Vec::new(), Vec::new()],
            policy_map_max,
            rule_set_max,
            active: 0,
            switched: false,
            catching_up: None,
            pin_path: datapath.pin_path.clone(),
            attachments: Vec::new(),
            xdp_mode: XdpModeConfig::default(),
            tc_attach: TcAttachConfig::default(),
            pinned_maps: Vec::new(),
            connections_capacity: [datapath.ct_tcp_max as usize, datapath.ct_any_max as usize],
            ebpf,
        };
        datapath.stage(&EnforcementSettings::from_config(config))?;
        for name in [CT_TCP_MAP, CT_ANY_MAP] {
            let path = datapath.pin_path.join(name);
            let fd = pinning::open_pin(&path)?;
            datapath.pinned_maps.push((path, fd));
        }
        // Once per pin directory: the tables pinned from then on are
        // canonical, so later starts do not walk them again.
        let marker = datapath.pin_path.join(CANONICAL_CONNTRACK_MARKER);
        if !marker.exists() {
            let migrated = datapath.canonicalize_connections()?;
            if migrated > 0 {
                info!(
                    connections = migrated,
                    "rewrote pinned conntrack entries of an earlier version under their canonical keys"
                );
            }
            std::fs::create_dir(&marker)
                .with_context(|| format!("creating {}", marker.display()))?;
        }
        Ok((datapath, flow_events))
    }

    /// Moves conntrack entries pinned by a version that keyed connections in
    /// the opener's order to their canonical key ([`CtKey::canonical`]), so
    /// an upgrade keeps tracked connections. A canonical key never needs
    /// reversing, so an entry whose key does is of the old kind.
    fn canonicalize_connections(&mut self) -> anyhow::Result<usize> {
        let mut moved = 0;
        for table in &mut self.connections {
            let old: Vec<(CtKey, CtEntry)> = table
                .iter()
                .map_while(Result::ok)
                .filter(|(key, entry)| key.reverses() && entry.flags & ct_flag::KEY_REVERSED == 0)
                .collect();
            for (key, mut entry) in old {
                entry.flags |= ct_flag::KEY_REVERSED;
                table
                    .insert(&key.reversed(), &entry, 0)
                    .context("rewriting a pinned conntrack entry")?;
                match table.remove(&key) {
                    Ok(()) | Err(MapError::KeyNotFound) => moved += 1,
                    Err(error) => return Err(error).context("removing a pinned conntrack entry"),
                }
            }
        }
        Ok(moved)
    }

    /// Attaches the TC programs and the XDP prefilter to one interface
    /// (adopting pinned links), holding the links.
    fn attach_interface(&mut self, name: &str, ifindex: u32) -> anyhow::Result<Attachment> {
        let pins = LinkPins::new(&self.pin_path);
        // TC first: it enforces everything; XDP only drops earlier.
        let mut links = Vec::new();
        let mut tc_hook = "tcx";
        for (program, attach_type) in [
            (TC_INGRESS_PROGRAM, TcAttachType::Ingress),
            (TC_EGRESS_PROGRAM, TcAttachType::Egress),
        ] {
            let program = program_mut::<SchedClassifier>(&mut self.ebpf, program)?;
            let (hook, link) = pins
                .attach_tc(program, name, ifindex, attach_type, self.tc_attach)
                .with_context(|| format!("attaching TC to {name}"))?;
            tc_hook = hook;
            links.push(link);
        }
        let xdp = program_mut::<Xdp>(&mut self.ebpf, XDP_PREFILTER_PROGRAM)?;
        let (xdp_mode, link) = pins
            .attach_xdp(xdp, name, ifindex, self.xdp_mode)
            .with_context(|| format!("attaching XDP to {name}"))?;
        links.push(link);
        Ok(Attachment {
            name: name.to_owned(),
            ifindex,
            tc_hook,
            xdp_mode,
            links,
        })
    }

    /// The XDP prefilter, for `BPF_PROG_TEST_RUN` (tests, benchmarks).
    ///
    /// # Errors
    ///
    /// When the object lacks the program (a build error).
    pub fn xdp_program(&self) -> anyhow::Result<&Xdp> {
        program(&self.ebpf, XDP_PREFILTER_PROGRAM)
    }

    /// The TC program of one direction, for `BPF_PROG_TEST_RUN`.
    ///
    /// # Errors
    ///
    /// When the object lacks the program (a build error).
    pub fn tc_program(&self, way: palisade_policy::Direction) -> anyhow::Result<&SchedClassifier> {
        program(
            &self.ebpf,
            match way {
                palisade_policy::Direction::Ingress => TC_INGRESS_PROGRAM,
                palisade_policy::Direction::Egress => TC_EGRESS_PROGRAM,
            },
        )
    }
}

fn program<'a, T>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<&'a T>
where
    &'a T: TryFrom<&'a aya::programs::Program, Error = aya::programs::ProgramError>,
{
    Ok(ebpf
        .program(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()?)
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()?)
}

fn sum(per_cpu: &PerCpuValues<CounterValue>) -> PacketCount {
    PacketCount {
        packets: per_cpu.iter().map(|value| value.packets).sum(),
        bytes: per_cpu.iter().map(|value| value.bytes).sum(),
    }
}

/// Waits for an RCU grace period: every BPF program run that started before
/// this call has finished (`membarrier(MEMBARRIER_CMD_GLOBAL)` is
/// `synchronize_rcu()`, and TC and XDP programs run inside RCU read sections).
fn wait_for_readers() -> anyhow::Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(
            "membarrier(MEMBARRIER_CMD_GLOBAL) failed; cannot retire the old table safely",
        );
    }
    Ok(())
}

impl EbpfDatapath {
    /// The keys of the prefilter and strict tables with their map values:
    /// the rule id for the prefilter (the lowest wins a shared prefix; the
    /// config's entries have none), `NO_RULE` for strict.
    fn listed_keys(&self, table: &CompiledTable) -> BTreeMap<PrefixKey, u32> {
        let mut keys = BTreeMap::new();
        let prefilter = table
            .prefilter
            .iter()
            .map(|entry| (entry.prefix, entry.rule_id))
            .chain(
                self.config_prefilter
                    .iter()
                    .map(|prefix| (*prefix, NO_RULE)),
            );
        for (prefix, rule_id) in prefilter {
            keys.entry(prefix_key(table::PREFILTER, &prefix))
                .and_modify(|existing: &mut u32| *existing = (*existing).min(rule_id))
                .or_insert(rule_id);
        }
        for prefix in &table.strict {
            keys.insert(prefix_key(table::STRICT, prefix), NO_RULE);
        }
        keys
    }
}

/// The datapath's code for a direction's default deny.
fn default_deny_code(rows: &DirectionTable) -> u8 {
    match (rows.default_deny, rows.default_deny_audited) {
        (false, _) => default_deny::OFF,
        (true, false) => default_deny::DROP,
        (true, true) => default_deny::AUDIT,
    }
}

impl EbpfDatapath {
    /// Refuses a table larger than the maps were sized for: `keys` IPv4
    /// and IPv6 prefix keys, `rule_set_count` rule sets.
    fn check_capacity(
        &self,
        (v4, v6): (usize, usize),
        rule_set_count: usize,
    ) -> Result<(), DatapathError> {
        for (family_name, count) in [("IPv4", v4), ("IPv6", v6)] {
            if count > self.policy_map_max as usize {
                return Err(DatapathError::Capacity(format!(
                    "the policies need {count} {family_name} prefix entries, more than datapath.policy_map_max = {}; raise it or merge prefixes",
                    self.policy_map_max
                )));
            }
        }
        if rule_set_count > self.rule_set_max as usize {
            return Err(DatapathError::Capacity(format!(
                "the policies need {rule_set_count} distinct rule sets, more than datapath.rule_set_max = {}; raise it (388 bytes per set and slot) or give more prefixes the same rules",
                self.rule_set_max
            )));
        }
        Ok(())
    }

    /// Takes the idle slot back from the thread catching it up, if it is
    /// lent, or else waits for the grace period of the last switch if it
    /// has not been seen to end: until then the idle slot may have readers.
    fn reclaim_idle_slot(&mut self) -> anyhow::Result<&mut TableSlot> {
        let index = 1 - self.active as usize;
        if let Some(catching_up) = self.catching_up.take() {
            let (slot, result) = catching_up.join().map_err(|_| {
                anyhow!("the thread writing the idle table slot panicked; restart palisaded")
            })?;
            self.slots[index] = Some(slot);
            if let Err(error) = result {
                warn!(
                    error = format!("{error:#}"),
                    "could not bring the idle table slot up to date; the next install compares it key by key"
                );
                wait_for_readers()?;
            }
            self.switched = false;
        }
        if self.switched {
            wait_for_readers()?;
            self.switched = false;
        }
        self.slots[index]
            .as_mut()
            .ok_or_else(|| anyhow!("the idle table slot is missing"))
    }

    /// Writes `table` into the idle slot as `plan` says and switches to it.
    fn write_and_switch(
        &mut self,
        plan: &SlotPlan,
        table: &CompiledTable,
        flat: FlatTable,
        listed: BTreeMap<PrefixKey, u32>,
        generation: u32,
    ) -> anyhow::Result<()> {
        let slot = 1 - self.active;
        let index = slot as usize;
        let idle = self.reclaim_idle_slot()?;
        idle.write(plan, &flat)?;
        let lengths = idle.record.lengths();
        let rules = table.rules.len().min(DEFAULT_RULE_CAPACITY as usize);
        let zeroed = u32::try_from(rules.max(self.rules_written[index]))?;
        map_batch::zero_per_cpu(
            aya::maps::IterableMap::map(&self.rule_counters[index]),
            zeroed,
            std::mem::size_of::<CounterValue>(),
        )
        .context("zeroing the rule counters")?;
        let failsafe_base = slot * FAILSAFE_WORDS;
        for word in &self.failsafe_written[index] {
            if !self.failsafe_words.contains_key(word) {
                self.failsafe.set(failsafe_base + word, &0, 0)?;
            }
        }
        for (word, bits) in &self.failsafe_words {
            self.failsafe
                .set(failsafe_base + word, bits, 0)
                .context("writing the failsafe services")?;
        }
        self.failsafe_written[index] = self.failsafe_words.keys().copied().collect();
        self.rules_written[index] = rules;
        let settings = SlotSettings {
            generation,
            ingress_default_deny: default_deny_code(&table.ingress),
            egress_default_deny: default_deny_code(&table.egress),
            audit: u8::from(table.audit),
            lengths,
            ..self.template
        };
        self.slot_settings.set(slot, &settings, 0)?;
        // The switch: one 4-byte map update.
        self.active_slot.set(0, &slot, 0)?;
        let retired = self.active as usize;
        self.active = slot;
        self.switched = true;
        self.last_install = flat.changes.clone().map(|changes| (flat.serial, changes));
        if let Some(retired) = self.slots[retired].take() {
            self.catching_up = Some(retired.catch_up(flat, listed, wait_for_readers));
        }
        Ok(())
    }
}

impl Datapath for EbpfDatapath {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn kernel_features(&self) -> KernelFeatures {
        KernelFeatures {
            release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|text| text.trim().to_owned())
                .unwrap_or_default(),
            btf: std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
            bpffs: pinning::is_bpffs(std::path::Path::new(pinning::BPF_FS_ROOT)).unwrap_or(false),
        }
    }

    fn stage(&mut self, settings: &EnforcementSettings) -> anyhow::Result<()> {
        let mut words = BTreeMap::new();
        let services = [
            (direction::INGRESS, &settings.failsafe_inbound),
            (direction::EGRESS, &settings.failsafe_outbound),
        ];
        for (way, list) in services {
            for service in list {
                let (index, bit) = failsafe_bit(way, service.protocol.code(), service.port)
                    .with_context(|| format!("failsafe service {service}: not TCP, UDP or SCTP"))?;
                *words.entry(index).or_insert(0) |= bit;
            }
        }
        self.failsafe_words = words;
        self.config_prefilter.clone_from(&settings.prefilter);
        self.template = SlotSettings {
            forward_sample_rate: settings.forward_sample_rate,
            events_per_second: settings.events_per_second,
            ct_timeouts: CtTimeouts::from(settings.ct_timeouts),
            ct_full_drop: u8::from(settings.ct_full == CtFullAction::Drop),
            ..SlotSettings::default()
        };
        Ok(())
    }

    fn install(&mut self, table: &CompiledTable, generation: u32) -> Result<(), DatapathError> {
        let flat = FlatTable::of(table);
        let listed = self.listed_keys(table);
        let previous = self.last_install.clone();
        let record = &self.reclaim_idle_slot()?.record;
        let plan = record.plan(&flat, &listed, previous.as_ref());
        let keys = record.counts_after(&plan);
        self.check_capacity(keys, table.rule_sets.len())?;
        Ok(self.write_and_switch(&plan, table, flat, listed, generation)?)
    }

    fn attach(&mut self, config: &DatapathConfig) -> anyhow::Result<()> {
        self.xdp_mode = config.xdp_mode;
        self.tc_attach = config.attach;
        for name in &config.interfaces {
            if name == "lo" {
                return Err(anyhow!(
                    "`datapath.interfaces` lists lo: loopback is always allowed and never enforced on; remove it"
                ));
            }
            let ifindex = interface_index(name)?;
            if ifindex == 0 {
                return Err(anyhow!(
                    "interface {name:?} does not exist; fix `datapath.interfaces` in the config"
                ));
            }
            let attachment = self.attach_interface(name, ifindex)?;
            let adopted = attachment.links.iter().filter(|link| link.adopted).count();
            info!(interface = %name, ifindex, tc = attachment.tc_hook, xdp_mode = attachment.xdp_mode, adopted_links = adopted, "enforcing");
            self.attachments.push(attachment);
        }
        LinkPins::new(&self.pin_path).remove_others(&config.interfaces)?;
        if self.attachments.is_empty() {
            warn!("no interfaces configured in `datapath.interfaces`: nothing is enforced");
        }
        Ok(())
    }

    fn interfaces(&self) -> Vec<InterfaceStatus> {
        self.attachments
            .iter()
            .map(|attachment| InterfaceStatus {
                name: attachment.name.clone(),
                ifindex: attachment.ifindex,
                hooks: format!(
                    "{} ingress/egress, xdp {}",
                    attachment.tc_hook, attachment.xdp_mode
                ),
                state: if attachment.links.is_empty() {
                    InterfaceState::Missing
                } else {
                    InterfaceState::Enforcing
                },
            })
            .collect()
    }

    fn repair(&mut self) -> Vec<Repair> {
        let mut repairs = Vec::new();
        for index in 0..self.attachments.len() {
            let name = self.attachments[index].name.clone();
            let ifindex = match interface_index(&name) {
                Ok(ifindex) => ifindex,
                Err(error) => {
                    repairs.push(Repair::Failed {
                        interface: name,
                        error: format!("{error:#}"),
                    });
                    continue;
                }
            };
            let attachment = &mut self.attachments[index];
            if ifindex == 0 {
                if !attachment.links.is_empty() {
                    // The kernel detached the links with the interface.
                    attachment.links.clear();
                    repairs.push(Repair::Vanished { interface: name });
                }
                continue;
            }
            let deleted = ifindex == attachment.ifindex
                && attachment.links.iter().any(|link| !link.is_attached());
            if ifindex != attachment.ifindex || attachment.links.is_empty() || deleted {
                let previous = attachment.ifindex;
                match self.attach_interface(&name, ifindex) {
                    Ok(attached) => {
                        self.attachments[index] = attached;
                        repairs.push(if deleted {
                            Repair::Restored { interface: name }
                        } else {
                            Repair::Reattached {
                                interface: name,
                                previous_ifindex: previous,
                                ifindex,
                            }
                        });
                    }
                    Err(error) => repairs.push(Repair::Failed {
                        interface: name,
                        error: format!("{error:#}"),
                    }),
                }
                continue;
            }
            let unpinned: Vec<&HeldLink> = attachment
                .links
                .iter()
                .filter(|link| !link.is_pinned())
                .collect();
            if !unpinned.is_empty() {
                let result: anyhow::Result<()> = unpinned.iter().try_for_each(|link| link.repin());
                repairs.push(match result {
                    Ok(()) => Repair::Repinned { interface: name },
                    Err(error) => Repair::Failed {
                        interface: name,
                        error: format!("{error:#}"),
                    },
                });
            }
        }
        for (path, fd) in &self.pinned_maps {
            if !path.exists() {
                let result = pinning::prepare(&self.pin_path)
                    .and_then(|()| pinning::pin_fd(std::os::fd::AsFd::as_fd(fd), path));
                if let Err(error) = result {
                    repairs.push(Repair::Failed {
                        interface: String::new(),
                        error: format!("{error:#}"),
                    });
                }
            }
        }
        repairs
    }

    fn counters(&self) -> anyhow::Result<Counters> {
        let read = |way: u8| -> anyhow::Result<DirectionCounters> {
            let base = u32::from(way - 1) * COUNTER_COUNT;
            let get = |counter: Counter| -> anyhow::Result<PacketCount> {
                Ok(sum(&self.counters.get(&(base + counter as u32), 0)?))
            };
            Ok(DirectionCounters {
                forwarded: get(Counter::Forwarded)?,
                established: get(Counter::Established)?,
                dropped_policy_denied: get(Counter::DroppedPolicyDenied)?,
                dropped_policy_deny: get(Counter::DroppedPolicyDeny)?,
                dropped_prefilter: get(Counter::DroppedPrefilter)?,
                dropped_invalid: get(Counter::DroppedInvalid)?,
                dropped_fragment: get(Counter::DroppedFragment)?,
                dropped_unencrypted: get(Counter::DroppedUnencrypted)?,
                audited_policy_denied: get(Counter::AuditedPolicyDenied)?,
                audited_policy_deny: get(Counter::AuditedPolicyDeny)?,
                ct_insert_failed: get(Counter::CtInsertFailed)?,
                events_lost: get(Counter::EventsLost)?.packets,
                events_suppressed: get(Counter::EventsSuppressed)?.packets,
            })
        };
        Ok(Counters {
            ingress: read(direction::INGRESS)?,
            egress: read(direction::EGRESS)?,
        })
    }

    fn rule_counters(&self) -> anyhow::Result<Vec<PacketCount>> {
        let slot = self.active as usize;
        (0..self.rules_written[slot])
            .map(|rule| {
                let per_cpu = self.rule_counters[slot].get(&u32::try_from(rule)?, 0)?;
                Ok(sum(&per_cpu))
            })
            .collect()
    }

    fn connection_tables(&self) -> anyhow::Result<Box<dyn ConnectionTables>> {
        let mut tables = Vec::new();
        for ((path, _), (table, capacity)) in self.pinned_maps.iter().zip([
            ("tcp", self.connections_capacity[0]),
            ("other", self.connections_capacity[1]),
        ]) {
            let map =
                MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
            tables.push((table, capacity, HashMap::try_from(Map::LruHashMap(map))?));
        }
        Ok(Box::new(EbpfConnectionTables { tables }))
    }

    fn flush_connections(&mut self) -> anyhow::Result<usize> {
        let mut removed = 0;
        for table in &mut self.connections {
            let keys: Vec<CtKey> = table.keys().map_while(Result::ok).collect();
            for key in keys {
                match table.remove(&key) {
                    Ok(()) => removed += 1,
                    // Expired and evicted meanwhile: gone either way.
                    Err(MapError::KeyNotFound) => {}
                    Err(error) => return Err(error).context("removing a conntrack entry"),
                }
            }
        }
        Ok(removed)
    }

    fn map_usage(&self) -> Vec<MapUsage> {
        let Some(active) = self.slots[self.active as usize]
            .as_ref()
            .map(|slot| &slot.record)
        else {
            return Vec::new();
        };
        let (v4, v6) = active.counts();
        vec![
            MapUsage {
                map: "prefixes_ipv4",
                entries: v4,
                capacity: self.policy_map_max as usize,
            },
            MapUsage {
                map: "prefixes_ipv6",
                entries: v6,
                capacity: self.policy_map_max as usize,
            },
            MapUsage {
                map: "rule_sets",
                entries: active.rule_set_count(),
                capacity: self.rule_set_max as usize,
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::differential_tests::{TC_DROP, TC_PASS, TestPins, test_config};
    use super::*;
    use aya::{TestRun as _, TestRunOptions};
    use palisade_common::protocol;
    use palisade_e2e::frames::{TCP_SYN_ACK, frame_with_flags};
    use palisade_policy::{Connection, Direction, NodeContext, compile, policy_from_toml};
    use std::net::IpAddr;

    /// Only egress is allowed: replies come in by conntrack alone.
    const EGRESS_ONLY: &str = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "egress-only" }
[spec]
nodeSelector = {}
[[spec.egress]]
toCIDR = ["10.0.0.0/8"]
[[spec.ingress]]
fromCIDR = ["192.0.2.1/32"]
"#;

    #[test]
    #[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
    fn an_upgrade_keeps_connections_pinned_in_the_openers_order() {
        palisade_e2e::require_root();
        let pins = TestPins::new("ct-upgrade");
        let config = test_config(&pins);
        let policy = policy_from_toml("egress-only.toml", EGRESS_ONLY).unwrap();
        let table = compile(&[policy], &NodeContext::default()).unwrap();
        // This node (10.0.0.9) opened 10.0.0.9:40000 -> 10.0.0.1:443; an
        // earlier version stored that tuple as it was, without the flag.
        let mut opener = CtKey {
            source_port: 40000,
            destination_port: 443,
            protocol: protocol::TCP,
            ..CtKey::default()
        };
        opener.source[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 9]);
        opener.destination[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 1]);
        assert!(
            opener.reverses(),
            "the test needs a tuple stored reversed now"
        );
        let reply = frame_with_flags(
            &Connection {
                protocol: protocol::TCP,
                source: "10.0.0.1".parse().unwrap(),
                destination: "10.0.0.9".parse().unwrap(),
                destination_port: 40000,
            },
            443,
            TCP_SYN_ACK,
        );
        let run = |datapath: &EbpfDatapath| {
            let program = datapath.tc_program(Direction::Ingress).unwrap();
            program
                .test_run(TestRunOptions {
                    data_in: Some(&reply),
                    ..TestRunOptions::default()
                })
                .unwrap()
                .return_value
        };
        {
            let (mut datapath, _ring) = EbpfDatapath::load(&config).unwrap();
            datapath.install(&table, 1).unwrap();
            assert_eq!(run(&datapath), TC_DROP, "no connection yet: default deny");
            let entry = CtEntry {
                expires_ns: u64::MAX / 2,
                direction: direction::EGRESS,
                ..CtEntry::default()
            };
            datapath.connections[0].insert(&opener, &entry, 0).unwrap();
            assert_eq!(run(&datapath), TC_DROP, "the old key is not found");
        }
        // The next daemon adopts the pinned table and rewrites the entry; an
        // earlier version's pin path has no marker.
        std::fs::remove_dir(pins.0.join(CANONICAL_CONNTRACK_MARKER)).unwrap();
        let (mut datapath, _ring) = EbpfDatapath::load(&config).unwrap();
        datapath.install(&table, 2).unwrap();
        assert_eq!(
            run(&datapath),
            TC_PASS,
            "the reply belongs to the connection"
        );
        let (listed, total) = datapath
            .connection_tables()
            .unwrap()
            .list(usize::MAX)
            .unwrap();
        assert_eq!(total, 1);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].source, IpAddr::from([10, 0, 0, 9]));
        assert_eq!(listed[0].destination_port, 443);
    }
}
