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

/// The machine has two cores: labs that run at once would starve each other's traffic.
pub fn one_lab_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A change through the API that must succeed; returns its JSON answer (null when empty)
/// once every agent applied it.
pub fn change(
    t: &mut sluice_dataplane::lab::TopologyLab,
    method: sluice_dataplane::client::Method,
    path: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let what = format!("{method} {path}");
    let body = (!body.is_null()).then_some(body);
    let resp = t
        .change(method, path, body.as_ref())
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    if resp.body.trim().is_empty() {
        serde_json::Value::Null
    } else {
        resp.json().unwrap_or_else(|e| panic!("{what}: {e:#}"))
    }
}
