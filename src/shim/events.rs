//! Task events, published to containerd in the order they are sent. An event that cannot
//! be delivered (containerd restarting, say) is retried, reconnecting, before any later
//! one: containerd never sees an exit before the start it follows.

use std::time::Duration;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::EventsClient;
use containerd_shim_protos::ttrpc::context::Context;
use containerd_shim_protos::ttrpc::r#async::Client;
use tokio::sync::mpsc;

/// How long one event is retried before it is given up (containerd gone for good).
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A queue of events to containerd; one task publishes them in order.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::UnboundedSender<Envelope>,
    namespace: String,
}

impl Events {
    /// Starts the publishing task, which talks to containerd at `publisher`'s address.
    pub fn new(namespace: &str, publisher: RemotePublisher) -> Events {
        let (tx, mut rx) = mpsc::unbounded_channel::<Envelope>();
        let address = match publisher.address.as_str() {
            a if a.contains("://") => a.to_string(),
            a => format!("unix://{a}"),
        };
        tokio::spawn(async move {
            let mut client: Option<EventsClient> = None;
            while let Some(envelope) = rx.recv().await {
                let req = ForwardRequest {
                    envelope: MessageField::some(envelope),
                    ..Default::default()
                };
                deliver(&address, &mut client, &req).await;
            }
        });
        Events {
            tx,
            namespace: namespace.to_string(),
        }
    }

    /// Queues `event` under `topic` (timestamped now).
    pub fn send(&self, topic: &'static str, event: impl MessageDyn) {
        log::debug!("event {topic}");
        // (containerd's type URL for events is the message's full name alone.)
        let any = match containerd_shim::util::convert_to_any(Box::new(event)) {
            Ok(any) => any,
            Err(e) => {
                log::error!("encoding {topic}: {e}");
                return;
            }
        };
        let envelope = Envelope {
            timestamp: MessageField::some(now()),
            namespace: self.namespace.clone(),
            topic: topic.to_string(),
            event: MessageField::some(any),
            ..Default::default()
        };
        let _ = self.tx.send(envelope);
    }
}

/// Forwards `req`, reconnecting and retrying with a growing pause until it is delivered
/// or [`GIVE_UP_AFTER`] has passed.
async fn deliver(address: &str, client: &mut Option<EventsClient>, req: &ForwardRequest) {
    let topic = req.envelope.topic.as_str();
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    let mut failures = 0u32;
    loop {
        if client.is_none() {
            *client = Client::connect(address).await.ok().map(EventsClient::new);
        }
        if let Some(c) = client.as_ref() {
            match c.forward(Context::default(), req).await {
                Ok(_) => {
                    if failures > 0 {
                        log::info!("published {topic} after {failures} failed attempts");
                    }
                    return;
                }
                Err(e) => {
                    if failures == 0 {
                        log::warn!("publishing {topic}: {e}; retrying");
                    }
                    *client = None;
                }
            }
        }
        failures += 1;
        if started.elapsed() > GIVE_UP_AFTER {
            log::error!("publishing {topic}: given up after {failures} attempts");
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_BACKOFF);
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
