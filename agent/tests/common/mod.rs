//! What the agent's process tests share: the real `driftwatch-agent` binary started
//! with its log in a file, and waits that fail with that log.

#![allow(dead_code)] // each test binary uses its own part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const POLL: Duration = Duration::from_millis(20);

/// A running agent process; killed (SIGKILL) on drop.
pub struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// Start the agent on `dir`: it watches `dir/app/*`, keeps its state in
    /// `dir/state`, samples no resources and logs to `dir/agent-<run>.log`.
    /// `args` adds the test's own flags (server, host id, TLS, writable paths).
    pub fn spawn(dir: &Path, run: u32, args: impl FnOnce(&mut Command)) -> Agent {
        let log = dir.join(format!("agent-{run}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_driftwatch-agent"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(["--resource-interval", "0", "--log", "info,driftwatch_agent=debug"])
            .arg("--watch")
            .arg(dir.join("app/*"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        args(&mut cmd);
        Agent { child: cmd.spawn().unwrap(), log }
    }

    /// Where the agent logs (to read it while the agent is borrowed by a wait).
    pub fn log_file(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn check_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("agent exited early ({status})\n--- agent log ---\n{}", self.log());
        }
    }

    /// Wait (within `deadline`) for the agent to exit by itself.
    pub async fn exit(&mut self, deadline: Duration) -> ExitStatus {
        let deadline = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent did not exit\n--- agent log ---\n{}", self.log());
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILL, like a crash or `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Poll `cond` until it holds, or fail with the agent's log after `deadline` (or at
/// once if the agent exits).
pub async fn wait_until(what: &str, agent: &mut Agent, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + deadline;
    while !cond() {
        agent.check_running();
        assert!(Instant::now() < deadline, "timed out waiting for {what}\n--- agent log ---\n{}", agent.log());
        tokio::time::sleep(POLL).await;
    }
}

/// What a test's gateway streams back to the agent.
pub type OutStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<driftwatch_proto::v1::ServerMessage, tonic::Status>> + Send>,
>;

/// One message of `kind` on a test gateway's stream.
pub fn msg(
    kind: driftwatch_proto::v1::server_message::Kind,
) -> Result<driftwatch_proto::v1::ServerMessage, tonic::Status> {
    Ok(driftwatch_proto::v1::ServerMessage { kind: Some(kind) })
}

/// Serve `gateway` in plaintext on 127.0.0.1:0; its URL.
pub async fn serve_plaintext<G: driftwatch_proto::v1::agent_gateway_server::AgentGateway>(gateway: G) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(driftwatch_proto::v1::agent_gateway_server::AgentGatewayServer::new(gateway))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    url
}
