//! Bearer tokens on the wire (`authorization: Bearer <token>`), for every client
//! (the CLI, tests) and for the server's access layer: one parser, one writer.

use tonic::metadata::{AsciiMetadataValue, MetadataMap};

/// The metadata key operator credentials travel in.
pub const AUTHORIZATION: &str = "authorization";

/// The token in an `authorization` header value: `Bearer <token>` (scheme in any
/// case). `Err` names what is wrong, for an UNAUTHENTICATED answer.
pub fn parse(header: &str) -> Result<&str, &'static str> {
    let (scheme, token) = header.trim().split_once(' ').ok_or("the authorization header is not 'Bearer <token>'")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("the authorization header is not 'Bearer <token>'");
    }
    let token = token.trim();
    if token.is_empty() {
        return Err("the authorization header has an empty token");
    }
    Ok(token)
}

/// A client interceptor adding the token to every call (none: calls go without).
#[derive(Clone, Default)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl std::fmt::Debug for Bearer {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Bearer(<token>)" } else { "Bearer(none)" })
    }
}

impl Bearer {
    /// `Err` when the token cannot be a header value (control characters, non-ASCII).
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(Self(None)),
            Some(t) => {
                let mut v: AsciiMetadataValue = format!("Bearer {t}")
                    .parse()
                    .map_err(|_| "the token holds characters a header cannot carry".to_string())?;
                // Never indexed by HPACK (RFC 7541 §7.1.3) and redacted in debug output.
                v.set_sensitive(true);
                Ok(Self(Some(v)))
            }
        }
    }

    /// Add the token to `metadata` (for requests built by hand).
    pub fn apply(&self, metadata: &mut MetadataMap) {
        if let Some(v) = &self.0 {
            metadata.insert(AUTHORIZATION, v.clone());
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.apply(request.metadata_mut());
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_headers_and_names_what_is_wrong() {
        assert_eq!(parse("Bearer abc.def"), Ok("abc.def"));
        assert_eq!(parse("bearer   abc "), Ok("abc"));
        assert!(parse("Basic dXNlcg==").is_err());
        assert!(parse("abc").is_err());
        assert_eq!(parse("Bearer  "), Err("the authorization header is not 'Bearer <token>'"));
    }

    #[test]
    fn the_interceptor_sets_the_header_and_never_prints_the_token() {
        let b = Bearer::new(Some(" dwt_1.s3cret\n")).unwrap();
        assert_eq!(format!("{b:?}"), "Bearer(<token>)");
        let mut md = MetadataMap::new();
        b.apply(&mut md);
        assert_eq!(md.get(AUTHORIZATION).unwrap().to_str().unwrap(), "Bearer dwt_1.s3cret");
        let mut md = MetadataMap::new();
        Bearer::new(None).unwrap().apply(&mut md);
        assert!(md.is_empty());
        assert!(Bearer::new(Some("bad\u{7f}token")).is_err());
    }
}
