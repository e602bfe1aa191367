//! The durable-write probe: how many files a second this disk makes durable, written
//! Maildir-style (write, make durable, rename tmp→new, fsync new/), one at a time and in
//! batches, and in batches from several threads at once (mxd's delivery threads overlap
//! their syncs the same way). It gives mxd's figures a ceiling to be read against.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Each writer of a mode stops after its time budget or `MAX_FILES` files.
const MAX_FILES: usize = 4000;

pub struct ProbeResult {
    pub mode: String,
    pub files_per_s: f64,
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `batch` files, makes them durable (`syncfs` or one fsync each), renames them,
/// fsyncs new/ once; repeats until the budget is spent. Returns the files written and the
/// time taken.
fn run(
    dir: &Path,
    size: usize,
    batch: usize,
    use_syncfs: bool,
    budget: Duration,
) -> std::io::Result<(usize, Duration)> {
    let (tmp, new) = (dir.join("tmp"), dir.join("new"));
    std::fs::create_dir_all(&tmp)?;
    std::fs::create_dir_all(&new)?;
    let data = vec![b'x'; size];
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < budget && n < MAX_FILES {
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
    Ok((n, start.elapsed()))
}

/// `threads` writers at once, each in a directory of its own: files/s over all of them.
fn rate(
    dir: &Path,
    size: usize,
    batch: usize,
    use_syncfs: bool,
    threads: usize,
    budget: Duration,
) -> std::io::Result<f64> {
    let results: Vec<std::io::Result<(usize, Duration)>> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..threads)
            .map(|i| {
                let dir = dir.join(format!("w{i}"));
                scope.spawn(move || run(&dir, size, batch, use_syncfs, budget))
            })
            .collect();
        writers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(std::io::Error::other("probe thread panicked"))))
            .collect()
    });
    let (mut files, mut longest) = (0, Duration::ZERO);
    for r in results {
        let (n, elapsed) = r?;
        files += n;
        longest = longest.max(elapsed);
    }
    Ok(files as f64 / longest.as_secs_f64().max(1e-9))
}

#[cfg(target_os = "linux")]
fn syncfs(f: &File) -> std::io::Result<()> {
    Ok(nix::unistd::syncfs(f)?)
}

#[cfg(not(target_os = "linux"))]
fn syncfs(f: &File) -> std::io::Result<()> {
    f.sync_all()
}

/// Every mode in turn, each for `budget`, each in a directory of its own. Nothing is
/// deleted until the end, and nothing at all with `keep`: on ext4 without a journal, files
/// created in the minutes after many were deleted are slow (the inode allocator skips
/// recently freed inodes), which would make whatever runs next pay for the clean-up.
pub fn probe(dir: &Path, size: usize, budget: Duration, keep: bool) -> std::io::Result<Vec<ProbeResult>> {
    let base = dir.join(format!("mxd-probe-{}", std::process::id()));
    let syncfs = cfg!(target_os = "linux");
    let sync = if syncfs { "syncfs" } else { "fsync" };
    let mut modes = vec![("single".to_owned(), 1, false, 1)];
    for batch in [8, 32, 128] {
        modes.push((format!("batch{batch}-fsync"), batch, false, 1));
        if syncfs {
            modes.push((format!("batch{batch}-syncfs"), batch, true, 1));
        }
    }
    // As many writers as mxd may have delivery threads (2 to 4), each batching: the
    // ceiling for a server whose threads sync in parallel.
    for threads in [2, 4] {
        for batch in [32, 128] {
            modes.push((format!("{threads}x-batch{batch}-{sync}"), batch, syncfs, threads));
        }
    }
    let out = modes
        .into_iter()
        .map(|(mode, batch, use_syncfs, threads)| {
            let files_per_s = rate(&base.join(&mode), size, batch, use_syncfs, threads, budget)?;
            Ok(ProbeResult { mode, files_per_s })
        })
        .collect();
    if !keep {
        let _ = std::fs::remove_dir_all(&base);
    }
    out
}
