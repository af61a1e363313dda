//! The `/metrics` (Prometheus) and `/healthz` HTTP endpoint of the server and the
//! agent. `/metrics` is behind a bearer token when one is configured, and one must be
//! configured for a listen address that leaves the host; `/healthz` stays open, for
//! probes, and says in one line why the process is unhealthy.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// What a process serves on its metrics listener.
pub trait Endpoint: Send + Sync + 'static {
    /// The `/metrics` body (OpenMetrics text). Runs on the blocking pool: it may take
    /// a lock that is held across I/O.
    fn render(&self) -> String;
    /// `Ok(note)`: `/healthz` answers 200 with the note; `Err(reason)`: 503 with the reason.
    fn health(&self) -> Result<String, String>;
}

/// Whether a `/metrics` request may read: always without a configured token, else
/// only with `Authorization: Bearer <token>`.
pub fn scrape_allowed(token: Option<&str>, authorization: Option<&str>) -> bool {
    match token {
        None => true,
        Some(want) => authorization.and_then(|h| driftwatch_proto::bearer::parse(h).ok()).is_some_and(|got| {
            // Equal-time comparison: the token is a credential.
            got.len() == want.len() && got.bytes().zip(want.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
        }),
    }
}

/// The scrape token in `path`: one word of at least 16 characters (surrounding
/// whitespace ignored).
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = text.trim();
    if t.len() < 16 || t.contains(char::is_whitespace) {
        return Err(format!("{}: needs one token of at least 16 characters", path.display()));
    }
    Ok(t.to_string())
}

/// Why a metrics listener on `addr` may not run as configured: an address that leaves
/// the host needs a scrape token (`token_key` names its config key).
pub fn listen_problem(addr: SocketAddr, has_token: bool, token_key: &str) -> Option<String> {
    (!addr.ip().is_loopback() && !has_token)
        .then(|| format!("{addr} leaves this host: set {token_key} (scrapers send `Authorization: Bearer <token>`)"))
}

/// Serve `/metrics` (behind `token` when set) and `/healthz` until `shutdown` resolves.
pub async fn serve<E: Endpoint>(
    listener: tokio::net::TcpListener,
    endpoint: Arc<E>,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let e = endpoint.clone();
    let token: Option<Arc<str>> = token.map(Into::into);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let e = e.clone();
                let token = token.clone();
                async move {
                    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                    if !scrape_allowed(token.as_deref(), auth) {
                        return (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, "Bearer")],
                            "metrics need Authorization: Bearer <metrics token>\n",
                        )
                            .into_response();
                    }
                    match tokio::task::spawn_blocking(move || e.render()).await {
                        Ok(body) => (
                            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                            body,
                        )
                            .into_response(),
                        Err(_) => {
                            (StatusCode::INTERNAL_SERVER_ERROR, "metrics could not be rendered\n").into_response()
                        }
                    }
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let e = endpoint.clone();
                async move {
                    match tokio::task::spawn_blocking(move || e.health()).await {
                        Ok(Ok(note)) => (StatusCode::OK, format!("{note}\n")),
                        Ok(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "health check failed\n".to_string()),
                    }
                }
            }),
        );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metrics_token_is_required_only_when_configured() {
        assert!(scrape_allowed(None, None));
        assert!(scrape_allowed(None, Some("Bearer whatever")));
        let t = Some("0123456789abcdef");
        assert!(scrape_allowed(t, Some("Bearer 0123456789abcdef")));
        assert!(!scrape_allowed(t, None));
        assert!(!scrape_allowed(t, Some("Bearer 0123456789abcdeX")));
        assert!(!scrape_allowed(t, Some("Bearer 0123456789abcde")));
        assert!(!scrape_allowed(t, Some("Basic 0123456789abcdef")));
    }

    #[test]
    fn a_listener_off_loopback_needs_a_token() {
        let lo: SocketAddr = "127.0.0.1:9465".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9465".parse().unwrap();
        assert_eq!(listen_problem(lo, false, "metrics_token_file"), None);
        assert_eq!(listen_problem(any, true, "metrics_token_file"), None);
        let why = listen_problem(any, false, "metrics_token_file").unwrap();
        assert!(why.contains("0.0.0.0:9465 leaves this host: set metrics_token_file"), "{why}");
    }

    #[test]
    fn token_files_hold_one_long_word() {
        let dir = std::env::temp_dir().join(format!("dw-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("t");
        std::fs::write(&f, " 0123456789abcdef\n").unwrap();
        assert_eq!(read_token_file(&f).unwrap(), "0123456789abcdef");
        std::fs::write(&f, "short").unwrap();
        assert!(read_token_file(&f).unwrap_err().contains("at least 16 characters"));
        std::fs::write(&f, "0123456789 abcdef").unwrap();
        assert!(read_token_file(&f).is_err());
        assert!(read_token_file(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
