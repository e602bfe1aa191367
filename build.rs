//! Build script: in the static Linux build (`cargo release-static`, README "Memory"), lays
//! out the functions that mxd's processes run first at the start of the binary's text.
//!
//! Why: Linux maps the 64 KiB of cached file around every page fault, so a process that runs
//! a few hundred functions scattered over 4 MiB of text maps nearly all of it, once in each
//! of the four processes. Grouped by `link/mxd.order` (made by `link/order`), they take a
//! few dozen pages. Other builds (default, PIE, OpenBSD, other linkers) are left alone.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/mxd.order");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let static_crt = var("CARGO_CFG_TARGET_FEATURE").split(',').any(|f| f == "crt-static");
    // rust-lld is the linker of x86_64-unknown-linux-gnu from Rust 1.90 on; another linker
    // may not know the option.
    let lld_target = var("TARGET") == "x86_64-unknown-linux-gnu" && rustc_minor() >= Some(90);
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join("link/mxd.order");
    if static_crt && lld_target && order.exists() {
        println!("cargo:rustc-link-arg-bin=mxd=-Wl,--symbol-ordering-file={}", order.display());
        // Names from another compiler or Cargo.lock are skipped: a stale file only orders less.
        println!("cargo:rustc-link-arg-bin=mxd=-Wl,--no-warn-symbol-ordering");
    }
}

/// The minor version of the compiler building this crate ("rustc 1.95.0 (...)" -> 95).
fn rustc_minor() -> Option<u32> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.split_whitespace().nth(1)?;
    version.split('.').nth(1)?.parse().ok()
}
