//! The real-kernel boot checks (`tests/tests/real/boot.rs`, which the
//! real-kernel test runs after its tiny builds) on an image of your choice,
//! without that 30-minute test:
//!
//! ```text
//! KTSTR_BOOT_IMAGE=/path/to/bzImage KTSTR_BOOT_CONFIG=/path/to/config \
//!     cargo test -p ktstr-plugin-qemu --test boot
//! ```
//!
//! The image must be a 6.12 kernel with sched_ext, BTF and two CPUs
//! (ktstr's `tiny` profile): an x86_64 `bzImage` or an arm64 `Image`, told
//! apart by the arm64 header's magic. Without `KTSTR_BOOT_IMAGE` it skips.

// Its per-build entry points (`boot_checks`, `arm64_boots`) are the
// real-kernel test's; this harness runs every check on the given arch.
#[allow(dead_code)]
#[path = "../../../tests/tests/real/boot.rs"]
mod boot;

#[test]
fn boot_checks_on_a_given_image() {
    let Some(image) = std::env::var_os("KTSTR_BOOT_IMAGE") else {
        ktstr_sdk::testing::skip(
            "boot checks on a given image: set KTSTR_BOOT_IMAGE to a tiny x86_64 bzImage or \
             arm64 Image (the real-kernel test runs the same checks on the kernels it builds)",
        );
        return;
    };
    let image = std::path::PathBuf::from(image);
    let config = std::env::var_os("KTSTR_BOOT_CONFIG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| image.with_file_name("config"));
    boot::boot_checks_for(image_arch(&image), &image, &config);
}

/// `arm64` when the image carries the arm64 boot header's magic
/// (`ARM\x64` at offset 56), else `x86_64`.
fn image_arch(image: &std::path::Path) -> &'static str {
    use std::io::Read;
    let mut head = [0u8; 64];
    let file = std::fs::File::open(image)
        .unwrap_or_else(|e| panic!("KTSTR_BOOT_IMAGE {}: {e}", image.display()));
    match file.take(64).read_exact(&mut head) {
        Ok(()) if &head[56..60] == b"ARM\x64" => "arm64",
        _ => "x86_64",
    }
}
