//! Deployment: the shipped systemd units read as systemd reads them, their sandbox
//! rebuilt with bubblewrap from their own directives (systemd is not PID 1 on a test
//! machine), and a fresh Debian root (debootstrap, cached) packages are installed into.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The `[Service]` assignments of a unit and its drop-ins, in order.
#[derive(Debug, Default)]
pub struct Unit {
    service: Vec<(String, String)>,
}

impl Unit {
    /// `texts`: the unit file, then its drop-ins, as systemd reads them one after the
    /// other (comments, `\` continuations, sections).
    pub fn parse(texts: &[&str]) -> Self {
        let mut unit = Self::default();
        for text in texts {
            let mut section = String::new();
            let mut pending = String::new();
            for raw in text.lines() {
                let line = raw.trim();
                if pending.is_empty() && (line.starts_with('#') || line.starts_with(';') || line.is_empty()) {
                    continue;
                }
                if let Some(rest) = line.strip_suffix('\\') {
                    pending.push_str(rest);
                    pending.push(' ');
                    continue;
                }
                let line = std::mem::take(&mut pending) + line;
                if line.starts_with('[') {
                    section = line.trim_matches(['[', ']']).to_string();
                } else if let Some((k, v)) = line.split_once('=')
                    && section == "Service"
                {
                    unit.service.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
        }
        unit
    }

    /// The last value of `key` (a single-valued setting).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.service.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The words of every assignment of a list setting (`ReadWritePaths=`), an empty
    /// assignment resetting the list, quotes removed.
    pub fn list(&self, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &self.service {
            if k != key {
                continue;
            }
            if v.is_empty() {
                out.clear();
            }
            out.extend(words(v));
        }
        out
    }

    /// Every key set, for checking that the sandbox below models all of them.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.service.iter().map(|(k, _)| k.as_str())
    }
}

/// White-space separated words, `"..."` quoting white space, `%%` as `%`.
fn words(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in v.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur).replace("%%", "%"));
                }
                any = false;
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur.replace("%%", "%"));
    }
    out
}

/// The file-system and capability settings [`bwrap_args`] rebuilds; a unit setting
/// another one of this kind would be a sandbox the test does not reproduce.
pub const MODELLED: &[&str] = &[
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "StateDirectory",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "CapabilityBoundingSet",
];
/// Path settings of systemd.exec(5) that [`bwrap_args`] would have to model.
pub const UNMODELLED_PATH_SETTINGS: &[&str] = &[
    "InaccessiblePaths",
    "ExecPaths",
    "NoExecPaths",
    "TemporaryFileSystem",
    "BindPaths",
    "BindReadOnlyPaths",
    "RootDirectory",
    "RootImage",
    "CacheDirectory",
    "LogsDirectory",
    "RuntimeDirectory",
];

/// bubblewrap arguments for the mount namespace and capabilities `unit` asks systemd
/// for. `state_dirs` maps each `StateDirectory=` (`/var/lib/NAME`) to the host
/// directory standing in for it; its mount point must exist on the host.
pub fn bwrap_args(unit: &Unit, state_dirs: &HashMap<PathBuf, PathBuf>) -> Result<Vec<String>, String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |args: &[&str]| a.extend(args.iter().map(|s| s.to_string()));
    match unit.get("ProtectSystem").unwrap_or("no") {
        "strict" => push(&["--ro-bind", "/", "/"]),
        "no" | "false" => push(&["--bind", "/", "/"]),
        other => return Err(format!("ProtectSystem={other} is not modelled")),
    }
    if unit.get("PrivateDevices").is_some_and(yes) {
        push(&["--dev", "/dev"]);
    } else {
        push(&["--dev-bind", "/dev", "/dev"]);
    }
    push(&["--proc", "/proc"]);
    match unit.get("ProtectHome").unwrap_or("no") {
        "read-only" => {
            for d in ["/home", "/root", "/run/user"].into_iter().filter(|d| Path::new(d).is_dir()) {
                push(&["--ro-bind", d, d]);
            }
        }
        "yes" | "true" | "tmpfs" => push(&["--tmpfs", "/home", "--tmpfs", "/root", "--tmpfs", "/run/user"]),
        "no" | "false" => {}
        other => return Err(format!("ProtectHome={other} is not modelled")),
    }
    if unit.get("PrivateTmp").is_some_and(yes) {
        push(&["--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]);
    }
    let mut writable: Vec<(PathBuf, PathBuf)> = Vec::new();
    for name in unit.list("StateDirectory") {
        let inside = Path::new("/var/lib").join(&name);
        let host = state_dirs.get(&inside).ok_or_else(|| format!("no host directory for {}", inside.display()))?;
        writable.push((host.clone(), inside));
    }
    for w in unit.list("ReadWritePaths") {
        let (optional, path) = optional_path(&w);
        if state_dirs.contains_key(&path) {
            continue;
        }
        if !path.exists() {
            if optional {
                continue;
            }
            return Err(format!("ReadWritePaths={}: no such path (systemd would not start the unit)", path.display()));
        }
        writable.push((path.clone(), path));
    }
    for (host, inside) in &writable {
        push(&["--bind", &host.display().to_string(), &inside.display().to_string()]);
    }
    for r in unit.list("ReadOnlyPaths") {
        let (optional, path) = optional_path(&r);
        if path.exists() {
            push(&["--ro-bind", &path.display().to_string(), &path.display().to_string()]);
        } else if !optional {
            return Err(format!("ReadOnlyPaths={}: no such path", path.display()));
        }
    }
    if let Some(caps) = unit.get("CapabilityBoundingSet") {
        push(&["--cap-drop", "ALL"]);
        for cap in unit.list("CapabilityBoundingSet") {
            if cap.starts_with('~') {
                return Err(format!("CapabilityBoundingSet={caps}: a deny list is not modelled"));
            }
            push(&["--cap-add", &cap]);
        }
    }
    push(&["--die-with-parent"]);
    Ok(a)
}

fn yes(v: &str) -> bool {
    matches!(v, "yes" | "true" | "on" | "1")
}

/// `-/path` (ignored when missing) or `/path`; `+` (outside RootDirectory) is the same here.
fn optional_path(word: &str) -> (bool, PathBuf) {
    let optional = word.starts_with('-') || word.starts_with("+-");
    (optional, PathBuf::from(word.trim_start_matches(['-', '+'])))
}

/// A directory made on the host as a mount point, removed again when dropped (only
/// when this created it).
pub struct MountPoint {
    created: Option<PathBuf>,
}

impl MountPoint {
    pub fn ensure(path: &Path) -> Self {
        if path.is_dir() {
            return Self { created: None };
        }
        std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("mount point {}: {e}", path.display()));
        Self { created: Some(path.to_path_buf()) }
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        if let Some(p) = &self.created {
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// The Debian release the package test installs into, with what its root includes
/// (cached by `crate::debroot`). systemd: the packages' maintainer scripts take the
/// systemd-sysusers/tmpfiles path a real host takes, and `systemd-analyze` runs inside the
/// root; procps: `/bin/kill` of the units' `ExecReload=` (a dependency of the packages).
const SUITE: &str = "bookworm";
const INCLUDE: &[&str] = &["systemd", "procps"];

/// A fresh Debian root: a copy of the cached debootstrap result (a few seconds), so
/// every run starts from the same pristine tree; removed when dropped.
pub struct DebianRoot {
    /// `None` once kept on purpose (see `Drop`).
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    /// `/proc` inside, for maintainer scripts.
    proc_mounted: bool,
}

impl DebianRoot {
    /// A copy of the cached root with `/proc` mounted inside.
    pub fn fresh() -> Result<Self, String> {
        let base = crate::debroot::DebRoot::cached(SUITE, INCLUDE)?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let root = base.scratch(dir.path())?;
        let mut r = Self { dir: Some(dir), root, proc_mounted: false };
        run(Command::new("mount").args(["-t", "proc", "proc"]).arg(r.root.join("proc")))?;
        r.proc_mounted = true;
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `chroot ROOT argv...`, its output; `Err` with both streams when it fails.
    pub fn chroot(&self, userspec: Option<&str>, argv: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("chroot");
        if let Some(u) = userspec {
            cmd.arg(format!("--userspec={u}"));
        }
        cmd.arg(&self.root).args(argv).env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").env("LC_ALL", "C");
        run(&mut cmd)
    }
}

impl Drop for DebianRoot {
    fn drop(&mut self) {
        let umount = |p: &Path| {
            Command::new("umount").arg(p).status().is_ok_and(|s| s.success())
                || Command::new("umount").arg("-l").arg(p).status().is_ok_and(|s| s.success())
        };
        // Unmounted before the temp dir goes: removing it must never reach the host's /proc.
        if self.proc_mounted && !umount(&self.root.join("proc")) {
            eprintln!("could not unmount {}/proc: the root is left in place", self.root.display());
            if let Some(d) = self.dir.take() {
                let _ = d.keep();
            }
        }
    }
}

/// Run `cmd`; its stdout, or `Err` with the command and both streams.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{cmd:?}: {}\n{text}{}", out.status, String::from_utf8_lossy(&out.stderr)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_ins_add_to_lists_and_an_empty_assignment_resets() {
        let unit = Unit::parse(&[
            "[Unit]\nReadWritePaths=/not/service\n[Service]\n# c\nReadWritePaths=/var/lib/a\nProtectSystem=full\n",
            "[Service]\nReadWritePaths=-/etc/app \"-/srv/my site/50%%\"\nProtectSystem=strict\nExecStart=/bin/x \\\n  --y\n",
        ]);
        assert_eq!(unit.list("ReadWritePaths"), ["/var/lib/a", "-/etc/app", "-/srv/my site/50%"]);
        assert_eq!(unit.get("ProtectSystem"), Some("strict"));
        assert_eq!(unit.get("ExecStart"), Some("/bin/x  --y"));
        let reset = Unit::parse(&["[Service]\nReadWritePaths=/a\nReadWritePaths=\nReadWritePaths=/b\n"]);
        assert_eq!(reset.list("ReadWritePaths"), ["/b"]);
    }

    #[test]
    fn sandbox_arguments_follow_the_directives() {
        let state = tempfile::tempdir().unwrap();
        let unit =
            Unit::parse(&["[Service]\nProtectSystem=strict\nPrivateTmp=yes\nPrivateDevices=yes\nStateDirectory=x\n\
             ReadWritePaths=/var/lib/x -/no/such/dir\nCapabilityBoundingSet=CAP_CHOWN CAP_FOWNER\n"]);
        let map = HashMap::from([(PathBuf::from("/var/lib/x"), state.path().to_path_buf())]);
        let args = bwrap_args(&unit, &map).unwrap().join(" ");
        assert!(args.starts_with("--ro-bind / / --dev /dev --proc /proc --tmpfs /tmp --tmpfs /var/tmp"), "{args}");
        assert!(args.contains(&format!("--bind {} /var/lib/x", state.path().display())), "{args}");
        assert!(!args.contains("/no/such/dir"), "{args}");
        assert!(args.contains("--cap-drop ALL --cap-add CAP_CHOWN --cap-add CAP_FOWNER"), "{args}");
        let missing = Unit::parse(&["[Service]\nProtectSystem=strict\nReadWritePaths=/no/such/dir\n"]);
        assert!(bwrap_args(&missing, &HashMap::new()).unwrap_err().contains("/no/such/dir"));
    }
}
