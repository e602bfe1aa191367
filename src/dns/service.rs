//! A resolver thread for code that must not wait: an event loop submits a lookup with a
//! callback, and the callback runs on the resolver thread when the answer is in (it
//! typically sends on the loop's channel and wakes its `mio::Waker`). Lookups are served in
//! order by a few threads, so one slow nameserver delays at most that many lookups.

use std::net::IpAddr;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::{Lookup, Mx, Resolver};

/// Lookups waiting beyond this are refused at once (`submit` returns false): the caller
/// goes on without the answer rather than queueing without bound.
const MAX_WAITING: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsQuery {
    Mx(String),
    Addrs(String),
    Ptr(IpAddr),
    /// Forward-confirmed reverse DNS (PTR, then the name's addresses).
    Fcrdns(IpAddr),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsAnswer {
    Mx(Lookup<Mx>),
    Addrs(Lookup<IpAddr>),
    /// The answer to `Ptr` and to `Fcrdns`.
    Names(Lookup<String>),
}

type PendingLookup = (DnsQuery, Box<dyn FnOnce(DnsAnswer) + Send>);

/// The submitting side; cloning it is cheap. The threads stop when every clone is dropped.
#[derive(Clone)]
pub struct Service {
    jobs: Sender<PendingLookup>,
}

impl Service {
    pub fn spawn(resolver: Arc<Resolver>, threads: usize) -> std::io::Result<Service> {
        let (jobs, rx) = crossbeam_channel::bounded::<PendingLookup>(MAX_WAITING);
        for i in 0..threads.max(1) {
            let (rx, resolver): (Receiver<PendingLookup>, _) = (rx.clone(), Arc::clone(&resolver));
            std::thread::Builder::new().name(format!("resolver-{i}")).spawn(move || {
                for (request, reply) in rx {
                    reply(answer(&resolver, request));
                }
            })?;
        }
        Ok(Service { jobs })
    }

    /// Queues a lookup; `reply` runs on a resolver thread. False when too many wait.
    pub fn submit(&self, request: DnsQuery, reply: impl FnOnce(DnsAnswer) + Send + 'static) -> bool {
        self.jobs.try_send((request, Box::new(reply))).is_ok()
    }
}

fn answer(resolver: &Resolver, request: DnsQuery) -> DnsAnswer {
    match request {
        DnsQuery::Mx(d) => DnsAnswer::Mx(resolver.mx(&d)),
        DnsQuery::Addrs(n) => DnsAnswer::Addrs(resolver.addrs(&n)),
        DnsQuery::Ptr(a) => DnsAnswer::Names(resolver.ptr(a)),
        DnsQuery::Fcrdns(a) => DnsAnswer::Names(resolver.fcrdns(a)),
    }
}
