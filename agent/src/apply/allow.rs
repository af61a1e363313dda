//! The writable allowlist. The agent, never the server, decides what may be written.
//!
//! An entry is an absolute path (that file, or everything below it when it is a
//! directory) or an absolute glob. Each entry is resolved once, when the agent starts
//! (or, for one that does not exist yet, at the first change that names it): its real
//! directory is opened and held ([`RootDir`]): a directory entry's directory, a file
//! entry's parent, a glob's literal base. Requests are then resolved below that handle
//! ([`resolve::walk`]), never by a path the kernel follows on its own: a symlink anywhere
//! on the way (a directory or the file) that leads outside the root is refused, naming
//! the link; one that stays inside is followed.
//!
//! What is written is the resolved file: the temp file is created next to the real file
//! and renamed over it, so a symlinked config file stays a symlink.
//!
//! A root whose path later names another directory (replaced after the agent started)
//! is refused until the agent restarts: writing into the directory the agent still holds
//! would write where nobody looks.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use globset::{GlobBuilder, GlobMatcher};

use super::resolve::{self, Owners, RootDir, Target};
use crate::hostroot::HostRoot;

pub(crate) const NOTHING_WRITABLE: &str = "this agent allows no writes (no writable paths configured)";

/// Glob metacharacters (as in `watch::pattern`): a component with one of them ends the
/// literal base of a glob.
const META_CHARS: [char; 5] = ['*', '?', '[', '{', '\\'];

/// Why a path may not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// Not allowed by the allowlist (or malformed: relative, `..`), or not safe to write
    /// (a symlink out of the root, a directory others can write).
    Refused(String),
    /// Allowed or not, there is nothing that could be written (no such directory, a
    /// dangling symlink).
    Rejected(String),
}

/// The configured writable entries, resolved.
#[derive(Debug)]
pub struct Allowlist {
    entries: Vec<Entry>,
    who: Owners,
    /// `path_prefix`: entries and requests are local paths below it; real paths are
    /// found as the node resolves its symlinks (`HostRoot::canonicalize`).
    host: HostRoot,
}

/// What an entry allows below its root.
#[derive(Debug, Clone)]
enum Scope {
    /// Everything below the root (a directory entry).
    All,
    /// One name in the root (a file entry).
    File(PathBuf),
    /// Relative paths matching this glob (a glob entry, relative to its literal base).
    Glob(GlobMatcher),
}

impl Scope {
    fn allows(&self, rel: &Path) -> bool {
        match self {
            Scope::All => true,
            Scope::File(name) => rel == name,
            Scope::Glob(m) => m.is_match(rel),
        }
    }
}

/// An entry resolved against the file system: the held root and what it allows.
#[derive(Debug, Clone)]
struct Held {
    root: Arc<RootDir>,
    scope: Scope,
    /// The entry's path as configured (lexical) and as resolved, for matching requests:
    /// a directory's path, a file's path, a glob's literal base.
    lexical: PathBuf,
    real: PathBuf,
}

#[derive(Debug)]
struct Entry {
    configured: String,
    /// `None` until the entry exists.
    held: Option<Held>,
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

/// A glob entry's pattern with its literal base canonicalised.
fn canonical_glob(entry: &str) -> Option<GlobMatcher> {
    let (base, rest) = split_glob(entry);
    let mut pattern = globset::escape(&canonical_prefix(&base).to_string_lossy());
    for c in rest {
        if !pattern.ends_with('/') {
            pattern.push('/');
        }
        pattern.push_str(c);
    }
    compile(&pattern)
}

/// Whether a `[[files]]` path (an exact path or a glob) names this file: as written
/// (`requested`) or by its real location (`real`, with the entry canonicalised too).
/// Not a security check: it only picks which of the operator's commands to run.
pub(crate) fn entry_matches(entry: &str, requested: &Path, real: &Path) -> bool {
    if is_glob(entry) {
        let lexical_hit = compile(entry).is_some_and(|m| m.is_match(requested));
        lexical_hit || canonical_glob(entry).is_some_and(|m| m.is_match(real))
    } else {
        let e = Path::new(entry);
        lexical(e) == lexical(requested) || canonical_prefix(e) == real
    }
}

/// Resolve one entry as the file system is now; `None` when it does not exist (yet).
/// `transient`: for a file entry that does not exist, resolve its parent anyway (a
/// restore may recreate it), without keeping the result.
fn resolve_entry(entry: &str, transient: bool, host: &HostRoot) -> Option<Held> {
    let open = |dir: &Path| match RootDir::open(dir) {
        Ok(r) => Some(Arc::new(r.below(host.prefix()))),
        Err(e) => {
            tracing::warn!(entry, dir = %dir.display(), error = %e, "cannot open a writable root");
            None
        }
    };
    if is_glob(entry) {
        let (base, rest) = split_glob(entry);
        let real = host.canonicalize(&base).ok().filter(|p| p.is_dir())?;
        let scope = Scope::Glob(compile(&rest.join("/"))?);
        return Some(Held { root: open(&real)?, scope, lexical: lexical(&base), real });
    }
    let p = Path::new(entry);
    match host.canonicalize(p) {
        Ok(real) if real.is_dir() => Some(Held { root: open(&real)?, scope: Scope::All, lexical: lexical(p), real }),
        Ok(real) => {
            let (dir, name) = (real.parent()?, real.file_name()?);
            Some(Held { root: open(dir)?, scope: Scope::File(name.into()), lexical: lexical(p), real })
        }
        Err(_) if transient => {
            let dir = host.canonicalize(p.parent()?).ok().filter(|d| d.is_dir())?;
            let name = p.file_name()?;
            let real = dir.join(name);
            Some(Held { root: open(&dir)?, scope: Scope::File(name.into()), lexical: lexical(p), real })
        }
        Err(_) => None,
    }
}

impl Held {
    /// The request below this entry's root, relative to it, when it names a path there
    /// (as configured or by its real location).
    fn relative(&self, requested: &Path) -> Option<PathBuf> {
        match &self.scope {
            Scope::File(name) => (requested == self.lexical || requested == self.real).then(|| PathBuf::from(name)),
            _ => requested
                .strip_prefix(&self.lexical)
                .or_else(|_| requested.strip_prefix(&self.real))
                .ok()
                .map(Path::to_path_buf),
        }
    }

    /// Whether the root's path still names the directory held.
    fn root_is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.root.path).is_ok_and(|m| (m.dev(), m.ino()) == (self.root.id.dev, self.root.id.ino))
    }
}

impl Allowlist {
    /// Entries are validated by the config (absolute, no `..`, valid globs). Each is
    /// resolved and its root opened now when it exists.
    pub fn new(entries: Vec<String>, host: HostRoot) -> Self {
        let entries = entries
            .into_iter()
            .map(|configured| {
                let held = resolve_entry(&configured, false, &host);
                if held.is_none() {
                    tracing::info!(entry = %configured, "writable path does not exist yet; resolved when first named");
                }
                Entry { configured, held }
            })
            .collect();
        Self { entries, who: Owners::current(), host }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries as held, resolving those that did not exist so far. A held root whose
    /// path now names another directory is reported, not followed.
    fn held(&mut self) -> Vec<Slot> {
        let mut out = Vec::new();
        for e in &mut self.entries {
            if e.held.is_none() {
                e.held = resolve_entry(&e.configured, false, &self.host);
            }
            match &e.held {
                Some(h) if h.root_is_current() => out.push(Slot::Held(h.clone())),
                Some(h) => out.push(Slot::Replaced {
                    paths: [h.lexical.clone(), h.real.clone()],
                    message: format!(
                        "the writable root {} (of '{}') was replaced after the agent started; restart the agent \
                         to write there",
                        h.root.path.display(),
                        e.configured
                    ),
                }),
                None => out.extend(resolve_entry(&e.configured, true, &self.host).map(Slot::Held)),
            }
        }
        out
    }

    /// Whether `requested` may be written; on success the resolved file, with its parent
    /// directory held.
    pub fn check(&mut self, requested: &str) -> Result<Target, Denied> {
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
        let who = self.who;
        let slots = self.held();
        let mut denied = Vec::new();
        // Below a root as the request names it.
        let asked = lexical(p);
        for slot in &slots {
            match slot {
                Slot::Held(h) => {
                    let Some(rel) = h.relative(&asked) else { continue };
                    match resolve::walk(&h.root, &rel, requested, who) {
                        Ok(t) if h.scope.allows(&t.rel()) => return Ok(t),
                        Ok(t) if t.rel() == rel => denied.push(outside(requested)),
                        Ok(t) => denied.push(Denied::Refused(format!(
                            "'{requested}' resolves through a symlink to {}, which is outside the writable paths",
                            t.real.display()
                        ))),
                        Err(d) => denied.push(d),
                    }
                }
                Slot::Replaced { paths, message } => {
                    if paths.iter().any(|r| asked.starts_with(r)) {
                        denied.push(Denied::Refused(message.clone()));
                    }
                }
            }
        }
        // Elsewhere, or through a symlink into another root: find the root by the real
        // parent (by path: this only picks the root, the walk below it decides).
        let real_parent = match self.host.canonicalize(parent) {
            Ok(p) => p,
            Err(_) if !denied.is_empty() => return Err(most_telling(denied).expect("not empty")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Denied::Rejected(format!("the directory {} does not exist", parent.display())));
            }
            Err(e) => return Err(Denied::Rejected(format!("cannot resolve {}: {e}", parent.display()))),
        };
        let guess = real_parent.join(name);
        let lexical_denials = denied.len();
        for slot in &slots {
            let Slot::Held(h) = slot else { continue };
            let Ok(rel) = guess.strip_prefix(&h.root.path) else { continue };
            match resolve::walk(&h.root, rel, requested, who) {
                Ok(t) if h.scope.allows(&t.rel()) => return Ok(t),
                Ok(_) => {}
                Err(d) if lexical_denials == 0 => denied.push(d),
                Err(_) => {}
            }
        }
        Err(most_telling(denied).unwrap_or_else(|| outside(requested)))
    }
}

fn outside(requested: &str) -> Denied {
    Denied::Refused(format!("'{requested}' is not inside the writable paths"))
}

/// An entry as it can be used for this request.
enum Slot {
    Held(Held),
    /// A held root whose path now names another directory.
    Replaced {
        paths: [PathBuf; 2],
        message: String,
    },
}

/// Of the reasons several roots gave, a refusal (it says why) before "no such directory".
fn most_telling(denied: Vec<Denied>) -> Option<Denied> {
    let refused = denied.iter().position(|d| matches!(d, Denied::Refused(_)));
    let mut denied = denied;
    match refused {
        Some(i) => Some(denied.swap_remove(i)),
        None => denied.into_iter().next(),
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

    fn refused(r: Result<Target, Denied>) -> String {
        match r {
            Err(Denied::Refused(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn nothing_configured_refuses_everything() {
        let mut a = Allowlist::new(vec![], HostRoot::default());
        assert_eq!(refused(a.check("/etc/app/.env")), NOTHING_WRITABLE);
    }

    #[test]
    fn plain_file_entry_allows_that_file_only() {
        let d = dir();
        std::fs::write(d.root.join("a.env"), "A=1\n").unwrap();
        std::fs::write(d.root.join("b.env"), "B=1\n").unwrap();
        let mut a = Allowlist::new(vec![s(&d.root.join("a.env"))], HostRoot::default());
        assert_eq!(a.check(&s(&d.root.join("a.env"))).unwrap().real, d.root.join("a.env"));
        assert!(refused(a.check(&s(&d.root.join("b.env")))).contains("not inside the writable paths"));
        // A path that merely shares the prefix.
        assert!(matches!(a.check(&s(&d.root.join("a.env2"))), Err(Denied::Refused(_))));
    }

    #[test]
    fn directory_entry_allows_everything_below() {
        let d = dir();
        std::fs::create_dir_all(d.root.join("app/sub")).unwrap();
        std::fs::create_dir_all(d.root.join("apple")).unwrap();
        let mut a = Allowlist::new(vec![s(&d.root.join("app"))], HostRoot::default());
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
        let mut a = Allowlist::new(vec![format!("{}/app/*.yaml", d.root.display())], HostRoot::default());
        assert!(a.check(&s(&d.root.join("app/x.yaml"))).is_ok());
        assert!(refused(a.check(&s(&d.root.join("app/x.json")))).contains("not inside the writable paths"));
        assert!(a.check(&s(&d.root.join("app/sub/x.yaml"))).is_err(), "* does not cross directories");
    }

    #[test]
    fn dot_dot_and_relative_paths_are_refused() {
        let d = dir();
        std::fs::create_dir_all(d.root.join("app")).unwrap();
        let mut a = Allowlist::new(vec![s(&d.root.join("app"))], HostRoot::default());
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
        let mut a = Allowlist::new(vec![s(&d.root.join("app"))], HostRoot::default());
        let m = refused(a.check(&s(&d.root.join("app/link.env"))));
        assert!(m.contains("symlink") && m.contains("outside the writable paths"), "{m}");
        let m = refused(a.check(&s(&d.root.join("app/linkdir/secret.env"))));
        assert!(m.contains("symlink"), "{m}");
        // Same through a glob entry.
        let mut a = Allowlist::new(vec![format!("{}/app/*.env", d.root.display())], HostRoot::default());
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
        let mut a = Allowlist::new(vec![s(&d.root.join("etc-app"))], HostRoot::default());
        assert_eq!(a.check(&s(&d.root.join("etc-app/app.env"))).unwrap().real, d.root.join("real/app.env"));
        // A symlinked file inside the root is written at its target.
        assert_eq!(a.check(&s(&d.root.join("etc-app/current.env"))).unwrap().real, d.root.join("real/app.env"));
        let mut a = Allowlist::new(vec![format!("{}/etc-app/*.env", d.root.display())], HostRoot::default());
        assert!(a.check(&s(&d.root.join("real/app.env"))).is_ok());
    }

    #[test]
    fn a_symlink_out_of_one_root_into_another_is_allowed() {
        let d = dir();
        std::fs::create_dir_all(d.root.join("app")).unwrap();
        std::fs::create_dir_all(d.root.join("srv")).unwrap();
        symlink(d.root.join("srv"), d.root.join("app/link")).unwrap();
        let mut a = Allowlist::new(vec![s(&d.root.join("app")), s(&d.root.join("srv"))], HostRoot::default());
        assert_eq!(a.check(&s(&d.root.join("app/link/x.env"))).unwrap().real, d.root.join("srv/x.env"));
        let mut a = Allowlist::new(vec![s(&d.root.join("app"))], HostRoot::default());
        let m = refused(a.check(&s(&d.root.join("app/link/x.env"))));
        assert!(m.contains(&format!("symlink {}", d.root.join("app/link").display())), "{m}");
    }

    #[test]
    fn an_entry_that_appears_later_is_resolved_when_named() {
        let d = dir();
        let mut a = Allowlist::new(vec![s(&d.root.join("later"))], HostRoot::default());
        assert!(matches!(a.check(&s(&d.root.join("later/x.env"))), Err(Denied::Rejected(_))));
        std::fs::create_dir_all(d.root.join("later")).unwrap();
        assert_eq!(a.check(&s(&d.root.join("later/x.env"))).unwrap().real, d.root.join("later/x.env"));
        // A file entry that does not exist (yet, or any more): its directory is the root.
        let mut a = Allowlist::new(vec![s(&d.root.join("later/y.env"))], HostRoot::default());
        assert_eq!(a.check(&s(&d.root.join("later/y.env"))).unwrap().real, d.root.join("later/y.env"));
        assert!(a.check(&s(&d.root.join("later/z.env"))).is_err());
    }

    #[test]
    fn missing_directory_and_dangling_symlink_are_rejected() {
        let d = dir();
        std::fs::create_dir_all(d.root.join("app")).unwrap();
        symlink(d.root.join("app/nowhere.env"), d.root.join("app/dangling.env")).unwrap();
        let mut a = Allowlist::new(vec![s(&d.root.join("app"))], HostRoot::default());
        assert!(matches!(a.check(&s(&d.root.join("app/no/x.env"))), Err(Denied::Rejected(_))));
        assert!(matches!(a.check(&s(&d.root.join("app/dangling.env"))), Err(Denied::Rejected(_))));
        // A file that does not exist yet in an allowed directory is fine (restore).
        assert!(a.check(&s(&d.root.join("app/new.env"))).is_ok());
    }
}
