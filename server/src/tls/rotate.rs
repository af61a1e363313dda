//! Rotating the built-in CA with an overlap, in two steps an operator runs with
//! `driftwatch-server rotate-ca prepare|finish --data DIR` (the running server picks
//! each step up from disk; no restart):
//!
//! 1. `prepare`: a new CA in `tls/next/`, trusted at once for client certificates
//!    (`tls/trusted/next-ca.pem`), and used from now on to sign agent certificates,
//!    so enrollments and renewals move agents over. Writes `tls/ca-bundle.pem` (old
//!    and new CA): give it to every agent and operator as `--ca-file`.
//! 2. `finish`: once every client trusts the bundle, the new CA becomes `ca.pem`,
//!    the server presents a certificate from it, and the old CA stays trusted for
//!    client certificates as `tls/trusted/previous-ca-<fingerprint>.pem`.
//! 3. When no agent certificate from the old CA is left (each renews at two thirds
//!    of its lifetime), delete that file: the old CA is trusted no more.

use std::path::PathBuf;

use driftwatch_pki::Ca;

use super::BuiltInCa;
use super::bootstrap::{write_private, write_public};
use crate::error::ServerError;

/// What `prepare` made.
#[derive(Debug)]
pub struct Prepared {
    pub bundle: PathBuf,
    pub fingerprint: String,
}

pub fn prepare(ca: &BuiltInCa) -> Result<Prepared, ServerError> {
    if !ca.ca_cert().exists() {
        return Err(fail(format!("{} does not exist: nothing to rotate", ca.ca_cert().display())));
    }
    let next = ca.next_dir();
    if next.join("ca.pem").exists() {
        return Err(fail(format!("a rotation is under way ({} exists); finish it first", next.display())));
    }
    let new = Ca::generate("driftwatch fleet CA").map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(&next)?;
    std::fs::create_dir_all(ca.trusted_dir())?;
    write_private(&next.join("ca.key"), new.key_pem())?;
    write_public(&next.join("ca.pem"), new.cert_pem())?;
    write_public(&ca.trusted_dir().join("next-ca.pem"), new.cert_pem())?;
    let old = std::fs::read_to_string(ca.ca_cert())?;
    let bundle = ca.dir.join("ca-bundle.pem");
    write_public(&bundle, &format!("{}\n{}", old.trim_end(), new.cert_pem()))?;
    Ok(Prepared { bundle, fingerprint: new.fingerprint() })
}

/// The old CA's file under `trusted/`.
pub fn finish(ca: &BuiltInCa) -> Result<PathBuf, ServerError> {
    let next = ca.next_dir();
    let (next_cert, next_key) = (next.join("ca.pem"), next.join("ca.key"));
    if !next_cert.exists() || !next_key.exists() {
        return Err(fail("no rotation is under way: run `rotate-ca prepare` first".into()));
    }
    let new = Ca::from_pem(&std::fs::read_to_string(&next_cert)?, &std::fs::read_to_string(&next_key)?)
        .map_err(|e| fail(format!("{}: {e}", next_cert.display())))?;
    let old_pem = std::fs::read_to_string(ca.ca_cert())?;
    let old_fp = driftwatch_pki::inspect_pem(&old_pem).map_err(|e| fail(e.to_string()))?.fingerprint;
    let previous = ca.trusted_dir().join(format!("previous-ca-{}.pem", old_fp.replace(':', "")[..16].to_lowercase()));
    // Order: the old CA stays trusted before anything else moves; the key goes last.
    write_public(&previous, &old_pem)?;
    write_private(&ca.ca_key(), new.key_pem())?;
    write_public(&ca.ca_cert(), new.cert_pem())?;
    let _ = std::fs::remove_file(ca.trusted_dir().join("next-ca.pem"));
    std::fs::remove_dir_all(&next)?;
    Ok(previous)
}

fn fail(msg: String) -> ServerError {
    ServerError::FailedPrecondition(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_then_finish_moves_signing_then_serving_to_the_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        let b = BuiltInCa { dir: dir.path().join("tls") };
        let sans = vec!["localhost".to_string()];
        let old = b.ensure(&sans).unwrap();
        assert_eq!(b.signing().0, b.ca_cert());
        assert!(finish(&b).is_err(), "nothing to finish");

        let p = prepare(&b).unwrap();
        assert!(prepare(&b).is_err(), "one rotation at a time");
        assert_eq!(b.signing().0, b.next_dir().join("ca.pem"), "new certificates come from the new CA");
        let bundle = std::fs::read_to_string(&p.bundle).unwrap();
        assert_eq!(driftwatch_pki::certs_from_pem(&bundle).unwrap().len(), 2);
        // The server still presents the old CA's certificate.
        b.ensure(&sans).unwrap();
        assert!(old.issued(&std::fs::read_to_string(b.server_cert()).unwrap()));

        let previous = finish(&b).unwrap();
        assert!(previous.exists() && !b.next_dir().exists());
        assert_eq!(b.signing().0, b.ca_cert());
        let new = b.ensure(&sans).unwrap();
        assert_eq!(new.fingerprint(), p.fingerprint);
        assert!(new.issued(&std::fs::read_to_string(b.server_cert()).unwrap()), "the server certificate is re-issued");
    }
}
