//! The agent's one error type. `anyhow` appears only in `main.rs`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("config: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watch: {0}")]
    Watch(String),
    #[error("spool {path}: {message}")]
    Spool { path: PathBuf, message: String },
    #[error("connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("server closed the stream: {0}")]
    Rejected(tonic::Status),
    #[error("backup store {path}: {message}")]
    Backup { path: PathBuf, message: String },
    #[error("apply: {0}")]
    Apply(String),
}

impl AgentError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
