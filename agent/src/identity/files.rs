//! `<state_dir>/identity/`: `key.pem` and `cert.pem` (both 0600) in a 0700 directory.
//! Blocking I/O: call from the blocking pool.
//!
//! Enrollment writes the key first and keeps it when the enrollment fails (the next
//! attempt sends a CSR for the same key), then the certificate. Each file is replaced
//! atomically (temp file, fsync, rename, fsync the directory).
//!
//! Renewal replaces both, in this order, so that a crash anywhere leaves a consistent
//! pair once [`IdentityFiles::prepare`] has run at the next start:
//! 1. write `key.pem.next`, then `cert.pem.next` (each atomically);
//! 2. rename `cert.pem.next` over `cert.pem`, then `key.pem.next` over `key.pem`; fsync.
//!
//! `prepare` then finds one of: nothing left (done, or crashed before step 1 wrote
//! anything: the old pair); both `.next` files (step 1 done: finish step 2 when they
//! match, else drop them); `key.pem.next` alone (a crash inside step 1: it does not
//! match `cert.pem`, drop it; or between the two renames of step 2: it matches the new
//! `cert.pem`, rename it over `key.pem`). `cert.pem.next` alone cannot happen in this
//! order and is dropped.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::apply::write::{atomic_write, remove_stale_temps, sync_dir};
use crate::error::{AgentError, Result};

/// Where the agent's identity lives.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    dir: PathBuf,
}

const KEY: &str = "key.pem";
const CERT: &str = "cert.pem";
const NEXT_KEY: &str = "key.pem.next";
const NEXT_CERT: &str = "cert.pem.next";

impl IdentityFiles {
    pub fn new(state_dir: &Path) -> Self {
        Self { dir: state_dir.join("identity") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY)
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT)
    }

    /// Create the directory (0700; a wider existing one is narrowed), remove temp files
    /// a crash left, and finish or drop an interrupted renewal (see the module doc).
    pub fn prepare(&self) -> Result<()> {
        let io = |e| AgentError::io(&self.dir, e);
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).map_err(io)?;
        let mode = std::fs::metadata(&self.dir).map_err(io)?.permissions().mode() & 0o777;
        if mode != 0o700 {
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        remove_stale_temps(&self.dir);
        self.recover()
    }

    fn recover(&self) -> Result<()> {
        let next_key = read_opt(&self.dir.join(NEXT_KEY))?;
        let next_cert = read_opt(&self.dir.join(NEXT_CERT))?;
        match (next_key, next_cert) {
            (None, None) => return Ok(()),
            (Some(k), Some(c)) if super::HostIdentity::new(&k, &c).is_ok() => {
                tracing::info!(dir = %self.dir.display(), "finishing a certificate renewal a restart interrupted");
                self.rename(NEXT_CERT, CERT)?;
                self.rename(NEXT_KEY, KEY)?;
            }
            (Some(k), None)
                if read_opt(&self.cert_path())?.is_some_and(|c| super::HostIdentity::new(&k, &c).is_ok()) =>
            {
                tracing::info!(dir = %self.dir.display(), "finishing a certificate renewal a restart interrupted");
                self.rename(NEXT_KEY, KEY)?;
            }
            _ => {
                tracing::info!(dir = %self.dir.display(), "dropping an unfinished certificate renewal");
                for name in [NEXT_KEY, NEXT_CERT] {
                    remove_opt(&self.dir.join(name))?;
                }
            }
        }
        sync_dir(&self.dir).map_err(|e| AgentError::io(&self.dir, e))
    }

    /// The stored key and certificate, PEM, when present.
    pub fn read(&self) -> Result<(Option<String>, Option<String>)> {
        Ok((read_opt(&self.key_path())?, read_opt(&self.cert_path())?))
    }

    /// Store the key (enrollment, before the request goes out).
    pub fn write_key(&self, pem: &str) -> Result<()> {
        let p = self.key_path();
        atomic_write(&p, pem.as_bytes(), None, None).map_err(|e| AgentError::io(&p, e))
    }

    /// Store the certificate the server issued for the stored key.
    pub fn write_cert(&self, pem: &str) -> Result<()> {
        let p = self.cert_path();
        atomic_write(&p, pem.as_bytes(), None, None).map_err(|e| AgentError::io(&p, e))
    }

    /// Replace key and certificate together (renewal), in the order the module doc gives.
    pub fn replace(&self, key_pem: &str, cert_pem: &str) -> Result<()> {
        for (name, pem) in [(NEXT_KEY, key_pem), (NEXT_CERT, cert_pem)] {
            let p = self.dir.join(name);
            atomic_write(&p, pem.as_bytes(), None, None).map_err(|e| AgentError::io(&p, e))?;
        }
        self.rename(NEXT_CERT, CERT)?;
        self.rename(NEXT_KEY, KEY)?;
        sync_dir(&self.dir).map_err(|e| AgentError::io(&self.dir, e))
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (self.dir.join(from), self.dir.join(to));
        std::fs::rename(&from, &to).map_err(|e| AgentError::io(&from, e))
    }
}

fn read_opt(p: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(p) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::io(p, e)),
    }
}

fn remove_opt(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(AgentError::io(p, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::time::Duration;

    use driftwatch_pki::{AgentKey, Ca, Identity, certificate_request};

    use super::*;

    fn pair(ca: &Ca) -> (String, String) {
        let key = AgentKey::generate();
        let csr = certificate_request(&key, "web-1").unwrap();
        let cert = ca.sign_request(&csr, &Identity::Host("web-1".into()), Duration::from_secs(3600)).unwrap();
        (key.to_pem(), cert.cert_pem)
    }

    fn setup() -> (tempfile::TempDir, IdentityFiles) {
        let t = tempfile::tempdir().unwrap();
        let f = IdentityFiles::new(t.path());
        f.prepare().unwrap();
        (t, f)
    }

    fn names(f: &IdentityFiles) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(f.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn key_0600_in_a_0700_dir_and_a_wider_dir_is_narrowed() {
        let (_t, f) = setup();
        assert_eq!(std::fs::metadata(f.dir()).unwrap().mode() & 0o777, 0o700);
        f.write_key("k").unwrap();
        assert_eq!(std::fs::metadata(f.key_path()).unwrap().mode() & 0o777, 0o600);
        std::fs::set_permissions(f.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        f.prepare().unwrap();
        assert_eq!(std::fs::metadata(f.dir()).unwrap().mode() & 0o777, 0o700);
        assert_eq!(f.read().unwrap(), (Some("k".into()), None));
    }

    #[test]
    fn replace_swaps_the_pair_and_leaves_nothing_behind() {
        let ca = Ca::generate("t").unwrap();
        let (_t, f) = setup();
        let (k1, c1) = pair(&ca);
        f.write_key(&k1).unwrap();
        f.write_cert(&c1).unwrap();
        let (k2, c2) = pair(&ca);
        f.replace(&k2, &c2).unwrap();
        assert_eq!(f.read().unwrap(), (Some(k2), Some(c2)));
        assert_eq!(names(&f), ["cert.pem", "key.pem"]);
    }

    /// Every state a crash inside `replace` can leave ends as one consistent pair.
    #[test]
    fn a_crash_anywhere_in_a_renewal_leaves_a_consistent_pair() {
        let ca = Ca::generate("t").unwrap();
        let (old_k, old_c) = pair(&ca);
        let (new_k, new_c) = pair(&ca);
        type Step = fn(&IdentityFiles, &str, &str);
        let steps: [(&str, Step, bool); 5] = [
            ("nothing written", |_, _, _| {}, false),
            ("key.next written", |f, k, _| std::fs::write(f.dir().join(NEXT_KEY), k).unwrap(), false),
            (
                "cert.next half written",
                |f, k, c| {
                    std::fs::write(f.dir().join(NEXT_KEY), k).unwrap();
                    std::fs::write(f.dir().join(NEXT_CERT), &c[..c.len() / 2]).unwrap();
                },
                false,
            ),
            (
                "both next written",
                |f, k, c| {
                    std::fs::write(f.dir().join(NEXT_KEY), k).unwrap();
                    std::fs::write(f.dir().join(NEXT_CERT), c).unwrap();
                },
                true,
            ),
            (
                "cert renamed, key not yet",
                |f, k, c| {
                    std::fs::write(f.dir().join(NEXT_KEY), k).unwrap();
                    std::fs::write(f.cert_path(), c).unwrap();
                },
                true,
            ),
        ];
        for (what, step, renewed) in steps {
            let (_t, f) = setup();
            f.write_key(&old_k).unwrap();
            f.write_cert(&old_c).unwrap();
            step(&f, &new_k, &new_c);
            f.prepare().unwrap();
            let (k, c) = f.read().unwrap();
            let (k, c) = (k.unwrap(), c.unwrap());
            assert!(super::super::HostIdentity::new(&k, &c).is_ok(), "{what}: inconsistent pair");
            let want = if renewed { &new_c } else { &old_c };
            assert_eq!(&c, want, "{what}");
            assert_eq!(names(&f), ["cert.pem", "key.pem"], "{what}");
        }
    }
}
