//! The durable-write probe: how many files a second this disk makes durable, written
//! Maildir-style (write, make durable, rename tmp→new, fsync new/), one at a time and in
//! batches. It gives mxd's figures a ceiling to be read against.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Each mode runs at most this long, or `MAX_FILES` files.
const BUDGET: Duration = Duration::from_secs(2);
const MAX_FILES: usize = 4000;

pub struct ProbeResult {
    pub mode: String,
    pub files_per_s: f64,
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `batch` files, makes them durable (`syncfs` or one fsync each), renames them,
/// fsyncs new/ once; repeats until the budget is spent.
fn run(dir: &Path, size: usize, batch: usize, use_syncfs: bool) -> std::io::Result<f64> {
    let (tmp, new) = (dir.join("tmp"), dir.join("new"));
    std::fs::create_dir_all(&tmp)?;
    std::fs::create_dir_all(&new)?;
    let data = vec![b'x'; size];
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < BUDGET && n < MAX_FILES {
        let mut files = Vec::with_capacity(batch);
        for i in 0..batch {
            let name = format!("{}", n + i);
            let mut f = File::create(tmp.join(&name))?;
            f.write_all(&data)?;
            if !use_syncfs {
                f.sync_all()?;
            }
            files.push((name, f));
        }
        if use_syncfs {
            syncfs(&files[0].1)?;
        }
        for (name, _) in &files {
            std::fs::rename(tmp.join(name), new.join(name))?;
        }
        fsync_dir(&new)?;
        n += batch;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&tmp)?;
    std::fs::remove_dir_all(&new)?;
    Ok(rate)
}

#[cfg(target_os = "linux")]
fn syncfs(f: &File) -> std::io::Result<()> {
    Ok(nix::unistd::syncfs(f)?)
}

#[cfg(not(target_os = "linux"))]
fn syncfs(f: &File) -> std::io::Result<()> {
    f.sync_all()
}

pub fn probe(dir: &Path, size: usize) -> std::io::Result<Vec<ProbeResult>> {
    let base = dir.join(format!("mxd-probe-{}", std::process::id()));
    let mut out = vec![ProbeResult { mode: "single".into(), files_per_s: run(&base, size, 1, false)? }];
    for batch in [8, 32, 128] {
        out.push(ProbeResult { mode: format!("batch{batch}-fsync"), files_per_s: run(&base, size, batch, false)? });
        if cfg!(target_os = "linux") {
            out.push(ProbeResult { mode: format!("batch{batch}-syncfs"), files_per_s: run(&base, size, batch, true)? });
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(out)
}
