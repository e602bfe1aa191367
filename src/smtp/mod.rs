//! The SANS-IO SMTP core: bytes in, replies and events out. No sockets, no files, no clock
//! reads (time is an argument), so the fuzz targets and unit tests drive it directly.
//!
//! Untrusted input: nothing here panics on any byte sequence, and memory is bounded by the
//! limits in [`SessionConfig`].

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod reply;
pub mod sasl;
pub mod session;

pub use reply::Reply;
pub use session::{
    AcceptAll, AuthConfig, AuthId, AuthPolicy, AuthRequest, AuthResult, CloseReason, Event, LookupId, LookupRequest,
    Message, Outcome, Policy, Refusal, Session, SessionConfig, TlsInfo, TlsPolicy, TxContext, TxStep,
};
