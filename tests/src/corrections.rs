//! Driving corrections end to end: the `Changes.Correct` actions, and waiting until the
//! server holds a parsed file (its content hash is the expected hash of the next change).

use std::path::Path;

use driftwatch_proto::v1;
use driftwatch_server::RunningServer;

use crate::server::fleet_client;
use crate::wait::wait_file;

/// A `set_keys` action: values as operator text.
pub fn set_keys(pairs: &[(&str, &str)]) -> Option<v1::correct_request::Action> {
    Some(v1::correct_request::Action::SetKeys(v1::SetKeys {
        values: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        remove: Vec::new(),
    }))
}

/// A `restore_version` action: the content with this keyed hash, from the agent's backups.
pub fn restore_version(content_hash: &str) -> Option<v1::correct_request::Action> {
    Some(v1::correct_request::Action::RestoreVersion(v1::RestoreVersion { content_hash: content_hash.into() }))
}

/// The server's view of `path` on `host`, once it has parsed keys.
pub async fn server_file(server: &RunningServer, host: &str, path: &Path) -> v1::FileState {
    let mut fleet = fleet_client(server).await;
    wait_file(&mut fleet, host, path, "parsed", |s| !s.keys.is_empty()).await.state.unwrap()
}

/// `Changes.Correct`, answered: the change's result (a transport error or a missing
/// result fails the test).
pub async fn correct(
    changes: &mut v1::changes_client::ChangesClient<tonic::transport::Channel>,
    request: v1::CorrectRequest,
) -> v1::ChangeResult {
    let response = changes.correct(request).await.unwrap_or_else(|e| panic!("Correct: {e}")).into_inner();
    let (change_id, host_id) = (response.change_id, response.host_id);
    response.result.unwrap_or_else(|| panic!("Correct {change_id} on {host_id} answered without a result"))
}
