//! The harness runs end to end in --quick mode and writes complete results. Proves the
//! harness works (every path verified against the stats map); asserts no timing.
mod support;

use std::{path::PathBuf, process::Command};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sluice-bench");

/// Every path today and the reason it must be counted under (the floor counts nothing).
const EXPECTED: [(&str, Option<&str>); 11] = [
    ("floor", None),
    ("vm_ipv4_udp_pass", Some("pass_ipv4")),
    ("vm_ipv4_tcp_pass", Some("pass_ipv4")),
    ("vm_arp_pass", Some("pass_arp")),
    ("vm_ipv6_udp_pass", Some("pass_ipv6")),
    ("vm_vlan_ipv4_udp_pass", Some("pass_ipv4")),
    ("underlay_ipv4_udp_pass", Some("pass_ipv4")),
    ("underlay_vxlan_pass", Some("pass_vxlan")),
    ("vm_ipv4_truncated_drop", Some("drop_ipv4_truncated")),
    ("vm_ipv4_bad_ihl_drop", Some("drop_ipv4_bad_ihl")),
    (
        "underlay_vxlan_bad_flags_drop",
        Some("drop_vxlan_bad_flags"),
    ),
];

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn number(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

#[test]
fn micro_quick_writes_json_summary_and_chart_for_every_path() {
    if !support::privileged("micro_quick_writes_json_summary_and_chart_for_every_path") {
        return;
    }
    let out = scratch_dir("quick");
    let run = Command::new(BIN)
        .args(["micro", "--quick", "--out"])
        .arg(&out)
        .output()
        .expect("run sluice-bench");
    assert!(
        run.status.success(),
        "sluice-bench micro --quick failed ({}):\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );

    let json = std::fs::read_to_string(out.join("micro.json")).expect("micro.json written");
    let report: Value = serde_json::from_str(&json).expect("micro.json parses");
    assert_eq!(report["mode"], "micro");
    assert_eq!(report["params"]["quick"], true);
    assert!(report["machine"]["kernel_release"]
        .as_str()
        .is_some_and(|k| !k.is_empty()));
    assert!(number(&report["machine"]["nproc"], "nproc") >= 1.0);
    number(&report["floor_ns"]["median"], "floor median");

    let paths = report["paths"].as_array().expect("paths is a list");
    for (name, reason) in EXPECTED {
        let path = paths
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("path {name} missing from micro.json"));
        assert_eq!(path["expected_reason"].as_str(), reason, "{name}");
        assert!(number(&path["runs"], "runs") > 0.0, "{name} has no runs");
        for figures in ["raw_ns", "net_ns"] {
            let s = &path[figures];
            let (min, median, max) = (
                number(&s["min"], "min"),
                number(&s["median"], "median"),
                number(&s["max"], "max"),
            );
            assert!(
                min <= median && median <= max,
                "{name} {figures}: min {min} median {median} max {max}"
            );
        }
    }
    assert_eq!(paths.len(), EXPECTED.len(), "unexpected extra paths");

    for file in ["summary.md", "micro.svg"] {
        let len = std::fs::metadata(out.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .len();
        assert!(len > 0, "{file} is empty");
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("underlay_vxlan_pass"), "{summary}");
    let svg = std::fs::read_to_string(out.join("micro.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "not an SVG");
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn e2e_and_control_exit_2_as_not_yet_implemented() {
    for mode in ["e2e", "control"] {
        let run = Command::new(BIN)
            .arg(mode)
            .output()
            .expect("run sluice-bench");
        assert_eq!(run.status.code(), Some(2), "{mode}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            stderr.contains("not yet implemented: needs the VPC overlay (issue 3)"),
            "{mode}: {stderr}"
        );
    }
}

#[test]
fn bad_arguments_are_refused_with_a_clear_error() {
    let run = Command::new(BIN)
        .args(["micro", "--runs", "0", "--out"])
        .arg(scratch_dir("bad-args"))
        .output()
        .expect("run sluice-bench");
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("--runs must be at least 1"), "{stderr}");
}
