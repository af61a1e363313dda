//! A real server in this process on `127.0.0.1:0` with a temp data dir, and clients of it.

use std::path::Path;

use driftwatch_proto::v1::fleet_client::FleetClient;
use driftwatch_server::{RunningServer, ServerConfig};
use tonic::transport::Channel;

pub async fn start_server(data: &Path) -> RunningServer {
    start_server_with(ServerConfig::for_tests(data)).await
}

pub async fn start_server_with(config: ServerConfig) -> RunningServer {
    driftwatch_server::start(config).await.expect("server starts")
}

/// The server's gRPC URL (`http://127.0.0.1:PORT`).
pub fn server_url(server: &RunningServer) -> String {
    format!("http://{}", server.grpc_addr)
}

/// A new HTTP/2 connection to `url`; panics when it cannot connect.
pub async fn connect(url: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_string()).expect("url").connect().await.expect("connect")
}

pub async fn fleet_client(server: &RunningServer) -> FleetClient<Channel> {
    fleet_client_addr(&server_url(server)).await
}

pub async fn fleet_client_addr(url: &str) -> FleetClient<Channel> {
    FleetClient::new(connect(url).await)
}
