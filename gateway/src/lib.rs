//! The Vigil gateway: one per post. It receives alarm-panel signals and
//! camera events, keeps each one in a durable outbox, and publishes them to
//! the operations center over mutually authenticated MQTT until a receipt
//! says they are stored.
//!
//! Layout:
//! - [`outbox`]: the durable outbox (SQLite, group commit, gap-free seqs).

pub mod outbox;
