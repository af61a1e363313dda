//! `driftwatch.v1.Access`: who am I; operator tokens and certificates.

use std::sync::Arc;

use driftwatch_proto::v1::{self, access_server::Access};
use tonic::{Request, Response, Status};

use super::Operators;
use crate::access::{Method, OperatorCaller};
use crate::principal::Principal;

#[derive(Clone)]
pub struct AccessService {
    pub operators: Arc<Operators>,
}

#[tonic::async_trait]
impl Access for AccessService {
    async fn who_am_i(&self, request: Request<v1::WhoAmIRequest>) -> Result<Response<v1::WhoAmIResponse>, Status> {
        let caller = request.extensions().get::<OperatorCaller>().cloned().unwrap_or(OperatorCaller {
            principal: Principal::of(&request),
            role: v1::Role::Unspecified,
            method: Method::Insecure,
        });
        Ok(Response::new(v1::WhoAmIResponse {
            principal: caller.principal.to_string(),
            role: caller.role as i32,
            method: caller.method.name().into(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let actor = Principal::of(&request);
        let (credential, token) = self.operators.create_token(request.into_inner(), actor.name()).await?;
        Ok(Response::new(v1::CreateTokenResponse { credential: Some(credential), token }))
    }

    async fn list_tokens(
        &self,
        request: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        Ok(Response::new(v1::ListTokensResponse { credentials: self.operators.list(request.get_ref().all) }))
    }

    async fn revoke_token(&self, request: Request<v1::RevokeTokenRequest>) -> Result<Response<v1::Credential>, Status> {
        let actor = Principal::of(&request);
        let r = request.into_inner();
        Ok(Response::new(self.operators.revoke(&r.id, &r.reason, actor.name()).await?))
    }

    async fn create_operator_cert(
        &self,
        request: Request<v1::CreateOperatorCertRequest>,
    ) -> Result<Response<v1::CreateOperatorCertResponse>, Status> {
        let actor = Principal::of(&request);
        let (credential, issued, ca_pem) =
            self.operators.create_certificate(request.into_inner(), actor.name()).await?;
        Ok(Response::new(v1::CreateOperatorCertResponse {
            credential: Some(credential),
            certificate_pem: issued.cert_pem,
            ca_pem,
        }))
    }
}
