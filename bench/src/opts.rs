//! Command-line options of mxd-load.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    None,
    Starttls,
    Smtps,
}

/// Message sizes: fixed, uniform in a range, or weighted choices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sizes {
    Fixed(usize),
    Uniform(usize, usize),
    Weighted(Vec<(usize, u32)>),
}

impl Sizes {
    /// The size for message number `n` (deterministic: runs are repeatable).
    pub fn pick(&self, n: u64) -> usize {
        let r = splitmix(n);
        match self {
            Sizes::Fixed(s) => *s,
            Sizes::Uniform(a, b) => a + (r % (b - a + 1) as u64) as usize,
            Sizes::Weighted(choices) => {
                let total: u64 = choices.iter().map(|c| u64::from(c.1)).sum();
                let mut x = r % total.max(1);
                for (size, w) in choices {
                    if x < u64::from(*w) {
                        return *size;
                    }
                    x -= u64::from(*w);
                }
                choices.last().map_or(0, |c| c.0)
            }
        }
    }
}

pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// "4096", "4k", "1m", "16KiB".
pub fn parse_size(s: &str) -> Result<usize, String> {
    let l = s.trim().to_ascii_lowercase();
    let l = l.trim_end_matches("ib").trim_end_matches('b');
    let (num, mult) = match l.chars().last() {
        Some('k') => (&l[..l.len() - 1], 1024),
        Some('m') => (&l[..l.len() - 1], 1024 * 1024),
        _ => (l, 1),
    };
    num.parse::<usize>().map(|n| n * mult).map_err(|_| format!("bad size '{s}'"))
}

/// "4k", "1k:16k" (uniform), "1k=70,16k=25,1m=5" (weighted).
pub fn parse_sizes(s: &str) -> Result<Sizes, String> {
    if s.contains('=') {
        let mut v = Vec::new();
        for part in s.split(',') {
            let (size, w) = part.split_once('=').ok_or_else(|| format!("bad weight in '{part}'"))?;
            v.push((parse_size(size)?, w.parse().map_err(|_| format!("bad weight '{w}'"))?));
        }
        return Ok(Sizes::Weighted(v));
    }
    if let Some((a, b)) = s.split_once(':') {
        let (a, b) = (parse_size(a)?, parse_size(b)?);
        if a > b {
            return Err(format!("empty range '{s}'"));
        }
        return Ok(Sizes::Uniform(a, b));
    }
    parse_size(s).map(Sizes::Fixed)
}

#[derive(Clone, Debug)]
pub struct Opts {
    pub target: String,
    pub sessions: usize,
    pub messages: Option<u64>,
    pub duration: Option<Duration>,
    pub sizes: Sizes,
    pub rcpts: usize,
    pub per_session: u64,
    pub pipelining: bool,
    pub tls: Tls,
    pub rate: Option<f64>,
    pub warmup: u64,
    pub from: String,
    pub to: Vec<String>,
    pub helo: String,
    pub timeout: Duration,
    pub json: bool,
    pub progress: bool,
}

pub const USAGE: &str = "usage: mxd-load [options] HOST:PORT
       mxd-load --fsync-probe DIR [--size N] [-t SECS] [--keep] [--json]
  -c, --sessions N      concurrent sessions (default 8)
  -n, --messages N      total messages (default 1000)
  -t, --duration SECS   run for SECS instead of a count (--fsync-probe: per mode, default 2)
  -s, --size SPEC       4096 | 4k | 1k:16k (uniform) | 1k=70,16k=25,1m=5 (weighted); default 4k
  -r, --rcpts N         recipients per message (default 1)
  --per-session N       messages per session before QUIT and reconnect (default: unlimited)
  --pipelining          MAIL, RCPTs and DATA in one write (when the server offers PIPELINING)
  --starttls | --smtps  TLS without certificate verification
  --rate R              open loop: start R messages/s in all, latency from the intended start
  --warmup N            messages excluded from the statistics (default 0)
  --from ADDR           envelope sender (default load@mxd-load.test)
  --to ADDR[,ADDR…]     recipients, cycled; {n} in an address is replaced by a counter
  --helo NAME           (default mxd-load.test)
  --timeout SECS        per reply (default 30)
  --keep                (--fsync-probe) leave the probe's files in DIR for the caller to remove
  --json                one JSON object on stdout
  --progress            progress bar on stderr even when it is not a terminal";

pub fn parse(args: Vec<std::ffi::OsString>) -> Result<Command, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut o = Opts {
        target: String::new(),
        sessions: 8,
        messages: None,
        duration: None,
        sizes: Sizes::Fixed(4096),
        rcpts: 1,
        per_session: u64::MAX,
        pipelining: false,
        tls: Tls::None,
        rate: None,
        warmup: 0,
        from: "load@mxd-load.test".into(),
        to: vec!["joseph@test".into()],
        helo: "mxd-load.test".into(),
        timeout: Duration::from_secs(30),
        json: false,
        progress: false,
    };
    let mut probe = None;
    let mut keep = false;
    let err = |e: lexopt::Error| e.to_string();
    let num = |v: String| v.parse::<u64>().map_err(|_| format!("bad number '{v}'"));
    fn value(p: &mut lexopt::Parser) -> Result<String, String> {
        p.value().map_err(|e| e.to_string())?.string().map_err(|e| e.to_string())
    }
    while let Some(arg) = p.next().map_err(err)? {
        match arg {
            Short('c') | Long("sessions") => o.sessions = num(value(&mut p)?)?.max(1) as usize,
            Short('n') | Long("messages") => o.messages = Some(num(value(&mut p)?)?),
            Short('t') | Long("duration") => {
                o.duration = Some(Duration::from_secs_f64(value(&mut p)?.parse().map_err(|_| "bad duration")?))
            }
            Short('s') | Long("size") => o.sizes = parse_sizes(&value(&mut p)?)?,
            Short('r') | Long("rcpts") => o.rcpts = num(value(&mut p)?)?.max(1) as usize,
            Long("per-session") => o.per_session = num(value(&mut p)?)?.max(1),
            Long("pipelining") => o.pipelining = true,
            Long("starttls") => o.tls = Tls::Starttls,
            Long("smtps") => o.tls = Tls::Smtps,
            Long("rate") => o.rate = Some(value(&mut p)?.parse().map_err(|_| "bad rate")?),
            Long("warmup") => o.warmup = num(value(&mut p)?)?,
            Long("from") => o.from = value(&mut p)?,
            Long("to") => o.to = value(&mut p)?.split(',').map(str::to_owned).collect(),
            Long("helo") => o.helo = value(&mut p)?,
            Long("timeout") => o.timeout = Duration::from_secs(num(value(&mut p)?)?),
            Long("json") => o.json = true,
            Long("progress") => o.progress = true,
            Long("fsync-probe") => probe = Some(value(&mut p)?),
            Long("keep") => keep = true,
            Short('h') | Long("help") => return Err(USAGE.into()),
            Value(v) if o.target.is_empty() => o.target = v.string().map_err(err)?,
            other => return Err(format!("{}\n{USAGE}", other.unexpected())),
        }
    }
    if let Some(dir) = probe {
        let size = match o.sizes {
            Sizes::Fixed(s) => s,
            _ => 4096,
        };
        let budget = o.duration.unwrap_or(Duration::from_secs(2));
        return Ok(Command::Probe { dir: dir.into(), size, budget, keep, json: o.json });
    }
    if o.target.is_empty() {
        return Err(USAGE.into());
    }
    if o.messages.is_none() && o.duration.is_none() {
        o.messages = Some(1000);
    }
    Ok(Command::Load(o))
}

pub enum Command {
    Load(Opts),
    Probe { dir: std::path::PathBuf, size: usize, budget: Duration, keep: bool, json: bool },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_sizes("4096"), Ok(Sizes::Fixed(4096)));
        assert_eq!(parse_sizes("16KiB"), Ok(Sizes::Fixed(16384)));
        assert_eq!(parse_sizes("1k:16k"), Ok(Sizes::Uniform(1024, 16384)));
        assert_eq!(parse_sizes("1k=70,1m=30"), Ok(Sizes::Weighted(vec![(1024, 70), (1 << 20, 30)])));
        assert!(parse_sizes("16k:1k").is_err());
        assert!(parse_sizes("big").is_err());
        let u = Sizes::Uniform(10, 20);
        assert!((0..1000).all(|n| (10..=20).contains(&u.pick(n))));
        let w = Sizes::Weighted(vec![(1, 90), (2, 10)]);
        let twos = (0..10_000).filter(|n| w.pick(*n) == 2).count();
        assert!((700..1300).contains(&twos), "{twos}");
    }
}
