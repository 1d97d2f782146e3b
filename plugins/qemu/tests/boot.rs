//! The real-kernel boot checks (`tests/tests/real/boot.rs`, which the
//! real-kernel test runs after its tiny build) on an image of your choice,
//! without that 30-minute test:
//!
//! ```text
//! KTSTR_BOOT_IMAGE=/path/to/bzImage KTSTR_BOOT_CONFIG=/path/to/config \
//!     cargo test -p ktstr-plugin-qemu --test boot
//! ```
//!
//! The image must be an x86_64 6.12 kernel with sched_ext, BTF and two
//! CPUs (ktstr's `tiny` profile). Without `KTSTR_BOOT_IMAGE` it skips.

#[path = "../../../tests/tests/real/boot.rs"]
mod boot;

#[test]
fn boot_checks_on_a_given_image() {
    let Some(image) = std::env::var_os("KTSTR_BOOT_IMAGE") else {
        ktstr_sdk::testing::skip(
            "boot checks on a given image: set KTSTR_BOOT_IMAGE to an x86_64 tiny bzImage \
             (the real-kernel test runs the same checks on the kernel it builds)",
        );
        return;
    };
    let image = std::path::PathBuf::from(image);
    let config = std::env::var_os("KTSTR_BOOT_CONFIG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| image.with_file_name("config"));
    boot::boot_checks(&image, &config);
}
