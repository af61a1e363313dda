//! A protocol-level agent that sends resource samples of the test's choosing: levels a
//! test machine cannot reach (6 GiB used, 12 cores busy) at the times the test names.

use driftwatch_proto::v1::{self, server_message};

use crate::gateway::{AgentTx, hello, open_agent_stream, snapshot};
use crate::server::connect;

/// Hello, then snapshots carrying resource samples.
pub struct SampleAgent {
    tx: AgentTx,
    inbound: tonic::Streaming<v1::ServerMessage>,
    seq: u64,
}

/// A sample of a 16-core, 64 GiB host.
pub fn resource_sample(
    t: driftwatch_proto::Timestamp,
    memory_used_bytes: f64,
    cpu_cores_used: f64,
) -> v1::ResourceSample {
    v1::ResourceSample {
        sampled_at: Some(t),
        cpu_cores_used,
        cpu_percent: cpu_cores_used / 16.0 * 100.0,
        cpu_count: 16,
        memory_total_bytes: 64 << 30,
        memory_used_bytes: memory_used_bytes as u64,
        ..Default::default()
    }
}

impl SampleAgent {
    pub async fn connect(url: &str, host: &str, labels: &[(&str, &str)]) -> Self {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let (tx, inbound) =
            open_agent_stream(connect(url).await, hello(host, labels, "test", "samples")).await.expect("welcomed");
        Self { tx, inbound, seq: 0 }
    }

    /// Send samples `(time_ms, memory_used_bytes, cpu_cores_used)` and wait for their ack.
    pub async fn send(&mut self, samples: &[(i64, f64, f64)]) {
        for &(t, mem, cores) in samples {
            self.seq += 1;
            let r = resource_sample(driftwatch_proto::timestamp_from_millis(t), mem, cores);
            let snap = v1::Snapshot { seq: self.seq, resources: Some(r), ..Default::default() };
            self.tx.send(snapshot(snap)).unwrap();
        }
        loop {
            match tokio_stream::StreamExt::next(&mut self.inbound).await.unwrap().unwrap().kind {
                Some(server_message::Kind::Ack(a)) if a.seq >= self.seq => break,
                _ => {}
            }
        }
    }
}
