//! What each table slot holds, and what an install must write to make a
//! slot hold a new table.
//!
//! The record follows every map write, so a failure half-way leaves it
//! true. An install writes only what differs: when the slot holds a table
//! the new one's changes lead from (directly, or through the table in the
//! other slot), only the prefixes and rule sets those changes name are
//! compared; otherwise every key is.

use std::{collections::BTreeMap, sync::Arc};

use ipnet::IpNet;
use palisade_common::{PrefixKey, PrefixLengths, RuleSet, family, lengths_index, table};
use palisade_policy::{
    Direction,
    compile::{FlatChanges, TableChanges},
};

use super::table_slot::FlatTable;

/// The prefix map key of `prefix` in table `table_code`.
pub(super) fn prefix_key(table_code: u8, prefix: &IpNet) -> PrefixKey {
    let mut key = PrefixKey {
        table: table_code,
        prefix_len: prefix.prefix_len(),
        ..PrefixKey::default()
    };
    match prefix.trunc() {
        IpNet::V4(net) => {
            key.family = family::IPV4;
            key.address[..4].copy_from_slice(&net.network().octets());
        }
        IpNet::V6(net) => {
            key.family = family::IPV6;
            key.address = net.network().octets();
        }
    }
    key
}

/// The flattened prefix tables and their direction.
const FLAT_TABLES: [(u8, Direction); 2] = [
    (table::INGRESS, Direction::Ingress),
    (table::EGRESS, Direction::Egress),
];

/// One slot's prefix keys, rule sets and the table they make up.
#[derive(Debug)]
pub(super) struct SlotRecord {
    keys: BTreeMap<PrefixKey, u32>,
    /// Keys per (table, family) list and prefix length.
    length_counts: Box<[[u32; 129]; table::COUNT * 2]>,
    /// IPv4 keys.
    v4: usize,
    rule_sets: Vec<RuleSet>,
    /// The serial of the table the slot holds exactly; `None` before the
    /// first install and after a failed one.
    table: Option<u64>,
}

impl Default for SlotRecord {
    fn default() -> Self {
        Self {
            keys: BTreeMap::new(),
            length_counts: Box::new([[0; 129]; table::COUNT * 2]),
            v4: 0,
            rule_sets: Vec::new(),
            table: None,
        }
    }
}

/// Prefix keys to set (`Some`) or remove (`None`), and rule-set indices to
/// compare and write: what makes a slot hold a table.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct SlotPlan {
    pub keys: Vec<(PrefixKey, Option<u32>)>,
    pub rule_sets: Vec<u32>,
}

impl SlotRecord {
    /// The value the slot holds for `key`.
    pub fn key(&self, key: &PrefixKey) -> Option<u32> {
        self.keys.get(key).copied()
    }

    /// Records a write of `key`.
    pub fn set_key(&mut self, key: PrefixKey, value: u32) {
        if self.keys.insert(key, value).is_none() {
            self.count(&key, true);
        }
    }

    /// Records the removal of `key`.
    pub fn remove_key(&mut self, key: &PrefixKey) {
        if self.keys.remove(key).is_some() {
            self.count(key, false);
        }
    }

    fn count(&mut self, key: &PrefixKey, added: bool) {
        let count = &mut self.length_counts[lengths_index(key.table, key.family)]
            [usize::from(key.prefix_len)];
        let v4 = usize::from(key.family == family::IPV4);
        if added {
            *count += 1;
            self.v4 += v4;
        } else {
            *count -= 1;
            self.v4 -= v4;
        }
    }

    /// IPv4 and IPv6 keys held.
    pub fn counts(&self) -> (usize, usize) {
        (self.v4, self.keys.len() - self.v4)
    }

    /// IPv4 and IPv6 keys the slot will hold once `plan` is written.
    pub fn counts_after(&self, plan: &SlotPlan) -> (usize, usize) {
        let (mut v4, mut v6) = self.counts();
        for (key, value) in &plan.keys {
            let count = if key.family == family::IPV4 {
                &mut v4
            } else {
                &mut v6
            };
            match (self.key(key).is_some(), value.is_some()) {
                (false, true) => *count += 1,
                (true, false) => *count -= 1,
                _ => {}
            }
        }
        (v4, v6)
    }

    /// The rule set held at `index`.
    pub fn rule_set(&self, index: usize) -> Option<&RuleSet> {
        self.rule_sets.get(index)
    }

    /// Records a write of rule set `index` (written in order: at most one
    /// past the last).
    pub fn set_rule_set(&mut self, index: usize, set: RuleSet) {
        match self.rule_sets.get_mut(index) {
            Some(held) => *held = set,
            None => self.rule_sets.push(set),
        }
    }

    /// Rule sets the slot's table uses: those below `count`.
    pub fn keep_rule_sets(&mut self, count: usize) {
        self.rule_sets.truncate(count);
    }

    /// How many rule sets the slot holds.
    pub fn rule_set_count(&self) -> usize {
        self.rule_sets.len()
    }

    /// Records that the slot holds table `serial` exactly (`None`: not known).
    pub fn set_table(&mut self, serial: Option<u64>) {
        self.table = serial;
    }

    /// The distinct prefix lengths per table and family, longest first.
    pub fn lengths(&self) -> [PrefixLengths; table::COUNT * 2] {
        let mut lists = [PrefixLengths::default(); table::COUNT * 2];
        for (list, counts) in lists.iter_mut().zip(self.length_counts.iter()) {
            for length in (0..=128u8).rev() {
                if counts[usize::from(length)] > 0 {
                    list.lengths[usize::from(list.count)] = length;
                    list.count += 1;
                }
            }
        }
        lists
    }

    /// What to write so that the slot holds `table`, whose prefilter and
    /// strict keys are `listed`. `previous` is the last table installed
    /// (in the other slot) with its changes.
    pub fn plan(
        &self,
        table: &FlatTable,
        listed: &BTreeMap<PrefixKey, u32>,
        previous: Option<&(u64, Arc<TableChanges>)>,
    ) -> SlotPlan {
        let mut plan = SlotPlan::default();
        let Some(changes) = self.changes_to(table, previous) else {
            let mut wanted = flat_keys(table);
            wanted.extend(listed);
            self.compare(
                &wanted,
                &[
                    table::INGRESS,
                    table::EGRESS,
                    table::PREFILTER,
                    table::STRICT,
                ],
                &mut plan,
            );
            plan.rule_sets = (0..rule_set_count(table)).collect();
            return plan;
        };
        for (code, direction) in FLAT_TABLES {
            let prefixes = &table.prefixes[direction.index()];
            for prefix in &changes.prefixes[direction.index()] {
                let key = prefix_key(code, prefix);
                let wanted = prefixes.get(prefix).map(|flat| flat.rule_set);
                if self.key(&key) != wanted {
                    plan.keys.push((key, wanted));
                }
            }
        }
        self.compare(listed, &[table::PREFILTER, table::STRICT], &mut plan);
        let count = rule_set_count(table);
        plan.rule_sets = changes
            .rule_sets
            .iter()
            .copied()
            .filter(|index| *index < count)
            .collect();
        plan
    }

    /// The changes from the table the slot holds to `table`: its own, or
    /// those of `previous` (which led from the slot's table) with its own.
    fn changes_to(
        &self,
        table: &FlatTable,
        previous: Option<&(u64, Arc<TableChanges>)>,
    ) -> Option<FlatChanges> {
        let changes = table.changes.as_ref()?;
        let held = self.table?;
        if changes.since == held {
            return Some(changes.flat.clone());
        }
        let (serial, before) = previous?;
        if *serial != changes.since || before.since != held {
            return None;
        }
        let mut both = before.flat.clone();
        both.extend(&changes.flat);
        Some(both)
    }

    /// Adds to `plan` what makes the keys of tables `codes` equal `wanted`'s.
    fn compare(&self, wanted: &BTreeMap<PrefixKey, u32>, codes: &[u8], plan: &mut SlotPlan) {
        for code in codes {
            let start = PrefixKey {
                table: *code,
                ..PrefixKey::default()
            };
            let end = PrefixKey {
                table: code + 1,
                ..PrefixKey::default()
            };
            plan.keys.extend(
                self.keys
                    .range(start..end)
                    .filter(|(key, _)| !wanted.contains_key(key))
                    .map(|(key, _)| (*key, None)),
            );
            plan.keys.extend(
                wanted
                    .range(start..end)
                    .filter(|(key, value)| self.key(key) != Some(**value))
                    .map(|(key, value)| (*key, Some(*value))),
            );
        }
    }
}

/// How many rule sets `table` numbers.
fn rule_set_count(table: &FlatTable) -> u32 {
    u32::try_from(table.rule_sets.len()).unwrap_or(u32::MAX)
}

/// Every key of the flattened prefix tables with its rule-set index.
fn flat_keys(table: &FlatTable) -> BTreeMap<PrefixKey, u32> {
    let mut keys = BTreeMap::new();
    for (code, direction) in FLAT_TABLES {
        for (prefix, flat) in &table.prefixes[direction.index()] {
            keys.insert(prefix_key(code, prefix), flat.rule_set);
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use palisade_policy::{NodeContext, Policy, TableCompiler, policy_from_toml};

    use super::*;

    fn policy(name: &str, cidrs: &[&str]) -> Arc<Policy> {
        let cidrs: Vec<String> = cidrs.iter().map(|cidr| format!("\"{cidr}\"")).collect();
        Arc::new(
            policy_from_toml(
                "test.toml",
                &format!(
                    "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = {{ name = \"{name}\" }}\n[spec]\nnodeSelector = {{}}\n[[spec.ingress]]\nfromCIDR = [{}]\n",
                    cidrs.join(", ")
                ),
            )
            .unwrap(),
        )
    }

    /// Carries out `plan` on the record, as the datapath does on the maps.
    fn write(record: &mut SlotRecord, table: &FlatTable, plan: &SlotPlan) {
        for (key, value) in &plan.keys {
            match value {
                Some(value) => record.set_key(*key, *value),
                None => record.remove_key(key),
            }
        }
        for index in &plan.rule_sets {
            let mut set = RuleSet::default();
            let rows = table.rule_set(*index);
            set.entries[..rows.len()].copy_from_slice(rows);
            set.len = u32::try_from(rows.len()).unwrap();
            record.set_rule_set(*index as usize, set);
        }
        record.keep_rule_sets(table.rule_sets.len());
        record.set_table(Some(table.serial));
    }

    #[test]
    fn two_slots_written_alternately_from_changes_hold_every_table_exactly() {
        let compiler = TableCompiler::new(NodeContext::default());
        let base = policy("base", &["10.0.0.0/8", "10.1.0.0/16", "192.168.1.0/24"]);
        let versions = [
            vec![base.clone()],
            vec![base.clone(), policy("delta", &["10.1.2.0/24"])],
            vec![base.clone(), policy("delta", &["10.9.0.0/16"])],
            vec![
                policy("base", &["10.0.0.0/8"]),
                policy("delta", &["10.9.0.0/16"]),
            ],
            vec![policy("delta", &["0.0.0.0/0"])],
            vec![base],
        ];
        let mut slots = [SlotRecord::default(), SlotRecord::default()];
        let mut previous: Option<(u64, Arc<TableChanges>)> = None;
        let mut compiler = compiler;
        for (step, policies) in versions.iter().enumerate() {
            let (table, next) = compiler.compile(policies).unwrap();
            let table = FlatTable::of(&table);
            compiler = next;
            let slot = &mut slots[step % 2];
            let plan = slot.plan(&table, &BTreeMap::new(), previous.as_ref());
            if step >= 2 {
                assert!(
                    plan.keys.len() < 6,
                    "step {step}: a delta write compares only what changed: {plan:?}"
                );
            }
            write(slot, &table, &plan);
            assert_eq!(slot.keys, flat_keys(&table), "step {step}");
            for index in 0..table.rule_sets.len() {
                let held = slot
                    .rule_set(index)
                    .map_or(&[][..], |set| &set.entries[..set.len as usize]);
                assert_eq!(
                    held,
                    table.rule_set(u32::try_from(index).unwrap()),
                    "step {step}: set {index}"
                );
            }
            previous = table.changes.clone().map(|changes| (table.serial, changes));
        }
    }

    #[test]
    fn a_slot_of_unknown_content_is_compared_key_by_key() {
        let (table, _) = TableCompiler::new(NodeContext::default())
            .compile(&[policy("base", &["10.0.0.0/8"])])
            .unwrap();
        let table = FlatTable::of(&table);
        let mut record = SlotRecord::default();
        let stale = prefix_key(table::INGRESS, &"172.16.0.0/12".parse().unwrap());
        record.set_key(stale, 3);
        let plan = record.plan(&table, &BTreeMap::new(), None);
        assert!(plan.keys.contains(&(stale, None)), "{plan:?}");
        assert_eq!(plan.keys.len(), 2, "{plan:?}");
        assert_eq!(record.counts(), (1, 0));
        assert_eq!(record.counts_after(&plan), (1, 0));
    }

    #[test]
    fn lengths_are_listed_longest_first_per_table_and_family() {
        let mut record = SlotRecord::default();
        for (code, prefix) in [
            (table::INGRESS, "10.0.0.0/8"),
            (table::INGRESS, "10.1.2.3/32"),
            (table::INGRESS, "10.1.0.0/16"),
            (table::INGRESS, "10.2.0.0/16"),
            (table::INGRESS, "::/0"),
            (table::EGRESS, "10.0.0.0/8"),
        ] {
            record.set_key(prefix_key(code, &prefix.parse().unwrap()), 1);
        }
        record.remove_key(&prefix_key(table::EGRESS, &"10.0.0.0/8".parse().unwrap()));
        let lists = record.lengths();
        let v4 = lists[lengths_index(table::INGRESS, family::IPV4)];
        assert_eq!(v4.lengths[..usize::from(v4.count)], [32, 16, 8]);
        let v6 = lists[lengths_index(table::INGRESS, family::IPV6)];
        assert_eq!(v6.lengths[..usize::from(v6.count)], [0]);
        assert_eq!(lists[lengths_index(table::EGRESS, family::IPV4)].count, 0);
        assert_eq!(record.counts(), (4, 1));
    }

    #[test]
    fn keys_are_per_family_and_masked() {
        let key = prefix_key(table::INGRESS, &"10.1.0.0/16".parse().unwrap());
        assert_eq!((key.family, key.prefix_len), (family::IPV4, 16));
        assert_eq!(key.address[..4], [10, 1, 0, 0]);
        assert!(key.address[4..].iter().all(|b| *b == 0));
        let key = prefix_key(table::EGRESS, &"2001:db8::/32".parse().unwrap());
        assert_eq!(
            (key.table, key.family, key.prefix_len, key.address[0]),
            (table::EGRESS, family::IPV6, 32, 0x20)
        );
    }
}
