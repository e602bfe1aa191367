//! A stub resolver without an async runtime: the system's resolv.conf and hosts, queries
//! over UDP (TCP on truncation) with random ids and source ports, each answer checked
//! against its question, CNAME chains followed with a bound, timeouts and retries as
//! resolv.conf says. Lookups block: call them where waiting is allowed (the relay thread),
//! or through [`service::Service`], a resolver thread an event loop can hand lookups to.
//!
//! Every lookup ends in a [`Lookup`]: records, the name does not exist, it exists without
//! such records, or a temporary failure (SERVFAIL, timeouts, malformed answers) to retry.

pub mod conf;
pub mod service;
pub mod transport;
pub mod wire;

use std::net::IpAddr;

use hickory_proto::rr::{Name, RecordType};

pub use conf::{Hosts, ResolvConf};
use wire::{Answer, Question, Rdata, MAX_CNAME};

/// The outcome of one lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<T> {
    /// At least one record.
    Ok(Vec<T>),
    /// The name does not exist (NXDOMAIN): a permanent answer.
    NxDomain,
    /// The name exists, without records of the asked type.
    NoData,
    /// No answer could be had now (SERVFAIL, timeouts, malformed answers): try later.
    TempFail(String),
}

impl<T> Lookup<T> {
    fn map<U>(self, f: impl FnMut(T) -> Option<U>) -> Lookup<U> {
        match self {
            Lookup::Ok(v) => {
                let v: Vec<U> = v.into_iter().filter_map(f).collect();
                if v.is_empty() {
                    Lookup::NoData
                } else {
                    Lookup::Ok(v)
                }
            }
            Lookup::NxDomain => Lookup::NxDomain,
            Lookup::NoData => Lookup::NoData,
            Lookup::TempFail(e) => Lookup::TempFail(e),
        }
    }
}

/// One MX record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mx {
    pub preference: u16,
    /// Lowercase, no trailing dot; empty for the root (RFC 7505's null MX is `0 .`).
    pub exchange: String,
}

pub struct Resolver {
    conf: ResolvConf,
    hosts: Hosts,
}

impl Resolver {
    pub fn new(conf: ResolvConf, hosts: Hosts) -> Resolver {
        Resolver { conf, hosts }
    }

    /// `MXD_RESOLV_CONF` or /etc/resolv.conf, and /etc/hosts, read now.
    pub fn system() -> Resolver {
        Resolver::new(ResolvConf::load(), Hosts::load())
    }

    pub fn conf(&self) -> &ResolvConf {
        &self.conf
    }

    pub fn mx(&self, domain: &str) -> Lookup<Mx> {
        self.query(domain, RecordType::MX).map(|r| match r {
            Rdata::Mx(preference, exchange) => Some(Mx { preference, exchange }),
            _ => None,
        })
    }

    /// The addresses of `name`: /etc/hosts first, else AAAA and A (IPv6 first).
    pub fn addrs(&self, name: &str) -> Lookup<IpAddr> {
        if let Some(addrs) = self.hosts.addrs(name) {
            return Lookup::Ok(addrs.to_vec());
        }
        let v6 = self.ips(name, RecordType::AAAA);
        if v6 == Lookup::NxDomain {
            return Lookup::NxDomain;
        }
        let v4 = self.ips(name, RecordType::A);
        match (v6, v4) {
            (Lookup::Ok(mut a), Lookup::Ok(b)) => {
                a.extend(b);
                Lookup::Ok(a)
            }
            (Lookup::Ok(a), _) | (_, Lookup::Ok(a)) => Lookup::Ok(a),
            (Lookup::TempFail(e), _) | (_, Lookup::TempFail(e)) => Lookup::TempFail(e),
            (_, Lookup::NxDomain) => Lookup::NxDomain,
            _ => Lookup::NoData,
        }
    }

    pub fn a(&self, name: &str) -> Lookup<IpAddr> {
        self.ips(name, RecordType::A)
    }

    pub fn aaaa(&self, name: &str) -> Lookup<IpAddr> {
        self.ips(name, RecordType::AAAA)
    }

    fn ips(&self, name: &str, rtype: RecordType) -> Lookup<IpAddr> {
        self.query(name, rtype).map(|r| match r {
            Rdata::Addr(a) => Some(a),
            _ => None,
        })
    }

    /// The names of `addr` (PTR), /etc/hosts first.
    pub fn ptr(&self, addr: IpAddr) -> Lookup<String> {
        if let Some(name) = self.hosts.name(addr) {
            return Lookup::Ok(vec![name.to_owned()]);
        }
        self.ask_chain(Name::from(addr), RecordType::PTR).map(|r| match r {
            Rdata::Name(n) => Some(n),
            _ => None,
        })
    }

    /// The target of `name` when `name` is an alias (a CNAME), for the log of an MX host
    /// that is one (RFC 2181 §10.3 forbids it; mail still flows).
    pub fn cname(&self, name: &str) -> Option<String> {
        match self.query(name, RecordType::CNAME) {
            Lookup::Ok(r) => r.into_iter().find_map(|r| match r {
                Rdata::Name(n) => Some(n),
                _ => None,
            }),
            _ => None,
        }
    }

    /// Forward-confirmed reverse DNS: the first PTR name of `addr` whose addresses include
    /// `addr`. `NoData` when no name confirms.
    pub fn fcrdns(&self, addr: IpAddr) -> Lookup<String> {
        let names = match self.ptr(addr) {
            Lookup::Ok(n) => n,
            Lookup::TempFail(e) => return Lookup::TempFail(e),
            other => return other,
        };
        let mut temp = None;
        // A host with dozens of PTRs gets its first few checked, not all.
        for name in names.into_iter().take(4) {
            match self.addrs(&name) {
                Lookup::Ok(a) if a.contains(&addr) => return Lookup::Ok(vec![name]),
                Lookup::TempFail(e) => temp = Some(e),
                _ => {}
            }
        }
        temp.map_or(Lookup::NoData, Lookup::TempFail)
    }

    fn query(&self, name: &str, rtype: RecordType) -> Lookup<Rdata> {
        match Name::from_ascii(name) {
            Ok(mut n) => {
                // Mail domains are absolute: no search list (RFC 5321 §5.1).
                n.set_fqdn(true);
                self.ask_chain(n, rtype)
            }
            Err(e) => {
                log::info!("dns {name:?} {rtype}: not a domain name ({e})");
                Lookup::NxDomain
            }
        }
    }

    /// Asks again for a CNAME's target when an answer stops there, `MAX_CNAME` times at most.
    fn ask_chain(&self, mut name: Name, rtype: RecordType) -> Lookup<Rdata> {
        for _ in 0..=MAX_CNAME {
            match self.ask(&name, rtype) {
                Ok(Answer::Records(r)) => return Lookup::Ok(r),
                Ok(Answer::NxDomain) => return Lookup::NxDomain,
                Ok(Answer::Cname(next)) => name = next,
                Ok(Answer::NoData | Answer::Truncated | Answer::ServerFailure(_)) => return Lookup::NoData,
                Err(e) => {
                    log::info!("dns {name} {rtype}: temporary failure: {e}");
                    return Lookup::TempFail(e);
                }
            }
        }
        log::info!("dns {name} {rtype}: CNAME chain longer than {MAX_CNAME}");
        Lookup::TempFail(format!("CNAME chain longer than {MAX_CNAME}"))
    }

    /// Every nameserver in turn, `attempts` rounds: the first answer that is one wins.
    fn ask(&self, name: &Name, rtype: RecordType) -> Result<Answer, String> {
        let mut last = String::from("no nameserver");
        for _ in 0..self.conf.attempts {
            for &server in &self.conf.nameservers {
                let q = Question { id: transport::random_u16(), name: name.clone(), rtype };
                match transport::exchange(server, &q, self.conf.timeout) {
                    Ok(Answer::ServerFailure(rcode)) => last = format!("{server}: {rcode}"),
                    Ok(answer) => return Ok(answer),
                    Err(e) => last = format!("{server}: {e}"),
                }
                log::debug!("dns {name} {rtype}: {last}");
            }
        }
        Err(last)
    }
}
