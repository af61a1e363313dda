//! Who is calling. Requests never say who they are from: every operator RPC acts as
//! the principal the server establishes for the call, which becomes the audit log's
//! actor and the `actor` field of what the call creates (an acknowledgement, a
//! silence, a baseline version, a rollout).
//!
//! The access layer (`crate::access`) puts the caller's `Principal` into the
//! request's extensions: `insecure-local` under `--insecure`, a token's name, or an
//! operator certificate's SPIFFE id (`spiffe://driftwatch/operator/<name>`).

use tonic::Request;

/// The caller of one RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(String);

impl Principal {
    /// The principal of a call nobody authenticated (only reachable without the
    /// access layer: in-process tests calling a service directly).
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    /// Every operator call of a `--insecure` server (loopback development).
    pub const INSECURE_LOCAL: &str = "insecure-local";

    /// The principal of `request`: the one the access layer attached (with the
    /// caller's role), or one attached by itself (tests calling a service directly),
    /// else [`Principal::UNAUTHENTICATED`].
    pub fn of<T>(request: &Request<T>) -> Self {
        let ext = request.extensions();
        ext.get::<crate::access::OperatorCaller>()
            .map(|c| c.principal.clone())
            .or_else(|| ext.get::<Principal>().cloned())
            .unwrap_or_else(|| Self(Self::UNAUTHENTICATED.to_string()))
    }

    /// A principal with this name (for an authentication layer, and tests).
    pub fn named(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_without_one_is_unauthenticated() {
        assert_eq!(Principal::of(&Request::new(())).name(), "unauthenticated");
        let mut r = Request::new(());
        r.extensions_mut().insert(Principal::named("alice"));
        assert_eq!(Principal::of(&r).to_string(), "alice");
    }
}
