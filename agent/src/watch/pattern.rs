//! Watch patterns: explicit paths and globs, and which directories a glob needs watched.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use driftwatch_formats::Format;
use globset::{GlobBuilder, GlobMatcher};

/// One configured path or glob.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchPattern {
    /// An absolute path, or an absolute glob with `*`, `?`, `[..]` or `**`.
    pub pattern: String,
    /// Overrides the format detected from the file name.
    pub format: Option<Format>,
}

/// What makes a pattern a glob (the same rule as the config validation).
const GLOB_CHARS: [char; 3] = ['*', '?', '['];
/// What ends the literal base of a glob (globset also knows `{a,b}` and `\` escapes).
const META_CHARS: [char; 5] = ['*', '?', '[', '{', '\\'];

/// A compiled pattern.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub kind: Kind,
    pub format: Option<Format>,
}

#[derive(Debug)]
pub(crate) enum Kind {
    Explicit(PathBuf),
    Glob(Box<Glob>),
}

impl Compiled {
    pub fn new(p: &WatchPattern) -> Result<Self, String> {
        if !p.pattern.starts_with('/') {
            return Err(format!("'{}' is not an absolute path", p.pattern));
        }
        let kind = if p.pattern.contains(GLOB_CHARS) {
            Kind::Glob(Box::new(Glob::new(&p.pattern)?))
        } else {
            let path = PathBuf::from(normalize(&p.pattern));
            if path.parent().is_none() {
                return Err(format!("'{}' is a directory, not a file", p.pattern));
            }
            Kind::Explicit(path)
        };
        Ok(Self { kind, format: p.format })
    }

    /// The directory whose contents decide what this pattern matches: the file's
    /// directory, or the glob's literal base.
    pub fn root(&self) -> &Path {
        match &self.kind {
            Kind::Explicit(p) => p.parent().unwrap_or(Path::new("/")),
            Kind::Glob(g) => &g.base,
        }
    }

    pub fn glob(&self) -> Option<&Glob> {
        match &self.kind {
            Kind::Glob(g) => Some(g),
            Kind::Explicit(_) => None,
        }
    }

    pub fn explicit(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Explicit(p) => Some(p),
            Kind::Glob(_) => None,
        }
    }
}

/// `/a//b/./c/` → `/a/b/c` (paths we build by joining never contain those).
fn normalize(pattern: &str) -> String {
    let comps: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    format!("/{}", comps.join("/"))
}

fn compile(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    Ok(GlobBuilder::new(pattern).literal_separator(true).backslash_escape(true).build()?.compile_matcher())
}

/// An absolute glob split into its literal base directory and the components after it.
#[derive(Debug)]
pub(crate) struct Glob {
    /// The longest leading path without glob characters.
    pub base: PathBuf,
    matcher: GlobMatcher,
    /// Components after the base.
    ncomps: usize,
    /// Index (after the base) of the first component holding `**`.
    dstar: Option<usize>,
    /// `prefixes[k]` matches a directory `k` levels below the base that can lead to a
    /// match (`None` at 0, or when a prefix does not compile on its own: then any does).
    prefixes: Vec<Option<GlobMatcher>>,
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Self, String> {
        let pattern = normalize(pattern);
        let matcher = compile(&pattern).map_err(|e| format!("bad glob '{pattern}': {e}"))?;
        let comps: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
        let literal = comps.iter().take_while(|c| !c.contains(META_CHARS)).count();
        let base = PathBuf::from(format!("/{}", comps[..literal].join("/")));
        let rest = &comps[literal..];
        let dstar = rest.iter().position(|c| c.contains("**"));
        let upto = rest.len().saturating_sub(1).min(dstar.unwrap_or(usize::MAX));
        let mut prefixes = vec![None];
        for k in 1..=upto {
            let mut p = base.to_string_lossy().into_owned();
            for c in &rest[..k] {
                if !p.ends_with('/') {
                    p.push('/');
                }
                p.push_str(c);
            }
            prefixes.push(compile(&p).ok());
        }
        Ok(Self { base, matcher, ncomps: rest.len(), dstar, prefixes })
    }

    /// The agent's own temp files (`.<name>.driftwatch-tmp-*`, see `apply::write`) never
    /// match: they are not config files, and one left by a crash must not be reported.
    pub fn is_match(&self, path: &Path) -> bool {
        path.starts_with(&self.base)
            && path != self.base
            && self.matcher.is_match(path)
            && !path.file_name().is_some_and(crate::apply::write::is_temp_name)
    }

    /// Recursive globs (`**`) do not follow symlinked directories (loops); bounded ones do.
    pub fn follows_links(&self) -> bool {
        self.dstar.is_none()
    }

    /// Whether `dir` (at or below the base) may hold matches, now or later, so that it
    /// needs a watch and a listing.
    pub fn dir_relevant(&self, dir: &Path) -> bool {
        let Ok(rel) = dir.strip_prefix(&self.base) else { return false };
        let mut comps: Vec<&OsStr> = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(c) => comps.push(c),
                _ => return false,
            }
        }
        let d = comps.len();
        if d == 0 {
            return true;
        }
        match self.dstar {
            // Below a `**`: relevant if the part before the `**` matches.
            Some(j) if j < d => self.prefix_matches(j, &comps),
            _ => d < self.ncomps && self.prefix_matches(d, &comps),
        }
    }

    fn prefix_matches(&self, k: usize, comps: &[&OsStr]) -> bool {
        if k == 0 {
            return true;
        }
        match self.prefixes.get(k) {
            Some(Some(m)) => {
                let mut p = self.base.clone();
                p.extend(&comps[..k]);
                m.is_match(&p)
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> Glob {
        Glob::new(p).unwrap()
    }

    #[test]
    fn glob_base_is_the_literal_prefix() {
        assert_eq!(glob("/etc/app/*.yaml").base, Path::new("/etc/app"));
        assert_eq!(glob("/etc/app/conf.d/*.conf").base, Path::new("/etc/app/conf.d"));
        assert_eq!(glob("/srv/**/conf/*.toml").base, Path::new("/srv"));
        assert_eq!(glob("/*.conf").base, Path::new("/"));
        assert_eq!(glob("/etc/a[bc]/x.yaml").base, Path::new("/etc"));
        assert_eq!(glob("/etc/{a,b}/*.yaml").base, Path::new("/etc"));
        assert_eq!(glob("/etc/app?/x").base, Path::new("/etc"));
        assert_eq!(glob("//etc/./app//*.yaml").base, Path::new("/etc/app"));
        assert_eq!(glob("/etc/app/**").base, Path::new("/etc/app"));
    }

    #[test]
    fn star_stays_in_one_directory_double_star_recurses() {
        let g = glob("/etc/app/*.yaml");
        assert!(g.is_match(Path::new("/etc/app/a.yaml")));
        assert!(g.is_match(Path::new("/etc/app/.hidden.yaml")));
        assert!(!g.is_match(Path::new("/etc/app/sub/a.yaml")));
        assert!(!g.is_match(Path::new("/etc/app/a.yml")));
        assert!(!g.is_match(Path::new("/etc/other/a.yaml")));

        let g = glob("/etc/app/**/*.yaml");
        assert!(g.is_match(Path::new("/etc/app/a.yaml")));
        assert!(g.is_match(Path::new("/etc/app/x/y/z/a.yaml")));
        assert!(!g.is_match(Path::new("/etc/app/x/a.json")));

        let g = glob("/etc/app/*");
        assert!(g.is_match(Path::new("/etc/app/app.env")));
        assert!(!g.is_match(Path::new("/etc/app/.app.env.driftwatch-tmp-0123456789abcdef")));

        let g = glob("/etc/app/conf-?.[jt]oml");
        assert!(g.is_match(Path::new("/etc/app/conf-1.toml")));
        assert!(!g.is_match(Path::new("/etc/app/conf-12.toml")));
        assert!(!g.is_match(Path::new("/etc/app/conf-1.yaml")));
    }

    #[test]
    fn relevant_directories() {
        let g = glob("/etc/app/*.yaml");
        assert!(g.dir_relevant(Path::new("/etc/app")));
        assert!(!g.dir_relevant(Path::new("/etc/app/sub")));
        assert!(!g.dir_relevant(Path::new("/etc")));

        let g = glob("/etc/*/conf.d/*.conf");
        assert!(g.dir_relevant(Path::new("/etc")));
        assert!(g.dir_relevant(Path::new("/etc/nginx")));
        assert!(g.dir_relevant(Path::new("/etc/nginx/conf.d")));
        assert!(!g.dir_relevant(Path::new("/etc/nginx/sites")));
        assert!(!g.dir_relevant(Path::new("/etc/nginx/conf.d/deeper")));
        assert!(g.follows_links());

        let g = glob("/srv/app-*/**/*.yaml");
        assert!(g.dir_relevant(Path::new("/srv")));
        assert!(g.dir_relevant(Path::new("/srv/app-1")));
        assert!(g.dir_relevant(Path::new("/srv/app-1/a/b/c")));
        assert!(!g.dir_relevant(Path::new("/srv/db")));
        assert!(!g.dir_relevant(Path::new("/srv/db/a")));
        assert!(!g.follows_links());
        assert!(g.is_match(Path::new("/srv/app-1/a/b/c/x.yaml")));
        assert!(g.is_match(Path::new("/srv/app-1/x.yaml")));
    }

    #[test]
    fn explicit_and_glob_patterns() {
        let c = Compiled::new(&WatchPattern { pattern: "/etc/app/.env".into(), format: None }).unwrap();
        assert!(matches!(c.kind, Kind::Explicit(_)));
        assert_eq!(c.root(), Path::new("/etc/app"));
        let c = Compiled::new(&WatchPattern { pattern: "/etc/*.conf".into(), format: Some(Format::Ini) }).unwrap();
        assert_eq!(c.root(), Path::new("/etc"));
        assert_eq!(c.format, Some(Format::Ini));
        assert!(Compiled::new(&WatchPattern { pattern: "etc/x".into(), format: None }).is_err());
        assert!(Compiled::new(&WatchPattern { pattern: "/etc/[".into(), format: None }).is_err());
        assert!(Compiled::new(&WatchPattern { pattern: "/".into(), format: None }).is_err());
    }
}
