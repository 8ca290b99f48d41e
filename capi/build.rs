//! Gives `libfogconnect.so` its SONAME, `libfogconnect.so.0`, so that a
//! program records the C ABI it was built against (Debian policy 8.1) and
//! a package can hold the library as `libfogconnect.so.VERSION` with the
//! `.so.0` and `.so` links that `make install` makes. Programs built
//! against the original library (no SONAME, `NEEDED libfogconnect.so`)
//! still find it through the `.so` link.

/// The major version of the C ABI: bump it when a change to
/// `fogconnect.h` breaks programs built against an earlier one.
const C_ABI_MAJOR: u32 = 0;

fn main() {
    // An ELF SONAME; other formats name their libraries differently.
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if matches!(os.as_str(), "linux" | "android" | "freebsd" | "netbsd" | "openbsd") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libfogconnect.so.{C_ABI_MAJOR}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
