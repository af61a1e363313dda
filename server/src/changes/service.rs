//! The `Changes` gRPC service: a thin shell over [`ChangesCore`].

use std::pin::Pin;
use std::sync::Arc;

use driftwatch_proto::v1::{self, changes_server::Changes};
use prost::Message;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::ChangesCore;
use crate::error::ServerError;
use crate::principal::Principal;

const DEFAULT_LIST: usize = 50;
const MAX_LIST: usize = 1000;

#[derive(Clone)]
pub struct ChangesService {
    pub core: Arc<ChangesCore>,
    /// Subscriber streams per principal (shared with `Alerts.Subscribe`).
    pub subscribers: Arc<crate::limits::Subscribers>,
}

impl ChangesCore {
    /// One stored rollout.
    pub(crate) async fn load_rollout(&self, id: &str) -> Result<Option<v1::Rollout>, ServerError> {
        let reader = self.reader.clone();
        let id = id.to_string();
        let rec = tokio::task::spawn_blocking(move || reader.lock().get_rollout(&id))
            .await
            .map_err(|e| ServerError::Unavailable(format!("store read: {e}")))??;
        Ok(rec.and_then(|r| v1::Rollout::decode(r.body.as_slice()).ok()))
    }

    /// Stored rollouts (newest first), optionally only in some states.
    pub(crate) async fn load_rollouts(&self, states: Vec<i32>, limit: usize) -> Result<Vec<v1::Rollout>, ServerError> {
        let reader = self.reader.clone();
        let recs = tokio::task::spawn_blocking(move || reader.lock().load_rollouts(&states, limit))
            .await
            .map_err(|e| ServerError::Unavailable(format!("store read: {e}")))??;
        Ok(recs
            .into_iter()
            .filter_map(|r| match v1::Rollout::decode(r.body.as_slice()) {
                Ok(x) => Some(x),
                Err(e) => {
                    tracing::warn!(rollout = %r.id, error = %e, "stored rollout does not decode; skipped");
                    None
                }
            })
            .collect())
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::Rollout, Status>> + Send>>;

#[tonic::async_trait]
impl Changes for ChangesService {
    async fn correct(&self, request: Request<v1::CorrectRequest>) -> Result<Response<v1::CorrectResponse>, Status> {
        let actor = Principal::of(&request).to_string();
        Ok(Response::new(self.core.correct(request.into_inner(), &actor).await?))
    }

    async fn start_rollout(
        &self,
        request: Request<v1::StartRolloutRequest>,
    ) -> Result<Response<v1::StartRolloutResponse>, Status> {
        let actor = Principal::of(&request).to_string();
        Ok(Response::new(self.core.start_rollout(request.into_inner(), &actor).await?))
    }

    async fn get_rollout(&self, request: Request<v1::GetRolloutRequest>) -> Result<Response<v1::Rollout>, Status> {
        Ok(Response::new(self.core.get_rollout(request.into_inner().id.trim()).await?))
    }

    async fn list_rollouts(
        &self,
        request: Request<v1::ListRolloutsRequest>,
    ) -> Result<Response<v1::ListRolloutsResponse>, Status> {
        let r = request.into_inner();
        let limit = if r.limit == 0 { DEFAULT_LIST } else { (r.limit as usize).min(MAX_LIST) };
        let mut rollouts = self.core.load_rollouts(r.states.clone(), limit).await?;
        // A running rollout's live state is newer than its last saved step.
        for x in rollouts.iter_mut() {
            if let Some(live) = self.core.rollouts.get(&x.id) {
                *x = live;
            }
        }
        rollouts.retain(|x| r.states.is_empty() || r.states.contains(&x.state));
        Ok(Response::new(v1::ListRolloutsResponse { rollouts }))
    }

    type WatchRolloutStream = WatchStream;

    async fn watch_rollout(
        &self,
        request: Request<v1::WatchRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        let slot = self.subscribers.admit(&Principal::of(&request))?;
        let id = request.into_inner().id.trim().to_string();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        match self.core.rollouts.subscribe(&id) {
            Some(mut live) => {
                let core = self.core.clone();
                tokio::spawn(async move {
                    loop {
                        let r = live.borrow_and_update().clone();
                        let done = driftwatch_proto::rollout_is_terminal(r.state);
                        if tx.send(Ok(r)).await.is_err() || done {
                            return;
                        }
                        let changed = tokio::select! {
                            // The watcher went away: stop following a rollout that may not change for long.
                            _ = tx.closed() => return,
                            c = live.changed() => c,
                        };
                        if changed.is_err() {
                            // The task ended between two updates: send its final state.
                            if let Ok(r) = core.get_rollout(&id).await {
                                let _ = tx.send(Ok(r)).await;
                            }
                            return;
                        }
                    }
                });
            }
            None => {
                let r = self.core.get_rollout(&id).await?;
                let _ = tx.send(Ok(r)).await;
            }
        }
        // The stream holds the principal's place until it is dropped.
        let stream = ReceiverStream::new(rx).map(move |r| {
            let _held = &slot;
            r
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn abort_rollout(&self, request: Request<v1::AbortRolloutRequest>) -> Result<Response<v1::Rollout>, Status> {
        let actor = Principal::of(&request).to_string();
        Ok(Response::new(self.core.abort_rollout(request.into_inner(), &actor).await?))
    }

    async fn resume_rollout(
        &self,
        request: Request<v1::ResumeRolloutRequest>,
    ) -> Result<Response<v1::Rollout>, Status> {
        let actor = Principal::of(&request).to_string();
        Ok(Response::new(self.core.resume_rollout(request.into_inner(), &actor).await?))
    }
}
