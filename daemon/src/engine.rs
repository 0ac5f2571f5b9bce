//! The policy engine: the policies in force, where each came from, compiled
//! for this node and installed into the datapath, all or nothing; applies
//! that roll back unless confirmed; saving what was applied.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use palisade_api::{
    ApplyRequest, ApplyResponse, ConntrackFill, DiffResponse, Failsafe, FlowFilter, InterfaceState,
    KernelFeatures, PendingConfirm, PolicyDocument, PolicyFile, PolicyList, PolicySource,
    PolicySummary, Status, UnenforcedRule,
};
use palisade_common::FAILSAFE_RULE;
use palisade_policy::{
    CompileError, CompiledTable, Diagnostic, Diagnostics, NodeContext, Policy, PolicyName,
    TableCompiler, ValidateOptions, policies_from_text_with, policy_to_toml, rule_lines,
    unenforced_rules,
};
use tracing::{info, warn};

use crate::{
    config::DatapathConfig,
    datapath::{
        ConnectionTables, Datapath, DatapathError, EnforcementSettings, MapUsage, Repair, TableFill,
    },
    flows::FlowHub,
    impact,
    policy_files::read_policy_directory,
    store::PolicyStore,
};

/// Why a request changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A file is not a valid policy.
    #[error(transparent)]
    Invalid(#[from] Diagnostics),
    /// The policies are valid but cannot be compiled together.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// No policy of that name is in force.
    #[error("no policy named {0:?} is in force (`palisadectl policy list` shows them)")]
    NotFound(String),
    /// An apply waits for confirmation; other changes must wait.
    #[error(
        "generation {generation} rolls back in {seconds_left} s unless confirmed: run `palisadectl confirm` to keep it, or wait for the rollback, then try again"
    )]
    ConfirmPending {
        /// The generation waiting.
        generation: u32,
        /// Seconds before it rolls back.
        seconds_left: u64,
    },
    /// `confirm` without a pending apply.
    #[error("nothing to confirm: no apply is waiting for confirmation")]
    NothingPending,
    /// A policy file or the state directory could not be read or written.
    #[error("{0:#}")]
    Storage(anyhow::Error),
    /// The new table does not fit the datapath (`datapath.policy_map_max`
    /// and the like); the old one is still in force.
    #[error("{0}")]
    Capacity(String),
    /// The datapath refused the new table; the old one is still in force.
    #[error("the datapath refused the new rules (the previous rules are still in force): {0:#}")]
    Datapath(anyhow::Error),
}

impl From<DatapathError> for ApplyError {
    fn from(error: DatapathError) -> Self {
        match error {
            DatapathError::Capacity(text) => Self::Capacity(text),
            DatapathError::Kernel(error) => Self::Datapath(error),
        }
    }
}

/// What the engine is set up with.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// This node's labels and audit mode.
    pub node: NodeContext,
    /// This node's name.
    pub node_name: String,
    /// The policy directory (`policy.directory`).
    pub directory: PathBuf,
    /// Where applied policies are saved.
    pub store: PolicyStore,
    /// The failsafe services, for status.
    pub failsafe: Failsafe,
    /// What the datapath enforces besides the table (staged in it).
    pub enforcement: EnforcementSettings,
}

/// What the engine and its datapath report, for the metrics.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    /// Packet counters.
    pub counters: palisade_api::Counters,
    /// Policies selecting this node.
    pub policies: usize,
    /// Compiled rules.
    pub rules: usize,
    /// Generation in force.
    pub generation: u32,
    /// Table fill levels.
    pub maps: Vec<MapUsage>,
    /// New connections each rule of the table in force decided.
    pub rule_hits: Vec<RuleHits>,
    /// Configured interfaces nothing is enforced on now (gone).
    pub interfaces_unenforced: usize,
    /// The connection tables' fill, as last counted.
    pub conntrack: Vec<TableFill>,
}

/// What one compiled rule has decided since it was installed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleHits {
    /// The policy's name.
    pub policy: String,
    /// The rule's field path, such as `spec.ingress[0]`.
    pub rule: String,
    /// Packets and bytes of the new connections it decided.
    pub count: palisade_api::PacketCount,
}

/// What a reload of the configuration changes in a running engine: this
/// node's policy context (labels, addresses, audit mode, `[cluster]`,
/// strict-mode prefixes), the failsafe services and the datapath's other
/// settings. [`Engine::reconfigure`] puts it in force with the policies.
#[derive(Debug, Clone)]
pub struct Reconfiguration {
    /// This node's policy context.
    pub node: NodeContext,
    /// The failsafe services, for status.
    pub failsafe: Failsafe,
    /// What the datapath enforces besides the table.
    pub enforcement: EnforcementSettings,
}

/// A policy in force and where it came from. Shared (`Arc`) between the
/// sets an apply builds, so that a change beside a large policy does not
/// copy it.
#[derive(Debug)]
struct PolicyEntry {
    /// Shared with the compiler, which knows an unchanged policy by it.
    policy: Arc<Policy>,
    source: PolicySource,
    file: PolicyFile,
    /// The policy as the store saves it (TOML), made once when it is read,
    /// for the policies applied through the socket; none for the others.
    saved_text: Option<String>,
}

/// An apply that rolls back unless confirmed.
#[derive(Debug)]
struct Pending {
    generation: u32,
    rollback_to: u32,
    previous: BTreeMap<PolicyName, Arc<PolicyEntry>>,
    deadline: Instant,
}

impl Pending {
    fn seconds_left(&self) -> u64 {
        self.deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
    }

    fn describe(&self) -> PendingConfirm {
        PendingConfirm {
            generation: self.generation,
            rollback_to: self.rollback_to,
            seconds_left: self.seconds_left(),
        }
    }
}

/// The policies in force and the datapath enforcing them.
pub struct Engine {
    settings: EngineSettings,
    policies: BTreeMap<PolicyName, Arc<PolicyEntry>>,
    table: CompiledTable,
    /// The compiler holding `table`: the next compile starts from it.
    compiler: TableCompiler,
    generation: u32,
    pending: Option<Pending>,
    /// Read once at start: it does not change while palisaded runs.
    kernel: KernelFeatures,
    datapath: Box<dyn Datapath>,
    hub: Arc<FlowHub>,
    /// The connection tables' fill, as last counted.
    conntrack_fill: Vec<TableFill>,
}

impl Engine {
    /// An engine with no policies; call [`Engine::reload`] to install the first table.
    pub fn new(settings: EngineSettings, datapath: Box<dyn Datapath>, hub: Arc<FlowHub>) -> Self {
        let compiler = TableCompiler::new(settings.node.clone());
        Self {
            settings,
            policies: BTreeMap::new(),
            table: CompiledTable::default(),
            compiler,
            generation: 0,
            pending: None,
            kernel: datapath.kernel_features(),
            datapath,
            hub,
            conntrack_fill: Vec::new(),
        }
    }

    /// Checks the datapath's attachments and pins against the kernel and
    /// mends what it can ([`Datapath::repair`]).
    pub fn repair(&mut self) -> Vec<Repair> {
        self.datapath.repair()
    }

    /// Starts enforcing on the configured interfaces (after the first install).
    ///
    /// # Errors
    ///
    /// When the datapath cannot attach to an interface.
    pub fn attach(&mut self, config: &DatapathConfig) -> anyhow::Result<()> {
        self.datapath.attach(config)
    }

    /// What policy validation accepts on this node.
    pub fn validate_options(&self) -> ValidateOptions {
        ValidateOptions {
            fqdn_audit: self.settings.node.fqdn_audit,
        }
    }

    /// Puts `update` in force together with the policies, read again from
    /// the directory and the store: one new generation, or nothing changed.
    ///
    /// # Errors
    ///
    /// [`ApplyError`]; the rules and settings in force are unchanged then.
    pub fn reconfigure(&mut self, update: Reconfiguration) -> Result<ApplyResponse, ApplyError> {
        self.refuse_while_pending()?;
        self.datapath
            .stage(&update.enforcement)
            .map_err(ApplyError::Datapath)?;
        let previous = Reconfiguration {
            node: std::mem::replace(&mut self.settings.node, update.node),
            failsafe: std::mem::replace(&mut self.settings.failsafe, update.failsafe),
            enforcement: std::mem::replace(&mut self.settings.enforcement, update.enforcement),
        };
        let result = self.reload();
        if result.is_err() {
            if let Err(error) = self.datapath.stage(&previous.enforcement) {
                warn!(
                    error = format!("{error:#}"),
                    "cannot stage the previous datapath settings again"
                );
            }
            self.settings.node = previous.node;
            self.settings.failsafe = previous.failsafe;
            self.settings.enforcement = previous.enforcement;
        }
        result
    }

    /// Reads the policy directory and the saved policies (a saved policy
    /// replaces a directory one of the same name) and installs them.
    ///
    /// # Errors
    ///
    /// [`ApplyError`]; the rules in force are unchanged then.
    pub fn reload(&mut self) -> Result<ApplyResponse, ApplyError> {
        let directory =
            read_policy_directory(&self.settings.directory).map_err(ApplyError::Storage)?;
        let saved = self.settings.store.load().map_err(ApplyError::Storage)?;
        self.replace_sources(vec![
            (PolicySource::Directory, directory),
            (PolicySource::Applied, saved),
        ])
    }

    /// Puts in force, for each `(source, files)`, exactly that source's
    /// policies — what the source held and `files` lacks is removed — and
    /// keeps the other sources' policies: the seam through which a source
    /// that knows its whole set (the directory and the saved policies on
    /// reload; a cluster watcher) pushes it. A name two sources give goes to
    /// the source of higher [`precedence`]. All or nothing, one generation.
    ///
    /// # Errors
    ///
    /// [`ApplyError`] with every problem of every file; the rules in force
    /// are unchanged then.
    pub fn replace_sources(
        &mut self,
        sets: Vec<(PolicySource, Vec<PolicyFile>)>,
    ) -> Result<ApplyResponse, ApplyError> {
        self.refuse_while_pending()?;
        let replaced: Vec<PolicySource> = sets.iter().map(|(source, _)| *source).collect();
        let mut policies: BTreeMap<PolicyName, Arc<PolicyEntry>> = self
            .policies
            .iter()
            .filter(|(_, entry)| !replaced.contains(&entry.source))
            .map(|(name, entry)| (name.clone(), entry.clone()))
            .collect();
        let mut given = BTreeSet::new();
        let mut problems = Vec::new();
        for (source, files) in sets {
            match parse_files(&files, source, self.validate_options()) {
                Ok(parsed) => {
                    for (name, entry) in parsed {
                        given.insert(name.clone());
                        let outranked = policies
                            .get(&name)
                            .is_some_and(|held| precedence(held.source) > precedence(source));
                        if !outranked {
                            policies.insert(name, entry);
                        }
                    }
                }
                Err(Diagnostics(found)) => problems.extend(found),
            }
        }
        if !problems.is_empty() {
            return Err(Diagnostics(problems).into());
        }
        self.commit(policies, given.into_iter().collect(), false)
    }

    /// Adds or replaces (by `metadata.name`) the policies in the request's
    /// files, compiles everything in force and installs it; on a dry run,
    /// stops before installing. With a confirm deadline the previous policies
    /// come back at the deadline unless [`Engine::confirm`] is called, and
    /// nothing is saved until then.
    ///
    /// # Errors
    ///
    /// [`ApplyError`]; the rules in force are unchanged then.
    pub fn apply(&mut self, request: &ApplyRequest) -> Result<ApplyResponse, ApplyError> {
        let parsed = parse_request(&request.files, self.validate_options())?;
        self.apply_parsed(parsed, request)
    }

    /// [`Engine::apply`] with the request's files parsed already (by
    /// [`parse_request`], off the engine), so a large or hostile file
    /// never holds the engine while it is read.
    ///
    /// # Errors
    ///
    /// As [`Engine::apply`].
    pub fn apply_parsed(
        &mut self,
        parsed: ParsedFiles,
        request: &ApplyRequest,
    ) -> Result<ApplyResponse, ApplyError> {
        let parsed = parsed.0;
        let applied: Vec<PolicyName> = parsed.keys().cloned().collect();
        let mut policies = self.policies.clone();
        policies.extend(parsed);
        if request.dry_run {
            return self.preview(&policies, applied);
        }
        self.refuse_while_pending()?;
        let confirm = request.confirm_seconds.map(Duration::from_secs);
        let previous = self.policies.clone();
        let rollback_to = self.generation;
        let mut response = self.commit(policies, applied, confirm.is_none())?;
        if let Some(wait) = confirm {
            let pending = Pending {
                generation: self.generation,
                rollback_to,
                previous,
                deadline: Instant::now() + wait,
            };
            warn!(
                generation = self.generation,
                seconds = wait.as_secs(),
                "policy applied on probation: it rolls back unless confirmed (`palisadectl confirm`)"
            );
            response.pending_confirm = Some(pending.describe());
            self.pending = Some(pending);
        }
        Ok(response)
    }

    /// Removes policy `name` (on a dry run, only says what would change).
    ///
    /// # Errors
    ///
    /// [`ApplyError::NotFound`] when no such policy is in force, or as [`Engine::apply`].
    pub fn delete(
        &mut self,
        name: &PolicyName,
        dry_run: bool,
    ) -> Result<ApplyResponse, ApplyError> {
        let mut policies = self.policies.clone();
        let entry = policies
            .remove(name)
            .ok_or_else(|| ApplyError::NotFound(name.to_string()))?;
        if dry_run {
            return self.preview(&policies, Vec::new());
        }
        self.refuse_while_pending()?;
        let response = self.commit(policies, Vec::new(), true)?;
        if entry.source == PolicySource::Directory {
            warn!(
                policy = %name,
                file = entry.file.name,
                "policy deleted; it comes from the policy directory and is back on the next reload or restart unless its file is removed"
            );
        }
        Ok(response)
    }

    /// Keeps the rules of the apply waiting for confirmation, and saves them.
    ///
    /// # Errors
    ///
    /// [`ApplyError::NothingPending`], or [`ApplyError::Storage`] when they
    /// cannot be saved (they stay on probation then).
    pub fn confirm(&mut self) -> Result<u32, ApplyError> {
        if self.pending.is_none() {
            return Err(ApplyError::NothingPending);
        }
        self.save(&self.policies).map_err(ApplyError::Storage)?;
        self.pending = None;
        info!(generation = self.generation, "policy confirmed and saved");
        Ok(self.generation)
    }

    /// When the apply of `generation` is still waiting for confirmation, puts
    /// the policies before it back. Returns whether it rolled back.
    ///
    /// # Errors
    ///
    /// When the previous rules cannot be installed again (the probation ends
    /// either way; the error says what is in force).
    pub fn roll_back(&mut self, generation: u32) -> Result<bool, ApplyError> {
        let Some(pending) = self
            .pending
            .take_if(|pending| pending.generation == generation)
        else {
            return Ok(false);
        };
        let restored = pending.previous.keys().cloned().collect();
        let response = self.commit(pending.previous, restored, false)?;
        warn!(
            generation = response.generation,
            unconfirmed = generation,
            restored = pending.rollback_to,
            "policy rolled back: generation {generation} was not confirmed in time; the rules of generation {} are in force again",
            pending.rollback_to
        );
        Ok(true)
    }

    /// When the pending apply, if any, rolls back.
    pub fn confirm_deadline(&self) -> Option<(u32, Instant)> {
        self.pending
            .as_ref()
            .map(|pending| (pending.generation, pending.deadline))
    }

    /// What applying the request's files would change: compiled rules added
    /// and removed, and which recent flows would get another verdict.
    ///
    /// # Errors
    ///
    /// As a dry-run [`Engine::apply`].
    pub fn diff(&self, files: &[PolicyFile]) -> Result<DiffResponse, ApplyError> {
        self.diff_parsed(parse_request(files, self.validate_options())?)
    }

    /// [`Engine::diff`] with the files parsed already ([`parse_request`]).
    ///
    /// # Errors
    ///
    /// As [`Engine::diff`].
    pub fn diff_parsed(&self, parsed: ParsedFiles) -> Result<DiffResponse, ApplyError> {
        let mut policies = self.policies.clone();
        policies.extend(parsed.0);
        let (table, _) = self.compile(&policies)?;
        let before: BTreeSet<String> = rule_lines(&self.table).into_iter().collect();
        let after: BTreeSet<String> = rule_lines(&table).into_iter().collect();
        let (flows, _) = self.hub.snapshot(&FlowFilter::default(), None, false);
        Ok(DiffResponse {
            added: after.difference(&before).cloned().collect(),
            removed: before.difference(&after).cloned().collect(),
            changed_flows: impact::changed_flows(&self.table, &table, &flows),
            flows_replayed: flows.len(),
        })
    }

    /// Every policy in force.
    pub fn list(&self) -> PolicyList {
        PolicyList {
            generation: self.generation,
            policies: self
                .policies
                .iter()
                .map(|(name, entry)| self.summary_of(name, entry))
                .collect(),
        }
    }

    /// One policy in force, as it was given.
    ///
    /// # Errors
    ///
    /// [`ApplyError::NotFound`].
    pub fn get(&self, name: &PolicyName) -> Result<PolicyDocument, ApplyError> {
        let entry = self
            .policies
            .get(name)
            .ok_or_else(|| ApplyError::NotFound(name.to_string()))?;
        Ok(PolicyDocument {
            summary: self.summary_of(name, entry),
            content: entry.file.content.clone(),
        })
    }

    /// Names of the rules that opened connections (`policy spec.path`,
    /// `failsafe` or `default`), by rule id.
    pub fn rule_names(&self, ids: impl Iterator<Item = u32>) -> BTreeMap<u32, String> {
        ids.map(|id| (id, self.rule_name(id))).collect()
    }

    /// Forgets every tracked connection; returns how many there were.
    ///
    /// # Errors
    ///
    /// When the datapath cannot clear its table.
    pub fn flush_connections(&mut self) -> anyhow::Result<usize> {
        let removed = self.datapath.flush_connections()?;
        warn!(
            removed,
            "conntrack flushed: packets of existing connections are judged as new connections"
        );
        Ok(removed)
    }

    fn rule_name(&self, rule_id: u32) -> String {
        if rule_id == FAILSAFE_RULE {
            return "failsafe".to_owned();
        }
        self.table
            .rule(rule_id)
            .map_or_else(|| "default".to_owned(), ToString::to_string)
    }

    fn summary_of(&self, name: &PolicyName, entry: &PolicyEntry) -> PolicySummary {
        PolicySummary {
            name: name.to_string(),
            source: entry.source,
            file: entry.file.name.clone(),
            selects_node: self.table.policies.iter().any(|selected| selected == name),
            rules: self
                .table
                .rules
                .iter()
                .flatten()
                .filter(|origin| origin.policy == *name)
                .count(),
        }
    }

    fn refuse_while_pending(&self) -> Result<(), ApplyError> {
        match &self.pending {
            Some(pending) => Err(ApplyError::ConfirmPending {
                generation: pending.generation,
                seconds_left: pending.seconds_left(),
            }),
            None => Ok(()),
        }
    }

    /// Compiles `policies`, starting from the table in force (only the
    /// policies that changed are compiled again) unless the node changed.
    fn compile(
        &self,
        policies: &BTreeMap<PolicyName, Arc<PolicyEntry>>,
    ) -> Result<(CompiledTable, TableCompiler), ApplyError> {
        let list: Vec<Arc<Policy>> = policies
            .values()
            .map(|entry| entry.policy.clone())
            .collect();
        let fresh;
        let compiler = if *self.compiler.node() == self.settings.node {
            &self.compiler
        } else {
            fresh = TableCompiler::new(self.settings.node.clone());
            &fresh
        };
        Ok(compiler.compile(&list)?)
    }

    /// The response to a change from the policies in force to `policies`
    /// (compiled as `table`); what is in force and not in `policies` is removed.
    fn response(
        &self,
        generation: u32,
        policies: &BTreeMap<PolicyName, Arc<PolicyEntry>>,
        table: &CompiledTable,
        applied: Vec<PolicyName>,
        dry_run: bool,
    ) -> ApplyResponse {
        ApplyResponse {
            generation,
            unenforced: self.unenforced(policies, applied.iter()),
            applied: applied.iter().map(ToString::to_string).collect(),
            removed: self
                .policies
                .keys()
                .filter(|name| !policies.contains_key(*name))
                .map(ToString::to_string)
                .collect(),
            policies: table.policies.iter().map(ToString::to_string).collect(),
            rules: table.rule_count(),
            dry_run,
            pending_confirm: None,
        }
    }

    fn preview(
        &self,
        policies: &BTreeMap<PolicyName, Arc<PolicyEntry>>,
        applied: Vec<PolicyName>,
    ) -> Result<ApplyResponse, ApplyError> {
        let (table, _) = self.compile(policies)?;
        Ok(self.response(self.generation, policies, &table, applied, true))
    }

    /// Compiles and installs `policies`; with `save`, saves the applied ones
    /// first (and puts the saved set back if the install fails).
    fn commit(
        &mut self,
        policies: BTreeMap<PolicyName, Arc<PolicyEntry>>,
        applied: Vec<PolicyName>,
        save: bool,
    ) -> Result<ApplyResponse, ApplyError> {
        let started = Instant::now();
        let (table, compiler) = self.compile(&policies)?;
        let compiled = started.elapsed();
        if save {
            self.save(&policies).map_err(ApplyError::Storage)?;
        }
        let saved = started.elapsed();
        let generation = self.generation + 1;
        // Origins first: events of the new generation may arrive right after the switch.
        self.hub.set_rule_origins(generation, table.rules.clone());
        if let Err(error) = self.datapath.install(&table, generation) {
            if save && let Err(restore) = self.save(&self.policies) {
                warn!(
                    error = format!("{restore:#}"),
                    "cannot restore the saved policies after a failed install"
                );
            }
            return Err(error.into());
        }
        let millis = |duration: Duration| duration.as_secs_f64() * 1000.0;
        info!(
            generation,
            policy = names(&table.policies),
            rules = table.rule_count(),
            compile_ms = millis(compiled),
            save_ms = millis(saved - compiled),
            install_ms = millis(started.elapsed() - saved),
            "policy applied"
        );
        let response = self.response(generation, &policies, &table, applied, false);
        self.policies = policies;
        self.table = table;
        self.compiler = compiler;
        self.generation = generation;
        Ok(response)
    }

    /// Saves the applied (not directory) policies of `policies`, each as its
    /// own TOML file (a file applied may have held several).
    fn save(&self, policies: &BTreeMap<PolicyName, Arc<PolicyEntry>>) -> anyhow::Result<()> {
        let mut applied = BTreeMap::new();
        for (name, entry) in policies {
            if entry.source == PolicySource::Applied {
                let text = match &entry.saved_text {
                    Some(text) => text.clone(),
                    None => policy_to_toml(&entry.policy)
                        .with_context(|| format!("writing policy {name} as TOML"))?,
                };
                applied.insert(name.clone(), text);
            }
        }
        self.settings.store.save(&applied).with_context(|| {
            format!(
                "saving the applied policies under {} (nothing was changed)",
                self.settings.store.directory().display()
            )
        })
    }

    /// One line for `systemctl status`: generation, policies, rules, interfaces.
    pub fn summary(&self) -> String {
        let interfaces: Vec<String> = self
            .datapath
            .interfaces()
            .into_iter()
            .map(|interface| interface.name)
            .collect();
        let probation = self.pending.as_ref().map_or_else(String::new, |pending| {
            format!(
                " (rolls back in {} s unless confirmed)",
                pending.seconds_left()
            )
        });
        format!(
            "policy generation {}{probation}: {} policies, {} rules; enforcing on {}",
            self.generation,
            self.table.policies.len(),
            self.table.rule_count(),
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
    pub fn stats(&self) -> anyhow::Result<EngineStats> {
        let rule_hits = self
            .datapath
            .rule_counters()?
            .into_iter()
            .zip(&self.table.rules)
            .filter_map(|(count, origin)| Some((count, origin.as_ref()?)))
            .map(|(count, origin)| RuleHits {
                policy: origin.policy.to_string(),
                rule: origin.path.clone(),
                count,
            })
            .collect();
        Ok(EngineStats {
            rule_hits,
            counters: self.datapath.counters()?,
            policies: self.table.policies.len(),
            rules: self.table.rule_count(),
            generation: self.generation,
            maps: self.datapath.map_usage(),
            conntrack: self.conntrack_fill.clone(),
            interfaces_unenforced: self
                .datapath
                .interfaces()
                .iter()
                .filter(|interface| interface.state != InterfaceState::Enforcing)
                .count(),
        })
    }

    /// Packet counters.
    ///
    /// # Errors
    ///
    /// When the datapath's counters cannot be read.
    pub fn counters(&self) -> anyhow::Result<palisade_api::Counters> {
        self.datapath.counters()
    }

    /// What the daemon is doing.
    ///
    /// # Errors
    ///
    /// When the datapath's counters cannot be read.
    pub fn status(&self) -> anyhow::Result<Status> {
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            node_name: self.settings.node_name.clone(),
            datapath: self.datapath.name().to_owned(),
            kernel: self.kernel.clone(),
            interfaces: self.datapath.interfaces(),
            generation: self.generation,
            policies: self
                .table
                .policies
                .iter()
                .map(ToString::to_string)
                .collect(),
            rules: self.table.rule_count(),
            ingress_default_deny: self.table.ingress.default_deny,
            audit_mode: self.table.audit,
            failsafe: self.settings.failsafe.clone(),
            pending_confirm: self.pending.as_ref().map(Pending::describe),
            counters: self.datapath.counters()?,
            conntrack: self
                .conntrack_fill
                .iter()
                .map(|fill| ConntrackFill {
                    table: fill.table.to_owned(),
                    entries: fill.entries,
                    capacity: fill.capacity,
                    evicting_from: fill.evicting_from,
                })
                .collect(),
            unenforced: self.unenforced(&self.policies, self.policies.keys()),
        })
    }

    /// The rules of the policies of `policies` named in `names` that
    /// enforce nothing on this node.
    fn unenforced<'a>(
        &self,
        policies: &BTreeMap<PolicyName, Arc<PolicyEntry>>,
        names: impl Iterator<Item = &'a PolicyName>,
    ) -> Vec<UnenforcedRule> {
        names
            .filter_map(|name| policies.get(name))
            .flat_map(|entry| {
                unenforced_rules(&entry.policy, Some(&self.settings.node.labels))
                    .into_iter()
                    .map(|(rule, reason)| UnenforcedRule {
                        policy: entry.policy.policy_name().to_string(),
                        rule,
                        reason: reason.to_string(),
                    })
            })
            .collect()
    }

    /// The connection tables on handles of their own, to be read without
    /// the engine.
    ///
    /// # Errors
    ///
    /// When the datapath cannot open its tables.
    pub fn connection_tables(&self) -> anyhow::Result<Box<dyn ConnectionTables>> {
        self.datapath.connection_tables()
    }

    /// Records the connection tables' fill, as last counted.
    pub fn set_conntrack_fill(&mut self, fill: Vec<TableFill>) {
        self.conntrack_fill = fill;
    }
}

/// Runs `work` with the engine held, on a blocking thread: installs write
/// maps and wait for a grace period, saves fsync, repairs talk netlink, none
/// of which belongs on the executor that answers everyone else. Hands the
/// engine back with the result.
///
/// # Errors
///
/// When `work` panicked (the engine is released then).
pub async fn on_blocking_thread<T: Send + 'static>(
    engine: &Arc<tokio::sync::Mutex<Engine>>,
    work: impl FnOnce(&mut Engine) -> T + Send + 'static,
) -> Result<(tokio::sync::OwnedMutexGuard<Engine>, T), tokio::task::JoinError> {
    let mut guard = Arc::clone(engine).lock_owned().await;
    tokio::task::spawn_blocking(move || {
        let result = work(&mut guard);
        (guard, result)
    })
    .await
}

/// Which source's policy is in force when two give the same name: what an
/// operator applied through the socket beats the policy directory.
pub fn precedence(source: PolicySource) -> u8 {
    match source {
        PolicySource::Directory => 0,
        PolicySource::Applied => 1,
    }
}

/// `policies` as one field of a log line: `a,prod/b`.
pub fn names(policies: &[PolicyName]) -> String {
    policies
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The policies of a request's files, parsed and validated, ready for
/// [`Engine::apply_parsed`] or [`Engine::diff_parsed`].
#[derive(Debug)]
pub struct ParsedFiles(BTreeMap<PolicyName, Arc<PolicyEntry>>);

/// Parses and validates a request's files with `options` (from
/// [`Engine::validate_options`]), without the engine.
///
/// # Errors
///
/// [`ApplyError::Invalid`] with every problem found.
pub fn parse_request(
    files: &[PolicyFile],
    options: ValidateOptions,
) -> Result<ParsedFiles, ApplyError> {
    Ok(ParsedFiles(parse_files(
        files,
        PolicySource::Applied,
        options,
    )?))
}

/// Parses every file, collecting all problems; a name given twice is one too.
fn parse_files(
    files: &[PolicyFile],
    source: PolicySource,
    options: ValidateOptions,
) -> Result<BTreeMap<PolicyName, Arc<PolicyEntry>>, Diagnostics> {
    let mut policies = BTreeMap::new();
    let mut problems = Vec::new();
    for file in files {
        match policies_from_text_with(&file.name, &file.content, options) {
            Ok(parsed) => {
                for policy in parsed {
                    let name = policy.policy_name();
                    let saved_text = match source {
                        PolicySource::Applied => match policy_to_toml(&policy) {
                            Ok(text) => Some(text),
                            Err(error) => {
                                problems.push(Diagnostic::at(
                                    &file.name,
                                    &file.content,
                                    None,
                                    "metadata.name",
                                    format!("policy {name} cannot be saved as TOML: {error}"),
                                ));
                                continue;
                            }
                        },
                        PolicySource::Directory => None,
                    };
                    let entry = Arc::new(PolicyEntry {
                        policy: Arc::new(policy),
                        source,
                        file: file.clone(),
                        saved_text,
                    });
                    if policies.insert(name.clone(), entry).is_some() {
                        problems.push(Diagnostic::at(
                            &file.name,
                            &file.content,
                            None,
                            "metadata.name",
                            format!("policy {:?} is given more than once", name.to_string()),
                        ));
                    }
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
