//! driftwatch's own observability, one definition for the server, the agent and
//! `driftwatch up`: how logs are written (`logging`: text or JSON, colours only on a
//! terminal), the `/metrics` + `/healthz` HTTP endpoint (`endpoint`: serving, the
//! scrape token, which listen addresses need one) and the standard `process_*`
//! metrics (`process`), the service manager's readiness and watchdog
//! notifications (`sd_notify`), and the signals that stop and reload (`signals`).

pub mod endpoint;
pub mod logging;
pub mod process;
pub mod sd_notify;
pub mod signals;

pub use endpoint::{Endpoint, serve};
pub use logging::LogFormat;
pub use process::ProcessCollector;
