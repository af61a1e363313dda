//! Fan-out of durable alert events to live subscribers.
//!
//! The engine hands events to the writer; once their transaction commits, the
//! writer publishes them here, so a subscriber never sees an event a restart
//! could lose, and sees them in id order. One bounded ring (tokio broadcast)
//! serves every subscriber: a subscriber that falls a full ring behind is told
//! (`Lagged`) and cut off with its resume id, while ingest and the others go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use driftwatch_proto::v1;
use tokio::sync::broadcast;

/// Events a subscriber may fall behind before it is cut off.
pub const RING: usize = 8192;

#[derive(Debug)]
pub struct EventHub {
    tx: broadcast::Sender<Arc<v1::AlertEvent>>,
    last_id: AtomicU64,
}

impl EventHub {
    /// `last_id`: the newest durable event id at start.
    pub fn new(last_id: u64) -> Arc<Self> {
        Self::with_capacity(last_id, RING)
    }

    pub fn with_capacity(last_id: u64, capacity: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(capacity);
        Arc::new(Self { tx, last_id: AtomicU64::new(last_id) })
    }

    /// Publish durable events, in id order.
    pub fn publish(&self, events: Vec<Arc<v1::AlertEvent>>) {
        for e in events {
            self.last_id.fetch_max(e.id, Ordering::AcqRel);
            // No receivers is fine: nobody is subscribed.
            let _ = self.tx.send(e);
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<v1::AlertEvent>> {
        self.tx.subscribe()
    }

    /// The newest durable event id.
    pub fn last_id(&self) -> u64 {
        self.last_id.load(Ordering::Acquire)
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}
