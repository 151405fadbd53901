//! The one listener plumbing of every Vigil server.
//!
//! Every server (the broker's MQTT front, the ops-center gRPC API, the
//! gateway's DC-09 and camera push listeners, `/metrics`, the camera
//! simulator) accepts connections the same way, as a stack of layers
//! around a protocol handler:
//!
//! ```text
//! accept (back off on EMFILE…)                         accept
//!  └ caps: total and per source; at the total cap,     table
//!    shed the oldest unauthenticated connection
//!     └ its own task, in its own span                  front
//!        └ TLS handshake (optional)                    front::Front::serve_tls
//!          (or the server's own: serve_with_handshake)
//!           └ pre-authentication deadline until the handler calls
//!             Conn::authenticated(); then the idle timeout
//!              └ the protocol handler (DC-09 framing, MQTT, hyper, tonic)
//! ```
//!
//! A handler never sees the caps or the deadlines: it reads and writes its
//! [`Conn`] and says when the peer proved itself (a valid frame, a finished
//! mutual TLS handshake, a first HTTP request). Until then the connection is
//! cheap to drop, and it is dropped first when the server is full.
//!
//! Layout:
//! - [`accept`]: the accept loop's error policy.
//! - [`table`]: [`Limits`] and the table of open connections that enforces
//!   them (admission, per-source counts, shedding).
//! - [`conn`]: [`Conn`], the stream a handler gets, with its authentication
//!   handle and activity clock.
//! - [`front`]: [`Front`], `serve` and `serve_tls`.
//! - [`http`]: HTTP/1 on a [`Front`], for hyper services.
//! - [`stats`]: counters of a front, for `/metrics`.

pub mod accept;
pub mod conn;
pub mod front;
pub mod http;
pub mod stats;
pub mod table;

pub use conn::{Authenticator, Conn};
pub use front::Front;
pub use stats::{Stats, StatsSnapshot};
pub use table::{Limits, LimitsError};
