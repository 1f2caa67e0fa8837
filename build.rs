//! Gives the shared library an ELF soname, so hosts record
//! `libcoreflow.so.<major>` rather than the unversioned development link and
//! keep working across compatible upgrades. The major number is the crate's
//! major version; CMake derives the same name from Cargo.toml when it
//! installs the link chain libcoreflow.so -> .so.<major> -> .so.<version>.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
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
