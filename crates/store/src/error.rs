//! [`StoreError`], the one error type of this crate, and its [`Result`] alias.
//!
//! Every variant names the database file, so a message in the server's log
//! says which store failed without further context.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: database schema version {found} is newer than this build understands ({supported})")]
    TooNew { path: PathBuf, found: i64, supported: i64 },
    #[error("{path}: stored host '{host}' has unreadable labels: {message}")]
    Corrupt { path: PathBuf, host: String, message: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
