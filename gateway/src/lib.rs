//! The Vigil gateway: one per post. It receives alarm-panel signals and
//! camera events, keeps each one in a durable outbox, and publishes them to
//! the operations center over mutually authenticated MQTT until a receipt
//! says they are stored.
//!
//! Layout:
//! - [`config`]: the config file, validated before anything binds.
//! - [`dc09`]: the SIA DC-09 codec (framing, AES, Contact ID, SIA codes,
//!   taxonomy), pure code shared with the panel simulator.
//! - [`signals`]: decoded DC-09 messages to `vigil.v1.Event`s.
//! - [`receiver`]: the DC-09 listeners (TCP and UDP on one port) and the
//!   ACK/NAK/DUH decision for each frame.
//! - [`supervision`]: panel silence and storage faults as health events.
//! - [`outbox`]: the durable outbox (SQLite, group commit, gap-free seqs).

pub mod config;
pub mod dc09;
pub mod outbox;
pub mod receiver;
pub mod signals;
pub mod supervision;
