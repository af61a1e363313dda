//! Clients of a TLS server for tests: channels with or without a client
//! certificate, and enrollment done by hand with the PKI crate (what the agent does).

use std::path::Path;

use driftwatch_pki::{AgentKey, certificate_request};
use driftwatch_proto::v1::{self, agent_gateway_client::AgentGatewayClient};
use driftwatch_server::RunningServer;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The built-in CA certificate of a server whose data dir is `data`.
pub fn server_ca(data: &Path) -> String {
    std::fs::read_to_string(data.join("tls/ca.pem")).expect("the server wrote its CA")
}

/// `https://localhost:PORT` of a TLS server.
pub fn tls_url(server: &RunningServer) -> String {
    format!("https://localhost:{}", server.grpc_addr.port())
}

/// A channel over TLS trusting `ca_pem`, presenting `identity` (cert, key) if given.
pub async fn tls_channel(
    url: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(url.to_string()).expect("url").tls_config(tls)?.connect().await
}

/// A host's key and certificate, as an enrolled agent holds them.
#[derive(Clone, Debug)]
pub struct HostCert {
    pub host_id: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Enroll `host_id` with `token` the way the agent does: key made here, CSR sent.
pub async fn enroll(url: &str, ca_pem: &str, token: &str, host_id: &str) -> Result<HostCert, tonic::Status> {
    let key = AgentKey::generate();
    let csr = certificate_request(&key, host_id).expect("csr");
    let channel = tls_channel(url, ca_pem, None).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let r = AgentGatewayClient::new(channel)
        .enroll(v1::EnrollRequest {
            token: token.into(),
            csr_pem: csr,
            host_id: host_id.into(),
            labels: Default::default(),
        })
        .await?
        .into_inner();
    Ok(HostCert { host_id: r.host_id, cert_pem: r.certificate_pem, key_pem: key.to_pem() })
}

/// The admin token a TLS server wrote to its data dir `data` on first start.
pub fn admin_token(data: &Path) -> String {
    std::fs::read_to_string(data.join("admin.token")).expect("the server wrote its admin token").trim().to_string()
}

/// An operator certificate with `role` for `name`, signed by a TLS server's fleet CA
/// (asked with the admin token of `data`): (cert, key) PEM.
pub async fn operator_cert(url: &str, ca_pem: &str, data: &Path, name: &str, role: v1::Role) -> (String, String) {
    let key = AgentKey::generate();
    let channel = tls_channel(url, ca_pem, None).await.expect("connect");
    let bearer = driftwatch_proto::bearer::Bearer::new(Some(&admin_token(data))).expect("token");
    let r = v1::access_client::AccessClient::with_interceptor(channel, bearer)
        .create_operator_cert(v1::CreateOperatorCertRequest {
            name: name.into(),
            role: role as i32,
            csr_pem: certificate_request(&key, name).expect("csr"),
            ..Default::default()
        })
        .await
        .expect("operator certificate")
        .into_inner();
    (r.certificate_pem, key.to_pem())
}

/// A channel to a TLS server (data dir `data`) presenting an admin operator
/// certificate: what tests use for operator calls.
pub async fn admin_channel(url: &str, ca_pem: &str, data: &Path) -> Channel {
    let (cert, key) = operator_cert(url, ca_pem, data, "test-admin", v1::Role::Admin).await;
    tls_channel(url, ca_pem, Some((&cert, &key))).await.expect("connect as admin")
}

/// A new enrollment token from a TLS server whose data dir is `data` (as its admin).
pub async fn create_token(url: &str, ca_pem: &str, data: &Path, req: v1::CreateEnrollTokenRequest) -> String {
    let channel = admin_channel(url, ca_pem, data).await;
    v1::enrollment_client::EnrollmentClient::new(channel)
        .create_enroll_token(req)
        .await
        .expect("token")
        .into_inner()
        .secret
}
