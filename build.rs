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
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    // A binary with packed relocations needs a glibc that reads them (`GLIBC_ABI_DT_RELR`,
    // 2.36): link them only against such a libc, so a build on an older system still runs.
    let linker = std::env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".into());
    if !libc_reads_packed_relocations(&linker) {
        println!(
            "cargo:warning=the target's glibc predates 2.36: relocations not packed (a bigger binary)"
        );
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

/// Whether the C library the linker uses defines `GLIBC_ABI_DT_RELR` (glibc >= 2.36), which a
/// binary with packed relocations requires. Asks the linker driver where its `libc.so.6` is.
fn libc_reads_packed_relocations(linker: &str) -> bool {
    let Ok(out) = std::process::Command::new(linker)
        .arg("-print-file-name=libc.so.6")
        .output()
    else {
        return false;
    };
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    std::fs::read(&path).is_ok_and(|bytes| {
        bytes
            .windows(b"GLIBC_ABI_DT_RELR".len())
            .any(|w| w == b"GLIBC_ABI_DT_RELR")
    })
}
