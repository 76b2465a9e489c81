//! Link settings for the gateway binary.
//!
//! Relative relocations packed as DT_RELR (`-z pack-relative-relocs`; glibc >= 2.36, which the
//! .deb already requires): the position-independent binary keeps its address-space
//! randomisation, and its ~11,700 pointer fix-ups take 3 KiB instead of 24 bytes each in
//! `.rela.dyn` (issue 18, lean binary: 274 KiB on amd64, 267 KiB on arm64).
//!
//! rustc links x86_64 with its own LLD, which packs them. Debian 12's GNU ld (binutils 2.40)
//! packs them on x86_64 only and ignores the option on aarch64 with a warning, so the arm64
//! binary is linked by the same LLD (rustup's `rust-lld`, through the `gcc-ld/ld.lld` wrapper
//! that rustc itself uses), found in the toolchain's sysroot; without it GNU ld links as before.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    if var("CARGO_CFG_TARGET_ARCH") == "aarch64" {
        if let Some(dir) = rust_lld_gcc_ld_dir(&var("RUSTC"), &var("HOST")) {
            println!("cargo:rustc-link-arg-bins=-fuse-ld=lld");
            println!("cargo:rustc-link-arg-bins=-B{}", dir.display());
        }
    }
}

/// `<sysroot>/lib/rustlib/<host>/bin/gcc-ld`, when it holds `ld.lld`.
fn rust_lld_gcc_ld_dir(rustc: &str, host: &str) -> Option<PathBuf> {
    let out = std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = String::from_utf8(out.stdout).ok()?;
    let dir: PathBuf = [sysroot.trim(), "lib", "rustlib", host, "bin", "gcc-ld"]
        .iter()
        .collect();
    dir.join("ld.lld").is_file().then_some(dir)
}
