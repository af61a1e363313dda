//! `--path-prefix DIR`: the node's file system seen below a directory (a container's
//! `/host`). The agent reports and receives *node* paths everywhere (snapshots, full
//! listings, deletions, corrections, the `writable` allowlist, `[[files]]`); only the
//! watcher and the apply worker touch *local* paths, through this mapping:
//!
//! - node → local ([`HostRoot::to_local`]): the prefix joined with an absolute node
//!   path that has no `..` (refused, so no request can climb out of the prefix);
//! - local → node ([`HostRoot::to_node`]): the prefix stripped.
//!
//! Symlinks on the node are written for the node: `/etc/resolv.conf ->
//! /run/systemd/resolve/stub-resolv.conf` means the node's `/run`. Followed by the
//! kernel from inside the container, an absolute target would name the container's own
//! file. [`HostRoot::resolve`] follows symlinks itself, as a chroot to the prefix would:
//! an absolute target starts again at the prefix, and a `..` stops at it. The watcher
//! reads files at the path it returns; the apply worker re-roots absolute targets the
//! same way in its own walk (`apply::resolve::walk`). Without a prefix every function
//! here is the identity (or `std::fs::canonicalize`).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one resolution before giving up (the kernel's limit).
const MAX_LINKS: usize = 40;

/// Where the node's `/` is, locally. `Default`: the agent's own `/` (no prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostRoot {
    prefix: Option<PathBuf>,
}

impl HostRoot {
    /// Check a configured prefix: absolute, an existing directory, no glob characters
    /// (it is put in front of watch globs). Canonicalised; `/` means no prefix.
    pub fn new(prefix: &Path) -> Result<Self, String> {
        if !prefix.is_absolute() {
            return Err(format!("'{}' must be an absolute path", prefix.display()));
        }
        let real = std::fs::canonicalize(prefix).map_err(|e| format!("{}: {e}", prefix.display()))?;
        if !real.is_dir() {
            return Err(format!("{} is not a directory", prefix.display()));
        }
        if real.to_string_lossy().contains(['*', '?', '[', ']', '{', '}', '\\']) {
            return Err(format!("'{}' may not contain glob characters (* ? [ ] {{ }} \\)", real.display()));
        }
        Ok(Self { prefix: (real != Path::new("/")).then_some(real) })
    }

    /// The canonical prefix, if any.
    pub fn prefix(&self) -> Option<&Path> {
        self.prefix.as_deref()
    }

    /// The local path of a node path (or of an absolute glob: the prefix has no glob
    /// characters). Refuses a relative path and any `..`.
    pub fn to_local(&self, node: &str) -> Result<PathBuf, String> {
        let p = Path::new(node);
        if !p.is_absolute() {
            return Err(format!("'{node}' is not an absolute path"));
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(format!("'{node}' has a '..' component; paths must be given without it"));
        }
        Ok(match &self.prefix {
            None => p.to_path_buf(),
            Some(root) => root.join(p.strip_prefix("/").unwrap_or(p)),
        })
    }

    /// [`HostRoot::to_local`] as text, for patterns handed on as strings; a path it
    /// refuses is returned unchanged for the caller's own validation to report.
    pub fn local_text(&self, node: &str) -> String {
        match (&self.prefix, self.to_local(node)) {
            (Some(_), Ok(p)) => p.to_string_lossy().into_owned(),
            _ => node.to_string(),
        }
    }

    /// The node path of a local path; `None` when it is not below the prefix.
    pub fn to_node(&self, local: &Path) -> Option<PathBuf> {
        match &self.prefix {
            None => Some(local.to_path_buf()),
            Some(root) => local.strip_prefix(root).ok().map(|rest| Path::new("/").join(rest)),
        }
    }

    /// [`HostRoot::to_node`] of a path held as text (a `FileState.path`). A path not
    /// below the prefix is returned as is: every path the watcher makes is below it.
    pub fn node_text(&self, local: &str) -> String {
        match self.to_node(Path::new(local)) {
            Some(p) if self.prefix.is_some() => p.to_string_lossy().into_owned(),
            _ => local.to_string(),
        }
    }

    /// A message that may name local paths, with each `PREFIX/` written as `/`.
    pub fn node_message(&self, message: &str) -> String {
        match &self.prefix {
            None => message.to_string(),
            Some(root) => message.replace(&format!("{}/", root.display()), "/"),
        }
    }

    /// Resolve every symlink in `local` (below the prefix) as the node would: an
    /// absolute target starts again at the prefix, `..` stops at it. Where a component
    /// does not exist, the rest is appended unresolved (no symlink can be below a
    /// missing name, so a later open fails with `NotFound` rather than following one).
    /// Errors: a symlink loop (`ELOOP`), a path not below the prefix, an unreadable link.
    /// Without a prefix: `local` unchanged (the kernel follows links itself).
    pub fn resolve(&self, local: &Path) -> io::Result<PathBuf> {
        let Some(root) = &self.prefix else { return Ok(local.to_path_buf()) };
        let rel = local.strip_prefix(root).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{} is outside {}", local.display(), root.display()))
        })?;
        let mut out = root.clone();
        let mut queue: VecDeque<OsString> = parts(rel).collect();
        let mut links = 0;
        while let Some(c) = queue.pop_front() {
            if c == ".." {
                if out != *root {
                    out.pop();
                }
                continue;
            }
            let next = out.join(&c);
            let meta = match std::fs::symlink_metadata(&next) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
                    out.push(c);
                    out.extend(queue);
                    return Ok(out);
                }
                Err(e) => return Err(e),
            };
            if !meta.file_type().is_symlink() {
                out = next;
                continue;
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let target = std::fs::read_link(&next)?;
            if target.is_absolute() {
                out = root.clone();
            }
            let mut ahead: VecDeque<OsString> = parts(&target).collect();
            ahead.extend(queue);
            queue = ahead;
        }
        Ok(out)
    }

    /// [`HostRoot::resolve`], or `std::fs::canonicalize` without a prefix: the real
    /// path of an existing file, for finding which writable root holds it.
    pub fn canonicalize(&self, local: &Path) -> io::Result<PathBuf> {
        if self.prefix.is_none() {
            return std::fs::canonicalize(local);
        }
        let real = self.resolve(local)?;
        std::fs::symlink_metadata(&real)?;
        Ok(real)
    }
}

/// Normal components and `..` (`.` and the root dropped).
fn parts(p: &Path) -> impl Iterator<Item = OsString> + '_ {
    p.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn root_in(dir: &Path) -> HostRoot {
        HostRoot::new(dir).unwrap()
    }

    #[test]
    fn node_and_local_paths_map_both_ways() {
        let none = HostRoot::default();
        assert_eq!(none.to_local("/etc/a").unwrap(), PathBuf::from("/etc/a"));
        assert_eq!(none.node_text("/etc/a"), "/etc/a");
        let r = HostRoot { prefix: Some(PathBuf::from("/host")) };
        assert_eq!(r.to_local("/etc/web2img/.env").unwrap(), PathBuf::from("/host/etc/web2img/.env"));
        assert_eq!(r.local_text("/etc/*.yaml"), "/host/etc/*.yaml");
        assert_eq!(r.to_node(Path::new("/host/etc/web2img/.env")).unwrap(), PathBuf::from("/etc/web2img/.env"));
        assert_eq!(r.to_node(Path::new("/host")).unwrap(), PathBuf::from("/"));
        assert_eq!(r.to_node(Path::new("/hostile/x")), None);
        assert_eq!(r.node_text("/host/etc/a"), "/etc/a");
        assert_eq!(r.node_message("cannot write /host/etc/a: EACCES"), "cannot write /etc/a: EACCES");
    }

    #[test]
    fn escapes_and_relative_paths_are_refused() {
        let r = HostRoot { prefix: Some(PathBuf::from("/host")) };
        for bad in ["/../etc/shadow", "/etc/../../etc/shadow", "/etc/web2img/.."] {
            assert!(r.to_local(bad).unwrap_err().contains("'..'"), "{bad}");
        }
        assert!(r.to_local("etc/shadow").unwrap_err().contains("not an absolute path"));
        // Refused text is handed on unchanged, never prefixed into something valid.
        assert_eq!(r.local_text("/../x"), "/../x");
    }

    #[test]
    fn the_prefix_is_checked_and_slash_is_none() {
        assert_eq!(HostRoot::new(Path::new("/")).unwrap(), HostRoot::default());
        assert!(HostRoot::new(Path::new("host")).unwrap_err().contains("absolute"));
        assert!(HostRoot::new(Path::new("/no/such/prefix/dir")).is_err());
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), "").unwrap();
        assert!(HostRoot::new(&d.path().join("f")).unwrap_err().contains("not a directory"));
        std::fs::create_dir(d.path().join("a*")).unwrap();
        assert!(HostRoot::new(&d.path().join("a*")).unwrap_err().contains("glob"));
    }

    #[test]
    fn symlinks_resolve_inside_the_prefix() {
        let d = tempfile::tempdir().unwrap();
        let r = root_in(d.path());
        let root = r.prefix().unwrap().to_path_buf();
        std::fs::create_dir_all(root.join("etc/app")).unwrap();
        std::fs::create_dir_all(root.join("run/app")).unwrap();
        std::fs::write(root.join("run/app/real.env"), "A=1").unwrap();
        // Absolute target: the node's /run, i.e. below the prefix.
        symlink("/run/app/real.env", root.join("etc/app/abs.env")).unwrap();
        // `..` past the root stops at the root, as in a chroot.
        symlink("../../../../../run/app/real.env", root.join("etc/app/up.env")).unwrap();
        // Relative, through a directory link (the ConfigMap `..data` shape).
        symlink("/run/app", root.join("etc/app/..data")).unwrap();
        symlink("..data/real.env", root.join("etc/app/rel.env")).unwrap();
        let want = root.join("run/app/real.env");
        for name in ["abs.env", "up.env", "rel.env"] {
            assert_eq!(r.resolve(&root.join("etc/app").join(name)).unwrap(), want, "{name}");
            assert_eq!(r.canonicalize(&root.join("etc/app").join(name)).unwrap(), want, "{name}");
        }
        // A missing target keeps its name below the prefix (never the agent's own /etc).
        symlink("/etc/passwd", root.join("etc/app/gone.env")).unwrap();
        assert_eq!(r.resolve(&root.join("etc/app/gone.env")).unwrap(), root.join("etc/passwd"));
        assert_eq!(r.canonicalize(&root.join("etc/app/gone.env")).unwrap_err().kind(), io::ErrorKind::NotFound);
        // Loops fail.
        symlink("loop.env", root.join("etc/app/loop.env")).unwrap();
        assert_eq!(r.resolve(&root.join("etc/app/loop.env")).unwrap_err().raw_os_error(), Some(libc::ELOOP));
        // Outside the prefix: refused.
        assert!(r.resolve(Path::new("/etc/passwd")).is_err());
    }
}
