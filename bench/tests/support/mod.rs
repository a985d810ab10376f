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

/// A fresh scratch directory under the system temp dir (removed first if left over).
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub fn number(v: &serde_json::Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// The summary another mode left in the output directory; a run must keep it.
pub const FOREIGN_SUMMARY: &str = "# sluice-bench micro\n\nmicro table\n";

/// Runs `sluice-bench <mode> --quick --out DIR` next to a summary.md from another mode and
/// returns DIR, the mode's parsed `<mode>.json` and the run's stderr (its log).
pub fn run_quick(bin: &str, mode: &str) -> (std::path::PathBuf, serde_json::Value, String) {
    let out = scratch_dir(mode);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("summary.md"), FOREIGN_SUMMARY).unwrap();
    let run = std::process::Command::new(bin)
        .args([mode, "--quick", "--out"])
        .arg(&out)
        .output()
        .expect("run sluice-bench");
    assert!(
        run.status.success(),
        "sluice-bench {mode} --quick failed ({}):\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let file = out.join(format!("{mode}.json"));
    let json = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let parsed = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{mode}.json parses: {e}"));
    (
        out,
        parsed,
        String::from_utf8_lossy(&run.stderr).into_owned(),
    )
}
