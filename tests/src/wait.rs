//! Waiting for a condition with a deadline (never a bare sleep), and reading what the
//! server holds while waiting.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use driftwatch_proto::v1::{self, fleet_client::FleetClient};
use tonic::transport::Channel;

/// How long [`wait_file`] waits.
const FILE_WAIT: Duration = Duration::from_secs(15);

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// GetFile, or None when the server does not know it (yet).
pub async fn get_file(c: &mut FleetClient<Channel>, host: &str, path: &Path) -> Option<v1::File> {
    c.get_file(v1::GetFileRequest { host_id: host.into(), path: path.display().to_string() })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Wait until the server shows `path` on `host` satisfying `pred`.
pub async fn wait_file(
    c: &mut FleetClient<Channel>,
    host: &str,
    path: &Path,
    what: &str,
    pred: impl Fn(&v1::FileState) -> bool,
) -> v1::File {
    let deadline = Instant::now() + FILE_WAIT;
    loop {
        if let Some(f) = get_file(c, host, path).await
            && f.state.as_ref().is_some_and(&pred)
        {
            return f;
        }
        if Instant::now() >= deadline {
            let last = get_file(c, host, path).await;
            panic!("timed out waiting for {what} on {host}:{}; last seen: {last:#?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of `key` in a file state.
pub fn key<'a>(state: &'a v1::FileState, key: &str) -> Option<&'a v1::Value> {
    state.keys.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref())
}
