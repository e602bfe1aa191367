//! mxd: a small mail transfer agent that reads OpenSMTPD's smtpd.conf(5), receives mail over
//! SMTP (plain, STARTTLS, smtps) on one mio event loop per core, and delivers it durably into
//! Maildir or mbox. The final 250 after DATA is sent only once every recipient's copy is
//! fsynced to disk.
//!
//! Layers, from the network inward (see ARCHITECTURE.md):
//! - [`server`] owns sockets and drives the sans-IO [`smtp`] sessions and rustls.
//! - [`config`], [`table`], [`rules`] and [`resolve`] turn smtpd.conf and an envelope into
//!   delivery targets; they are pure functions of an immutable [`config::Config`].
//! - [`deliver`] writes the targets to disk with fsync-safe renames, in batches.
// deny, not forbid: privsep::fds adopts inherited descriptors, privsep::sandbox calls
// pledge(2), privsep::link owns the descriptors it receives, server::stats maps a shared
// page and filter::process chroots a filter before exec, each in one commented `allow`.
#![deny(unsafe_code)]
#![warn(unreachable_pub, rust_2018_idioms)]

pub mod auth;
pub mod buffers;
pub mod client_io;
pub mod config;
pub mod control;
pub mod deliver;
pub mod dns;
pub mod envelope;
pub mod fds;
pub mod filter;
pub mod forward;
pub mod headers;
pub mod logging;
pub mod privsep;
pub mod program;
pub mod queue;
pub mod relay;
pub mod resolve;
pub mod rules;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod srs;
pub mod submit;
pub mod table;
pub mod tls;
pub mod users;
