//! Task events, published to containerd in the order they are sent.

use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use tokio::sync::mpsc;

/// A queue of events to containerd; one task publishes them in order.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::UnboundedSender<(&'static str, Box<dyn MessageDyn>)>,
}

impl Events {
    /// Starts the publishing task.
    pub fn new(namespace: &str, publisher: RemotePublisher) -> Events {
        let (tx, mut rx) = mpsc::unbounded_channel::<(&'static str, Box<dyn MessageDyn>)>();
        let namespace = namespace.to_string();
        tokio::spawn(async move {
            while let Some((topic, event)) = rx.recv().await {
                if let Err(e) = publisher
                    .publish(Default::default(), topic, &namespace, event)
                    .await
                {
                    log::warn!("publishing {topic}: {e}");
                }
            }
        });
        Events { tx }
    }

    /// Queues `event` under `topic`.
    pub fn send(&self, topic: &'static str, event: impl MessageDyn) {
        log::debug!("event {topic}");
        let _ = self.tx.send((topic, Box::new(event)));
    }
}

/// The current time as a protobuf timestamp.
pub fn now() -> Timestamp {
    Timestamp::now()
}

/// A protobuf timestamp from nanoseconds since the Unix epoch.
pub fn timestamp_ns(ns: u64) -> Timestamp {
    let mut t = Timestamp::new();
    t.seconds = (ns / 1_000_000_000) as i64;
    t.nanos = (ns % 1_000_000_000) as i32;
    t
}
