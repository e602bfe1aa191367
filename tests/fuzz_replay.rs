//! Replays every file under fuzz/corpus/<target>/ and fuzz/regressions/<target>/ through
//! the same checks the fuzz targets run, on the stable toolchain (issue 7).

mod fuzz_checks;

use std::path::Path;

#[test]
fn corpora_and_regressions_hold() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for target in fuzz_checks::TARGETS {
        for kind in ["corpus", "regressions"] {
            let Ok(rd) = std::fs::read_dir(root.join(kind).join(target)) else { continue };
            for entry in rd.flatten() {
                let data = std::fs::read(entry.path()).unwrap();
                let result = std::panic::catch_unwind(|| fuzz_checks::run(target, &data));
                assert!(result.is_ok(), "{target}: {} fails", entry.path().display());
                replayed += 1;
            }
        }
    }
    assert!(replayed >= 40, "only {replayed} inputs found under fuzz/");
}

#[test]
fn arbitrary_byte_soup_holds() {
    // A cheap deterministic sweep on stable, so the checks run on more than the corpora.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 0..400usize {
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let alphabet = b"HELO EHLO MAIL FROM:<a@b> RCPT TO:<c@d> DATA\r\n.\r\n\n\r\0\xff%{}/..";
                alphabet[(x % alphabet.len() as u64) as usize]
            })
            .collect();
        for target in fuzz_checks::TARGETS {
            if target != "config" {
                fuzz_checks::run(target, &data);
            }
        }
    }
}
