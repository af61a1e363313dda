//! driftwatch agent: watch config files, sample resources, spool, stream to the server.
//!
//! Entry point: [`start`] (used by `main.rs`, `driftwatch up` and the tests).

pub mod apply;
pub mod backoff;
pub mod config;
pub mod dropin;
pub mod error;
pub mod hostroot;
pub mod identity;
pub mod memory;
pub mod parts;
pub mod resources;
pub mod run;
pub mod spool;
pub mod watch;

pub use config::{AgentConfig, AgentFile};
pub use error::{AgentError, Result};
pub use run::{AGENT_VERSION, AgentStatus, RunningAgent, start};
