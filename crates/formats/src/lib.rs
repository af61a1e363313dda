//! Parse config files into flat, typed key paths and mask secrets.
//!
//! Pure: no I/O beyond the bytes it is given. Everything that leaves this crate
//! has already been masked — the raw value of a secret never does.
//!
//! SKELETON: signatures are the contract other crates code against; bodies are
//! being filled in.

use std::path::Path;

pub use driftwatch_proto::v1::{FileError, FileStatus, Format, KeyValue, Value};

/// Bounds on what one file may cost.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Files larger than this are hashed only (status TOO_LARGE). Default 1 MiB.
    pub max_file_bytes: u64,
    /// At most this many keys are kept per file; the rest are dropped and the
    /// file gets a parse error saying so. Default 10,000.
    pub max_keys: usize,
    /// Nesting deeper than this is a parse error. Default 64.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_file_bytes: 1024 * 1024, max_keys: 10_000, max_depth: 64 }
    }
}

/// Choose a format from a path's name: `.env`, `.env.production`, `x.env` → Env; `.ini`,
/// `.cfg`, `.conf` → Ini; `.yaml`/`.yml` → Yaml; `.json` → Json; `.toml` → Toml; else Text.
pub fn detect_format(path: &Path) -> Format {
    let _ = path;
    Format::Text
}

/// Parse a format name as written in config/flags: env, ini, yaml, json, toml, text.
pub fn parse_format_name(name: &str) -> Option<Format> {
    let _ = name;
    None
}

/// Keyed fingerprints (HMAC-SHA256 with the per-fleet key).
#[derive(Clone)]
pub struct Masker {
    key: Vec<u8>,
}

impl Masker {
    pub fn new(fleet_key: &[u8]) -> Self {
        Self { key: fleet_key.to_vec() }
    }
    /// A short public id of the key (hex), so server and agents can tell they share one.
    pub fn key_id(&self) -> String {
        String::new()
    }
    /// Lower-case hex HMAC-SHA256 of `data`.
    pub fn fingerprint(&self, data: &[u8]) -> String {
        let _ = (&self.key, data);
        String::new()
    }
    /// Incremental keyed hash for content too large to hold in memory.
    pub fn content_hasher(&self) -> ContentHasher {
        ContentHasher { _p: () }
    }
}

/// Incremental HMAC-SHA256 over a file's content; `finish()` gives lower-case hex.
pub struct ContentHasher {
    _p: (),
}

impl ContentHasher {
    pub fn update(&mut self, data: &[u8]) {
        let _ = data;
    }
    pub fn finish(self) -> String {
        String::new()
    }
}

/// Why a key/value pair looks secret, or None.
pub fn secret_reason(key_path: &str, value: &str) -> Option<&'static str> {
    let _ = (key_path, value);
    None
}

/// The result of looking at one file's content.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub status: FileStatus,
    pub error: Option<FileError>,
    /// Flattened keys in file order, secrets already masked.
    pub keys: Vec<KeyValue>,
    /// `Masker::fingerprint(content)`.
    pub content_hash: String,
}

/// Analyse a whole file's content (the caller has already checked the size cap).
pub fn analyze(content: &[u8], format: Format, masker: &Masker, limits: &Limits) -> Analysis {
    let _ = (format, limits);
    Analysis { status: FileStatus::HashOnly, error: None, keys: Vec::new(), content_hash: masker.fingerprint(content) }
}
