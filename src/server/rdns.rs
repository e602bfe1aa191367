//! Reverse DNS of each TCP client before its greeting, as OpenSMTPD does: PTR, then the
//! name's addresses must include the client's (forward-confirmed, FCrDNS). Lookups run on
//! the smtp process's resolver threads ([`crate::dns::service`]); answers come back to the
//! loop that asked on its channel, with its `Waker`. A session waits at most [`WAIT`]: a
//! silent nameserver delays a greeting by that much, and never another session.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

use crate::dns::service::{DnsAnswer, DnsQuery, Service};
use crate::dns::{Lookup, Resolver};
use crate::envelope::SessionId;

/// The longest a greeting waits for the client's name; past it the session goes on as if
/// the client had none.
pub(crate) const WAIT: Duration = Duration::from_secs(5);
/// Lookups in parallel per smtp process: slow nameservers hold at most this many threads.
const THREADS: usize = 4;

static SERVICE: OnceLock<Service> = OnceLock::new();

/// Starts the resolver threads; resolv.conf and hosts are read now, so call it before the
/// chroot. Without it (or if it fails) sessions are greeted at once, with no name.
pub(crate) fn install() -> std::io::Result<()> {
    let service = Service::spawn(Arc::new(Resolver::system()), THREADS)?;
    let _ = SERVICE.set(service);
    Ok(())
}

/// A finished lookup, addressed to the connection that waits for it.
pub(crate) struct RdnsAnswer {
    pub(crate) slot: usize,
    pub(crate) sid: SessionId,
    /// The confirmed name; `None` when there is none or the lookup failed.
    pub(crate) name: Option<String>,
}

/// One loop's side: where its answers arrive.
pub(crate) struct Rdns {
    tx: Sender<RdnsAnswer>,
    rx: Receiver<RdnsAnswer>,
}

impl Rdns {
    pub(crate) fn new() -> Rdns {
        let (tx, rx) = crossbeam_channel::unbounded();
        Rdns { tx, rx }
    }

    /// Asks for `ip`'s confirmed name; false when no lookup could be started (no resolver,
    /// or too many waiting): then the session is greeted at once.
    pub(crate) fn start(&self, slot: usize, sid: SessionId, ip: IpAddr, waker: &Arc<Waker>) -> bool {
        let Some(service) = SERVICE.get() else {
            return false;
        };
        let (tx, waker) = (self.tx.clone(), Arc::clone(waker));
        service.submit(DnsQuery::Fcrdns(ip), move |reply| {
            let name = confirmed(sid, ip, reply);
            // The loop may be gone (shutdown); the answer is then moot.
            if tx.send(RdnsAnswer { slot, sid, name }).is_ok() {
                let _ = waker.wake();
            }
        })
    }

    pub(crate) fn try_recv(&self) -> Option<RdnsAnswer> {
        self.rx.try_recv().ok()
    }
}

fn confirmed(sid: SessionId, ip: IpAddr, reply: DnsAnswer) -> Option<String> {
    match reply {
        DnsAnswer::Names(Lookup::Ok(names)) => names.into_iter().next(),
        DnsAnswer::Names(Lookup::TempFail(e)) => {
            log::info!("{sid} smtp rdns address={ip} temporary failure: {e}");
            None
        }
        _ => None,
    }
}
