//! Parse config files into flat, typed key paths and mask secrets.
//!
//! Pure: bytes in, values out — no file system, no network, and never the process
//! environment (`.env` files are parsed by hand, without `$VAR` expansion).
//!
//! # Invariant
//!
//! **Nothing that leaves this crate contains a secret in clear.** Every scalar is checked
//! by [`secret_reason`] inside [`analyze`] and a secret is replaced by
//! `Value::masked_by(key id, HMAC-SHA256(fleet key, "driftwatch value\0" + value), reason)`
//! before it is returned; the content hash is keyed too (its own domain, `Masker::content_hash`). **Error messages never quote file content**: they are built from the
//! parser's own description, with quoted text and any word found in the file removed, and
//! positions travel as numbers (1-based line and column).
//!
//! # Output
//!
//! [`analyze`] returns the keys in file order as flattened paths (`a.b`, `list[0]`,
//! `section.key`), typed null / bool / int / float / string / masked. Key names are
//! configuration, not data, and are kept — except a key segment that itself looks like a
//! secret (a token, a URL with credentials, a random string), which becomes
//! `<masked:16 hex>`.
//!
//! See the `flatten` module for the exact choices (empty containers emit nothing;
//! duplicate key paths are reported once, last value wins; big integers become floats in
//! JSON/YAML/TOML and strings in .env/INI; several YAML documents are prefixed `[i]`), and
//! `env` / `ini` for the text dialects.
//!
//! # Host formats
//!
//! Four line-based formats of the host's own daemons, each documented in its module with
//! its key-path grammar and how repeats are resolved; values are typed like INI:
//!
//! | format | files | example key |
//! |---|---|---|
//! | `keyword` | sshd_config, ssh_config, redis.conf, chrony.conf | `match[user=alice].permitrootlogin`, `port[0]`, `subsystem.sftp` |
//! | `sysctl` | sysctl.conf, sysctl.d/*.conf | `net.ipv4.ip_forward` |
//! | `nginx` | nginx.conf, conf.d, sites-available | `http.server[0].location[/api].proxy_pass` |
//! | `systemd` | units and drop-ins | `Service.ExecStart`, `Service.Environment.DB_PASSWORD` |
//!
//! Keyword files come in two dialects (sshd: first value wins, `Match`/`Host` blocks;
//! generic: last value wins), chosen from the path by [`analyze_path`]; sshd's `Include`
//! is resolved by the caller and applied by [`KeywordFile::with_includes`]. For a `.conf`
//! of unknown kind, [`candidates`] ranks the formats its text parses as.

use std::path::Path;

pub use driftwatch_proto::v1::{FileError, FileStatus, Format, KeyValue, Value};

mod edit;
mod env;
mod errors;
mod flatten;
mod guess;
mod ini;
mod keyword;
mod mask;
mod nginx;
mod secrets;
mod structured;
mod sysctl;
mod systemd;

pub use edit::{EditError, EditOp, NewValue, edit, text_value, unified_diff};
pub use guess::{Candidate, candidates};
pub use keyword::{KeywordDialect, KeywordDirective, KeywordFile, keyword_dialect, parse_keyword};
pub use mask::{CONTENT_DOMAIN, ContentHasher, KEY_ID_HEX_LEN, Masker, VALUE_DOMAIN};
pub use secrets::{
    REASON_HIGH_ENTROPY, REASON_KEY_NAME, REASON_TOKEN_SHAPE, REASON_URL_CREDENTIALS, is_secret_key_name, secret_reason,
};

use flatten::{Scalar, Sink, Walker, infer_text};

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

/// Choose a format from a path's name and place.
///
/// Host config files first, by name or by the directory they sit in:
/// - `sshd_config`, `ssh_config`, `*.conf` in `sshd_config.d/` or `ssh_config.d/`,
///   `redis.conf`, `chrony.conf` → Keyword;
/// - `sysctl.conf`, `*.conf` in `sysctl.d/` → Sysctl;
/// - `nginx.conf`, `*.conf` anywhere under a directory named `nginx` (`conf.d/`,
///   `snippets/`), any file in `nginx/sites-available/` or `nginx/sites-enabled/` → Nginx;
/// - systemd units (`.service`, `.socket`, `.timer`, `.mount`, `.automount`, `.swap`,
///   `.path`, `.target`, `.slice`) and `*.conf` drop-ins in a `<unit>.d/` directory
///   (`nginx.service.d/override.conf`) → Systemd.
///
/// Then by extension: `.env`, `.env.production`, `x.env` → Env; `.ini`, `.cfg`, `.conf` →
/// Ini; `.yaml`/`.yml` → Yaml; `.json` → Json; `.toml` → Toml; else Text.
///
/// Case-insensitive. A structured extension wins over the `.env.` prefix
/// (`.env.yaml` is YAML); any other `.env.<suffix>` (`.env.local`, `.env.example`) is Env.
pub fn detect_format(path: &Path) -> Format {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Format::Text;
    };
    let name = name.to_ascii_lowercase();
    if let Some(format) = detect_host_format(path, &name) {
        return format;
    }
    if let Some((_, ext)) = name.rsplit_once('.') {
        match ext {
            "yaml" | "yml" => return Format::Yaml,
            "json" => return Format::Json,
            "toml" => return Format::Toml,
            "ini" | "cfg" | "conf" => return Format::Ini,
            _ => {}
        }
    }
    if name == ".env" || name.starts_with(".env.") || name.ends_with(".env") {
        return Format::Env;
    }
    Format::Text
}

/// systemd unit types whose files (and `<unit>.d/` drop-in directories) are units.
const SYSTEMD_UNIT_EXTENSIONS: &[&str] =
    &["service", "socket", "timer", "mount", "automount", "swap", "path", "target", "slice"];

/// The host config formats `detect_format` recognises by name and place.
fn detect_host_format(path: &Path, name: &str) -> Option<Format> {
    let ancestors: Vec<String> = path
        .ancestors()
        .skip(1)
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_ascii_lowercase))
        .collect();
    let parent = ancestors.first().map(String::as_str).unwrap_or("");
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    let conf = ext == "conf";
    match name {
        "sshd_config" | "ssh_config" | "redis.conf" | "chrony.conf" => return Some(Format::Keyword),
        "sysctl.conf" => return Some(Format::Sysctl),
        "nginx.conf" => return Some(Format::Nginx),
        _ => {}
    }
    if conf && matches!(parent, "sshd_config.d" | "ssh_config.d") {
        return Some(Format::Keyword);
    }
    if conf && parent == "sysctl.d" {
        return Some(Format::Sysctl);
    }
    let under_nginx = ancestors.iter().any(|a| a == "nginx");
    if under_nginx && (conf || matches!(parent, "sites-available" | "sites-enabled")) {
        return Some(Format::Nginx);
    }
    if SYSTEMD_UNIT_EXTENSIONS.contains(&ext) {
        return Some(Format::Systemd);
    }
    let dropin_dir = parent.strip_suffix(".d").and_then(|unit| unit.rsplit_once('.')).map(|(_, e)| e);
    if conf && dropin_dir.is_some_and(|e| SYSTEMD_UNIT_EXTENSIONS.contains(&e)) {
        return Some(Format::Systemd);
    }
    None
}

/// Parse a format name as written in config/flags: env, ini, yaml (or yml), json, toml,
/// keyword (or sshd), sysctl, nginx, systemd (or unit), text. Case-insensitive,
/// surrounding blanks ignored.
pub fn parse_format_name(name: &str) -> Option<Format> {
    match name.trim().to_ascii_lowercase().as_str() {
        "env" => Some(Format::Env),
        "ini" => Some(Format::Ini),
        "yaml" | "yml" => Some(Format::Yaml),
        "json" => Some(Format::Json),
        "toml" => Some(Format::Toml),
        "keyword" | "sshd" => Some(Format::Keyword),
        "sysctl" => Some(Format::Sysctl),
        "nginx" => Some(Format::Nginx),
        "systemd" | "unit" => Some(Format::Systemd),
        "text" => Some(Format::Text),
        _ => None,
    }
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
///
/// - `content_hash` is always `masker.content_hash(content)` (over the raw bytes, BOM
///   included).
/// - Longer than `limits.max_file_bytes` → `TooLarge` (defensive; the caller checks first).
/// - A NUL byte or invalid UTF-8 → `Binary`, whatever the format.
/// - `Text` (or `Unspecified`) → `HashOnly`.
/// - Otherwise parsed (a leading UTF-8 BOM is skipped): `Ok` with the keys, or
///   `ParseError` with a position and no keys. Hitting `max_keys` or `max_depth` is a
///   `ParseError` too (position unknown, 0/0), but the keys found within the limits are
///   kept: the first `max_keys` keys, and everything not nested deeper than `max_depth`
///   (depth counts containers: in `{"a": {"b": 1}}` the key `a.b` sits at depth 2; .env and
///   INI have no nesting).
///
/// Keyword files are read in the sshd dialect (first value wins); [`analyze_path`] picks
/// the dialect from the file's path.
///
/// Never panics.
pub fn analyze(content: &[u8], format: Format, masker: &Masker, limits: &Limits) -> Analysis {
    analyze_with(content, format, KeywordDialect::Sshd, masker, limits)
}

/// [`analyze`], with a keyword file's dialect chosen from `path` by [`keyword_dialect`]
/// (redis.conf keeps the last value of a repeated keyword, sshd_config the first).
pub fn analyze_path(path: &Path, content: &[u8], format: Format, masker: &Masker, limits: &Limits) -> Analysis {
    analyze_with(content, format, keyword_dialect(path), masker, limits)
}

fn analyze_with(content: &[u8], format: Format, dialect: KeywordDialect, masker: &Masker, limits: &Limits) -> Analysis {
    let content_hash = masker.content_hash(content);
    let only =
        |status: FileStatus| Analysis { status, error: None, keys: Vec::new(), content_hash: content_hash.clone() };
    if u64::try_from(content.len()).unwrap_or(u64::MAX) > limits.max_file_bytes {
        return only(FileStatus::TooLarge);
    }
    if content.contains(&0) {
        return only(FileStatus::Binary);
    }
    let Ok(text) = std::str::from_utf8(content) else {
        return only(FileStatus::Binary);
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);

    let mut sink = Sink::new(masker, limits.max_keys);
    let parsed = match format {
        Format::Text | Format::Unspecified => return only(FileStatus::HashOnly),
        Format::Env | Format::Ini | Format::Keyword | Format::Sysctl | Format::Nginx | Format::Systemd => {
            text_entries(format, dialect, text)
                .unwrap_or_else(|| Ok(Vec::new()))
                .map(|entries| push_text_entries(&mut sink, entries))
        }
        Format::Json => {
            structured::parse_json(text).map(|root| Walker::new(&mut sink, limits.max_depth, false).document(&root))
        }
        Format::Toml => {
            structured::parse_toml(text).map(|root| Walker::new(&mut sink, limits.max_depth, false).document(&root))
        }
        Format::Yaml => structured::parse_yaml(text).map(|docs| {
            let mut walker = Walker::new(&mut sink, limits.max_depth, true);
            let non_null = docs.iter().filter(|d| !matches!(d, flatten::Node::Null)).count();
            if non_null <= 1 {
                // One document (possibly with `---` markers or empty ones around it): no prefix.
                if let Some(doc) = docs.iter().find(|d| !matches!(d, flatten::Node::Null)) {
                    walker.document(doc);
                }
            } else {
                for (i, doc) in docs.iter().enumerate() {
                    walker.document_at(i, doc);
                }
            }
        }),
    };
    match parsed {
        Err(e) => Analysis {
            status: FileStatus::ParseError,
            error: Some(e.into_file_error()),
            keys: Vec::new(),
            content_hash,
        },
        Ok(()) => {
            let (keys, limit_error) = sink.finish();
            match limit_error {
                Some(message) => Analysis {
                    status: FileStatus::ParseError,
                    error: Some(FileError { message, line: 0, column: 0 }),
                    keys,
                    content_hash,
                },
                None => Analysis { status: FileStatus::Ok, error: None, keys, content_hash },
            }
        }
    }
}

/// The flat entries of a line-based format (.env, INI, keyword, sysctl, nginx, systemd);
/// None for the others.
pub(crate) fn text_entries(
    format: Format,
    dialect: KeywordDialect,
    text: &str,
) -> Option<Result<Vec<env::TextEntry>, errors::SyntaxError>> {
    Some(match format {
        Format::Env => env::parse_env(text),
        Format::Ini => ini::parse_ini(text),
        Format::Keyword => keyword::parse(text, dialect).map(|f| f.entries()),
        Format::Sysctl => sysctl::parse_sysctl(text),
        Format::Nginx => nginx::parse_nginx(text),
        Format::Systemd => systemd::parse_systemd(text),
        Format::Json | Format::Toml | Format::Yaml | Format::Text | Format::Unspecified => return None,
    })
}

/// The keys of a keyword file already parsed (e.g. [`KeywordFile::with_includes`]'s
/// effective view), masked like [`analyze`] does; the error says a limit was hit.
pub fn keyword_keys(file: &KeywordFile, masker: &Masker, limits: &Limits) -> (Vec<KeyValue>, Option<FileError>) {
    let mut sink = Sink::new(masker, limits.max_keys);
    push_text_entries(&mut sink, file.entries());
    let (keys, limit_error) = sink.finish();
    (keys, limit_error.map(|message| FileError { message, line: 0, column: 0 }))
}

/// Text-format entries: quoted values stay strings, unquoted ones get their type inferred.
fn push_text_entries(sink: &mut Sink<'_>, entries: Vec<env::TextEntry>) {
    for entry in entries {
        let scalar = if entry.literal { Scalar::Str(entry.value.clone()) } else { infer_text(&entry.value) };
        let key = flatten::safe_key_path(sink.masker(), entry.key);
        sink.push(key, scalar, Some(&entry.value));
    }
}
