//! The policy commands: apply, diff, confirm, reload, and `policy
//! list|get|delete|validate|explain`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use palisade_api::{ApplyRequest, ApplyResponse, Client, DiffResponse, PolicyList};

use crate::{
    explain::{self, ExplainArgs},
    files,
    output::{Format, columns, print},
};

/// `palisadectl apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Policy file, directory of *.toml files, or - for standard input (repeatable).
    #[arg(short, long = "file", required = true)]
    files: Vec<PathBuf>,
    /// Validate and compile only; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Roll back by itself after this long (such as 60s, 5m) unless
    /// `palisadectl confirm` comes first; saved only once confirmed.
    #[arg(long, value_name = "DURATION")]
    confirm: Option<humantime::Duration>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

/// `palisadectl diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Policy file, directory of *.toml files, or - for standard input (repeatable).
    #[arg(short, long = "file", required = true)]
    files: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

/// `palisadectl policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// List the policies in force.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Print a policy in force as it was given.
    Get {
        /// The policy: `NAME`, or `NAMESPACE/NAME` for a CiliumNetworkPolicy.
        name: String,
        /// Output: the policy's TOML as given, or it with its summary as JSON or YAML.
        #[arg(short, long, value_enum, default_value_t = DocumentFormat::Toml)]
        output: DocumentFormat,
    },
    /// Remove a policy from the rules in force.
    Delete {
        /// The policy: `NAME`, or `NAMESPACE/NAME` for a CiliumNetworkPolicy.
        name: String,
        /// Say what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Check policy files without a daemon; prints every problem.
    Validate {
        /// Policy files or directories.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Compile policy files for a node and say what one new connection gets and why.
    Explain(Box<ExplainArgs>),
    /// Print policy files in the other format (TOML ⇄ YAML), without a daemon.
    Convert {
        /// Output format.
        #[arg(short, long, value_enum)]
        output: ConvertFormat,
        /// Policy files or directories (- for standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// What `policy convert` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConvertFormat {
    /// TOML (one policy only: TOML holds one policy per file).
    Toml,
    /// YAML, one document per policy.
    Yaml,
}

/// How `policy get` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DocumentFormat {
    /// The file as it was given.
    Toml,
    /// The summary and the text, as JSON.
    Json,
    /// The summary and the text, as YAML.
    Yaml,
}

/// Runs a `policy` subcommand.
///
/// # Errors
///
/// When the daemon is unreachable or refuses, or a file is invalid.
pub async fn run(client: &Client, command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::List { output } => {
            let list = client.policies().await?;
            print(output, &list, list_table)
        }
        PolicyCommand::Get { name, output } => {
            let document = client.policy(&name).await?;
            match output {
                DocumentFormat::Toml => {
                    print!("{}", document.content);
                    Ok(())
                }
                DocumentFormat::Json => print(Format::Json, &document, |_| {}),
                DocumentFormat::Yaml => print(Format::Yaml, &document, |_| {}),
            }
        }
        PolicyCommand::Delete {
            name,
            dry_run,
            output,
        } => {
            let response = client.delete(&name, dry_run).await?;
            print(output, &response, changed)
        }
        PolicyCommand::Validate { files } => validate(&files),
        PolicyCommand::Explain(args) => explain::run(&args),
        PolicyCommand::Convert { output, files } => convert(output, &files),
    }
}

fn list_table(list: &PolicyList) {
    let mut rows = vec![
        ["NAME", "SOURCE", "SELECTS NODE", "RULES", "FILE"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for policy in &list.policies {
        rows.push(vec![
            policy.name.clone(),
            policy.source.to_string(),
            if policy.selects_node { "yes" } else { "no" }.to_owned(),
            policy.rules.to_string(),
            policy.file.clone(),
        ]);
    }
    print!("{}", columns(&rows));
    println!("generation {}", list.generation);
}

/// `palisadectl apply`.
///
/// # Errors
///
/// When a file cannot be read, or the daemon is unreachable or refuses.
pub async fn apply(client: &Client, args: &ApplyArgs) -> anyhow::Result<()> {
    let request = ApplyRequest {
        files: files::read(&args.files)?,
        dry_run: args.dry_run,
        confirm_seconds: args.confirm.map(|wait| wait.as_secs().max(1)),
    };
    let response = client.apply(&request).await?;
    print(args.output, &response, changed)
}

/// The human report of an apply, delete or reload.
fn changed(response: &ApplyResponse) {
    let mut what = Vec::new();
    if !response.applied.is_empty() {
        what.push(format!("applied {}", response.applied.join(", ")));
    }
    if !response.removed.is_empty() {
        what.push(format!("removed {}", response.removed.join(", ")));
    }
    if what.is_empty() {
        what.push("no policy changed".to_owned());
    }
    let what = what.join("; ");
    if response.dry_run {
        println!(
            "dry run: valid; would have {what} ({} rules in force after); nothing was changed",
            response.rules
        );
        warn_unenforced(&response.unenforced);
        return;
    }
    println!(
        "{what} (generation {}, {} rules in force)",
        response.generation, response.rules
    );
    if let Some(pending) = &response.pending_confirm {
        println!(
            "rolls back to generation {} in {} s unless you run `palisadectl confirm`",
            pending.rollback_to, pending.seconds_left
        );
    }
    warn_unenforced(&response.unenforced);
}

/// One warning line (stderr) per rule in force that enforces nothing here.
fn warn_unenforced(rules: &[palisade_api::UnenforcedRule]) {
    for rule in rules {
        eprintln!("warning: {rule}");
    }
}

/// `palisadectl diff`.
///
/// # Errors
///
/// When a file cannot be read, or the daemon is unreachable or refuses.
pub async fn diff(client: &Client, args: &DiffArgs) -> anyhow::Result<()> {
    let request = ApplyRequest {
        files: files::read(&args.files)?,
        ..ApplyRequest::default()
    };
    let response = client.diff(&request).await?;
    print(args.output, &response, diff_table)
}

fn diff_table(diff: &DiffResponse) {
    if diff.added.is_empty() && diff.removed.is_empty() {
        println!("no rule changes");
    }
    for line in &diff.removed {
        println!("- {line}");
    }
    for line in &diff.added {
        println!("+ {line}");
    }
    println!(
        "\n{} of {} recent flows would get another verdict",
        diff.changed_flows.len(),
        diff.flows_replayed
    );
    for change in &diff.changed_flows {
        let mut after = change.new_verdict.to_string();
        if let Some(reason) = &change.new_drop_reason {
            after.push_str(&format!(" ({reason})"));
        }
        if let Some(rule) = &change.new_rule {
            after.push_str(&format!(" by {rule}"));
        }
        println!("  {} => {after}", change.flow.compact());
    }
}

/// `palisadectl confirm`.
///
/// # Errors
///
/// When the daemon is unreachable or nothing waits for confirmation.
pub async fn confirm(client: &Client) -> anyhow::Result<()> {
    let response = client.confirm().await?;
    println!(
        "confirmed: generation {} stays in force and is saved",
        response.generation
    );
    Ok(())
}

/// `palisadectl reload`.
///
/// # Errors
///
/// When the daemon is unreachable or refuses the files it read.
pub async fn reload(client: &Client) -> anyhow::Result<()> {
    let response = client.reload().await?;
    println!(
        "reloaded: {} (generation {}, {} rules in force)",
        response.policies.join(", "),
        response.generation,
        response.rules
    );
    warn_unenforced(&response.unenforced);
    Ok(())
}

/// `palisadectl policy convert`.
fn convert(format: ConvertFormat, paths: &[PathBuf]) -> anyhow::Result<()> {
    let policies: Vec<_> = files::parse(paths)?
        .into_iter()
        .flat_map(|(_, policies)| policies)
        .collect();
    match format {
        ConvertFormat::Yaml => print!("{}", palisade_policy::policies_to_yaml(&policies)?),
        ConvertFormat::Toml => match policies.as_slice() {
            [policy] => print!("{}", palisade_policy::policy_to_toml(policy)?),
            _ => anyhow::bail!(
                "{} policies given: TOML holds one policy per file; convert them one at a time",
                policies.len()
            ),
        },
    }
    Ok(())
}

/// `palisadectl policy validate`: every problem in every file.
fn validate(paths: &[PathBuf]) -> anyhow::Result<()> {
    for (file, policies) in files::parse(paths)? {
        let names: Vec<&str> = policies.iter().map(|p| p.metadata.name.as_str()).collect();
        println!("{file}: valid (policy {})", names.join(", "));
        for policy in &policies {
            for (rule, reason) in palisade_policy::unenforced_rules(policy, None) {
                eprintln!(
                    "warning: {file}: {} {rule} would enforce nothing on a node: {reason}",
                    policy.metadata.name
                );
            }
        }
    }
    Ok(())
}
