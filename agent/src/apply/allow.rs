//! The writable allowlist. The agent, never the server, decides what may be written.
//!
//! An entry is an absolute path (that file, or everything below it when it is a
//! directory) or an absolute glob. Both the entries and the requested path are compared
//! by their real location: entries are canonicalised at every check (a directory may
//! appear after the agent started), and the requested path is resolved as its
//! canonical parent directory plus its file name, following the file itself when it is
//! a symlink. So a symlink anywhere on the way (a directory or the file) that leads
//! outside the allowed roots is refused, and one that leads into them is allowed.
//!
//! What is written is the resolved path: the temp file is created next to the real
//! file and renamed over it, so a symlinked config file stays a symlink.
//!
//! Not covered: a local user who can rename directories between this check and the
//! write. The allowlist guards against the server, not against root on the host.

use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};

pub(crate) const NOTHING_WRITABLE: &str = "this agent allows no writes (no writable paths configured)";

/// Glob metacharacters (as in `watch::pattern`): a component with one of them ends the
/// literal base of a glob.
const META_CHARS: [char; 5] = ['*', '?', '[', '{', '\\'];

/// Why a path may not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// Not allowed by the allowlist (or malformed: relative, `..`).
    Refused(String),
    /// Allowed or not, there is nothing that could be written (no such directory, a
    /// dangling symlink).
    Rejected(String),
}

/// The configured writable entries.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    entries: Vec<String>,
}

/// An entry resolved against the file system as it is now.
enum Root {
    /// A file, or a directory and everything below it.
    Path(PathBuf),
    Glob(GlobMatcher),
}

impl Root {
    fn allows(&self, p: &Path) -> bool {
        match self {
            Root::Path(root) => p.starts_with(root),
            Root::Glob(m) => m.is_match(p),
        }
    }
}

pub(crate) fn is_glob(entry: &str) -> bool {
    entry.contains(META_CHARS)
}

/// An absolute glob's literal base directory and the components after it.
pub(crate) fn split_glob(entry: &str) -> (PathBuf, Vec<&str>) {
    let comps: Vec<&str> = entry.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    let literal = comps.iter().take_while(|c| !c.contains(META_CHARS)).count();
    (PathBuf::from(format!("/{}", comps[..literal].join("/"))), comps[literal..].to_vec())
}

fn compile(pattern: &str) -> Option<GlobMatcher> {
    GlobBuilder::new(pattern).literal_separator(true).backslash_escape(true).build().ok().map(|g| g.compile_matcher())
}

/// `p` with its longest existing ancestor canonicalised and the rest appended as is.
fn canonical_prefix(p: &Path) -> PathBuf {
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    let mut cur = p;
    loop {
        if let Ok(real) = std::fs::canonicalize(cur) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                cur = parent;
            }
            _ => return p.to_path_buf(),
        }
    }
}

/// `/a//b/./c` → `/a/b/c` (no `..` here: refused earlier).
fn lexical(p: &Path) -> PathBuf {
    p.components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

/// Whether a `[[files]]` path (an exact path or a glob) names this file: as written
/// (`requested`) or by its real location (`real`, with the entry canonicalised too).
/// Not a security check: it only picks which of the operator's commands to run.
pub(crate) fn entry_matches(entry: &str, requested: &Path, real: &Path) -> bool {
    if is_glob(entry) {
        let lexical_hit = compile(entry).is_some_and(|m| m.is_match(requested));
        let real_hit = Allowlist::new(vec![entry.to_string()]).resolved().iter().any(|r| r.allows(real));
        lexical_hit || real_hit
    } else {
        let e = Path::new(entry);
        lexical(e) == lexical(requested) || canonical_prefix(e) == real
    }
}

impl Allowlist {
    /// Entries are validated by the config (absolute, no `..`, valid globs).
    pub fn new(entries: Vec<String>) -> Self {
        Self { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries as they are on disk now.
    fn resolved(&self) -> Vec<Root> {
        self.entries
            .iter()
            .filter_map(|e| {
                if !is_glob(e) {
                    return Some(Root::Path(canonical_prefix(Path::new(e))));
                }
                let (base, rest) = split_glob(e);
                let mut pattern = globset::escape(&canonical_prefix(&base).to_string_lossy());
                for c in rest {
                    if !pattern.ends_with('/') {
                        pattern.push('/');
                    }
                    pattern.push_str(c);
                }
                compile(&pattern).map(Root::Glob)
            })
            .collect()
    }

    /// The entries exactly as configured (to tell "outside" from "outside through a symlink").
    fn lexical(&self) -> Vec<Root> {
        self.entries
            .iter()
            .filter_map(
                |e| {
                    if is_glob(e) { compile(e).map(Root::Glob) } else { Some(Root::Path(lexical(Path::new(e)))) }
                },
            )
            .collect()
    }

    /// Whether `requested` may be written; on success the real path to write.
    pub fn check(&self, requested: &str) -> Result<PathBuf, Denied> {
        if self.entries.is_empty() {
            return Err(Denied::Refused(NOTHING_WRITABLE.into()));
        }
        if requested.is_empty() {
            return Err(Denied::Refused("no path given".into()));
        }
        let p = Path::new(requested);
        if !p.is_absolute() {
            return Err(Denied::Refused(format!("'{requested}' is not an absolute path")));
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(Denied::Refused(format!("'{requested}' has a '..' component; paths must be given without it")));
        }
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            return Err(Denied::Refused(format!("'{requested}' names no file")));
        };
        let real_parent = std::fs::canonicalize(parent).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Denied::Rejected(format!("the directory {} does not exist", parent.display()))
            } else {
                Denied::Rejected(format!("cannot resolve {}: {e}", parent.display()))
            }
        })?;
        let joined = real_parent.join(name);
        let real = match std::fs::symlink_metadata(&joined) {
            Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(&joined).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Denied::Rejected(format!("'{requested}' is a symlink to a file that does not exist"))
                } else {
                    Denied::Rejected(format!("cannot resolve '{requested}': {e}"))
                }
            })?,
            _ => joined,
        };
        if self.resolved().iter().any(|r| r.allows(&real)) {
            return Ok(real);
        }
        if self.lexical().iter().any(|r| r.allows(&lexical(p))) {
            return Err(Denied::Refused(format!(
                "'{requested}' resolves through a symlink to {}, which is outside the writable paths",
                real.display()
            )));
        }
        Err(Denied::Refused(format!("'{requested}' is not inside the writable paths")))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    struct Dir {
        _t: tempfile::TempDir,
        root: PathBuf,
    }

    fn dir() -> Dir {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        Dir { _t: t, root }
    }

    fn s(p: &Path) -> String {
        p.to_string_lossy().into_owned()
    }

    fn refused(r: Result<PathBuf, Denied>) -> String {
        match r {
            Err(Denied::Refused(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn nothing_configured_refuses_everything() {
        let a = Allowlist::new(vec![]);
        assert_eq!(refused(a.check("/etc/app/.env")), NOTHING_WRITABLE);
    }

    #[test]
    fn plain_file_entry_allows_that_file_only() {
        let d = dir();
        std::fs::write(d.root.join("a.env"), "A=1\n").unwrap();
        std::fs::write(d.root.join("b.env"), "B=1\n").unwrap();
        let a = Allowlist::new(vec![s(&d.root.join("a.env"))]);
        assert_eq!(a.check(&s(&d.root.join("a.env"))).unwrap(), d.root.join("a.env"));
        assert!(refused(a.check(&s(&d.root.join("b.env")))).contains("not inside the writable paths"));
        // A path that merely shares the prefix.
        assert!(matches!(a.check(&s(&d.root.join("a.env2"))), Err(Denied::Refused(_))));
    }

    #[test]
    fn directory_entry_allows_everything_below() {
        let d = dir();
        std::fs::create_dir_all(d.root.join("app/sub")).unwrap();
        std::fs::create_dir_all(d.root.join("apple")).unwrap();
        let a = Allowlist::new(vec![s(&d.root.join("app"))]);
        assert!(a.check(&s(&d.root.join("app/x.yaml"))).is_ok());
        assert!(a.check(&s(&d.root.join("app/sub/y.yaml"))).is_ok());
        assert!(a.check(&s(&d.root.join("apple/x.yaml"))).is_err());
        // `.` components are harmless.
        assert!(a.check(&format!("{}/./app/x.yaml", d.root.display())).is_ok());
    }

    #[test]
    fn glob_entry_matches_the_canonical_path() {
        let d = dir();
        std::fs::create_dir_all(d.root.join("app/sub")).unwrap();
        let a = Allowlist::new(vec![format!("{}/app/*.yaml", d.root.display())]);
        assert!(a.check(&s(&d.root.join("app/x.yaml"))).is_ok());
        assert!(a.check(&s(&d.root.join("app/x.json"))).is_err());
        assert!(a.check(&s(&d.root.join("app/sub/x.yaml"))).is_err(), "* does not cross directories");
    }

    #[test]
    fn dot_dot_and_relative_paths_are_refused() {
        let d = dir();
        std::fs::create_dir_all(d.root.join("app")).unwrap();
        let a = Allowlist::new(vec![s(&d.root.join("app"))]);
        let m = refused(a.check(&format!("{}/app/../app/x.env", d.root.display())));
        assert!(m.contains("'..'"), "{m}");
        let m = refused(a.check("app/x.env"));
        assert!(m.contains("not an absolute path"), "{m}");
    }

    #[test]
    fn symlink_inside_root_pointing_out_is_refused() {
        let d = dir();
        std::fs::create_dir_all(d.root.join("app")).unwrap();
        std::fs::create_dir_all(d.root.join("outside")).unwrap();
        std::fs::write(d.root.join("outside/secret.env"), "X=1\n").unwrap();
        symlink(d.root.join("outside/secret.env"), d.root.join("app/link.env")).unwrap();
        symlink(d.root.join("outside"), d.root.join("app/linkdir")).unwrap();
        let a = Allowlist::new(vec![s(&d.root.join("app"))]);
        let m = refused(a.check(&s(&d.root.join("app/link.env"))));
        assert!(m.contains("symlink") && m.contains("outside the writable paths"), "{m}");
        let m = refused(a.check(&s(&d.root.join("app/linkdir/secret.env"))));
        assert!(m.contains("symlink"), "{m}");
        // Same through a glob entry.
        let a = Allowlist::new(vec![format!("{}/app/*.env", d.root.display())]);
        assert!(refused(a.check(&s(&d.root.join("app/link.env")))).contains("symlink"));
    }

    #[test]
    fn symlink_pointing_in_is_allowed_and_resolved() {
        let d = dir();
        std::fs::create_dir_all(d.root.join("real")).unwrap();
        std::fs::write(d.root.join("real/app.env"), "X=1\n").unwrap();
        symlink(d.root.join("real"), d.root.join("etc-app")).unwrap();
        symlink(d.root.join("real/app.env"), d.root.join("real/current.env")).unwrap();
        // The entry itself goes through a symlink; so does the request.
        let a = Allowlist::new(vec![s(&d.root.join("etc-app"))]);
        assert_eq!(a.check(&s(&d.root.join("etc-app/app.env"))).unwrap(), d.root.join("real/app.env"));
        // A symlinked file inside the root is written at its target.
        assert_eq!(a.check(&s(&d.root.join("etc-app/current.env"))).unwrap(), d.root.join("real/app.env"));
        let a = Allowlist::new(vec![format!("{}/etc-app/*.env", d.root.display())]);
        assert!(a.check(&s(&d.root.join("real/app.env"))).is_ok());
    }

    #[test]
    fn missing_directory_and_dangling_symlink_are_rejected() {
        let d = dir();
        std::fs::create_dir_all(d.root.join("app")).unwrap();
        symlink(d.root.join("app/nowhere.env"), d.root.join("app/dangling.env")).unwrap();
        let a = Allowlist::new(vec![s(&d.root.join("app"))]);
        assert!(matches!(a.check(&s(&d.root.join("app/no/x.env"))), Err(Denied::Rejected(_))));
        assert!(matches!(a.check(&s(&d.root.join("app/dangling.env"))), Err(Denied::Rejected(_))));
        // A file that does not exist yet in an allowed directory is fine (restore).
        assert!(a.check(&s(&d.root.join("app/new.env"))).is_ok());
    }
}
