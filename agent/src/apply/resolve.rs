//! Paths below a held directory handle, without races.
//!
//! Each writable root is opened once (`O_PATH|O_DIRECTORY`) and everything below it is
//! reached from that handle, one component at a time, never through a path the kernel
//! resolves on its own: every component is opened `O_NOFOLLOW` relative to the previous
//! one, and a symlink is read and followed here, so one that leads out of the root (an
//! absolute target outside it, or `..` above it) is refused by name. Symlinks that stay
//! inside the root are followed (`sites-enabled/x -> ../sites-available/x`).
//!
//! Every directory the walk opens, the root included, must be writable only by root and
//! the agent's own user ([`unsafe_dir`]): anyone else who can write one could swap a file
//! or a directory below it between our check and our rename.
//!
//! Just before writing, the parent directory is opened again from the root handle with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` ([`Target::recheck`]; a component walk
//! with `O_NOFOLLOW` where the kernel has no `openat2`) and must be the directory the walk
//! found: a directory on the way swapped for a symlink, or moved, is caught there.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use super::allow::Denied;

/// Symlinks followed for one path, at most (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// A file system object, by identity: what a path named when we looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// What the walk needs of a `stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub id: FileId,
    /// Permission bits and file type (`st_mode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

// The field types of `struct stat` differ by architecture.
#[allow(clippy::unnecessary_cast)]
pub fn meta(st: &Stat) -> Meta {
    Meta {
        id: FileId { dev: st.st_dev as u64, ino: st.st_ino as u64 },
        mode: st.st_mode as u32,
        uid: st.st_uid as u32,
        gid: st.st_gid as u32,
    }
}

/// Who may own or write a directory on a writable path: root and the agent's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owners {
    pub uid: u32,
    pub gid: u32,
}

impl Owners {
    /// The agent's effective user and group.
    pub fn current() -> Self {
        Self { uid: rustix::process::geteuid().as_raw(), gid: rustix::process::getegid().as_raw() }
    }
}

/// Why a directory on a writable path is not safe to write below, or `None`.
///
/// Refused: a directory owned by another user than root and the agent's (its owner can
/// make it writable at will); group-writable with a group other than the agent's;
/// world-writable, with or without the sticky bit (in a sticky directory anyone can
/// still create the name a restore is about to create, and a config directory has no
/// reason to be writable by everyone).
pub fn unsafe_dir(m: &Meta, who: Owners) -> Option<String> {
    if m.uid != 0 && m.uid != who.uid {
        return Some(format!(
            "it is owned by uid {}, who could change it (only root and the agent's uid {} may own it)",
            m.uid, who.uid
        ));
    }
    if m.mode & 0o002 != 0 {
        let sticky = if m.mode & 0o1000 != 0 { " (sticky or not)" } else { "" };
        return Some(format!("it is world-writable{sticky}"));
    }
    if m.mode & 0o020 != 0 && m.gid != who.gid {
        return Some(format!("it is writable by group {}, which is not the agent's group ({})", m.gid, who.gid));
    }
    None
}

/// A writable root as the agent opened it.
#[derive(Debug)]
pub struct RootDir {
    /// Canonical path.
    pub path: PathBuf,
    pub fd: OwnedFd,
    pub id: FileId,
    /// `path_prefix`, when the node's file system is seen below it.
    pub host: Option<PathBuf>,
}

impl RootDir {
    /// Open `canonical` (an already canonical directory path) as a root.
    pub fn open(canonical: &Path) -> std::io::Result<Self> {
        let fd = rustix::fs::open(canonical, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let id = meta(&rustix::fs::fstat(&fd)?).id;
        Ok(Self { path: canonical.to_path_buf(), fd, id, host: None })
    }

    /// The node's `/` is at `prefix` (`path_prefix`): an absolute symlink target is a
    /// node path, taken below it.
    pub fn below(mut self, prefix: Option<&Path>) -> Self {
        self.host = prefix.map(Path::to_path_buf);
        self
    }
}

/// A file to read and replace, resolved below a root.
#[derive(Debug)]
pub struct Target {
    pub root: Arc<RootDir>,
    /// The parent directory, relative to the root, without symlinks (empty: the root).
    pub dir_rel: PathBuf,
    /// The parent directory, opened `O_PATH` by the walk.
    pub dir: OwnedFd,
    pub dir_id: FileId,
    /// The file's name in `dir` (a symlink's target when the request named a symlink).
    pub name: OsString,
    /// `root.path / dir_rel / name`: for messages, the backup index and commands.
    pub real: PathBuf,
}

impl Target {
    /// The path below the root (`dir_rel/name`).
    pub fn rel(&self) -> PathBuf {
        self.dir_rel.join(&self.name)
    }

    fn dir_path(&self) -> PathBuf {
        self.root.path.join(&self.dir_rel)
    }

    /// Open the parent directory again from the root handle, refusing any symlink on
    /// the way, and check that it is the directory the walk found. The error says what
    /// changed; nothing may be written then.
    pub fn recheck(&self) -> Result<OwnedFd, String> {
        let fd = match open_beneath(&self.root.fd, &self.dir_rel) {
            Ok(fd) => fd,
            Err(Errno::LOOP | Errno::XDEV | Errno::NOTDIR) => {
                return Err(format!(
                    "a directory on the way to {} was replaced by a symlink or a file while the change was applied",
                    self.real.display()
                ));
            }
            Err(Errno::NOENT) => {
                return Err(format!("{} was moved or removed while the change was applied", self.dir_path().display()));
            }
            Err(e) => return Err(format!("cannot open {} again: {e}", self.dir_path().display())),
        };
        let now = rustix::fs::fstat(&fd).map_err(|e| format!("cannot stat {}: {e}", self.dir_path().display()))?;
        if meta(&now).id != self.dir_id {
            return Err(format!(
                "{} is another directory than the one resolved (replaced while the change was applied)",
                self.dir_path().display()
            ));
        }
        Ok(fd)
    }
}

/// `rel` (no symlinks, no `..`) below `root`, as an `O_PATH` directory: `openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or [`open_beneath_walk`] where the kernel has
/// no `openat2` (before Linux 5.6: `ENOSYS`; some container seccomp profiles answer
/// `EPERM` for a system call they do not know). `EAGAIN` (a rename raced the lookup) is
/// retried.
pub fn open_beneath(root: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    let path: &Path = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let how = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    for _ in 0..8 {
        match rustix::fs::openat2(root, path, how, Mode::empty(), resolve) {
            Err(Errno::AGAIN | Errno::INTR) => continue,
            Err(Errno::NOSYS | Errno::PERM) => return open_beneath_walk(root.as_fd(), rel),
            other => return other,
        }
    }
    Err(Errno::AGAIN)
}

/// The fallback of [`open_beneath`]: one `O_PATH|O_NOFOLLOW|O_DIRECTORY` open per
/// component (a symlink fails it), never `..`.
pub fn open_beneath_walk(root: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, Errno> {
    let how = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut cur = rustix::fs::openat(root, ".", how, Mode::empty())?;
    for c in rel.components() {
        match c {
            Component::Normal(name) => cur = rustix::fs::openat(&cur, name, how, Mode::empty())?,
            Component::CurDir => {}
            _ => return Err(Errno::XDEV),
        }
    }
    Ok(cur)
}

/// What the walk reports about the way it took, for messages.
struct Walk<'a> {
    root: &'a Arc<RootDir>,
    requested: &'a str,
    /// Directories entered below the root: name, `O_PATH` handle, identity.
    stack: Vec<(OsString, OwnedFd, FileId)>,
}

impl Walk<'_> {
    fn here(&self, name: &OsStr) -> PathBuf {
        let mut p = self.root.path.clone();
        p.extend(self.stack.iter().map(|(n, _, _)| n));
        p.push(name);
        p
    }

    fn cur(&self) -> BorrowedFd<'_> {
        self.stack.last().map_or(self.root.fd.as_fd(), |(_, fd, _)| fd.as_fd())
    }

    fn escape(&self, link: &Path, target: &Path) -> Denied {
        Denied::Refused(format!(
            "'{}' resolves through the symlink {} -> {}, which leads outside the writable paths (root {})",
            self.requested,
            link.display(),
            target.display(),
            self.root.path.display()
        ))
    }

    fn check_dir(&self, fd: BorrowedFd<'_>, path: &Path, who: Owners) -> Result<FileId, Denied> {
        let m = rustix::fs::fstat(fd).map_err(|e| Denied::Rejected(format!("cannot stat {}: {e}", path.display())))?;
        let m = meta(&m);
        if let Some(why) = unsafe_dir(&m, who) {
            return Err(Denied::Refused(format!(
                "refusing to write below {}: {why}; someone other than root and the agent could swap what is \
                 written there",
                path.display()
            )));
        }
        Ok(m.id)
    }
}

fn components(p: &Path) -> impl Iterator<Item = OsString> + '_ {
    p.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        _ => None,
    })
}

/// Resolve `rel` (relative, no `..`: checked by the caller) below `root`: every directory
/// on the way opened from the previous one without following symlinks and checked with
/// [`unsafe_dir`]; symlinks read and followed while they stay below the root. The last
/// component may not exist (a restore recreating a file), unless it is a dangling symlink.
pub fn walk(root: &Arc<RootDir>, rel: &Path, requested: &str, who: Owners) -> Result<Target, Denied> {
    let mut w = Walk { root, requested, stack: Vec::new() };
    w.check_dir(root.fd.as_fd(), &root.path, who)?;
    let mut queue: VecDeque<OsString> = components(rel).collect();
    let mut links = 0;
    // Whether the last component came from a symlink (a dangling one is not a new file).
    let mut last_from_link = false;
    // The symlink followed last (a `..` above the root in its target names it).
    let mut via: Option<(PathBuf, PathBuf)> = None;
    loop {
        let Some(c) = queue.pop_front() else {
            return Err(Denied::Rejected(format!("'{requested}' names a directory, not a file")));
        };
        if c == ".." {
            if w.stack.pop().is_none() {
                // Only a symlink's target has `..`: the request itself was checked.
                let (link, target) = via.unwrap_or_default();
                return Err(w.escape(&link, &target));
            }
            continue;
        }
        let here = w.here(&c);
        let last = queue.is_empty();
        let st = match rustix::fs::statat(w.cur(), c.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => meta(&st),
            Err(Errno::NOENT) if last && last_from_link => {
                return Err(Denied::Rejected(format!("'{requested}' is a symlink to a file that does not exist")));
            }
            Err(Errno::NOENT) if last => return finish(w, c),
            Err(Errno::NOENT) => {
                return Err(Denied::Rejected(format!("the directory {} does not exist", here.display())));
            }
            Err(e) => return Err(Denied::Rejected(format!("cannot resolve {}: {e}", here.display()))),
        };
        match FileType::from_raw_mode(st.mode) {
            FileType::Symlink => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Denied::Rejected(format!("'{requested}' goes through too many symlinks")));
                }
                let target = rustix::fs::readlinkat(w.cur(), c.as_os_str(), Vec::new())
                    .map_err(|e| Denied::Rejected(format!("cannot read the symlink {}: {e}", here.display())))?;
                let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                let mut next: Vec<OsString> = if target.is_absolute() {
                    let local = match &root.host {
                        Some(prefix) => prefix.join(target.strip_prefix("/").unwrap_or(&target)),
                        None => target.clone(),
                    };
                    // By its real path only: a target through another symlink is not followed out and back.
                    let Ok(inside) = local.strip_prefix(&root.path) else {
                        return Err(w.escape(&here, &target));
                    };
                    w.stack.clear();
                    components(inside).collect()
                } else {
                    components(&target).collect()
                };
                // A `..` in it is taken from the directory we are in, as the kernel does.
                via = Some((here, target));
                last_from_link = last;
                next.extend(queue.drain(..));
                queue = next.into();
            }
            FileType::Directory => {
                if last {
                    return Err(Denied::Rejected(format!("{} is a directory", here.display())));
                }
                let how = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(w.cur(), c.as_os_str(), how, Mode::empty()).map_err(|e| {
                    Denied::Rejected(format!("{} changed while it was resolved ({e}); try again", here.display()))
                })?;
                let id = w.check_dir(fd.as_fd(), &here, who)?;
                w.stack.push((c, fd, id));
            }
            _ if !last => return Err(Denied::Rejected(format!("{} is not a directory", here.display()))),
            _ => return finish(w, c),
        }
    }
}

fn finish(mut w: Walk<'_>, name: OsString) -> Result<Target, Denied> {
    let dir_rel: PathBuf = w.stack.iter().map(|(n, _, _)| n).collect();
    let real = w.root.path.join(&dir_rel).join(&name);
    let (dir, dir_id) = match w.stack.pop() {
        Some((_, fd, id)) => (fd, id),
        None => {
            let fd = w.root.fd.try_clone().map_err(|e| Denied::Rejected(format!("cannot use the root: {e}")))?;
            (fd, w.root.id)
        }
    };
    Ok(Target { root: w.root.clone(), dir_rel, dir, dir_id, name, real })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    const WHO: Owners = Owners { uid: 1000, gid: 1000 };

    fn m(mode: u32, uid: u32, gid: u32) -> Meta {
        Meta { id: FileId { dev: 1, ino: 2 }, mode: 0o040000 | mode, uid, gid }
    }

    #[test]
    fn who_may_write_a_directory_on_the_way() {
        for (mode, uid, gid) in
            [(0o755, 0, 0), (0o755, 1000, 50), (0o775, 0, 1000), (0o700, 1000, 1000), (0o2775, 1000, 1000)]
        {
            assert_eq!(unsafe_dir(&m(mode, uid, gid), WHO), None, "{mode:o} {uid}:{gid}");
        }
        let why = |mode, uid, gid| unsafe_dir(&m(mode, uid, gid), WHO).unwrap();
        assert!(why(0o755, 33, 0).contains("owned by uid 33"));
        assert!(why(0o775, 0, 4).contains("writable by group 4"));
        assert!(why(0o775, 1000, 0).contains("group 0"), "root's group is another group for a non-root agent");
        assert!(why(0o777, 0, 0).contains("world-writable"));
        assert!(why(0o1777, 0, 0).contains("sticky or not"));
        // A group without write permission may be any group.
        assert_eq!(unsafe_dir(&m(0o755, 0, 4), WHO), None);
    }

    #[test]
    fn reopening_below_the_root_refuses_symlinks_with_or_without_openat2() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join("real")).unwrap();
        symlink("real", root.join("link")).unwrap();
        symlink("/", root.join("a/abs")).unwrap();
        let r = RootDir::open(&root).unwrap();
        let id = |fd: &OwnedFd| meta(&rustix::fs::fstat(fd).unwrap()).id;
        let want = meta(&rustix::fs::stat(root.join("a/b")).unwrap()).id;
        assert_eq!(id(&open_beneath(&r.fd, Path::new("a/b")).unwrap()), want);
        assert_eq!(id(&open_beneath_walk(r.fd.as_fd(), Path::new("a/b")).unwrap()), want);
        assert_eq!(id(&open_beneath(&r.fd, Path::new("")).unwrap()), r.id, "the root itself");
        for rel in ["link", "a/abs", "link/x"] {
            assert!(open_beneath(&r.fd, Path::new(rel)).is_err(), "{rel}");
            assert!(open_beneath_walk(r.fd.as_fd(), Path::new(rel)).is_err(), "{rel}");
        }
        assert_eq!(open_beneath_walk(r.fd.as_fd(), Path::new("../x")).unwrap_err(), Errno::XDEV);
    }

    #[test]
    fn the_walk_follows_links_inside_and_names_links_out() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().canonicalize().unwrap();
        let root = base.join("root");
        std::fs::create_dir_all(root.join("avail")).unwrap();
        std::fs::create_dir_all(root.join("enabled")).unwrap();
        std::fs::write(root.join("avail/x.conf"), "x").unwrap();
        std::fs::write(base.join("out.conf"), "x").unwrap();
        symlink("../avail/x.conf", root.join("enabled/x.conf")).unwrap();
        symlink(root.join("avail/x.conf"), root.join("abs.conf")).unwrap();
        symlink("../out.conf", root.join("up.conf")).unwrap();
        symlink("enabled/../../out.conf", root.join("sneaky.conf")).unwrap();
        symlink("loop.conf", root.join("loop.conf")).unwrap();
        let r = Arc::new(RootDir::open(&root).unwrap());
        let walk = |rel: &str| walk(&r, Path::new(rel), rel, Owners::current());
        for rel in ["enabled/x.conf", "abs.conf", "avail/x.conf"] {
            let t = walk(rel).unwrap();
            assert_eq!((t.real.clone(), t.rel()), (root.join("avail/x.conf"), PathBuf::from("avail/x.conf")), "{rel}");
        }
        assert_eq!(walk("enabled/new.conf").unwrap().real, root.join("enabled/new.conf"), "a file to create");
        for (rel, link) in [("up.conf", "up.conf"), ("sneaky.conf", "sneaky.conf")] {
            let Err(Denied::Refused(m)) = walk(rel) else { panic!("{rel} escapes") };
            assert!(m.contains(&format!("symlink {}", root.join(link).display())), "{m}");
        }
        assert!(matches!(walk("loop.conf"), Err(Denied::Rejected(m)) if m.contains("too many symlinks")));
        assert!(matches!(walk("avail"), Err(Denied::Rejected(m)) if m.contains("is a directory")));
        assert!(matches!(walk("nope/x.conf"), Err(Denied::Rejected(m)) if m.contains("does not exist")));
    }
}
