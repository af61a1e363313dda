//! The identity in a certificate: a SPIFFE ID, `spiffe://driftwatch/<kind>/<name>`.

use std::fmt;

/// The SPIFFE trust domain of every identity driftwatch issues.
pub const TRUST_DOMAIN: &str = "driftwatch";

/// Longest host id or operator name (a DNS name's limit).
const MAX_LEN: usize = 253;

/// Who a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// An agent: `spiffe://driftwatch/host/<host-id>`.
    Host(String),
    /// A person or automation calling the operator API: `spiffe://driftwatch/operator/<name>`.
    Operator(String),
}

impl Identity {
    /// The SPIFFE ID, as it stands in the certificate's URI SAN.
    pub fn spiffe_id(&self) -> String {
        match self {
            Self::Host(id) => format!("spiffe://{TRUST_DOMAIN}/host/{id}"),
            Self::Operator(name) => format!("spiffe://{TRUST_DOMAIN}/operator/{name}"),
        }
    }

    /// Parse a SPIFFE ID of our trust domain; anything else (another trust domain,
    /// another kind, a name that fails [`check_name`]) is `None`.
    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?.strip_prefix(TRUST_DOMAIN)?.strip_prefix('/')?;
        let (kind, name) = rest.split_once('/')?;
        check_name(name).ok()?;
        match kind {
            "host" => Some(Self::Host(name.to_string())),
            "operator" => Some(Self::Operator(name.to_string())),
            _ => None,
        }
    }

    /// The host id, for an agent's identity.
    pub fn host_id(&self) -> Option<&str> {
        match self {
            Self::Host(id) => Some(id),
            Self::Operator(_) => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spiffe_id())
    }
}

/// A name that can stand in a SPIFFE ID path segment: 1–253 of `A-Z a-z 0-9 . _ -`,
/// and not `.` or `..` (the SPIFFE spec allows no other characters and no
/// percent-encoding).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_LEN
        || name == "."
        || name == ".."
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(format!("{name:?} must be 1-{MAX_LEN} characters of A-Z a-z 0-9 . _ - (and not . or ..)"));
    }
    Ok(())
}

/// A host id as the stream accepts it: 1–253 of `A-Z a-z 0-9 . _ - :`. Enrolled hosts
/// are narrower ([`check_name`], no `:`), because the id goes into a SPIFFE ID.
pub fn check_host_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_LEN || !id.chars().all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c)) {
        return Err(format!("{id:?} must be 1-{MAX_LEN} characters of A-Z a-z 0-9 . _ - :"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_refuses_strangers() {
        let h = Identity::Host("web-1.prod".into());
        assert_eq!(h.spiffe_id(), "spiffe://driftwatch/host/web-1.prod");
        assert_eq!(Identity::parse(&h.spiffe_id()), Some(h.clone()));
        assert_eq!(h.host_id(), Some("web-1.prod"));
        let o = Identity::Operator("alice".into());
        assert_eq!(Identity::parse("spiffe://driftwatch/operator/alice"), Some(o.clone()));
        assert_eq!(o.host_id(), None);
        for bad in [
            "spiffe://other/host/a",
            "spiffe://driftwatch/host/",
            "spiffe://driftwatch/host/a/b",
            "spiffe://driftwatch/host/..",
            "spiffe://driftwatch/node/a",
            "spiffe://driftwatch.evil/host/a",
            "https://driftwatch/host/a",
            "spiffe://driftwatch/host/a%2Fb",
            "spiffe://driftwatch/host/a:b",
        ] {
            assert_eq!(Identity::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn host_ids_may_have_colons_but_enrolled_names_may_not() {
        assert!(check_host_id("lat-2:eu").is_ok());
        assert!(check_name("lat-2:eu").is_err());
        assert!(check_host_id("").is_err());
        assert!(check_host_id(&"a".repeat(254)).is_err());
        assert!(check_name(&"a".repeat(253)).is_ok());
    }

    proptest! {
        #[test]
        fn every_valid_name_round_trips(name in "[A-Za-z0-9._-]{1,40}") {
            prop_assume!(name != "." && name != "..");
            let id = Identity::Host(name.clone());
            prop_assert_eq!(Identity::parse(&id.spiffe_id()), Some(id));
        }

        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = Identity::parse(&s);
        }
    }
}
