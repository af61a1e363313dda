//! driftwatch agent: watch config files, sample resources, spool, stream to the server.

pub mod error;
pub mod resources;
pub mod watch;

pub use error::{AgentError, Result};
