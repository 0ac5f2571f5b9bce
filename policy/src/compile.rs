//! The compiler: the policies that select this node → a datapath-neutral rule table.
//!
//! The table keeps two views of the same rules:
//! - `entries`: one row per (prefix, protocol, port range, action) exactly as the
//!   policies say it; the reference evaluator reads this view;
//! - `prefixes` + `rule_sets`: the view a longest-prefix-match datapath needs.
//!   Each prefix's rule set already holds the rows of every prefix containing
//!   it, so one lookup of the most specific prefix finds everything that
//!   applies. Identical rule sets are stored once.

use std::collections::{BTreeMap, HashMap};

use ipnet::IpNet;
use palisade_common::{MAX_ENTRIES_PER_RULE_SET, PortEntry, action, protocol};
use serde::{Deserialize, Serialize};

pub use crate::model::Section;
pub use crate::resolve::NodeContext;
use crate::{
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

/// A prefix of the flattened view and the rule set its packets use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PrefixEntry {
    /// The prefix.
    pub prefix: IpNet,
    /// Index into [`DirectionTable::rule_sets`].
    pub rule_set: u32,
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
    /// Flattened view: prefixes, most specific wins.
    pub prefixes: Vec<PrefixEntry>,
    /// Flattened view: rule sets, deny rows first, each group by rule id.
    /// Index 0 is always the empty set.
    #[serde(skip)]
    pub rule_sets: Vec<Vec<PortEntry>>,
}

/// The compiled rules for this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CompiledTable {
    /// Ingress rules (peer = source).
    pub ingress: DirectionTable,
    /// Egress rules (peer = destination).
    pub egress: DirectionTable,
    /// Stateless source-prefix drops: the prefixes of `ingressDeny` rules
    /// that name peers (`fromCIDR`, never the whole address space) and no
    /// ports. Empty in audit mode.
    pub prefilter: Vec<PrefilterEntry>,
    /// Rule id → where it came from.
    pub rules: Vec<RuleOrigin>,
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
}

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
    let mut table = CompiledTable {
        audit: node.audit_mode,
        strict: node.strict_prefixes.iter().map(IpNet::trunc).collect(),
        ..CompiledTable::default()
    };
    // Default deny asked for by policies in audit mode, per direction.
    let mut audit_default_deny = [false; 2];
    for SelectedRule { policy, path, rule } in rules_for_node(policies, &node.labels) {
        let name = policy.policy_name();
        if !table.policies.contains(&name) {
            table.policies.push(name);
        }
        // Cilium: a selecting rule with an ingress or ingressDeny section puts
        // ingress into default deny, and likewise for egress, unless its
        // enableDefaultDeny says otherwise; one rule asking is enough
        // (Documentation/security/policy/intro.rst, rule.go EnableDefaultDeny).
        let audited = policy.audit_annotation();
        if audited {
            audit_default_deny[0] |= rule.default_deny_ingress();
            audit_default_deny[1] |= rule.default_deny_egress();
        } else {
            table.ingress.default_deny |= rule.default_deny_ingress();
            table.egress.default_deny |= rule.default_deny_egress();
        }
        for (section, rules) in rule.sections() {
            for (i, peer_rule) in rules.iter().enumerate() {
                let rule_id = u32::try_from(table.rules.len()).unwrap_or(u32::MAX - 2);
                let rule_path = format!("{path}.{}[{i}]", section.field());
                if !peer_rule.peers.fqdns.is_empty() {
                    if !node.fqdn_audit {
                        return Err(CompileError::FqdnNotEnforced { path: rule_path });
                    }
                    table.audit = true;
                }
                let verdict = match (section.is_deny(), audited) {
                    (true, false) => action::DENY,
                    (true, true) => action::AUDIT_DENY,
                    (false, _) => action::ALLOW,
                };
                let rows = if section.is_ingress() {
                    &mut table.ingress.entries
                } else {
                    &mut table.egress.entries
                };
                let prefixes = node.peers(peer_rule);
                add_rows(rows, &prefixes, peer_rule, verdict, rule_id, &rule_path)?;
                if verdict == action::DENY
                    && section == Section::IngressDeny
                    && peer_rule.to_ports.is_empty()
                    && peer_rule.icmps.is_empty()
                {
                    table.prefilter.extend(
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
                    policy: policy.policy_name(),
                    path: rule_path,
                    section,
                };
                if let PeerSelection::Nothing(reason) = peer_rule.selection() {
                    table.empty_entries.push(EmptyEntry {
                        direction: if section.is_ingress() {
                            Direction::Ingress
                        } else {
                            Direction::Egress
                        },
                        origin: origin.clone(),
                        reason: reason.to_string(),
                    });
                }
                table.rules.push(origin);
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
    flatten(&mut table.ingress)?;
    flatten(&mut table.egress)?;
    Ok(table)
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

/// Builds `prefixes` and `rule_sets` from `entries`.
fn flatten(direction: &mut DirectionTable) -> Result<(), CompileError> {
    let mut own: BTreeMap<IpNet, Vec<PortEntry>> = BTreeMap::new();
    for row in &direction.entries {
        own.entry(row.prefix).or_default().push(row.port);
    }
    direction.rule_sets = vec![Vec::new()];
    let mut set_index: HashMap<Vec<PortEntry>, u32> = HashMap::from([(Vec::new(), 0)]);
    // Sorted by (address, length): every prefix comes after all prefixes that
    // contain it, so a stack of open ancestors gives each prefix its parents.
    let mut ancestors: Vec<(IpNet, Vec<PortEntry>)> = Vec::new();
    for (prefix, rows) in own {
        while let Some((top, _)) = ancestors.last() {
            if top.contains(&prefix) && top.prefix_len() < prefix.prefix_len() {
                break;
            }
            ancestors.pop();
        }
        let mut set: Vec<PortEntry> = ancestors
            .last()
            .map(|(_, set)| set.clone())
            .unwrap_or_default();
        set.extend(rows);
        let set = canonical(set);
        if set.len() > MAX_ENTRIES_PER_RULE_SET {
            return Err(CompileError::TooManyEntries {
                prefix,
                count: set.len(),
                max: MAX_ENTRIES_PER_RULE_SET,
            });
        }
        let next = u32::try_from(direction.rule_sets.len()).unwrap_or(u32::MAX);
        let index = *set_index.entry(set.clone()).or_insert_with(|| {
            direction.rule_sets.push(set.clone());
            next
        });
        direction.prefixes.push(PrefixEntry {
            prefix,
            rule_set: index,
        });
        ancestors.push((prefix, set));
    }
    Ok(())
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
    set.sort_by_key(|entry| {
        (
            precedence(entry),
            entry.rule_id,
            entry.protocol,
            entry.port_lo,
            entry.port_hi,
        )
    });
    let mut seen = std::collections::HashSet::new();
    set.retain(|entry| seen.insert((entry.action, entry.protocol, entry.port_lo, entry.port_hi)));
    set
}

#[cfg(test)]
mod tests {
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
            .map(|p| {
                let set = &table.ingress.rule_sets[p.rule_set as usize];
                let rows = set
                    .iter()
                    .map(|e| (e.action, e.port_lo, e.rule_id))
                    .collect();
                (p.prefix.to_string(), rows)
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
            .find(|p| p.prefix.to_string() == "11.0.0.0/8")
            .unwrap();
        let rows = &table.ingress.rule_sets[eleven.rule_set as usize];
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
