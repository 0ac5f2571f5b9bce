//! Requests and responses about the policies in force: list, get, apply,
//! delete, diff and confirm.

use serde::{Deserialize, Serialize};

use crate::{Flow, Verdict};

/// One policy file as the user gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyFile {
    /// The name errors use, normally the path given to `palisadectl`.
    pub name: String,
    /// The file's text (TOML).
    pub content: String,
}

/// Add or replace policies (by name, and namespace for a
/// CiliumNetworkPolicy), all or nothing. A diff takes the same request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The files to apply.
    pub files: Vec<PolicyFile>,
    /// Validate and compile only; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Roll back by itself after this many seconds unless confirmed
    /// (`POST /v1/confirm`). The rules are kept across a restart only once
    /// confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_seconds: Option<u64>,
}

/// What an apply, a delete or a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// Generation now in force (unchanged on a dry run).
    pub generation: u32,
    /// Names of the policies the request added or replaced.
    pub applied: Vec<String>,
    /// Names of the policies the request removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Names of all policies that select this node after the apply.
    pub policies: Vec<String>,
    /// Number of compiled rules after the apply.
    pub rules: usize,
    /// True when nothing was changed.
    pub dry_run: bool,
    /// Set when the apply rolls back by itself unless confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_confirm: Option<PendingConfirm>,
    /// Rules of the policies the request added or replaced that put nothing
    /// in force on this node, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unenforced: Vec<UnenforcedRule>,
}

/// A rule that is in force and enforces nothing on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnenforcedRule {
    /// The policy's name.
    pub policy: String,
    /// The rule's field path, `spec` or `specs[i]`.
    pub rule: String,
    /// Why it enforces nothing here.
    pub reason: String,
}

impl std::fmt::Display for UnenforcedRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} enforces nothing on this node: {}",
            self.policy, self.rule, self.reason
        )
    }
}

/// An apply waiting for `palisadectl confirm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingConfirm {
    /// The generation that rolls back unless confirmed.
    pub generation: u32,
    /// The generation whose policies come back on rollback.
    pub rollback_to: u32,
    /// Seconds left before the rollback.
    pub seconds_left: u64,
}

/// What `POST /v1/confirm` kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmResponse {
    /// The generation now kept (and saved).
    pub generation: u32,
}

/// Where a policy in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicySource {
    /// A file in the policy directory (`policy.directory`).
    Directory,
    /// Applied through the control socket (saved under `policy.state_directory`).
    Applied,
}

impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Directory => "directory",
            Self::Applied => "applied",
        })
    }
}

/// One policy in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySummary {
    /// `NAME`, or `NAMESPACE/NAME` for a CiliumNetworkPolicy.
    pub name: String,
    /// Where it came from.
    pub source: PolicySource,
    /// The file it was read from, or the name given when it was applied.
    pub file: String,
    /// Whether its `nodeSelector` selects this node.
    pub selects_node: bool,
    /// Compiled rules it contributes (0 when it does not select this node).
    pub rules: usize,
}

/// `GET /v1/policies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyList {
    /// Generation in force.
    pub generation: u32,
    /// Every policy in force, by name.
    pub policies: Vec<PolicySummary>,
}

/// `GET /v1/policies/NAME`: one policy as it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDocument {
    /// What the list says about it.
    pub summary: PolicySummary,
    /// The file's text as it was read or applied.
    pub content: String,
}

/// What an apply of the same files would change (`POST /v1/diff`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffResponse {
    /// Compiled rules the apply would add, one line each.
    pub added: Vec<String>,
    /// Compiled rules the apply would remove.
    pub removed: Vec<String>,
    /// Recent flows (from the flow buffer) whose verdict would change.
    pub changed_flows: Vec<FlowChange>,
    /// How many recent flows were replayed.
    pub flows_replayed: usize,
}

/// A recent flow and the verdict it would get under the new rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowChange {
    /// The flow as it was seen.
    pub flow: Flow,
    /// The verdict under the new rules.
    pub new_verdict: Verdict,
    /// The drop reason under the new rules, if dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_drop_reason: Option<String>,
    /// The rule that would decide, as `policy spec.path`, if a rule would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_rule: Option<String>,
}
