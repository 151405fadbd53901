//! Simulated devices for `vigil simulate`, `vigil dev`, the benchmark and
//! the tests: an alarm panel that dials a DC-09 receiver, and cameras (an
//! ONVIF device the gateway pulls events from, and an HTTP pusher).
//!
//! Nothing here runs in a post's gateway; the gateway crate only supplies
//! the ONVIF SOAP vocabulary both sides of that conversation share.
//!
//! Layout:
//! - [`panel`]: the DC-09 dialler (scenarios, retries, NAK clock
//!   adoption, per-event outcomes).
//! - [`camera`]: the ONVIF device and the HTTP push client.
//! - [`soap`]: what only the device writes or checks in SOAP
//!   (notifications, faults, the UsernameToken check).

pub mod camera;
pub mod panel;
pub mod soap;
