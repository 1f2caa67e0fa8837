//! Gives the shared library an ELF soname, so hosts record
//! `libcoreflow.so.<major>` rather than the unversioned development link and
//! keep working across compatible upgrades. The major number is the crate's
//! major version; CMake derives the same name from Cargo.toml when it
//! installs the link chain libcoreflow.so -> .so.<major> -> .so.<version>.
//!
//! Also sets `cfg(coreflow_avx512)` when the compiler has stable AVX-512
//! intrinsics (Rust 1.89 and later): the crate's minimum Rust stays lower,
//! and older compilers build the AVX2 row kernels only.

/// First Rust minor version (1.x) with stable AVX-512 intrinsics.
const AVX512_MINOR: u32 = 89;

/// The minor version of the compiler cargo uses (`$RUSTC --version`).
fn rustc_minor() -> Option<u32> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    (parts.next()? == "1").then_some(())?;
    parts.next()?.parse().ok()
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");
    println!("cargo:rustc-check-cfg=cfg(coreflow_avx512)");
    if rustc_minor().is_some_and(|minor| minor >= AVX512_MINOR) {
        println!("cargo:rustc-cfg=coreflow_avx512");
    }
    // Only ELF targets whose linkers take GNU-style `-soname` (GNU ld, gold,
    // lld). Other targets keep cargo's defaults, so `cargo build` works
    // everywhere.
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let elf_gnu_ld = matches!(
        os.as_str(),
        "linux" | "android" | "freebsd" | "dragonfly" | "netbsd" | "openbsd"
    );
    if elf_gnu_ld {
        let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcoreflow.so.{major}");
    }
}
