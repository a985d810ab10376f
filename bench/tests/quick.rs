//! The harness runs end to end in --quick mode and writes complete results. Proves the
//! harness works (every path verified against the stats map); asserts no timing.
mod support;

use std::{path::PathBuf, process::Command};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sluice-bench");

/// Every path and the reason it must be counted under (the floors count nothing).
const EXPECTED: [(&str, Option<&str>); 14] = [
    ("floor", None),
    ("floor_repeat_200", None),
    ("floor_repeat_1", None),
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
    ("vpc_local_wrapped@10", Some("fwd_local")),
];

/// The VPC paths, each measured at both scales (`@10`, `@100k`), with their reason and
/// method kind.
const EXPECTED_VPC: [(&str, &str, &str); 9] = [
    ("vpc_local", "fwd_local", "repeat"),
    ("vpc_encap", "fwd_encap", "repeat_restored"),
    ("vpc_decap", "fwd_decap", "repeat_restored"),
    ("vpc_local_routed", "fwd_local", "fresh"),
    ("vpc_encap_routed", "fwd_encap", "fresh"),
    ("vpc_arp_reply", "arp_reply", "fresh"),
    ("vpc_no_route_drop", "drop_no_route", "repeat"),
    ("vpc_blackhole_drop", "drop_blackhole", "repeat"),
    ("vpc_spoofed_ip_drop", "drop_spoofed_ip", "repeat"),
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
    let find = |name: &str| {
        paths
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("path {name} missing from micro.json"))
    };
    let mut expected: Vec<(String, Option<String>)> = EXPECTED
        .iter()
        .map(|(n, r)| (n.to_string(), r.map(String::from)))
        .collect();
    for (base, reason, method) in EXPECTED_VPC {
        for scale in ["10", "100k"] {
            let name = format!("{base}@{scale}");
            assert_eq!(find(&name)["method"]["kind"], method, "{name}");
            expected.push((name, Some(reason.to_string())));
        }
    }
    for (name, reason) in &expected {
        let path = find(name);
        assert_eq!(
            path["expected_reason"].as_str(),
            reason.as_deref(),
            "{name}"
        );
        assert!(number(&path["runs"], "runs") > 0.0, "{name} has no runs");
        assert!(
            number(&path["calls_per_run"], "calls") >= 1.0,
            "{name} has no calls"
        );
        // Net figures subtract a floor measured the same way, and that floor exists.
        let floor = find(path["floor"].as_str().expect("floor named"));
        assert_eq!(floor["repeat"], path["repeat"], "{name}");
        assert_eq!(floor["calls_per_run"], path["calls_per_run"], "{name}");
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
    assert_eq!(paths.len(), expected.len(), "unexpected extra paths");

    // Both scales were built as promised, and each VPC path has its ratio.
    let scales = report["scales"].as_array().expect("scales is a list");
    let routes: Vec<f64> = scales
        .iter()
        .map(|s| number(&s["routes"], "routes"))
        .collect();
    assert_eq!(routes, [10.0, 100_000.0]);
    assert_eq!(number(&scales[1]["vpcs"], "vpcs"), 1000.0);
    let ratios = report["scale_ratios"].as_array().expect("scale_ratios");
    for (base, _, _) in EXPECTED_VPC {
        let r = ratios
            .iter()
            .find(|r| r["path"] == base)
            .unwrap_or_else(|| panic!("no scale ratio for {base}"));
        assert!(number(&r["raw_ratio"], "raw_ratio") > 0.0, "{base}");
    }
    assert_eq!(ratios.len(), EXPECTED_VPC.len());

    for file in ["summary.md", "micro.svg"] {
        let len = std::fs::metadata(out.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .len();
        assert!(len > 0, "{file} is empty");
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for needle in [
        "underlay_vxlan_pass",
        "vpc_encap@100k",
        "10 routes against 100,000 routes",
        "Issue 3 targets",
    ] {
        assert!(summary.contains(needle), "{needle} missing:\n{summary}");
    }
    let svg = std::fs::read_to_string(out.join("micro.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "not an SVG");
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn e2e_exits_2_as_not_yet_implemented() {
    // `control` is implemented: tests/control.rs runs it (a bare `control` would run the full
    // benchmark into bench/results/latest).
    let run = Command::new(BIN)
        .arg("e2e")
        .output()
        .expect("run sluice-bench");
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("not yet implemented: needs the VPC overlay (issue 3)"),
        "{stderr}"
    );
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
