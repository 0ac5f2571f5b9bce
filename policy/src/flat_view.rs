//! The flattened view of a rule table, kept up to date change by change.
//!
//! A longest-prefix-match datapath looks up the most specific prefix of a
//! peer and needs everything that applies to it there: each prefix's rule
//! set holds its own rows and those of every prefix containing it. When a
//! policy changes, only the prefixes it names and the prefixes inside them
//! get new rule sets; the rest of the view, and the rule-set numbers the
//! datapath already holds, stay as they are. The maps are persistent
//! (`imbl`): a copy of the view costs nothing, so a compile works on a copy
//! and the engine keeps it only once the table is installed.

use std::{collections::BTreeSet, ops::Range, sync::Arc};

use imbl::{HashMap, OrdMap, Vector};
use ipnet::IpNet;
use palisade_common::{MAX_ENTRIES_PER_RULE_SET, PortEntry, action};

use crate::compile::{CompileError, TableEntry};

/// The rows of one rule set: deny rows first, then the deny rows of
/// policies in audit mode, then allow rows, each group by rule id.
pub type RuleSetRows = Arc<[PortEntry]>;

/// Rule sets by index.
pub type RuleSets = Vector<RuleSetRows>;

/// One prefix of the flattened view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatPrefix {
    /// Index of the prefix's rule set in `CompiledTable::rule_sets`.
    pub rule_set: u32,
    /// The rows the policies give this prefix itself (the rule set adds
    /// those of the prefixes containing it).
    pub own: RuleSetRows,
}

/// The flattened prefixes of one direction, in (address, length) order.
pub type PrefixMap = OrdMap<IpNet, FlatPrefix>;

/// What changed from one flattened view to the next, for a datapath that
/// writes only that.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlatChanges {
    /// Per direction (ingress, egress): prefixes added, removed or given
    /// another rule set.
    pub prefixes: [BTreeSet<IpNet>; 2],
    /// Rule-set indices whose rows changed (taken, or freed).
    pub rule_sets: BTreeSet<u32>,
}

impl FlatChanges {
    /// Adds `other`'s changes to these.
    pub fn extend(&mut self, other: &Self) {
        for (mine, theirs) in self.prefixes.iter_mut().zip(&other.prefixes) {
            mine.extend(theirs.iter().copied());
        }
        self.rule_sets.extend(other.rule_sets.iter().copied());
    }
}

/// A rule-set index no prefix has yet: set on a prefix whose rows changed
/// until [`FlatView::flatten`] gives it its set.
const UNSET: u32 = u32::MAX;

/// Both directions' flattened prefixes and the rule sets they share.
#[derive(Debug, Clone, Default)]
pub(crate) struct FlatView {
    directions: [DirectionView; 2],
    pool: RuleSetPool,
}

/// One direction: each prefix's own rows and rule set.
#[derive(Debug, Clone)]
struct DirectionView {
    prefixes: PrefixMap,
    /// How many prefixes have each length, per family (IPv4, IPv6): the
    /// lengths worth trying when looking for a parent.
    lengths: Arc<[[u32; 129]; 2]>,
    /// Prefixes whose own rows changed since the last flatten, and those
    /// that lost all their rows (their rule set is released at flatten).
    touched: Vec<IpNet>,
    emptied: Vec<IpNet>,
}

impl Default for DirectionView {
    fn default() -> Self {
        Self {
            prefixes: PrefixMap::new(),
            lengths: Arc::new([[0; 129]; 2]),
            touched: Vec::new(),
            emptied: Vec::new(),
        }
    }
}

/// Rule sets stored once each, numbered, counted by the prefixes using them.
#[derive(Debug, Clone)]
struct RuleSetPool {
    /// Index → rows; index 0 is the empty set and never handed out.
    sets: Vector<RuleSetRows>,
    /// Index → how many prefixes use it.
    uses: Vector<u32>,
    /// Rows → index, for the sets in use.
    index: HashMap<RuleSetRows, u32>,
    /// Indices no prefix uses, taken first.
    free: Vector<u32>,
}

impl Default for RuleSetPool {
    fn default() -> Self {
        Self {
            sets: Vector::from(vec![RuleSetRows::from([])]),
            uses: Vector::from(vec![0]),
            index: HashMap::new(),
            free: Vector::new(),
        }
    }
}

impl RuleSetPool {
    fn acquire(&mut self, rows: RuleSetRows, changes: &mut Vec<u32>) -> u32 {
        if let Some(&index) = self.index.get(&rows) {
            if let Some(uses) = self.uses.get_mut(index as usize) {
                *uses += 1;
            }
            return index;
        }
        let index = match self.free.pop_front() {
            Some(index) => {
                self.sets.set(index as usize, rows.clone());
                self.uses.set(index as usize, 1);
                index
            }
            None => {
                let index = u32::try_from(self.sets.len()).unwrap_or(UNSET);
                self.sets.push_back(rows.clone());
                self.uses.push_back(1);
                index
            }
        };
        self.index.insert(rows, index);
        changes.push(index);
        index
    }

    /// Gives a set whose every user moves to the same new rows (a port
    /// changed in a rule of many prefixes) those rows under its index, so
    /// that its prefixes keep their index and only the set is written again.
    fn rewrite_in_place(
        &mut self,
        moves: &[(IpNet, RuleSetRows, FlatPrefix)],
        changes: &mut Vec<u32>,
    ) {
        // Old index → how many of its users move, and where (None: apart).
        let mut targets: std::collections::HashMap<u32, (u32, Option<&RuleSetRows>)> =
            std::collections::HashMap::new();
        for (_, rows, held) in moves {
            let index = held.rule_set;
            if index == UNSET || self.sets.get(index as usize) == Some(rows) {
                continue;
            }
            let (count, target) = targets.entry(index).or_insert((0, Some(rows)));
            *count += 1;
            if target.is_some_and(|target| target != rows) {
                *target = None;
            }
        }
        for (index, (count, target)) in targets {
            let Some(rows) = target else { continue };
            if self.uses.get(index as usize) != Some(&count) || self.index.contains_key(rows) {
                continue;
            }
            let old = self.sets.set(index as usize, rows.clone());
            self.index.remove(&old);
            self.index.insert(rows.clone(), index);
            changes.push(index);
        }
    }

    fn release(&mut self, index: u32, changes: &mut Vec<u32>) {
        if index == 0 {
            return;
        }
        let Some(uses) = self.uses.get_mut(index as usize) else {
            return;
        };
        *uses = uses.saturating_sub(1);
        if *uses == 0 {
            let rows = self.sets.set(index as usize, RuleSetRows::from([]));
            self.index.remove(&rows);
            self.free.push_back(index);
            changes.push(index);
        }
    }
}

fn family(prefix: &IpNet) -> usize {
    usize::from(matches!(prefix, IpNet::V6(_)))
}

/// The last prefix, in the maps' order, that `prefix` contains.
fn last_inside(prefix: &IpNet) -> IpNet {
    match prefix {
        IpNet::V4(net) => IpNet::V4(ipnet::Ipv4Net::new_assert(net.broadcast(), 32)),
        IpNet::V6(net) => IpNet::V6(ipnet::Ipv6Net::new_assert(net.broadcast(), 128)),
    }
}

/// Deny rows first, then the deny rows of policies in audit mode, then
/// allow rows, each by rule id; a row that matches exactly what an earlier
/// row matches is dropped.
fn canonical(mut set: Vec<PortEntry>) -> Vec<PortEntry> {
    let precedence = |entry: &PortEntry| match entry.action {
        action::DENY => 0,
        action::AUDIT_DENY => 1,
        _ => 2,
    };
    set.sort_unstable_by_key(|entry| {
        (
            precedence(entry),
            entry.rule_id,
            entry.protocol,
            entry.port_lo,
            entry.port_hi,
        )
    });
    let matches = |entry: &PortEntry| (entry.action, entry.protocol, entry.port_lo, entry.port_hi);
    let mut kept = 0;
    for i in 0..set.len() {
        let row = set[i];
        if !set[..kept]
            .iter()
            .any(|earlier| matches(earlier) == matches(&row))
        {
            set[kept] = row;
            kept += 1;
        }
    }
    set.truncate(kept);
    set
}

impl FlatView {
    /// Direction `direction`'s prefixes and their rule sets.
    pub(crate) fn prefixes(&self, direction: usize) -> PrefixMap {
        self.directions[direction].prefixes.clone()
    }

    /// Every rule set by index; index 0 is the empty set, and so is every
    /// index no prefix uses.
    pub(crate) fn rule_sets(&self) -> RuleSets {
        self.pool.sets.clone()
    }

    /// Replaces, in `direction`, the rows whose rule ids lie in `old_ids`
    /// (their prefixes are those of `old_rows`) by `new_rows`. Call
    /// [`FlatView::flatten`] once every policy has been replaced.
    pub(crate) fn replace_rows(
        &mut self,
        direction: usize,
        old_rows: &[TableEntry],
        old_ids: Range<u32>,
        new_rows: &[TableEntry],
    ) {
        let view = &mut self.directions[direction];
        let mut added: Vec<&TableEntry> = new_rows.iter().collect();
        added.sort_by_key(|row| row.prefix);
        let mut prefixes: Vec<IpNet> = old_rows.iter().map(|row| row.prefix).collect();
        prefixes.extend(added.iter().map(|row| row.prefix));
        prefixes.sort_unstable();
        prefixes.dedup();
        let mut next_added = 0;
        for prefix in &prefixes {
            let held = view.prefixes.get(prefix);
            let mut rows: Vec<PortEntry> = held
                .map(|held| {
                    held.own
                        .iter()
                        .filter(|entry| !old_ids.contains(&entry.rule_id))
                        .copied()
                        .collect()
                })
                .unwrap_or_default();
            let was_empty = held.is_none_or(|held| held.own.is_empty());
            let rule_set = held.map_or(UNSET, |held| held.rule_set);
            while let Some(row) = added.get(next_added).filter(|row| row.prefix == *prefix) {
                rows.push(row.port);
                next_added += 1;
            }
            let lengths = Arc::make_mut(&mut view.lengths);
            let count = &mut lengths[family(prefix)][usize::from(prefix.prefix_len())];
            match (was_empty, rows.is_empty()) {
                (true, false) => *count += 1,
                (false, true) => {
                    *count -= 1;
                    view.emptied.push(*prefix);
                }
                _ => {}
            }
            view.prefixes.insert(
                *prefix,
                FlatPrefix {
                    rule_set,
                    own: rows.into(),
                },
            );
        }
        view.touched.extend(prefixes);
    }

    /// Gives the prefixes whose rows changed, and every prefix inside
    /// them, their rule sets again, and says what changed.
    ///
    /// # Errors
    ///
    /// [`CompileError::TooManyEntries`] when a prefix collects more rows
    /// than a rule set holds (the first such prefix in order).
    pub(crate) fn flatten(&mut self) -> Result<FlatChanges, CompileError> {
        let mut changes = FlatChanges::default();
        let mut rule_sets = Vec::new();
        for direction in 0..2 {
            let view = &mut self.directions[direction];
            let mut touched = std::mem::take(&mut view.touched);
            touched.sort_unstable();
            touched.dedup();
            let (affected, everything) = view.with_prefixes_inside(&touched);
            let changed = self.reflatten(direction, &affected, everything, &mut rule_sets)?;
            changes.prefixes[direction] = changed.into_iter().collect();
        }
        changes.rule_sets = rule_sets.into_iter().collect();
        Ok(changes)
    }

    /// Gives each of `affected` (sorted) its rule set; `everything` says
    /// they are all the prefixes there are. Returns the prefixes whose rule
    /// set changed, in order.
    fn reflatten(
        &mut self,
        direction: usize,
        affected: &[IpNet],
        everything: bool,
        rule_sets: &mut Vec<u32>,
    ) -> Result<Vec<IpNet>, CompileError> {
        let Self { directions, pool } = self;
        let view = &mut directions[direction];
        let mut changed = Vec::new();
        for prefix in std::mem::take(&mut view.emptied) {
            if let Some(held) = view
                .prefixes
                .get(&prefix)
                .filter(|held| held.own.is_empty())
            {
                if held.rule_set != UNSET {
                    pool.release(held.rule_set, rule_sets);
                }
                view.prefixes.remove(&prefix);
            }
        }
        // Sorted by (address, length): a prefix comes after every prefix
        // containing it, so the open ancestors form a stack.
        let mut ancestors: Vec<(IpNet, RuleSetRows)> = Vec::new();
        let mut computed: Vec<(IpNet, RuleSetRows, FlatPrefix)> =
            Vec::with_capacity(affected.len());
        for prefix in affected {
            let Some(held) = view.prefixes.get(prefix) else {
                // Its rows are gone: the datapath removes it.
                changed.push(*prefix);
                continue;
            };
            while let Some((top, _)) = ancestors.last() {
                if top.contains(prefix) && top.prefix_len() < prefix.prefix_len() {
                    break;
                }
                ancestors.pop();
            }
            // An ancestor outside the affected prefixes kept its rule set.
            let inherited = match ancestors.last() {
                Some((_, rows)) => rows.clone(),
                None if everything => RuleSetRows::from([]),
                None => view
                    .parent(prefix)
                    .and_then(|parent| pool.sets.get(parent.rule_set as usize))
                    .cloned()
                    .unwrap_or_else(|| RuleSetRows::from([])),
            };
            let mut rows = Vec::with_capacity(inherited.len() + held.own.len());
            rows.extend_from_slice(&inherited);
            rows.extend_from_slice(&held.own);
            let rows = canonical(rows);
            if rows.len() > MAX_ENTRIES_PER_RULE_SET {
                return Err(CompileError::TooManyEntries {
                    prefix: *prefix,
                    count: rows.len(),
                    max: MAX_ENTRIES_PER_RULE_SET,
                });
            }
            let rows = RuleSetRows::from(rows);
            ancestors.push((*prefix, rows.clone()));
            computed.push((*prefix, rows, held.clone()));
        }
        pool.rewrite_in_place(&computed, rule_sets);
        for (prefix, rows, held) in computed {
            let index = pool.acquire(rows, rule_sets);
            if held.rule_set != UNSET {
                pool.release(held.rule_set, rule_sets);
            }
            if held.rule_set != index {
                view.prefixes.insert(
                    prefix,
                    FlatPrefix {
                        rule_set: index,
                        own: held.own,
                    },
                );
                changed.push(prefix);
            }
        }
        Ok(changed)
    }
}

impl DirectionView {
    /// `touched` (sorted) and every prefix inside one of them, sorted; and
    /// whether that is every prefix there is.
    fn with_prefixes_inside(&self, touched: &[IpNet]) -> (Vec<IpNet>, bool) {
        let mut affected = Vec::with_capacity(touched.len());
        let mut outer: Option<IpNet> = None;
        if touched.len() * 16 < self.prefixes.len() {
            // A few: look up what lies inside each.
            let mut inside = BTreeSet::new();
            for prefix in touched {
                if outer.is_some_and(|outer| outer.contains(prefix)) {
                    continue;
                }
                outer = Some(*prefix);
                inside.extend(
                    self.prefixes
                        .range((
                            std::ops::Bound::Excluded(*prefix),
                            std::ops::Bound::Included(last_inside(prefix)),
                        ))
                        .map(|(inner, _)| *inner)
                        .filter(|inner| prefix.contains(inner)),
                );
            }
            inside.extend(touched.iter().copied());
            affected.extend(inside);
            return (affected, false);
        }
        // Many: one walk through both lists in order.
        let mut touched = touched.iter().peekable();
        let mut everything = true;
        for prefix in self.prefixes.keys() {
            while let Some(gone) = touched.next_if(|gone| *gone < prefix) {
                affected.push(*gone);
            }
            let is_touched = touched.next_if(|next| *next == prefix).is_some();
            if is_touched && !outer.is_some_and(|outer| outer.contains(prefix)) {
                outer = Some(*prefix);
            }
            if is_touched || outer.is_some_and(|outer| outer.contains(prefix)) {
                affected.push(*prefix);
            } else {
                everything = false;
            }
        }
        affected.extend(touched);
        (affected, everything)
    }

    /// The most specific prefix with rows containing `prefix` (not itself).
    fn parent(&self, prefix: &IpNet) -> Option<&FlatPrefix> {
        let lengths = &self.lengths[family(prefix)];
        (0..prefix.prefix_len())
            .rev()
            .filter(|length| lengths[usize::from(*length)] > 0)
            .find_map(|length| {
                let candidate = IpNet::new(prefix.addr(), length).ok()?.trunc();
                self.prefixes
                    .get(&candidate)
                    .filter(|held| !held.own.is_empty())
            })
    }
}
