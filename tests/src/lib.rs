//! Test harness: a real server in-process on `127.0.0.1:0` with temp dirs; real agents
//! in-process or as OS processes of the real binary; protocol-level agents for what a
//! real one cannot do on a test machine (resource levels, a thousand hosts); polling
//! helpers that wait for a condition with a deadline.
//!
//! - [`server`]: start a server, clients of it;
//! - [`agent`]: agent configs, agents in this process;
//! - [`agent_process`], [`binaries`], [`process`]: agents as processes of this build's binary;
//! - [`wait`]: `wait_for`, `wait_file`;
//! - [`corrections`]: `Changes.Correct` actions, the server's view of a file;
//! - [`files`]: fixtures, the fleet key, editor-style writes;
//! - [`gateway`], [`sample_agent`], [`model_agent`]: protocol-level agents;
//! - [`webhook`]: a webhook receiver for notifiers;
//! - [`proxy`]: a TCP proxy that can stop forwarding without closing (dead peers);
//! - [`debroot`]: a cached minimal Debian root (debootstrap) for image and package checks;
//! - [`deploy`]: the systemd units' directives, their sandbox rebuilt with bubblewrap, a Debian root;
//! - [`privilege`], [`netns`]: root, capabilities, tmpfs mounts, network namespaces, and
//!   whether a test without them skips or (in CI) fails.

pub mod agent;
pub mod agent_process;
pub mod binaries;
pub mod corrections;
pub mod debroot;
pub mod deploy;
pub mod files;
pub mod gateway;
pub mod model_agent;
pub mod netns;
pub mod privilege;
pub mod process;
pub mod proxy;
pub mod sample_agent;
pub mod server;
pub mod test_ca;
pub mod tls;
pub mod wait;
pub mod webhook;

pub use agent::{agent_config, agent_config_url, agent_file, start_agent};
pub use agent_process::{AgentProcess, agent_toml};
pub use binaries::{agent_binary, cli_binary, outside_program, server_binary, sibling_binary};
pub use corrections::{correct, restore_version, server_file, set_keys};
pub use files::{TEST_FLEET_KEY, copy_fixtures, example_configs, fixtures_dir, fleet_key, replace_file};
pub use model_agent::ChangeAgent;
pub use process::{ChildProcess, free_port};
pub use sample_agent::SampleAgent;
pub use server::{connect, fleet_client, fleet_client_addr, server_url, start_server, start_server_with};
pub use wait::{get_file, key, wait_file, wait_for};
