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
    /// The spool could not store a record: the disk is full (`ENOSPC`, a quota), the
    /// file would pass its size limit (`EFBIG`), or the write or its sync failed
    /// (`EIO`). Nothing of the record was kept.
    #[error("spool {path}: cannot store the record: {source}")]
    SpoolWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("server closed the stream: {0}")]
    Rejected(tonic::Status),
    #[error("backup store {path}: {message}")]
    Backup { path: PathBuf, message: String },
    #[error("apply: {0}")]
    Apply(String),
    /// The agent has no usable certificate and cannot get one by itself (not enrolled,
    /// expired without a token, an unreadable token file, a certificate it cannot use).
    #[error("identity: {0}")]
    Identity(String),
    /// The server refused the enrollment (a bad, used-up, expired or revoked token, a host
    /// id the token does not allow): trying again cannot help.
    #[error("enrollment refused by the server ({}): {}", code_text(.0.code()), .0.message())]
    EnrollRefused(tonic::Status),
}

impl AgentError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    /// The spool's disk cannot take a record now (full, over a size limit, failing):
    /// the snapshot is not durable; delivering it from memory is the caller's choice.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Self::SpoolWrite { .. })
    }

    /// The OS error behind a failed spool write (`ENOSPC`, `EFBIG`, `EIO`, ...).
    pub fn storage_errno(&self) -> Option<i32> {
        match self {
            Self::SpoolWrite { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// An error the agent stops on instead of retrying.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Identity(_) | Self::EnrollRefused(_))
    }
}

/// `permission denied`, `invalid argument`: a status code as words.
pub fn code_text(code: tonic::Code) -> String {
    let name = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_words_and_stop_the_agent() {
        let e = AgentError::EnrollRefused(tonic::Status::permission_denied("token already used"));
        assert_eq!(e.to_string(), "enrollment refused by the server (permission denied): token already used");
        assert!(e.is_fatal());
        assert!(AgentError::Identity("not enrolled".into()).is_fatal());
        assert!(!AgentError::Connect { url: "u".into(), message: "m".into() }.is_fatal());
    }
}
