//! The compiler: the policies that select this node → a datapath-neutral rule table.
//!
//! The table keeps two views of the same rules:
//! - `entries`: one row per (prefix, protocol, port range, action) exactly as the
//!   policies say it; the reference evaluator reads this view;
//! - `prefixes` + `rule_sets`: the view a longest-prefix-match datapath needs.
//!   Each prefix's rule set already holds the rows of every prefix containing
//!   it, so one lookup of the most specific prefix finds everything that
//!   applies. Identical rule sets are stored once, for both directions.
//!
//! A [`TableCompiler`] keeps each policy's compiled rows and the flattened
//! view between compiles: a change recompiles only the policies that
//! changed, each policy keeps its rule ids, and the table says what changed
//! ([`TableChanges`]) so a datapath can write only that.

use std::{
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use imbl::OrdMap;
use ipnet::IpNet;
use palisade_common::{PortEntry, action, protocol};
use serde::{Deserialize, Serialize};

pub use crate::flat_view::{FlatChanges, FlatPrefix, PrefixMap, RuleSetRows, RuleSets};
pub use crate::model::Section;
pub use crate::resolve::NodeContext;
use crate::{
    flat_view::FlatView,
    model::{PeerRule, PeerSelection, Policy, PolicyName},
    select::{SelectedRule, rules_for_node},
};

/// Traffic direction of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Towards this node; the peer is the source.
    Ingress,
    /// From this node; the peer is the destination.
    Egress,
}

impl Direction {
    /// Position of the direction in per-direction arrays (ingress first).
    #[must_use]
    pub const fn index(self) -> usize {
        match self {
            Self::Ingress => 0,
            Self::Egress => 1,
        }
    }
}

/// Where a compiled rule came from, for flows and `explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleOrigin {
    /// The policy.
    pub policy: PolicyName,
    /// Field path of the rule, such as `spec.ingressDeny[0]`.
    pub path: String,
    /// The list it sits in.
    pub section: Section,
}

/// `policy spec.path`, as diff, explain and conntrack name a rule.
impl std::fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.policy, self.path)
    }
}

/// One row of the unflattened view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TableEntry {
    /// Peer prefix the row applies to.
    pub prefix: IpNet,
    /// Protocol, ports (ICMP: the type), action and rule id.
    #[serde(skip)]
    pub port: PortEntry,
}

/// An entry that selects no peer (Cilium's `ingress: [{}]`, or a peer
/// list written empty): it changes no verdict but default deny.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmptyEntry {
    /// The direction of its section.
    pub direction: Direction,
    /// Where it is.
    pub origin: RuleOrigin,
    /// Why it selects nothing.
    pub reason: String,
}

/// A source prefix the XDP prefilter drops, and the deny rule it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PrefilterEntry {
    /// The source prefix.
    pub prefix: IpNet,
    /// The `ingressDeny` rule.
    pub rule_id: u32,
}

/// Everything a datapath needs for one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DirectionTable {
    /// Whether packets no rule allows are dropped.
    pub default_deny: bool,
    /// Whether only policies in audit mode ask for default deny: packets
    /// no rule allows are then forwarded and reported as AUDIT.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub default_deny_audited: bool,
    /// The rows as written in the policies.
    pub entries: Vec<TableEntry>,
    /// Flattened view: each prefix with its own rows and the index of its
    /// rule set in [`CompiledTable::rule_sets`]; most specific prefix wins.
    #[serde(skip)]
    pub prefixes: PrefixMap,
}

/// What changed since an earlier table of the same [`TableCompiler`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableChanges {
    /// The [`CompiledTable::serial`] of the earlier table.
    pub since: u64,
    /// The flattened prefixes and rule sets that differ from it. The
    /// prefilter and strict lists are not tracked: they are small, and a
    /// datapath compares them whole.
    pub flat: FlatChanges,
}

/// The compiled rules for this node.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompiledTable {
    /// Ingress rules (peer = source).
    pub ingress: DirectionTable,
    /// Egress rules (peer = destination).
    pub egress: DirectionTable,
    /// Flattened view: rule sets by index, shared by both directions.
    /// Index 0, and any index no prefix uses, is the empty set.
    #[serde(skip)]
    pub rule_sets: RuleSets,
    /// Stateless source-prefix drops: the prefixes of `ingressDeny` rules
    /// that name peers (`fromCIDR`, never the whole address space) and no
    /// ports. Empty in audit mode.
    pub prefilter: Vec<PrefilterEntry>,
    /// Rule id → where it came from; ids no rule holds (freed by a policy
    /// that changed) are `None`.
    pub rules: Vec<Option<RuleOrigin>>,
    /// Entries that select no peer, for `explain` and `diff`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub empty_entries: Vec<EmptyEntry>,
    /// Whether would-be drops are forwarded as AUDIT.
    pub audit: bool,
    /// The policies that select this node.
    pub policies: Vec<PolicyName>,
    /// Peers whose traffic must not be seen unencrypted (WireGuard strict
    /// mode); checked before any rule, both ways, tracked packets too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub strict: Vec<IpNet>,
    /// Names this table among all tables compiled by this process (0: the
    /// empty table).
    #[serde(skip)]
    pub serial: u64,
    /// What changed since the table the compiler held before.
    #[serde(skip)]
    pub changes: Option<Arc<TableChanges>>,
}

/// Two tables are equal when they hold the same rules, whatever their
/// serials and changes.
impl PartialEq for CompiledTable {
    fn eq(&self, other: &Self) -> bool {
        self.ingress == other.ingress
            && self.egress == other.egress
            && self.rule_sets == other.rule_sets
            && self.prefilter == other.prefilter
            && self.rules == other.rules
            && self.empty_entries == other.empty_entries
            && self.audit == other.audit
            && self.policies == other.policies
            && self.strict == other.strict
    }
}

impl Eq for CompiledTable {}

impl CompiledTable {
    /// The table for one direction.
    pub fn direction(&self, direction: Direction) -> &DirectionTable {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Where rule `rule_id` came from; `None` for `NO_RULE`, `FAILSAFE_RULE`
    /// and ids of another table.
    pub fn rule(&self, rule_id: u32) -> Option<&RuleOrigin> {
        usize::try_from(rule_id)
            .ok()
            .and_then(|id| self.rules.get(id))
            .and_then(Option::as_ref)
    }

    /// How many rules the table holds.
    pub fn rule_count(&self) -> usize {
        self.rules.iter().flatten().count()
    }

    /// The rows of rule set `index` (empty for an index out of range).
    pub fn rule_set(&self, index: u32) -> &[PortEntry] {
        self.rule_sets
            .get(index as usize)
            .map_or(&[], |rows| &rows[..])
    }
}

/// Why a rule set cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// One prefix collects more rows than a datapath rule set holds.
    #[error(
        "{count} port rules apply to peer {prefix}, more than the {max} one prefix can hold; merge port ranges or split the traffic by prefix"
    )]
    TooManyEntries {
        /// The prefix.
        prefix: IpNet,
        /// How many rows apply to it.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A named port in a host policy: only pods have named (container) ports.
    #[error(
        "{path}: named port {name:?} cannot be resolved for a host policy: write the port number"
    )]
    NamedPort {
        /// Field path of the rule.
        path: String,
        /// The name.
        name: String,
    },
    /// `toFQDNs` in a host policy while the node does not accept it in
    /// audit-only form.
    #[error("{path}: {FQDN_NOT_ENFORCED} (hint: {FQDN_AUDIT_HINT})")]
    FqdnNotEnforced {
        /// Field path of the rule.
        path: String,
    },
    /// An ICMP type name the rule's family does not have.
    #[error("{path}: ICMP type {name:?} does not exist for family {family}")]
    IcmpTypeName {
        /// Field path of the rule.
        path: String,
        /// The name.
        name: String,
        /// `IPv4` or `IPv6`.
        family: String,
    },
    /// More rules than rule ids.
    #[error("the policies hold more rules than palisade can number ({max})")]
    TooManyRules {
        /// The limit.
        max: u32,
    },
}

/// Why `toFQDNs` is refused (validation and compiler say the same).
pub const FQDN_NOT_ENFORCED: &str = "toFQDNs is not yet enforced by palisade: it needs a DNS proxy";

/// How to accept `toFQDNs` and DNS rules anyway, in audit-only form.
pub const FQDN_AUDIT_HINT: &str = "set `fqdn_audit = true` under [policy] in palisade.toml to accept them in audit-only form: they then match no address and the node runs in audit mode";

/// Compiles the host rules (`nodeSelector`) that select this node.
/// Endpoint rules (`endpointSelector`) are for pods and are left out.
///
/// # Errors
///
/// [`CompileError::TooManyEntries`] when one prefix collects too many rows;
/// [`CompileError::IcmpTypeName`] for an ICMP name of the wrong family;
/// [`CompileError::NamedPort`] and [`CompileError::FqdnNotEnforced`] for
/// what a host policy cannot use (validation refuses them first).
pub fn compile(policies: &[Policy], node: &NodeContext) -> Result<CompiledTable, CompileError> {
    let sources: Vec<(&Policy, Option<&Arc<Policy>>)> =
        policies.iter().map(|policy| (policy, None)).collect();
    let (table, _) = TableCompiler::new(node.clone()).compile_sources(&sources)?;
    Ok(table)
}

/// The highest rule id handed out, below the datapath's reserved ids.
const MAX_RULE_ID: u32 = u32::MAX - 16;

/// Compiles tables change by change: it holds the last table's compiled
/// policies and flattened view. Cloning it is cheap (persistent maps), and
/// [`TableCompiler::compile`] leaves it unchanged: keep the compiler it
/// returns once its table is in force.
#[derive(Debug, Clone)]
pub struct TableCompiler {
    node: Arc<NodeContext>,
    policies: OrdMap<(PolicyName, u32), Arc<CompiledPolicy>>,
    ids: RuleIds,
    view: FlatView,
    serial: u64,
}

/// Serials of compiled tables, unique in the process.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

impl TableCompiler {
    /// A compiler for `node` that holds no policies (its table is empty).
    #[must_use]
    pub fn new(node: NodeContext) -> Self {
        Self {
            node: Arc::new(node),
            policies: OrdMap::new(),
            ids: RuleIds::default(),
            view: FlatView::default(),
            serial: 0,
        }
    }

    /// The node the compiler compiles for.
    #[must_use]
    pub fn node(&self) -> &NodeContext {
        &self.node
    }

    /// Compiles `policies` (in order; a policy is known by its name, and is
    /// recompiled only when it is not the same `Arc` as last time) and
    /// returns the table with the compiler that holds it.
    ///
    /// # Errors
    ///
    /// As [`compile`]; `self` is unchanged either way.
    pub fn compile(&self, policies: &[Arc<Policy>]) -> Result<(CompiledTable, Self), CompileError> {
        let sources: Vec<(&Policy, Option<&Arc<Policy>>)> = policies
            .iter()
            .map(|policy| (&**policy, Some(policy)))
            .collect();
        self.compile_sources(&sources)
    }

    /// [`TableCompiler::compile`] of policies each given with the `Arc` that
    /// knows it again next time (none: it is compiled every time).
    fn compile_sources(
        &self,
        policies: &[(&Policy, Option<&Arc<Policy>>)],
    ) -> Result<(CompiledTable, Self), CompileError> {
        let mut next = self.clone();
        let keys = occurrence_keys(policies.iter().map(|(policy, _)| *policy));
        let wanted: std::collections::HashSet<&(PolicyName, u32)> = keys.iter().collect();
        let gone: Vec<(PolicyName, u32)> = next
            .policies
            .keys()
            .filter(|key| !wanted.contains(key))
            .cloned()
            .collect();
        for key in gone {
            if let Some(old) = next.policies.remove(&key) {
                next.replace(Some(&old), None);
            }
        }
        for (key, (policy, shared)) in keys.iter().zip(policies) {
            let old = next.policies.get(key).cloned();
            let unchanged = old
                .as_ref()
                .and_then(|old| old.source.as_ref())
                .zip(*shared)
                .is_some_and(|(held, given)| Arc::ptr_eq(held, given));
            if unchanged {
                continue;
            }
            let mut compiled = compile_policy(policy, *shared, &next.node)?;
            let count = u32::try_from(compiled.origins.len()).unwrap_or(u32::MAX);
            let ids = next
                .ids
                .resize(old.as_ref().map(|old| old.ids.clone()), count)?;
            compiled.rebase(ids);
            let compiled = Arc::new(compiled);
            next.replace(old.as_deref(), Some(&compiled));
            next.policies.insert(key.clone(), compiled);
        }
        let flat = next.view.flatten()?;
        next.serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
        let mut table = next.assemble(&keys);
        table.changes = Some(Arc::new(TableChanges {
            since: self.serial,
            flat,
        }));
        Ok((table, next))
    }

    /// Swaps `old`'s rows in the flattened view for `new`'s.
    fn replace(&mut self, old: Option<&CompiledPolicy>, new: Option<&CompiledPolicy>) {
        let old_ids = old.map_or(0..0, |old| old.ids.clone());
        for direction in 0..2 {
            self.view.replace_rows(
                direction,
                old.map_or(&[], |old| &old.rows[direction]),
                old_ids.clone(),
                new.map_or(&[], |new| &new.rows[direction]),
            );
        }
        if let Some(old) = old
            && new.is_none()
        {
            self.ids.release(old.ids.clone());
        }
    }

    /// The table of the policies `keys` names, in that order.
    fn assemble(&self, keys: &[(PolicyName, u32)]) -> CompiledTable {
        let mut table = CompiledTable {
            audit: self.node.audit_mode,
            strict: self.node.strict_prefixes.iter().map(IpNet::trunc).collect(),
            rules: vec![None; self.ids.end as usize],
            serial: self.serial,
            ..CompiledTable::default()
        };
        // Default deny asked for by policies in audit mode, per direction.
        let mut audit_default_deny = [false; 2];
        for compiled in keys.iter().filter_map(|key| self.policies.get(key)) {
            if compiled.selected && !table.policies.contains(&compiled.name) {
                table.policies.push(compiled.name.clone());
            }
            table.audit |= compiled.fqdn_audit;
            for (i, direction) in [&mut table.ingress, &mut table.egress]
                .into_iter()
                .enumerate()
            {
                direction.entries.extend_from_slice(&compiled.rows[i]);
                direction.default_deny |= compiled.default_deny[i];
                audit_default_deny[i] |= compiled.audit_default_deny[i];
            }
            table.prefilter.extend_from_slice(&compiled.prefilter);
            table
                .empty_entries
                .extend(compiled.empty_entries.iter().cloned());
            for (id, origin) in compiled.ids.clone().zip(&compiled.origins) {
                if let Some(slot) = table.rules.get_mut(id as usize) {
                    *slot = Some(origin.clone());
                }
            }
        }
        for (direction, audited) in [&mut table.ingress, &mut table.egress]
            .into_iter()
            .zip(audit_default_deny)
        {
            direction.default_deny_audited = audited && !direction.default_deny;
            direction.default_deny |= audited;
        }
        // Audit mode forwards what deny rules match, so nothing is prefiltered.
        if table.audit {
            table.prefilter.clear();
        }
        table.ingress.prefixes = self.view.prefixes(Direction::Ingress.index());
        table.egress.prefixes = self.view.prefixes(Direction::Egress.index());
        table.rule_sets = self.view.rule_sets();
        table
    }
}

/// Each policy's name with how many policies of that name come before it
/// (0 but for a list that gives a name twice).
fn occurrence_keys<'a>(policies: impl Iterator<Item = &'a Policy>) -> Vec<(PolicyName, u32)> {
    let mut seen: std::collections::HashMap<PolicyName, u32> = std::collections::HashMap::new();
    policies
        .map(|policy| {
            let name = policy.policy_name();
            let count = seen.entry(name.clone()).or_insert(0);
            let key = (name, *count);
            *count += 1;
            key
        })
        .collect()
}

/// One policy compiled for the node: its rules numbered from its block of
/// rule ids.
#[derive(Debug, Clone)]
struct CompiledPolicy {
    /// The policy as given, to know it again (none: not to be known again).
    source: Option<Arc<Policy>>,
    name: PolicyName,
    /// Whether any of its rules selects the node.
    selected: bool,
    /// Its rule ids, one per origin.
    ids: Range<u32>,
    origins: Vec<RuleOrigin>,
    /// Rows per direction (ingress, egress).
    rows: [Vec<TableEntry>; 2],
    prefilter: Vec<PrefilterEntry>,
    empty_entries: Vec<EmptyEntry>,
    default_deny: [bool; 2],
    audit_default_deny: [bool; 2],
    /// Whether it holds `toFQDNs` accepted in audit-only form.
    fqdn_audit: bool,
}

impl CompiledPolicy {
    /// Numbers the rules from `ids.start` (they are numbered from 0 when compiled).
    fn rebase(&mut self, ids: Range<u32>) {
        let base = ids.start;
        for row in self.rows.iter_mut().flatten() {
            row.port.rule_id += base;
        }
        for entry in &mut self.prefilter {
            entry.rule_id += base;
        }
        self.ids = ids;
    }
}

/// Compiles the rules of `policy` that select the node, numbered from 0.
fn compile_policy(
    policy: &Policy,
    shared: Option<&Arc<Policy>>,
    node: &NodeContext,
) -> Result<CompiledPolicy, CompileError> {
    let mut compiled = CompiledPolicy {
        source: shared.cloned(),
        name: policy.policy_name(),
        selected: false,
        ids: 0..0,
        origins: Vec::new(),
        rows: [Vec::new(), Vec::new()],
        prefilter: Vec::new(),
        empty_entries: Vec::new(),
        default_deny: [false; 2],
        audit_default_deny: [false; 2],
        fqdn_audit: false,
    };
    for SelectedRule { path, rule, .. } in
        rules_for_node(std::slice::from_ref(policy), &node.labels)
    {
        compiled.selected = true;
        // Cilium: a selecting rule with an ingress or ingressDeny section puts
        // ingress into default deny, and likewise for egress, unless its
        // enableDefaultDeny says otherwise; one rule asking is enough
        // (Documentation/security/policy/intro.rst, rule.go EnableDefaultDeny).
        let audited = policy.audit_annotation();
        let asks = [rule.default_deny_ingress(), rule.default_deny_egress()];
        let flags = if audited {
            &mut compiled.audit_default_deny
        } else {
            &mut compiled.default_deny
        };
        for (flag, asked) in flags.iter_mut().zip(asks) {
            *flag |= asked;
        }
        for (section, rules) in rule.sections() {
            for (i, peer_rule) in rules.iter().enumerate() {
                let rule_id = u32::try_from(compiled.origins.len()).unwrap_or(u32::MAX);
                let rule_path = format!("{path}.{}[{i}]", section.field());
                if !peer_rule.peers.fqdns.is_empty() {
                    if !node.fqdn_audit {
                        return Err(CompileError::FqdnNotEnforced { path: rule_path });
                    }
                    compiled.fqdn_audit = true;
                }
                let verdict = match (section.is_deny(), audited) {
                    (true, false) => action::DENY,
                    (true, true) => action::AUDIT_DENY,
                    (false, _) => action::ALLOW,
                };
                let direction = if section.is_ingress() {
                    Direction::Ingress
                } else {
                    Direction::Egress
                };
                let prefixes = node.peers(peer_rule);
                add_rows(
                    &mut compiled.rows[direction.index()],
                    &prefixes,
                    peer_rule,
                    verdict,
                    rule_id,
                    &rule_path,
                )?;
                if verdict == action::DENY
                    && section == Section::IngressDeny
                    && peer_rule.to_ports.is_empty()
                    && peer_rule.icmps.is_empty()
                {
                    compiled.prefilter.extend(
                        prefixes
                            .iter()
                            .filter(|prefix| prefix.prefix_len() > 0)
                            .map(|prefix| PrefilterEntry {
                                prefix: *prefix,
                                rule_id,
                            }),
                    );
                }
                let origin = RuleOrigin {
                    policy: compiled.name.clone(),
                    path: rule_path,
                    section,
                };
                if let PeerSelection::Nothing(reason) = peer_rule.selection() {
                    compiled.empty_entries.push(EmptyEntry {
                        direction,
                        origin: origin.clone(),
                        reason: reason.to_string(),
                    });
                }
                compiled.origins.push(origin);
            }
        }
    }
    Ok(compiled)
}

/// Rule ids handed out in blocks, a block per policy, so that a policy's
/// rules keep their ids while other policies come, go and change.
#[derive(Debug, Clone, Default)]
struct RuleIds {
    /// Free blocks below `end`: start → end.
    free: OrdMap<u32, u32>,
    /// One past the highest id in use.
    end: u32,
}

impl RuleIds {
    /// A block of `count` ids for a policy that held `old` (kept in place
    /// when it is large enough).
    fn resize(&mut self, old: Option<Range<u32>>, count: u32) -> Result<Range<u32>, CompileError> {
        if let Some(old) = old {
            if count <= old.end - old.start {
                self.release(old.start + count..old.end);
                return Ok(old.start..old.start + count);
            }
            self.release(old);
        }
        self.take(count)
    }

    fn take(&mut self, count: u32) -> Result<Range<u32>, CompileError> {
        if count == 0 {
            return Ok(0..0);
        }
        let fit = self
            .free
            .iter()
            .find(|(start, end)| *end - *start >= count)
            .map(|(start, end)| (*start, *end));
        if let Some((start, end)) = fit {
            self.free.remove(&start);
            if start + count < end {
                self.free.insert(start + count, end);
            }
            return Ok(start..start + count);
        }
        let start = self.end;
        let end = start
            .checked_add(count)
            .filter(|end| *end <= MAX_RULE_ID)
            .ok_or(CompileError::TooManyRules { max: MAX_RULE_ID })?;
        self.end = end;
        Ok(start..end)
    }

    fn release(&mut self, ids: Range<u32>) {
        if ids.is_empty() {
            return;
        }
        let (mut start, mut end) = (ids.start, ids.end);
        if let Some((&before, &before_end)) = self.free.range(..start).next_back()
            && before_end == start
        {
            self.free.remove(&before);
            start = before;
        }
        if let Some(after_end) = self.free.remove(&end) {
            end = after_end;
        }
        if end == self.end {
            self.end = start;
        } else {
            self.free.insert(start, end);
        }
    }
}

fn add_rows(
    rows: &mut Vec<TableEntry>,
    prefixes: &[IpNet],
    rule: &PeerRule<'_>,
    verdict: u8,
    rule_id: u32,
    path: &str,
) -> Result<(), CompileError> {
    let mut ports = Vec::new();
    for port in rule.to_ports.iter().flat_map(|port_rule| &port_rule.ports) {
        let (lo, hi) = port.range().ok_or_else(|| CompileError::NamedPort {
            path: path.to_owned(),
            name: port
                .port
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        })?;
        ports.push((port.protocol.code(), lo, hi));
    }
    // An ICMP type is matched as a one-port range of the ICMP protocol.
    for field in rule.icmps.iter().flat_map(|icmp| &icmp.fields) {
        let code =
            field
                .icmp_type
                .code(field.family)
                .ok_or_else(|| CompileError::IcmpTypeName {
                    path: path.to_owned(),
                    name: field.icmp_type.to_string(),
                    family: format!("{:?}", field.family),
                })?;
        ports.push((field.protocol(), u16::from(code), u16::from(code)));
    }
    // Neither ports nor ICMP types is Cilium's L3-only rule: every protocol.
    if rule.to_ports.is_empty() && rule.icmps.is_empty() {
        ports.push((protocol::ALL, 0, u16::MAX));
    }
    for &prefix in prefixes {
        for &(protocol, port_lo, port_hi) in &ports {
            rows.push(TableEntry {
                prefix,
                port: PortEntry {
                    port_lo,
                    port_hi,
                    rule_id,
                    protocol,
                    action: verdict,
                    pad: [0; 2],
                },
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::codec::policy_from_toml;

    pub(crate) fn policy(text: &str) -> Policy {
        policy_from_toml("test.toml", text).unwrap()
    }

    const LAYERED: &str = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "layered" }
[spec]
nodeSelector = {}
[[spec.ingress]]
fromCIDR = ["10.0.0.0/8"]
toPorts = [{ ports = [{ port = 22, protocol = "TCP" }] }]
[[spec.ingress]]
fromCIDR = ["10.1.0.0/16"]
toPorts = [{ ports = [{ port = 80, protocol = "TCP" }] }]
[[spec.ingressDeny]]
fromCIDR = ["10.1.2.0/24"]
"#;

    /// (prefix, [(action, first port, rule id)]) for each flattened prefix.
    type FlatView = Vec<(String, Vec<(u8, u16, u32)>)>;

    #[test]
    fn nested_prefixes_inherit_their_ancestors_rows() {
        let table = compile(&[policy(LAYERED)], &NodeContext::default()).unwrap();
        assert!(table.ingress.default_deny);
        let sets: FlatView = table
            .ingress
            .prefixes
            .iter()
            .map(|(prefix, flat)| {
                let rows = table
                    .rule_set(flat.rule_set)
                    .iter()
                    .map(|e| (e.action, e.port_lo, e.rule_id))
                    .collect();
                (prefix.to_string(), rows)
            })
            .collect();
        assert_eq!(
            sets,
            [
                ("10.0.0.0/8".to_owned(), vec![(action::ALLOW, 22, 0)]),
                (
                    "10.1.0.0/16".to_owned(),
                    vec![(action::ALLOW, 22, 0), (action::ALLOW, 80, 1)]
                ),
                (
                    "10.1.2.0/24".to_owned(),
                    vec![
                        (action::DENY, 0, 2),
                        (action::ALLOW, 22, 0),
                        (action::ALLOW, 80, 1)
                    ]
                ),
            ]
        );
    }

    #[test]
    fn siblings_do_not_inherit_from_each_other() {
        let text = LAYERED.replace("10.1.0.0/16", "11.0.0.0/8");
        let table = compile(&[policy(&text)], &NodeContext::default()).unwrap();
        let eleven = table
            .ingress
            .prefixes
            .iter()
            .find(|(prefix, _)| prefix.to_string() == "11.0.0.0/8")
            .unwrap();
        let rows = table.rule_set(eleven.1.rule_set);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].port_lo, 80);
    }

    #[test]
    fn node_selector_limits_what_applies() {
        let text = LAYERED.replace(
            "nodeSelector = {}",
            "nodeSelector = { matchLabels = { role = \"db\" } }",
        );
        let table = compile(&[policy(&text)], &NodeContext::default()).unwrap();
        assert!(!table.ingress.default_deny);
        assert!(table.ingress.entries.is_empty());
        assert!(table.policies.is_empty());
        let node = NodeContext {
            labels: BTreeMap::from([("role".to_owned(), "db".to_owned())]),
            ..NodeContext::default()
        };
        let table = compile(&[policy(&text)], &node).unwrap();
        assert_eq!(table.policies, [PolicyName::cluster_wide("layered")]);
    }

    #[test]
    fn too_many_rows_for_one_prefix_is_an_error() {
        let ports: Vec<String> = (1..=40)
            .map(|p| format!("{{ port = {p}, protocol = \"TCP\" }}"))
            .collect();
        let text = format!(
            "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = {{ name = \"many\" }}\n[spec]\nnodeSelector = {{}}\n[[spec.ingress]]\ntoPorts = [{{ ports = [{}] }}]\n",
            ports.join(", ")
        );
        let error = compile(&[policy(&text)], &NodeContext::default()).unwrap_err();
        assert!(
            matches!(error, CompileError::TooManyEntries { count: 40, .. }),
            "{error}"
        );
    }
}
