//! palisade's policy language, with no I/O: the CiliumClusterwideNetworkPolicy
//! model, the TOML codec with positioned errors, validation, the compiler to a
//! datapath-neutral rule table, and the reference evaluator every datapath is
//! tested against.

pub mod codec;
pub mod compile;
pub mod describe;
pub mod diagnostic;
pub mod evaluate;
pub mod flat_view;
pub mod model;
pub mod resolve;
pub mod select;
pub mod validate;
pub mod yaml;

pub use codec::{
    Format, from_toml, is_policy_file, policies_from_text, policies_from_text_with,
    policy_from_toml, policy_from_toml_with, policy_to_toml,
};
pub use compile::{CompileError, CompiledTable, Direction, NodeContext, TableCompiler, compile};
pub use describe::rule_lines;
pub use diagnostic::{Diagnostic, Diagnostics};
pub use evaluate::{Connection, Verdict, evaluate};
pub use model::{Policy, PolicyName};
pub use resolve::{ClusterContext, KnownEndpoint, KnownNode};
pub use select::{SelectedRule, Unenforced, rules_for_endpoint, rules_for_node, unenforced_rules};
pub use validate::ValidateOptions;
pub use yaml::{policies_from_yaml, policies_from_yaml_with, policies_to_yaml};
