//! Session and message ids: unpredictable to a client (they appear in replies and headers)
//! and unique within the process, without a random-number crate. A per-process secret seed
//! from std's hasher keys is mixed with a counter through splitmix64, a bijection, so no two
//! session ids of one process collide.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::envelope::{MsgId, SessionId};

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    })
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn next() -> u64 {
    splitmix64(seed().wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed)))
}

pub(crate) fn session_id() -> SessionId {
    SessionId(next())
}

/// 32 bits as OpenSMTPD's msgid; the queue adds its own collision check when it stores one.
pub(crate) fn msg_id() -> MsgId {
    MsgId((next() >> 32) as u32)
}
