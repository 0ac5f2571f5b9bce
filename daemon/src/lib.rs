//! palisaded's parts: configuration, the datapath backends, the policy
//! engine, flows, the control socket, metrics and systemd integration. The
//! `palisaded` binary wires them together; benchmarks drive them directly.

pub mod atomic_file;
pub mod audit_trail;
pub mod authz;
pub mod clock;
pub use palisade_config as config;
pub mod conntrack_watch;
pub mod control;
pub mod datapath;
pub mod encryption;
pub mod endpoints;
pub mod engine;
pub mod flows;
pub mod guard;
pub mod identities;
pub mod impact;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod policy_files;
pub mod reload;
pub mod request_body;
pub mod serve;
pub mod store;
pub mod systemd;
