//! The Vigil gateway: one per post. It receives alarm-panel signals and
//! camera events, keeps each one in a durable outbox, and publishes them to
//! the operations center over mutually authenticated MQTT until a receipt
//! says they are stored.
//!
//! Layout:
//! - [`dc09`]: the SIA DC-09 codec (framing, AES, Contact ID, SIA codes,
//!   taxonomy), pure code shared with the panel simulator.
//! - [`outbox`]: the durable outbox (SQLite, group commit, gap-free seqs).
//! - [`simulator`]: a DC-09 dialler that behaves like an alarm panel.

pub mod dc09;
pub mod outbox;
pub mod simulator;
