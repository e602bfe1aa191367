//! How to reach a relay action's host, or for a relay by MX, the hosts of a recipient
//! domain: the client `Spec`s to try, in order, built from the action's options.

use std::net::IpAddr;
use std::path::PathBuf;

use super::client::{RcptStatus, RelayTls, Spec};
use super::mx;
use crate::config::{Config, Method, Relay, Scheme};
use crate::dns::{Lookup, Resolver};
use crate::tls::Verify;

/// The hosts to try for `action` (and `domain`, for a relay by MX), in order; or the
/// verdict for every recipient (a bounce for a null MX, a deferral for a DNS failure).
pub(super) fn candidates(
    config: &Config,
    action: &str,
    domain: Option<&str>,
    resolver: &Resolver,
    mx_port: u16,
) -> Result<Vec<Spec>, RcptStatus> {
    if let Some(Method::Lmtp { dest, .. }) = config.actions.get(action).map(|a| &a.method) {
        return lmtp_spec(&config.hostname, dest).map(|s| vec![s]).map_err(RcptStatus::Temp);
    }
    let relay = relay_of(config, action)
        .ok_or_else(|| RcptStatus::Temp(format!("action {action} is not a relay action (any more)")))?;
    let Some(domain) = domain else {
        return spec_for(config, relay).map(|s| vec![s]).map_err(RcptStatus::Temp);
    };
    if let Some(t) = &relay.domain {
        return by_domain_table(config, relay, t, domain);
    }
    match super::local::skip_self(mx::route(resolver, domain), &super::local::Local::of(config), domain) {
        mx::Route::Hosts(hosts) => {
            let hosts = if relay.backup { backup_hosts(config, relay, resolver, domain, hosts)? } else { hosts };
            hosts.iter().map(|h| mx_spec(config, relay, h, mx_port)).collect::<Result<_, _>>().map_err(RcptStatus::Temp)
        }
        mx::Route::Bounce(status, why) => Err(RcptStatus::Perm(format!("{status} {why}"))),
        mx::Route::Defer(why) => Err(RcptStatus::Temp(why)),
    }
}

/// `relay domain <t>`: no MX lookup; the table maps the recipient domain to a relay URL. A
/// domain it does not name bounces, as OpenSMTPD's permanent lookup failure.
fn by_domain_table(config: &Config, r: &Relay, t: &str, domain: &str) -> Result<Vec<Spec>, RcptStatus> {
    let table = config.table(t).ok_or_else(|| RcptStatus::Temp(format!("table {t} is not defined")))?;
    let found = table.relay_host(domain).map_err(|e| RcptStatus::Temp(format!("table {t}, {domain}: {e}")))?;
    let Some(value) = found else {
        return Err(RcptStatus::Perm(format!("5.4.4 no relay host for domain {domain} in table {t}")));
    };
    let url = crate::config::relay_url(&value).map_err(|e| RcptStatus::Temp(format!("table {t}, {domain}: {e}")))?;
    spec_to(config, r, &url).map(|s| vec![s]).map_err(RcptStatus::Temp)
}

/// `backup [mx NAME]`: only the MXs preferred over NAME (this host's name by default).
/// When NAME is not among the domain's MXs, every MX, as OpenSMTPD; when none is preferred
/// over it, the mail waits (we are the best MX left, and must not loop to ourselves).
fn backup_hosts(
    config: &Config,
    r: &Relay,
    resolver: &Resolver,
    domain: &str,
    hosts: Vec<mx::Host>,
) -> Result<Vec<mx::Host>, RcptStatus> {
    let me = r.backup_mx.as_deref().unwrap_or(&config.hostname).trim_end_matches('.').to_lowercase();
    let ours = match resolver.mx(domain) {
        Lookup::Ok(mxs) => mxs.iter().filter(|m| m.exchange == me).map(|m| m.preference).min(),
        Lookup::TempFail(e) => return Err(RcptStatus::Temp(format!("MX lookup for {domain}: {e}"))),
        Lookup::NoData | Lookup::NxDomain => None,
    };
    let Some(ours) = ours else {
        log::info!("relay domain={domain}: backup MX {me} is not an MX of the domain: every MX is tried");
        return Ok(hosts);
    };
    let better: Vec<mx::Host> = hosts.into_iter().filter(|h| h.preference < ours).collect();
    if better.is_empty() {
        return Err(RcptStatus::Temp(format!(
            "backup MX: no MX of {domain} is preferred over {me} (preference {ours})"
        )));
    }
    Ok(better)
}

pub(super) fn relay_of<'c>(config: &'c Config, action: &str) -> Option<&'c Relay> {
    match &config.actions.get(action)?.method {
        Method::Relay(r) => Some(r),
        _ => None,
    }
}

/// What a relay's options say about TLS verification, the client certificate and the
/// source address, whatever the host.
type Common = (Verify, Option<(PathBuf, PathBuf)>, Option<IpAddr>);

fn common(config: &Config, r: &Relay, verify_default: Verify) -> Result<Common, String> {
    let verify = match (&r.ca, r.no_verify) {
        (_, true) => Verify::Nothing,
        (Some(ca), false) => Verify::Ca(config.cas.get(ca).ok_or(format!("ca {ca} is not defined"))?.cert.clone()),
        (None, false) => verify_default,
    };
    let identity = match &r.pki {
        Some(name) => {
            let pki = config.pkis.get(name).ok_or(format!("pki {name} is not defined"))?;
            Some((pki.cert.clone(), pki.key.clone()))
        }
        None => None,
    };
    let src = match &r.src {
        Some(t) => Some(
            config
                .table(t)
                .ok_or(format!("table {t} is not defined"))?
                .source()
                .map_err(|e| format!("src table {t}: {e}"))?
                .ok_or(format!("src table {t} has no address"))?,
        ),
        None => None,
    };
    Ok((verify, identity, src))
}

/// How to reach one MX host. Without `tls`, STARTTLS when offered and no certificate
/// check, as OpenSMTPD does for MX relays; with `tls`, STARTTLS required and verified
/// (unless `no-verify`).
fn mx_spec(config: &Config, r: &Relay, host: &mx::Host, port: u16) -> Result<Spec, String> {
    if let Some(t) = &r.auth {
        return Err(format!("auth <{t}> needs a relay host (relay host URL with label@)"));
    }
    let (verify, identity, src) = common(config, r, if r.tls { Verify::System } else { Verify::Nothing })?;
    Ok(Spec {
        host: host.name.clone(),
        addrs: host.addrs.clone(),
        port,
        lmtp: false,
        tls: if r.tls { RelayTls::Required } else { RelayTls::Opportunistic },
        verify,
        identity,
        src,
        helo: r.helo.clone().unwrap_or_else(|| config.hostname.clone()),
        helo_src: helo_src(config, r, src)?,
        auth: None,
    })
}

/// How to reach the host of a relay with `host URL`.
fn spec_for(config: &Config, r: &Relay) -> Result<Spec, String> {
    let Some(url) = r.host.as_ref() else { return Err("relay without a host".into()) };
    spec_to(config, r, url)
}

/// How to reach the relay host `url` with the relay's options.
fn spec_to(config: &Config, r: &Relay, url: &crate::config::RelayUrl) -> Result<Spec, String> {
    let tls = match url.scheme {
        Scheme::Smtp | Scheme::Lmtp if r.tls => RelayTls::Required,
        Scheme::Smtp => RelayTls::Opportunistic,
        Scheme::SmtpTls => RelayTls::Required,
        Scheme::SmtpNoTls | Scheme::Lmtp => RelayTls::Never,
        Scheme::Smtps => RelayTls::Implicit,
    };
    let (verify, identity, src) = common(config, r, Verify::System)?;
    let auth = match (&r.auth, &url.label) {
        (Some(t), Some(label)) => {
            let table = config.table(t).ok_or(format!("table {t} is not defined"))?;
            // A proc table's lookup may fail (its process down): the relay defers.
            let value = table
                .credentials(label)
                .map_err(|e| format!("credentials for {label} in table {t}: {e}"))?
                .ok_or(format!("no credentials for {label} in table {t}"))?;
            let (user, pass) =
                value.split_once(':').ok_or(format!("credentials for {label}: expected user:password"))?;
            Some((user.to_owned(), pass.to_owned()))
        }
        (Some(t), None) => return Err(format!("auth <{t}> needs a label@ in the relay URL")),
        _ => None,
    };
    Ok(Spec {
        host: url.host.clone(),
        addrs: Vec::new(),
        port: url.port_or_default(),
        lmtp: url.scheme == Scheme::Lmtp,
        tls,
        verify,
        identity,
        src,
        helo: r.helo.clone().unwrap_or_else(|| config.hostname.clone()),
        helo_src: helo_src(config, r, src)?,
        auth,
    })
}

/// `helo-src <t>`: source address → HELO name, picked once the connection has its local
/// address. A proc table is asked for the `src` address (config/check.rs wants one).
fn helo_src(config: &Config, r: &Relay, src: Option<IpAddr>) -> Result<Option<Vec<(IpAddr, String)>>, String> {
    let Some(t) = &r.helo_src else { return Ok(None) };
    let table = config.table(t).ok_or(format!("table {t} is not defined"))?;
    if !table.is_proc() {
        let pairs = table.keys().filter_map(|k| Some((k.parse::<IpAddr>().ok()?, table.get(k)?.to_owned()))).collect();
        return Ok(Some(pairs));
    }
    let src = src.ok_or(format!("helo-src <{t}>: a proc table needs 'src'"))?;
    let name = table.helo_name(src).map_err(|e| format!("helo-src table {t}: {e}"))?;
    Ok(Some(name.map(|n| vec![(src, n)]).unwrap_or_default()))
}

/// An `lmtp DEST` action's server: DEST is a unix socket path or host:port (port 24 when
/// left out); never TLS, as OpenSMTPD's mail.lmtp.
fn lmtp_spec(helo: &str, dest: &str) -> Result<Spec, String> {
    let (host, port) = if dest.starts_with('/') {
        (dest.to_owned(), 0)
    } else {
        match dest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') => {
                (h.to_owned(), p.parse().map_err(|_| format!("lmtp {dest}: expected host:port or a socket path"))?)
            }
            _ => (dest.to_owned(), 24),
        }
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    Ok(Spec {
        addrs: host.parse::<IpAddr>().map(|a| vec![a]).unwrap_or_default(),
        host,
        port,
        lmtp: true,
        tls: RelayTls::Never,
        verify: Verify::Nothing,
        identity: None,
        src: None,
        helo: helo.to_owned(),
        helo_src: None,
        auth: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lmtp_destinations() {
        let c = "mx.test";
        let s = lmtp_spec(c, "/run/dovecot/lmtp").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.lmtp, s.tls), ("/run/dovecot/lmtp", 0, true, RelayTls::Never));
        let s = lmtp_spec(c, "127.0.0.1:2424").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.addrs.clone()), ("127.0.0.1", 2424, vec!["127.0.0.1".parse().unwrap()]));
        let s = lmtp_spec(c, "[::1]:24").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("::1", 24));
        assert_eq!(lmtp_spec(c, "lmtp.example").unwrap().port, 24);
        assert!(lmtp_spec(c, "h:port").is_err());
    }
}
