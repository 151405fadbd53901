//! Helpers for the gateway crate's component tests (receiver, camera push,
//! ONVIF client): what an outbox holds, read back as events.

use std::time::Duration;

use prost::Message;
use vigil_gateway::outbox::Outbox;
use vigil_proto::v1::Event;

use crate::WAIT;

/// Every event in `outbox` (up to a thousand), in seq order.
pub async fn stored(outbox: &Outbox) -> Vec<Event> {
    outbox
        .read_from(1, 1000, usize::MAX)
        .await
        .expect("read the outbox")
        .iter()
        .map(|s| Event::decode(s.bytes.as_slice()).expect("a stored event decodes"))
        .collect()
}

/// Waits (at most [`WAIT`]) until `outbox` holds at least `count` events
/// and returns them.
pub async fn wait_stored(outbox: &Outbox, count: usize) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = stored(outbox).await;
        if got.len() >= count {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {count} events, have {}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
