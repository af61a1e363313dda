//! [`StoreError`], the one error type of this crate, and its [`Result`] alias;
//! [`FailureKind`], what a failed write means for whoever retries it.
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

/// Why a write failed, as far as retrying it goes.
///
/// Only [`FailureKind::Data`] is about the ops written: the same ops fail again
/// however often they are retried, and other ops would not. Every other kind is
/// about the store or the machine (space, locks, I/O, a damaged file): the same
/// write may succeed later, and refusing the ops would lose data that is fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No space left for the database or its WAL (`SQLITE_FULL`).
    DiskFull,
    /// Another connection holds a lock (`SQLITE_BUSY`, `SQLITE_LOCKED`).
    Busy,
    /// The operating system failed a read, write or sync (`SQLITE_IOERR`, `SQLITE_CANTOPEN`).
    Io,
    /// The database cannot be written (`SQLITE_READONLY`, `SQLITE_PERM`, `SQLITE_AUTH`).
    ReadOnly,
    /// The database file is damaged (`SQLITE_CORRUPT`, `SQLITE_NOTADB`): an operator's
    /// problem, never a reason to refuse what is being written.
    Corrupt,
    /// Out of memory (`SQLITE_NOMEM`).
    Memory,
    /// The ops themselves cannot be stored: a constraint they violate, a value of the
    /// wrong type or out of range, a blob too big.
    Data,
    /// Anything else (an SQL or schema error, an interrupted statement): not retried
    /// away by refusing ops, so treated as the store's fault.
    Other,
}

impl FailureKind {
    /// Whether the same write may succeed later: retry it. Otherwise the write holds
    /// something that cannot be stored.
    pub fn transient(self) -> bool {
        self != FailureKind::Data
    }

    /// The label in metrics (`kind="disk_full"`).
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::DiskFull => "disk_full",
            FailureKind::Busy => "busy",
            FailureKind::Io => "io",
            FailureKind::ReadOnly => "read_only",
            FailureKind::Corrupt => "corrupt",
            FailureKind::Memory => "memory",
            FailureKind::Data => "data",
            FailureKind::Other => "other",
        }
    }

    /// Every kind, for metrics that list each one.
    pub const ALL: [FailureKind; 8] = [
        FailureKind::DiskFull,
        FailureKind::Busy,
        FailureKind::Io,
        FailureKind::ReadOnly,
        FailureKind::Corrupt,
        FailureKind::Memory,
        FailureKind::Data,
        FailureKind::Other,
    ];
}

impl StoreError {
    /// What this failure means for a retry (see [`FailureKind`]).
    pub fn kind(&self) -> FailureKind {
        use rusqlite::ErrorCode as C;
        match self {
            StoreError::Sqlite { source, .. } => match source {
                rusqlite::Error::SqliteFailure(e, _) => match e.code {
                    C::DiskFull => FailureKind::DiskFull,
                    C::DatabaseBusy | C::DatabaseLocked => FailureKind::Busy,
                    C::SystemIoFailure | C::CannotOpen | C::FileLockingProtocolFailed => FailureKind::Io,
                    C::ReadOnly | C::PermissionDenied | C::AuthorizationForStatementDenied => FailureKind::ReadOnly,
                    C::DatabaseCorrupt | C::NotADatabase => FailureKind::Corrupt,
                    C::OutOfMemory => FailureKind::Memory,
                    C::ConstraintViolation | C::TypeMismatch | C::TooBig | C::ParameterOutOfRange => FailureKind::Data,
                    _ => FailureKind::Other,
                },
                // Raised by rusqlite before SQLite runs anything: a value it cannot bind.
                rusqlite::Error::ToSqlConversionFailure(_)
                | rusqlite::Error::IntegralValueOutOfRange(..)
                | rusqlite::Error::InvalidParameterCount(..) => FailureKind::Data,
                _ => FailureKind::Other,
            },
            StoreError::Io { .. } => FailureKind::Io,
            StoreError::TooNew { .. } | StoreError::Corrupt { .. } => FailureKind::Other,
        }
    }

    /// The failure without the database path (for places that must not show where the
    /// data lives, such as an open health endpoint): "database or disk is full".
    pub fn reason(&self) -> String {
        match self {
            StoreError::Sqlite { source, .. } => source.to_string(),
            StoreError::Io { message, .. } => message.clone(),
            StoreError::TooNew { found, supported, .. } => {
                format!("database schema version {found} is newer than this build understands ({supported})")
            }
            StoreError::Corrupt { host, message, .. } => {
                format!("stored host '{host}' has unreadable labels: {message}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: std::ffi::c_int) -> StoreError {
        let source = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        StoreError::Sqlite { path: "/data/driftwatch.db".into(), source }
    }

    #[test]
    fn only_failures_about_the_ops_are_not_transient() {
        use rusqlite::ffi;
        let cases = [
            (ffi::SQLITE_FULL, FailureKind::DiskFull),
            (ffi::SQLITE_BUSY, FailureKind::Busy),
            (ffi::SQLITE_LOCKED, FailureKind::Busy),
            (ffi::SQLITE_IOERR_WRITE, FailureKind::Io),
            (ffi::SQLITE_IOERR_FSYNC, FailureKind::Io),
            (ffi::SQLITE_READONLY, FailureKind::ReadOnly),
            (ffi::SQLITE_CORRUPT, FailureKind::Corrupt),
            (ffi::SQLITE_NOTADB, FailureKind::Corrupt),
            (ffi::SQLITE_NOMEM, FailureKind::Memory),
            (ffi::SQLITE_CONSTRAINT_PRIMARYKEY, FailureKind::Data),
            (ffi::SQLITE_CONSTRAINT_NOTNULL, FailureKind::Data),
            (ffi::SQLITE_TOOBIG, FailureKind::Data),
            (ffi::SQLITE_MISMATCH, FailureKind::Data),
            (ffi::SQLITE_ERROR, FailureKind::Other),
        ];
        for (code, kind) in cases {
            assert_eq!(sqlite(code).kind(), kind, "code {code}");
            assert_eq!(kind.transient(), kind != FailureKind::Data);
        }
        let bind = rusqlite::Error::IntegralValueOutOfRange(1, -1);
        assert_eq!(StoreError::Sqlite { path: "x".into(), source: bind }.kind(), FailureKind::Data);
    }

    #[test]
    fn the_reason_leaves_out_the_path() {
        let source = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        );
        let e = StoreError::Sqlite { path: "/data/driftwatch.db".into(), source };
        assert!(e.to_string().contains("/data/driftwatch.db"), "{e}");
        assert_eq!(e.reason(), "database or disk is full");
    }
}
