//! The policy engine: the policies in force, compiled for this node and
//! installed into the datapath, all or nothing.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use anyhow::Context as _;
use palisade_api::{ApplyResponse, PolicyFile, Status};
use palisade_policy::{
    CompileError, CompiledTable, Diagnostic, Diagnostics, NodeContext, Policy, compile,
    policy_from_toml,
};
use tracing::info;

use crate::{
    config::DatapathConfig,
    datapath::Datapath,
    flows::FlowHub,
    metrics::{RuleHits, Snapshot},
};

/// Why an apply changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A file is not a valid policy.
    #[error(transparent)]
    Invalid(#[from] Diagnostics),
    /// The policies are valid but cannot be compiled together.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// The datapath refused the new table; the old one is still in force.
    #[error("the datapath refused the new rules (the previous rules are still in force): {0:#}")]
    Datapath(anyhow::Error),
}

/// The policies in force and the datapath enforcing them.
pub struct Engine {
    node: NodeContext,
    node_name: String,
    policies: BTreeMap<String, Policy>,
    table: CompiledTable,
    generation: u32,
    datapath: Box<dyn Datapath>,
    hub: Arc<FlowHub>,
}

impl Engine {
    /// An engine with no policies; call [`Engine::apply`] to install the first table.
    pub fn new(
        node: NodeContext,
        node_name: String,
        datapath: Box<dyn Datapath>,
        hub: Arc<FlowHub>,
    ) -> Self {
        Self {
            node,
            node_name,
            policies: BTreeMap::new(),
            table: CompiledTable::default(),
            generation: 0,
            datapath,
            hub,
        }
    }

    /// Starts enforcing on the configured interfaces (after the first apply).
    ///
    /// # Errors
    ///
    /// When the datapath cannot attach to an interface.
    pub fn attach(&mut self, config: &DatapathConfig) -> anyhow::Result<()> {
        self.datapath.attach(config)
    }

    /// Adds or replaces (by `metadata.name`) the policies in `files`, compiles
    /// everything in force and installs it; on a dry run, stops before installing.
    ///
    /// # Errors
    ///
    /// [`ApplyError`]; the rules in force are unchanged then.
    pub fn apply(
        &mut self,
        files: &[PolicyFile],
        dry_run: bool,
    ) -> Result<ApplyResponse, ApplyError> {
        let parsed = parse_files(files)?;
        let applied: Vec<String> = parsed.keys().cloned().collect();
        let mut policies = self.policies.clone();
        policies.extend(parsed);
        let list: Vec<Policy> = policies.values().cloned().collect();
        let table = compile(&list, &self.node)?;
        let response = |generation: u32, table: &CompiledTable| ApplyResponse {
            generation,
            applied: applied.clone(),
            policies: table.policies.clone(),
            rules: table.rules.len(),
            dry_run,
        };
        if dry_run {
            return Ok(response(self.generation, &table));
        }
        let generation = self.generation + 1;
        // Origins first: events of the new generation may arrive right after the switch.
        self.hub.set_rule_origins(generation, table.rules.clone());
        self.datapath
            .install(&table, generation)
            .map_err(ApplyError::Datapath)?;
        info!(
            generation,
            policy = table.policies.join(","),
            rules = table.rules.len(),
            "policy applied"
        );
        let reply = response(generation, &table);
        self.policies = policies;
        self.table = table;
        self.generation = generation;
        Ok(reply)
    }

    /// One line for `systemctl status`: generation, policies, rules, interfaces.
    pub fn summary(&self) -> String {
        let interfaces: Vec<String> = self
            .datapath
            .interfaces()
            .into_iter()
            .map(|interface| interface.name)
            .collect();
        format!(
            "policy generation {}: {} policies, {} rules; enforcing on {}",
            self.generation,
            self.table.policies.len(),
            self.table.rules.len(),
            if interfaces.is_empty() {
                "no interface".to_owned()
            } else {
                interfaces.join(", ")
            }
        )
    }

    /// What the metrics endpoint reports.
    ///
    /// # Errors
    ///
    /// When the datapath's counters cannot be read.
    pub fn metrics_snapshot(&self) -> anyhow::Result<Snapshot> {
        let rule_hits = self
            .datapath
            .rule_counters()?
            .into_iter()
            .zip(&self.table.rules)
            .map(|(count, origin)| RuleHits {
                policy: origin.policy.clone(),
                rule: origin.path.clone(),
                count,
            })
            .collect();
        Ok(Snapshot {
            rule_hits,
            counters: self.datapath.counters()?,
            policies: self.table.policies.len(),
            rules: self.table.rules.len(),
            generation: self.generation,
            maps: self.datapath.map_usage(),
        })
    }

    /// What the daemon is doing.
    ///
    /// # Errors
    ///
    /// When the datapath's counters cannot be read.
    pub fn status(&self) -> anyhow::Result<Status> {
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            node_name: self.node_name.clone(),
            datapath: self.datapath.name().to_owned(),
            interfaces: self.datapath.interfaces(),
            generation: self.generation,
            policies: self.table.policies.clone(),
            rules: self.table.rules.len(),
            ingress_default_deny: self.table.ingress.default_deny,
            audit_mode: self.table.audit,
            counters: self.datapath.counters()?,
        })
    }
}

/// Parses every file, collecting all problems; a name given twice is one too.
fn parse_files(files: &[PolicyFile]) -> Result<BTreeMap<String, Policy>, Diagnostics> {
    let mut policies = BTreeMap::new();
    let mut problems = Vec::new();
    for file in files {
        match policy_from_toml(&file.name, &file.content) {
            Ok(policy) => {
                let name = policy.metadata.name.clone();
                if policies.insert(name.clone(), policy).is_some() {
                    problems.push(Diagnostic::at(
                        &file.name,
                        &file.content,
                        None,
                        "metadata.name",
                        format!("policy {name:?} is given more than once in this request"),
                    ));
                }
            }
            Err(Diagnostics(found)) => problems.extend(found),
        }
    }
    if problems.is_empty() {
        Ok(policies)
    } else {
        Err(Diagnostics(problems))
    }
}

/// Reads the `*.toml` files of `directory` in name order; a missing directory
/// holds no policies.
///
/// # Errors
///
/// When the directory or a file in it cannot be read.
pub fn read_policy_directory(directory: &Path) -> anyhow::Result<Vec<PolicyFile>> {
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", directory.display()));
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", directory.display()))?
            .path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let content = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(PolicyFile {
                name: path.display().to_string(),
                content,
            })
        })
        .collect()
}
