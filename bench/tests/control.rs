//! `sluice-bench control --quick` runs end to end against a real sluiced and writes complete,
//! consistent results. Proves the harness works (every change was seen by the datapath and
//! its reason checked, the scale apply was counted in the pinned maps); asserts no timing.
mod support;

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sluice-bench");

/// A latency distribution: n samples, min ≤ p50 ≤ p90 ≤ p99 ≤ max.
fn check_dist(d: &Value, what: &str, n: u64) {
    assert_eq!(d["n"].as_u64(), Some(n), "{what}: {d}");
    let v: Vec<f64> = ["min", "p50", "p90", "p99", "max"]
        .iter()
        .map(|k| support::number(&d[k], &format!("{what}.{k}")))
        .collect();
    assert!(
        v.windows(2).all(|w| w[0] <= w[1]),
        "{what} not ordered: {d}"
    );
}

/// A Summary over runs: min ≤ median ≤ max.
fn check_summary(s: &Value, what: &str) {
    let (min, med, max) = (
        support::number(&s["min"], what),
        support::number(&s["median"], what),
        support::number(&s["max"], what),
    );
    assert!(min <= med && med <= max, "{what}: {s}");
}

fn check_series(s: &Value, what: &str, changes: u64) {
    check_dist(&s["api_to_datapath_ms"], what, changes);
    check_dist(&s["api_reply_ms"], what, changes);
    check_dist(&s["add_ms"], what, changes.div_ceil(2));
    check_dist(&s["replace_ms"], what, changes / 2);
    assert!(s["meets_target"].is_boolean(), "{what}: {s}");
    let samples = s["samples"].as_array().expect("samples");
    assert_eq!(samples.len() as u64, changes, "{what}");
    let mut last_generation = 0;
    for (j, x) in samples.iter().enumerate() {
        let kind = if j % 2 == 0 { "add" } else { "replace" };
        assert_eq!(x["kind"], kind, "{what} sample {j}: {x}");
        let g = x["generation"].as_u64().expect("generation");
        assert!(g > last_generation, "{what}: generations must grow: {x}");
        last_generation = g;
        // The datapath cannot change before the call was sent; the watcher ran at least once.
        assert!(
            support::number(&x["datapath_ms"], "datapath_ms") > 0.0,
            "{what}: {x}"
        );
        assert!(
            support::number(&x["reply_ms"], "reply_ms") > 0.0,
            "{what}: {x}"
        );
        assert!(x["polls"].as_u64().unwrap() >= 1, "{what}: {x}");
    }
}

#[test]
fn control_quick_writes_json_summary_and_chart() {
    if !support::privileged("control_quick_writes_json_summary_and_chart") {
        return;
    }
    let (out, r, stderr) = support::run_quick(BIN, "control");
    assert_eq!(r["mode"], "control");
    let p = &r["params"];
    assert_eq!(p["quick"], true);
    let changes = p["changes"].as_u64().unwrap();
    let scale_changes = p["scale_changes"].as_u64().unwrap();
    let (vpcs, routes) = (
        p["vpcs"].as_u64().unwrap(),
        p["routes_per_vpc"].as_u64().unwrap(),
    );
    let runs = p["runs"].as_u64().unwrap();
    assert!(
        changes >= 2 && scale_changes >= 2 && vpcs >= 2 && runs >= 1,
        "{p}"
    );
    assert!(r["machine"]["kernel_release"].as_str().is_some());

    check_series(&r["latency_small"], "latency_small", changes);
    check_series(&r["latency_at_scale"], "latency_at_scale", scale_changes);
    assert_eq!(r["latency_small"]["vpcs"], 1);
    assert_eq!(r["latency_at_scale"]["vpcs"].as_u64(), Some(vpcs));
    check_dist(
        &r["baselines"]["http_roundtrip_ms"],
        "http",
        changes.min(100),
    );
    check_dist(&r["baselines"]["noop_put_ms"], "noop put", changes.min(100));
    check_dist(
        &r["baselines"]["direct_map_write_ms"],
        "direct",
        2 * changes.min(100).div_ceil(2),
    );

    let a = &r["apply"];
    assert_eq!(a["vpcs"].as_u64(), Some(vpcs));
    assert_eq!(a["routes_total"].as_u64(), Some(vpcs * (routes + 1)));
    let apply_runs = a["runs"].as_array().expect("apply runs");
    assert_eq!(apply_runs.len() as u64, runs);
    for x in apply_runs {
        // What the harness read back from the pinned maps.
        assert_eq!(
            x["maps"]["routes"].as_u64(),
            Some(vpcs * (routes + 1)),
            "{x}"
        );
        assert_eq!(x["maps"]["vnis"].as_u64(), Some(vpcs), "{x}");
        assert_eq!(x["maps"]["ports"].as_u64(), Some(vpcs + 1), "{x}");
        assert_eq!(x["maps"]["endpoints"].as_u64(), Some(vpcs + 1), "{x}");
        assert_eq!(x["maps"]["host_configured"], true, "{x}");
        // Every NIC interface and the underlay got XDP.
        assert_eq!(x["interfaces_attached"].as_u64(), Some(vpcs + 2), "{x}");
        let (total, commit, agent) = (
            support::number(&x["total_s"], "total"),
            support::number(&x["commit_s"], "commit"),
            support::number(&x["agent_s"], "agent"),
        );
        assert!(commit > 0.0 && agent > 0.0, "{x}");
        assert!(
            (commit + agent - total).abs() < 1e-6,
            "the split must add up: {x}"
        );
        assert!(x["agent_apply_all_rounds"].as_u64().unwrap() >= 1, "{x}");
        assert!(x["rss_after_kib"].as_u64().unwrap() > 0, "{x}");
    }
    for k in [
        "total_s",
        "commit_s",
        "agent_s",
        "agent_apply_s",
        "agent_fetch_s",
    ] {
        check_summary(&a["summary"][k], k);
    }

    let ip = &r["in_process"];
    let steps: Vec<&str> = ip["apply"]
        .as_array()
        .expect("apply steps")
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    for want in [
        "topology_encode",
        "topology_decode",
        "validate",
        "store_commit",
        "compile",
        "tables_encode",
        "tables_decode",
        "resolve",
        "map_writes",
        "attach",
    ] {
        assert!(
            steps.contains(&want),
            "in-process step {want} missing: {steps:?}"
        );
    }
    for group in ["apply", "change_at_scale", "change_small"] {
        for s in ip[group].as_array().unwrap() {
            check_summary(&s["seconds"], &format!("{group}.{}", s["step"]));
        }
    }
    let change_steps: Vec<&str> = ip["change_at_scale"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert!(change_steps.contains(&"mutate") && change_steps.contains(&"map_writes"));
    check_summary(&ip["kernel_fib_batch_s"], "kernel_fib_batch_s");
    assert!(ip["tables_json_bytes"].as_u64().unwrap() > 0);

    let summary = std::fs::read_to_string(out.join("summary.md")).expect("summary.md");
    assert!(
        summary.starts_with(support::FOREIGN_SUMMARY.trim_end()),
        "{summary}"
    );
    assert!(summary.contains("<!-- sluice-bench control: begin -->"));
    assert!(summary.contains("API call to datapath"));
    assert!(summary.contains("In-process breakdown"));
    let svg = std::fs::read_to_string(out.join("control.svg")).expect("control.svg");
    assert!(svg.contains("<svg") && svg.contains("API call to datapath"));

    // Nothing left behind: every lab the run names is gone.
    let labs: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.split("control: lab ").nth(1)?.split_whitespace().next())
        .collect();
    assert!(labs.len() >= 3, "the run names its labs: {stderr}");
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    for lab in labs {
        assert!(
            !netns.contains(&format!("{lab}-")),
            "lab {lab}'s namespaces were left: {netns}"
        );
        assert!(
            !std::path::Path::new("/run/sluice").join(lab).exists(),
            "lab {lab}'s run dir was left"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
