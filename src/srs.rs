//! The Sender Rewriting Scheme (`srs key`, relay `srs`), in the SRS0 form OpenSMTPD and
//! libsrs2 write: a forwarded message's sender `user@origin.example` becomes
//! `SRS0=HHHH=TT=origin.example=user@forwarding.domain`, where TT is the day (base32, two
//! characters, modulo 1024) and HHHH the first four base64 characters of an HMAC-SHA1 over
//! TT, the domain and the user. A bounce coming back to that address is sent on to the
//! original sender, once the hash checks out (with any key) and the age is within `srs ttl`.
//!
//! Mail re-forwarded with an SRS sender gets the SRS1 form, as OpenSMTPD writes it: an
//! `SRS0=HHHH=TT=origin=user@hop` sender becomes `SRS1=GGGG=hop==HHHH=TT=origin=user@forwarding.domain`
//! (an SRS1 sender keeps its first hop and SRS0 part, with our hash). A bounce to it goes
//! back to `SRS0=…@hop`, the first forwarder, whose own hash we cannot check (its age we do).
//!
//! The SRS domain is the domain of the recipient whose alias or .forward forwarded the
//! message (the queue records it), as in OpenSMTPD; mail that was not forwarded keeps its
//! sender.
//!
//! Pure functions of (keys, address, day): untrusted input never panics.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use ring::hmac;

use crate::config::Config;
use crate::envelope::Mailbox;
use crate::queue::QueuedEnvelope;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// OpenSMTPD's default `srs ttl`: four days.
const DEFAULT_TTL_DAYS: u64 = 4;

/// Today's day number, SRS's clock.
pub fn today() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400)
}

fn stamp(day: u64) -> String {
    let t = (day % 1024) as usize;
    [BASE32[t >> 5] as char, BASE32[t & 31] as char].iter().collect()
}

fn hash(key: &str, tt: &str, domain: &str, local: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    for part in [tt, domain, local] {
        ctx.update(part.to_ascii_lowercase().as_bytes());
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref());
    b64[..4].to_owned()
}

fn hash1(key: &str, tail: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(b"SRS1=");
    ctx.update(tail.to_ascii_lowercase().as_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref());
    b64[..4].to_owned()
}

/// `sender`'s SRS form at `srs_domain`, signed with `key`: SRS0 for a plain address, SRS1
/// for an SRS0 or SRS1 one (mail forwarded again); `None` for the null sender or an address
/// without a domain.
pub fn encode(key: &str, sender: &str, srs_domain: &str, day: u64) -> Option<String> {
    let Mailbox { local, domain } = Mailbox::parse(sender)?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    let prefix = local.get(..5).unwrap_or("");
    let tail = if prefix.eq_ignore_ascii_case("SRS0=") {
        // `hop==HHHH=TT=origin=user`: the hop that wrote the SRS0 form, then its SRS0 part.
        Some(format!("{domain}={}", &local[4..]))
    } else if prefix.eq_ignore_ascii_case("SRS1=") {
        // Past the previous hop's hash (`GGGG=`): the first hop and SRS0 part stay.
        local.get(5..).filter(|r| r.as_bytes().get(4) == Some(&b'=')).and_then(|r| r.get(5..)).map(str::to_owned)
    } else {
        None
    };
    if let Some(tail) = tail {
        return (!tail.is_empty()).then(|| format!("SRS1={}={tail}@{srs_domain}", hash1(key, &tail)));
    }
    let tt = stamp(day);
    Some(format!("SRS0={}={tt}={domain}={local}@{srs_domain}", hash(key, &tt, domain, local)))
}

/// Whether `addr` is in an SRS form (its bounce must be decoded before the rules see it).
pub fn is_srs(addr: &str) -> bool {
    let p = addr.get(..5).unwrap_or("");
    p.eq_ignore_ascii_case("SRS0=") || p.eq_ignore_ascii_case("SRS1=")
}

/// The original sender inside `addr`, when a key signed it and it is at most `ttl_days`
/// old; `None` for anything else.
pub fn decode(keys: &[String], addr: &str, day: u64, ttl_days: u64) -> Option<String> {
    if addr.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("SRS1=")) {
        return decode1(keys, addr, day, ttl_days);
    }
    let body = addr.get(5..).filter(|_| addr[..5].eq_ignore_ascii_case("SRS0="))?;
    let (local_part, _srs_domain) = body.rsplit_once('@')?;
    let mut it = local_part.splitn(4, '=');
    let (h, tt, domain, local) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if h.len() != 4 || tt.len() != 2 || domain.is_empty() || local.is_empty() {
        return None;
    }
    if !keys.iter().any(|k| hash(k, tt, domain, local).eq_ignore_ascii_case(h)) {
        return None;
    }
    fresh(tt, day, ttl_days)?.then(|| format!("{local}@{domain}"))
}

/// Whether the two-character day stamp `tt` is at most `ttl_days` old; None if it is not one.
fn fresh(tt: &str, day: u64, ttl_days: u64) -> Option<bool> {
    let digit = |c: u8| BASE32.iter().position(|&b| b == c.to_ascii_uppercase()).map(|v| v as u64);
    let b = tt.as_bytes();
    if b.len() != 2 {
        return None;
    }
    let t = (digit(b[0])? << 5) | digit(b[1])?;
    let age = (day % 1024 + 1024 - t) % 1024;
    Some(age <= ttl_days)
}

/// An SRS1 address of ours: the SRS0 address at the first hop, `SRS0=HHHH=TT=origin=user@hop`.
fn decode1(keys: &[String], addr: &str, day: u64, ttl_days: u64) -> Option<String> {
    let (local_part, _srs_domain) = addr.get(5..)?.rsplit_once('@')?;
    let (h, tail) = local_part.split_once('=')?;
    if h.len() != 4 || !keys.iter().any(|k| hash1(k, tail).eq_ignore_ascii_case(h)) {
        return None;
    }
    let (hop, srs0) = tail.split_once("==")?;
    let mut it = srs0.splitn(3, '=');
    let (h0, tt, rest) = (it.next()?, it.next()?, it.next()?);
    if hop.is_empty() || h0.len() != 4 || rest.is_empty() {
        return None;
    }
    fresh(tt, day, ttl_days)?.then(|| format!("SRS0={srs0}@{hop}"))
}

/// An SRS address that no key of ours signed, or that is older than `srs ttl`.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidSrs;

impl std::fmt::Display for InvalidSrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid SRS address")
    }
}

/// A recipient as the rules must see it: an SRS address of ours, decoded (a bounce finding
/// its way back); any other address as it is (`None`). `Err` for an SRS address that does
/// not verify, when this host signs SRS addresses.
pub fn reverse(config: &Config, rcpt: &str) -> Result<Option<String>, InvalidSrs> {
    let keys = &config.knobs.srs_keys;
    if keys.is_empty() || !is_srs(rcpt) {
        return Ok(None);
    }
    let ttl = config.knobs.srs_ttl.map_or(DEFAULT_TTL_DAYS, |d| d.as_secs() / 86_400);
    decode(keys, rcpt, today(), ttl).map(Some).ok_or(InvalidSrs)
}

/// How a queued message's recipients came to be relayed, as its queue file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarded<'a> {
    /// An alias or a .forward of this recipient (as the client gave it) led elsewhere.
    By(&'a str),
    /// The client named the recipients themselves.
    No,
    /// Not recorded: a queue file written before mxd recorded it.
    Unknown,
}

/// Whether an alias or a .forward led to any of `rcpts` (a message's recipients for one
/// destination, which share one MAIL FROM): the first that was forwarded decides.
pub fn forwarded<'a>(env: &'a QueuedEnvelope, rcpts: &[String]) -> Forwarded<'a> {
    let mut known = true;
    for ((_, addr), orig) in env.rcpts.iter().zip(env.orig_rcpts.iter().chain(std::iter::repeat(&None))) {
        if !rcpts.contains(addr) {
            continue;
        }
        match orig {
            Some(orig) if !orig.eq_ignore_ascii_case(addr) => return Forwarded::By(orig),
            Some(_) => {}
            None => known = false,
        }
    }
    if known {
        Forwarded::No
    } else {
        Forwarded::Unknown
    }
}

/// The sender a relay action with `srs` gives forwarded mail, as OpenSMTPD's mta does: at
/// the domain of the recipient that forwarded it. Mail that was not forwarded goes out as it
/// is, as does mail from this host's own domains and the null sender; a queue file that does
/// not say is rewritten at this host's name. `None` to keep `sender`.
pub fn forward_sender(config: &Config, sender: &str, via: Forwarded<'_>) -> Option<String> {
    let key = config.knobs.srs_keys.first()?;
    let domain = Mailbox::parse(sender)?.domain;
    if crate::rules::is_local_domain(config, domain) {
        return None;
    }
    let srs_domain = match via {
        Forwarded::By(rcpt) => Some(Mailbox::domain_of(rcpt)).filter(|d| !d.is_empty()).unwrap_or(&config.hostname),
        Forwarded::No => return None,
        Forwarded::Unknown => &config.hostname,
    };
    encode(key, sender, srs_domain, today())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_either_key_and_case() {
        let keys = vec!["new-secret".to_owned(), "old-secret".to_owned()];
        let day = 20_000;
        let a = encode("new-secret", "Joseph@Origin.example", "fwd.example", day).unwrap();
        assert!(a.starts_with("SRS0=") && a.ends_with("=Origin.example=Joseph@fwd.example"), "{a}");
        assert_eq!(decode(&keys, &a, day, 4).as_deref(), Some("Joseph@Origin.example"));
        assert_eq!(decode(&keys, &a.to_lowercase(), day + 3, 4).as_deref(), Some("joseph@origin.example"));
        let old = encode("old-secret", "x=y@o.example", "fwd.example", day).unwrap();
        assert_eq!(decode(&keys, &old, day, 4).as_deref(), Some("x=y@o.example"));
    }

    #[test]
    fn forged_expired_and_odd_addresses() {
        let keys = vec!["k".to_owned()];
        let a = encode("k", "u@o.example", "f.example", 1023).unwrap();
        assert!(decode(&keys, &a, 1023 + 2, 4).is_some(), "wraps around day 1024");
        assert!(decode(&keys, &a, 1023 + 5, 4).is_none(), "expired");
        assert!(decode(&["other".to_owned()], &a, 1023, 4).is_none());
        let forged = a.replacen("=u@", "=v@", 1);
        assert!(decode(&keys, &forged, 1023, 4).is_none());
        for odd in ["", "SRS0=", "SRS0=@", "SRS0=abcd=AA==@x", "SRS0=ab=AA=d=l@x", "SRS0=abcd=A!=d=l@x", "srs0=é"] {
            assert!(decode(&keys, odd, 0, 4).is_none(), "{odd}");
        }
        assert!(encode("k", "", "f", 0).is_none());
    }

    #[test]
    fn the_queue_says_who_forwarded() {
        let env = |origs: Vec<Option<&str>>| QueuedEnvelope {
            id: String::new(),
            sender: "u@o.example".into(),
            created: 0,
            rcpts: vec![
                ("out".into(), "a@far".into()),
                ("out".into(), "b@far".into()),
                ("other".into(), "c@far".into()),
            ],
            orig_rcpts: origs.into_iter().map(|o| o.map(str::to_owned)).collect(),
        };
        let ab = ["a@far".to_owned(), "b@far".to_owned()];
        let forwarded_b = env(vec![Some("a@far"), Some("list@lists.example"), Some("x@y")]);
        assert_eq!(forwarded(&forwarded_b, &ab), Forwarded::By("list@lists.example"));
        assert_eq!(forwarded(&forwarded_b, &ab[..1]), Forwarded::No);
        assert_eq!(forwarded(&env(vec![Some("A@far"), Some("b@far"), None]), &ab), Forwarded::No, "case");
        assert_eq!(forwarded(&env(vec![]), &ab), Forwarded::Unknown, "an old queue file");
    }

    #[test]
    fn forwarded_again_srs1() {
        let keys = vec!["k2".to_owned()];
        let day = 20_000;
        let srs0 = encode("k1", "joseph@origin.example", "hop1.example", day).unwrap();
        let h0 = &srs0[5..9];
        let srs1 = encode("k2", &srs0, "hop2.example", day).unwrap();
        assert!(srs1.starts_with("SRS1="), "{srs1}");
        assert!(
            srs1.ends_with(&format!("=hop1.example=={h0}={}=origin.example=joseph@hop2.example", stamp(day))),
            "{srs1}"
        );
        // The bounce goes back to the first hop's SRS0 address, as it wrote it.
        assert_eq!(decode(&keys, &srs1, day, 4).as_deref(), Some(srs0.as_str()));
        assert!(decode(&keys, &srs1.to_lowercase(), day, 4).is_some_and(|d| d.eq_ignore_ascii_case(&srs0)));
        // A third hop keeps the first hop and the SRS0 part, with its own hash.
        let again = encode("k3", &srs1, "hop3.example", day).unwrap();
        assert!(again.ends_with(&format!("=hop1.example=={h0}={}=origin.example=joseph@hop3.example", stamp(day))));
        assert_eq!(decode(&["k3".to_owned()], &again, day, 4).as_deref(), Some(srs0.as_str()));
        assert!(decode(&keys, &again, day, 4).is_none(), "another hop's hash");
        assert!(decode(&keys, &srs1, day + 5, 4).is_none(), "expired");
        let forged = srs1.replacen("=joseph@", "=alice@", 1);
        assert!(decode(&keys, &forged, day, 4).is_none());
        for odd in ["SRS1=", "SRS1=abcd=@x", "SRS1=abcd=h==@x", "SRS1=abcd==x@y", "SRS1=x@y"] {
            assert!(decode(&keys, odd, 0, 4).is_none(), "{odd}");
            let _ = encode("k", odd, "f", 0);
        }
    }
}
