//! Shared helpers for the privileged test tiers.
#![allow(dead_code)]

/// True when the test may run. Not root: skip with a loud message, unless
/// `SLUICE_REQUIRE_PRIVILEGED=1` (set by CI), which turns the skip into a failure.
pub fn privileged(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("SLUICE_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: needs root, and SLUICE_REQUIRE_PRIVILEGED=1 forbids skipping");
    }
    eprintln!("!!!!! SKIPPED {test}: needs root (set SLUICE_REQUIRE_PRIVILEGED=1 to fail instead)");
    false
}
