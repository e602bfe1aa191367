//! `db:` tables: Berkeley DB 1.85 hash files, the format OpenBSD's makemap(8) writes and
//! OpenSMTPD's table_db reads (dbopen(3), DB_HASH, hash version 2).
//!
//! The reader walks every bucket (header → bucket page through the split-point table →
//! overflow chain), so it needs no hash function and reads files of either byte order.
//! Every offset is checked against the page; a malformed file is an error, never a panic.
//! Pairs too large for a page ("big" pairs on overflow chains of their own) are refused:
//! no mail table needs a 4 KiB key and value.
//!
//! The writer builds a fresh file as dbopen(3) would after inserting the pairs into a
//! table sized so that every bucket fits in one page: header (big-endian, as dbopen writes
//! it), bucket pages, and the first free-page bitmap.

use std::fmt;
use std::path::Path;

const MAGIC: u32 = 0x0006_1561;
const VERSION: u32 = 2;
/// Page-entry markers below this are not data offsets.
const REAL_KEY: u16 = 4;
const OVFLPAGE: u16 = 0;
/// Overflow addresses: split point in the high bits, page within it in the low 11.
const SPLITSHIFT: u32 = 11;
const SPLITMASK: u32 = 0x7ff;
const HEADER_LEN: usize = 260;
/// Larger files are refused rather than read into memory.
const MAX_FILE: u64 = 256 << 20;
const BSIZE: usize = 4096;
const BSHIFT: u32 = 12;

/// One stored key and value, terminators included.
pub type Pair = (Vec<u8>, Vec<u8>);

#[derive(Debug, PartialEq, Eq)]
pub enum DbError {
    Read(String),
    /// Not a hash file of version 2, or a page that does not hold together.
    Format(&'static str),
    /// A pair stored on overflow pages of its own.
    BigPair,
    /// A pair that does not fit a page (writer).
    TooLarge(String),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Read(e) => write!(f, "cannot read db file: {e}"),
            DbError::Format(what) => write!(f, "not a Berkeley DB 1.85 hash file as makemap writes: {what}"),
            DbError::BigPair => write!(f, "an entry larger than a page (over 4 KiB) is not supported"),
            DbError::TooLarge(key) => write!(f, "entry '{key}' is too large for one page (over 4 KiB)"),
        }
    }
}

struct Header {
    page_le: bool,
    bsize: usize,
    bshift: u32,
    max_bucket: u32,
    hdrpages: u32,
    spares: [u32; 32],
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn header(file: &[u8]) -> Result<Header, DbError> {
    if file.len() < HEADER_LEN {
        return Err(DbError::Format("shorter than its header"));
    }
    let field = |i: usize| be32(file, i * 4);
    if field(0) != MAGIC {
        return Err(DbError::Format("bad magic (a btree file, or another database?)"));
    }
    if field(1) != VERSION {
        return Err(DbError::Format("hash version is not 2"));
    }
    let page_le = match field(2) {
        1234 => true,
        4321 => false,
        _ => return Err(DbError::Format("bad byte order")),
    };
    let (bsize, bshift) = (field(3) as usize, field(4));
    if !(8..=16).contains(&bshift) || bsize != 1 << bshift {
        return Err(DbError::Format("bad page size"));
    }
    let mut spares = [0u32; 32];
    for (i, s) in spares.iter_mut().enumerate() {
        *s = be32(file, 68 + i * 4);
    }
    let (max_bucket, hdrpages) = (field(10), field(15));
    if max_bucket >= 1 << 24 || hdrpages == 0 || hdrpages > 16 {
        return Err(DbError::Format("bad bucket count or header size"));
    }
    Ok(Header { page_le, bsize, bshift, max_bucket, hdrpages, spares })
}

/// ceil(log2(n)), as dbopen's __log2.
fn log2(n: u32) -> u32 {
    let mut i = 0;
    while i < 32 && (1u64 << i) < u64::from(n) {
        i += 1;
    }
    i
}

impl Header {
    fn bucket_page(&self, bucket: u32) -> u64 {
        let spare = if bucket == 0 { 0 } else { self.spares[(log2(bucket + 1) - 1) as usize & 31] };
        u64::from(bucket) + u64::from(self.hdrpages) + u64::from(spare)
    }

    fn overflow_page(&self, oaddr: u16) -> u64 {
        let split = u32::from(oaddr) >> SPLITSHIFT;
        let last_of_split = (1u32 << split).saturating_sub(1);
        self.bucket_page(last_of_split) + u64::from(u32::from(oaddr) & SPLITMASK)
    }
}

/// Every (key, value) of the file at `path`, as stored (NUL terminators included).
pub fn read(path: &Path) -> Result<Vec<Pair>, DbError> {
    let meta = std::fs::metadata(path).map_err(|e| DbError::Read(e.to_string()))?;
    if meta.len() > MAX_FILE {
        return Err(DbError::Format("larger than 256 MiB"));
    }
    let file = std::fs::read(path).map_err(|e| DbError::Read(e.to_string()))?;
    parse(&file)
}

/// As [`read`], from the file's bytes.
pub fn parse(file: &[u8]) -> Result<Vec<Pair>, DbError> {
    let h = header(file)?;
    let pages = (file.len() as u64 >> h.bshift) + 1;
    let empty = vec![0u8; h.bsize];
    let page_at = |n: u64| -> &[u8] {
        let start = n << h.bshift;
        match usize::try_from(start).ok().and_then(|s| file.get(s..s + h.bsize)) {
            Some(p) => p,
            // Pages never written read as empty, as in a sparse file.
            None => &empty,
        }
    };
    let mut out = Vec::new();
    // Each overflow page belongs to one chain: more hops than pages means a loop.
    let mut hops = 0u64;
    for bucket in 0..=h.max_bucket {
        let mut page = page_at(h.bucket_page(bucket));
        loop {
            match page_pairs(&h, page, &mut out)? {
                None => break,
                Some(oaddr) => {
                    hops += 1;
                    if hops > pages {
                        return Err(DbError::Format("an overflow chain loops"));
                    }
                    page = page_at(h.overflow_page(oaddr));
                }
            }
        }
    }
    Ok(out)
}

/// The pairs of one page into `out`; the overflow address that follows, if any.
fn page_pairs(h: &Header, page: &[u8], out: &mut Vec<Pair>) -> Result<Option<u16>, DbError> {
    let short = |i: usize| -> Result<u16, DbError> {
        let b = page.get(i * 2..i * 2 + 2).ok_or(DbError::Format("page index out of the page"))?;
        Ok(if h.page_le { u16::from_le_bytes([b[0], b[1]]) } else { u16::from_be_bytes([b[0], b[1]]) })
    };
    let n = usize::from(short(0)?);
    if (n + 3) * 2 > h.bsize {
        return Err(DbError::Format("page index larger than the page"));
    }
    let mut end = h.bsize;
    let mut i = 1;
    while i < n {
        let (a, b) = (short(i)?, short(i + 1)?);
        if b == OVFLPAGE {
            return Ok(Some(a));
        }
        if b < REAL_KEY {
            return Err(DbError::BigPair);
        }
        let (key_at, data_at) = (usize::from(a), usize::from(b));
        if !(data_at <= key_at && key_at <= end && end <= h.bsize) {
            return Err(DbError::Format("pair offsets out of order"));
        }
        out.push((page[key_at..end].to_vec(), page[data_at..key_at].to_vec()));
        end = data_at;
        i += 2;
    }
    Ok(None)
}

/// The value makemap(8) stores for the keys of a `-t set` map.
pub const SET_VALUE: &str = "<set>";

/// makemap(8): the text table `source` (`key value`, `key: value` or lone keys, as a
/// `file:` table) into a hash file at `out`; keys lowercased, as makemap does. Returns the
/// number of entries.
pub fn makemap(source: &Path, out: &Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(source).map_err(|e| format!("{}: {e}", source.display()))?;
    let (kind, entries) = super::parse_entries(&text).map_err(|e| format!("{}: {e}", source.display()))?;
    let mut seen = std::collections::BTreeSet::new();
    let mut pairs = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let key = k.to_lowercase();
        if !seen.insert(key.clone()) {
            return Err(format!("{}: duplicate entry for {key}", source.display()));
        }
        let value = if kind == super::Kind::List { SET_VALUE.to_owned() } else { v };
        pairs.push(([key.as_bytes(), b"\0"].concat(), [value.as_bytes(), b"\0"].concat()));
    }
    write(out, &pairs).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(pairs.len())
}

/// dbopen's default hash (Chris Torek's: h = h * 33 + c).
fn hash(key: &[u8]) -> u32 {
    key.iter().fold(0u32, |h, &c| h.wrapping_mul(33).wrapping_add(u32::from(c)))
}

/// Writes `pairs` (keys unique, terminators included) as a new hash file at `path`, through
/// a temporary file renamed over it.
pub fn write(path: &Path, pairs: &[Pair]) -> Result<(), DbError> {
    let bytes = build(pairs)?;
    let tmp = path.with_extension("db.tmp");
    let io = |e: std::io::Error| DbError::Read(e.to_string());
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The bytes of a hash file holding `pairs`.
pub fn build(pairs: &[Pair]) -> Result<Vec<u8>, DbError> {
    // A pair takes its two index entries and its bytes; a page also keeps n, free, offset.
    let cost = |(k, v): &Pair| 4 + k.len() + v.len();
    if let Some(big) = pairs.iter().find(|p| cost(p) + 6 > BSIZE / 2) {
        return Err(DbError::TooLarge(String::from_utf8_lossy(&big.0).trim_end_matches('\0').to_owned()));
    }
    let mut l2 = 1u32;
    let buckets = loop {
        let nb = 1usize << l2;
        let mut b: Vec<Vec<usize>> = vec![Vec::new(); nb];
        for (i, (k, _)) in pairs.iter().enumerate() {
            b[hash(k) as usize & (nb - 1)].push(i);
        }
        if b.iter().all(|ix| 6 + ix.iter().map(|&i| cost(&pairs[i])).sum::<usize>() <= BSIZE) {
            break b;
        }
        l2 += 1;
        if l2 > 20 {
            return Err(DbError::TooLarge("(too many entries)".into()));
        }
    };
    let nb = 1u32 << l2;
    let mut file = vec![0u8; BSIZE];
    let fields: [u32; 17] = [
        MAGIC,
        VERSION,
        1234,
        BSIZE as u32,
        BSHIFT,
        256,
        256,
        8,
        l2,
        2,
        nb - 1,
        (nb << 1) - 1,
        nb - 1,
        65536,
        pairs.len() as u32,
        1,
        hash(b"%$sniglet^&\0"),
    ];
    for (i, f) in fields.iter().enumerate() {
        file[i * 4..i * 4 + 4].copy_from_slice(&f.to_be_bytes());
    }
    // dbopen's initial split-point table and first bitmap page (overflow page 1 of split l2).
    for s in [l2, l2 + 1] {
        let at = 68 + s as usize * 4;
        file[at..at + 4].copy_from_slice(&(l2 + 1).to_be_bytes());
    }
    file[196..198].copy_from_slice(&(((l2 << SPLITSHIFT) | 1) as u16).to_be_bytes());
    for ix in &buckets {
        file.extend_from_slice(&bucket_page(pairs, ix));
    }
    let mut bitmap = vec![0xffu8; BSIZE];
    let first = (u32::MAX << ((l2 + 1) & 31)) | 1;
    bitmap[..4].copy_from_slice(&first.to_le_bytes());
    file.extend_from_slice(&bitmap);
    Ok(file)
}

fn bucket_page(pairs: &[Pair], ix: &[usize]) -> Vec<u8> {
    let mut page = vec![0u8; BSIZE];
    let mut index: Vec<u16> = vec![(ix.len() * 2) as u16];
    let mut off = BSIZE;
    for &i in ix {
        let (k, v) = &pairs[i];
        off -= k.len();
        page[off..off + k.len()].copy_from_slice(k);
        index.push(off as u16);
        off -= v.len();
        page[off..off + v.len()].copy_from_slice(v);
        index.push(off as u16);
    }
    let n = index.len() + 2;
    index.push((off - n * 2) as u16);
    index.push(off as u16);
    for (j, s) in index.iter().enumerate() {
        page[j * 2..j * 2 + 2].copy_from_slice(&s.to_le_bytes());
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(n: usize) -> Vec<Pair> {
        (0..n).map(|i| (format!("user{i}@example.com\0").into_bytes(), format!("value {i}\0").into_bytes())).collect()
    }

    #[test]
    fn what_is_written_reads_back() {
        for n in [0, 1, 2, 50, 3000] {
            let mut want = pairs(n);
            let mut got = parse(&build(&want).unwrap()).unwrap();
            want.sort();
            got.sort();
            assert_eq!(got, want, "{n} pairs");
        }
    }

    #[test]
    fn malformed_files_are_errors() {
        let good = build(&pairs(10)).unwrap();
        assert!(parse(&good[..100]).is_err());
        let mut bad = good.clone();
        bad[3] ^= 1;
        assert!(matches!(parse(&bad), Err(DbError::Format(_))));
        // Corrupt every byte of the first bucket page in turn: never a panic.
        for i in BSIZE..BSIZE + 64 {
            let mut b = good.clone();
            b[i] = 0xff;
            let _ = parse(&b);
        }
        assert!(matches!(build(&[(vec![b'k'; 3000], vec![b'v'; 10])]), Err(DbError::TooLarge(_))));
    }
}
