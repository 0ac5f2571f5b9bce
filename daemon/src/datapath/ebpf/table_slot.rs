//! One table slot's policy maps (prefixes, rule sets) and the record of
//! what they hold.
//!
//! A slot is written at an install, just before the switch to it, and
//! again right after the switch away from it: on a thread of its own, once
//! the grace period has passed, it catches up with the table just put in
//! force. The next install then finds the idle slot one table behind and
//! writes only that table's changes — also the first change after a large
//! apply, which would otherwise have to write the whole table into the
//! slot that missed it.

use std::{collections::BTreeMap, sync::Arc, thread::JoinHandle};

use anyhow::{Context as _, anyhow};
use aya::maps::{Array, HashMap, MapData};
use palisade_common::{
    MAX_ENTRIES_PER_RULE_SET, PortEntry, PrefixKey, PrefixKeyV4, RuleSet, family,
};
use palisade_policy::{
    CompiledTable,
    compile::{PrefixMap, RuleSets, TableChanges},
};

use super::slot_record::{SlotPlan, SlotRecord};

/// The flattened view of a table without its rows, for writing a slot:
/// cheap to copy (persistent maps).
#[derive(Debug, Clone)]
pub(super) struct FlatTable {
    /// The table's serial.
    pub serial: u64,
    /// Ingress and egress prefixes.
    pub prefixes: [PrefixMap; 2],
    /// The rule sets by index.
    pub rule_sets: RuleSets,
    /// What changed since the compiler's table before it.
    pub changes: Option<Arc<TableChanges>>,
}

impl FlatTable {
    /// The flattened view of `table`.
    pub fn of(table: &CompiledTable) -> Self {
        Self {
            serial: table.serial,
            prefixes: [
                table.ingress.prefixes.clone(),
                table.egress.prefixes.clone(),
            ],
            rule_sets: table.rule_sets.clone(),
            changes: table.changes.clone(),
        }
    }

    /// The rows of rule set `index` (empty for an index out of range).
    pub fn rule_set(&self, index: u32) -> &[PortEntry] {
        self.rule_sets
            .get(index as usize)
            .map_or(&[], |rows| &rows[..])
    }
}

/// A rule set as the datapath stores it.
pub(super) fn rule_set(entries: &[PortEntry]) -> anyhow::Result<RuleSet> {
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

/// One slot's policy maps and their record.
pub(super) struct TableSlot {
    pub prefixes: HashMap<MapData, PrefixKey, u32>,
    pub prefixes_v4: HashMap<MapData, PrefixKeyV4, u32>,
    pub rule_sets: Array<MapData, RuleSet>,
    pub record: SlotRecord,
}

/// A slot lent to the thread catching it up, and what that thread did.
pub(super) type CatchUp = JoinHandle<(TableSlot, anyhow::Result<()>)>;

impl TableSlot {
    /// Carries out `plan`, recording each write; the record then says the
    /// slot holds `table` (and, after a failure, that nobody knows).
    pub fn write(&mut self, plan: &SlotPlan, table: &FlatTable) -> anyhow::Result<()> {
        let record = &mut self.record;
        record.set_table(None);
        // Stale keys first: their room may be needed for the new ones.
        for (key, _) in plan.keys.iter().filter(|(_, value)| value.is_none()) {
            if key.family == family::IPV4 {
                self.prefixes_v4.remove(&PrefixKeyV4::from_key(key))?;
            } else {
                self.prefixes.remove(key)?;
            }
            record.remove_key(key);
        }
        for &index in &plan.rule_sets {
            let set = rule_set(table.rule_set(index))?;
            let position = index as usize;
            if record.rule_set(position) == Some(&set) {
                continue;
            }
            self.rule_sets.set(index, &set, 0)?;
            record.set_rule_set(position, set);
        }
        record.keep_rule_sets(table.rule_sets.len());
        for (key, value) in &plan.keys {
            let Some(value) = value else { continue };
            if key.family == family::IPV4 {
                self.prefixes_v4
                    .insert(&PrefixKeyV4::from_key(key), value, 0)
            } else {
                self.prefixes.insert(key, value, 0)
            }
            .context("writing a prefix (raise datapath.policy_map_max)")?;
            record.set_key(*key, *value);
        }
        record.set_table(Some(table.serial));
        Ok(())
    }

    /// Brings the slot, which packets stopped using at the last switch, up
    /// to `table` on a thread of its own: after `wait_for_readers`, the
    /// grace period, it writes what differs.
    pub fn catch_up(
        mut self,
        table: FlatTable,
        listed: BTreeMap<PrefixKey, u32>,
        wait_for_readers: fn() -> anyhow::Result<()>,
    ) -> CatchUp {
        std::thread::spawn(move || {
            let result = wait_for_readers().and_then(|()| {
                let plan = self.record.plan(&table, &listed, None);
                self.write(&plan, &table)
            });
            (self, result)
        })
    }
}
