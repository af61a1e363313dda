//! `driftwatch.v1.Enrollment`: operators create, list and revoke enrollment tokens.

use std::sync::Arc;

use driftwatch_proto::v1::{self, enrollment_server::Enrollment};
use tonic::{Request, Response, Status};

use super::Identities;
use crate::principal::Principal;

#[derive(Clone)]
pub struct EnrollmentService {
    pub identities: Arc<Identities>,
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn create_enroll_token(
        &self,
        request: Request<v1::CreateEnrollTokenRequest>,
    ) -> Result<Response<v1::CreateEnrollTokenResponse>, Status> {
        let actor = Principal::of(&request);
        let (token, secret) = self.identities.create_token(request.into_inner(), actor.name()).await?;
        tracing::info!(token = %token.id, %actor, uses = token.max_uses, "enrollment token created");
        Ok(Response::new(v1::CreateEnrollTokenResponse { token: Some(token), secret }))
    }

    async fn list_enroll_tokens(
        &self,
        request: Request<v1::ListEnrollTokensRequest>,
    ) -> Result<Response<v1::ListEnrollTokensResponse>, Status> {
        Ok(Response::new(v1::ListEnrollTokensResponse { tokens: self.identities.tokens(request.get_ref().all) }))
    }

    async fn revoke_enroll_token(
        &self,
        request: Request<v1::RevokeEnrollTokenRequest>,
    ) -> Result<Response<v1::EnrollToken>, Status> {
        let actor = Principal::of(&request);
        let r = request.into_inner();
        Ok(Response::new(self.identities.revoke_token(&r.id, &r.reason, actor.name()).await?))
    }
}
