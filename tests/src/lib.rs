//! Network-namespace test hosts for palisade's end-to-end tests and demo.
//!
//! Everything here creates its own namespaces and veth pairs and removes them
//! when dropped, also when a test panics: nothing touches the machine's own
//! interfaces, and traffic only flows between namespaces we made.

pub mod cni;
mod daemon;
pub mod frames;
mod host;
pub mod ipsec_mesh;
pub mod mesh;
mod netns;
pub mod runtimes;
mod traffic;

pub use daemon::*;
pub use host::*;
pub use netns::*;
pub use traffic::*;
