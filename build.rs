//! Link settings for the gateway binary.
//!
//! Relative relocations packed as DT_RELR (`-z pack-relative-relocs`, binutils >= 2.38,
//! glibc >= 2.36, which the .deb already requires): the position-independent binary keeps its
//! address-space randomisation, and its ~11,700 pointer fix-ups take a few kilobytes instead of
//! 24 bytes each in `.rela.dyn` (issue 18, lean binary: ~270 KiB).

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
