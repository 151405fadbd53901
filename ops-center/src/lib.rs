//! The Vigil operations center: where every post's events are stored exactly
//! once and become incidents that people act on.
//!
//! Layout:
//! - [`store`]: the narrow storage interface ([`store::Store`]) and its SQLite
//!   implementation; idempotent events, per-post `durable_through_seq`.
//! - [`engine`]: the incident engine: correlation rules, timers, workflow.

pub mod engine;
pub mod metrics;
pub mod store;
