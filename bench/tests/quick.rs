//! The harness runs end to end in --quick mode and writes complete results. Proves the
//! harness works (micro: every path verified against the stats map; e2e: traffic flowed
//! along the path under test and the labs are gone); asserts no timing.
mod support;

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sluice-bench");

/// Every path and the reason it must be counted under (the floors count nothing).
const EXPECTED: [(&str, Option<&str>); 15] = [
    ("floor", None),
    ("floor_repeat_200", None),
    ("floor_repeat_1", None),
    ("floor_repeat_4096", None),
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

/// The security-group paths (all `fwd_local`) with their method kind.
const EXPECTED_SG: [(&str, &str); 10] = [
    ("sg_new_flow@1r", "new_flows"),
    ("sg_first_packet@1r", "repeat"),
    ("sg_established@1r", "repeat"),
    ("sg_new_flow@100r", "new_flows"),
    ("sg_first_packet@100r", "repeat"),
    ("sg_new_flow@1000r", "new_flows"),
    ("sg_first_packet@1000r", "repeat"),
    ("sg_established@1000r", "repeat"),
    ("sg_new_flow@1m", "new_flows"),
    ("sg_established@1m", "repeat"),
];

/// The NAT paths with their reason and method kind.
/// The drop paths of the `@full` and `@drops` instances.
const EXPECTED_SG_DROPS: [(&str, &str); 7] = [
    ("sg_ct_full_drop@full", "drop_ct_full"),
    ("sg_egress_drop@drops", "drop_sg_egress"),
    ("sg_ingress_drop@drops", "drop_sg_ingress"),
    ("sg_revoked_drop@drops", "drop_sg_revoked"),
    ("blocklist_dst_drop@drops", "drop_blocklist_dst"),
    ("blocklist_src_drop@drops", "drop_blocklist_src"),
    ("nat_no_source_drop@drops", "drop_nat_no_source"),
];

const EXPECTED_NAT: [(&str, &str, &str); 12] = [
    ("nat_vpc_local", "fwd_local", "repeat_restored_frame"),
    ("snat_new_flow", "fwd_nat_out", "new_flows"),
    ("snat_established", "fwd_nat_out", "repeat_restored_frame"),
    ("snat_reply", "fwd_nat_in", "repeat_restored_frame"),
    ("dnat_new_flow", "fwd_nat_in", "new_flows"),
    ("dnat_established", "fwd_nat_in", "repeat_restored_frame"),
    ("nat_default_deny", "drop_nat_no_rule", "repeat"),
    ("snat_exhausted_drop", "drop_nat_ports_exhausted", "fresh"),
    (
        "nat_unresolved_owner_drop",
        "drop_nat_unresolved_owner",
        "repeat",
    ),
    ("nat_to_owner", "fwd_nat_owner", "repeat_restored_frame"),
    ("nat_not_owner_drop", "drop_nat_not_owner", "repeat"),
    (
        "snat_icmp_error_no_state_drop",
        "drop_nat_no_state",
        "repeat",
    ),
];

/// The load balancer paths with their reason and method kind.
const EXPECTED_LB: [(&str, &str, &str); 6] = [
    ("lb_no_listener_drop", "drop_lb_no_listener", "repeat"),
    ("lb_no_backend_drop", "drop_lb_no_backend", "repeat"),
    ("lb_no_table_drop", "drop_lb_no_table", "repeat"),
    ("lb_conflict_drop", "drop_lb_conflict", "repeat"),
    ("lb_new_flow", "fwd_local", "new_flows"),
    ("lb_established", "fwd_local", "repeat_restored_frame"),
];

/// The VPC paths, each measured at both scales (`@10`, `@100k`), with their reason and
/// method kind.
const EXPECTED_VPC: [(&str, &str, &str); 21] = [
    ("vpc_local", "fwd_local", "repeat"),
    ("vpc_encap", "fwd_encap", "repeat_restored"),
    ("vpc_decap", "fwd_decap", "repeat_restored"),
    ("vpc_local_routed", "fwd_local", "fresh"),
    ("vpc_encap_routed", "fwd_encap", "fresh"),
    ("vpc_arp_reply", "arp_reply", "fresh"),
    ("vpc_no_route_drop", "drop_no_route", "repeat"),
    ("vpc_blackhole_drop", "drop_blackhole", "repeat"),
    ("vpc_spoofed_ip_drop", "drop_spoofed_ip", "repeat"),
    ("vpc_spoofed_mac_drop", "drop_spoofed_mac", "repeat"),
    ("vpc_not_ipv4_drop", "drop_vm_not_ipv4", "repeat"),
    ("vpc_arp_not_in_vpc_drop", "drop_arp_not_in_vpc", "repeat"),
    ("vpc_ttl_exceeded_drop", "drop_ttl_exceeded", "repeat"),
    ("vpc_no_endpoint_drop", "drop_no_endpoint", "repeat"),
    ("vpc_mtu_exceeded_drop", "drop_mtu_exceeded", "repeat"),
    (
        "vpc_no_underlay_neighbor_drop",
        "drop_no_underlay_neighbor",
        "repeat",
    ),
    ("vpc_nat_no_border_drop", "drop_nat_no_border", "repeat"),
    ("vpc_unknown_vni_drop", "drop_unknown_vni", "repeat"),
    (
        "vpc_vxlan_unknown_dest_drop",
        "drop_vxlan_unknown_dest",
        "repeat",
    ),
    (
        "vpc_vxlan_spoofed_source_drop",
        "drop_vxlan_spoofed_source",
        "repeat",
    ),
    (
        "vpc_vxlan_inner_not_ipv4_drop",
        "drop_vxlan_inner_not_ipv4",
        "repeat",
    ),
];

#[test]
fn micro_quick_writes_json_summary_and_chart_for_every_path() {
    if !support::privileged("micro_quick_writes_json_summary_and_chart_for_every_path") {
        return;
    }
    let out = support::scratch_dir("quick");
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
    assert!(support::number(&report["machine"]["nproc"], "nproc") >= 1.0);
    support::number(&report["floor_ns"]["median"], "floor median");

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
    // One path per parser verdict, each repeated (parse paths change nothing).
    for c in sluice_bench::packets::parse_cases() {
        assert_eq!(find(c.name)["method"]["kind"], "repeat", "{}", c.name);
        expected.push((c.name.to_string(), Some(c.reason.name().to_string())));
    }
    for (name, method) in EXPECTED_SG {
        assert_eq!(find(name)["method"]["kind"], method, "{name}");
        expected.push((name.to_string(), Some("fwd_local".into())));
    }
    for (name, reason) in EXPECTED_SG_DROPS {
        assert_eq!(find(name)["method"]["kind"], "repeat", "{name}");
        expected.push((name.to_string(), Some(reason.to_string())));
    }
    for &(name, reason, method) in EXPECTED_NAT.iter().chain(&EXPECTED_LB) {
        assert_eq!(find(name)["method"]["kind"], method, "{name}");
        expected.push((name.to_string(), Some(reason.to_string())));
    }
    for (name, reason) in &expected {
        let path = find(name);
        assert_eq!(
            path["expected_reason"].as_str(),
            reason.as_deref(),
            "{name}"
        );
        assert!(
            support::number(&path["runs"], "runs") > 0.0,
            "{name} has no runs"
        );
        assert!(
            support::number(&path["calls_per_run"], "calls") >= 1.0,
            "{name} has no calls"
        );
        // Net figures subtract a floor measured the same way, and that floor exists.
        let floor = find(path["floor"].as_str().expect("floor named"));
        assert_eq!(floor["repeat"], path["repeat"], "{name}");
        assert_eq!(floor["calls_per_run"], path["calls_per_run"], "{name}");
        for figures in ["raw_ns", "net_ns"] {
            let s = &path[figures];
            let (min, median, max) = (
                support::number(&s["min"], "min"),
                support::number(&s["median"], "median"),
                support::number(&s["max"], "max"),
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
        .map(|s| support::number(&s["routes"], "routes"))
        .collect();
    assert_eq!(routes, [10.0, 100_000.0]);
    assert_eq!(support::number(&scales[1]["vpcs"], "vpcs"), 1000.0);
    let ratios = report["scale_ratios"].as_array().expect("scale_ratios");
    for (base, _, _) in EXPECTED_VPC {
        let r = ratios
            .iter()
            .find(|r| r["path"] == base)
            .unwrap_or_else(|| panic!("no scale ratio for {base}"));
        assert!(
            support::number(&r["raw_ratio"], "raw_ratio") > 0.0,
            "{base}"
        );
    }
    assert_eq!(ratios.len(), EXPECTED_VPC.len());

    // The security-group instances, and the figures against the issue-4 targets.
    let sg_rules: Vec<f64> = report["sg_scales"]
        .as_array()
        .expect("sg_scales is a list")
        .iter()
        .map(|s| support::number(&s["rules"], "rules"))
        .collect();
    assert_eq!(sg_rules, [1.0, 100.0, 1000.0, 1.0, 1.0, 1.0]);
    let t = &report["sg_targets"];
    for k in ["new_flow_net_1", "new_flow_net_1000", "established_added"] {
        support::number(&t[k], k);
    }

    // The NAT instance, and each translating path against its target and the floor.
    let nat = &report["nat"];
    assert_eq!(support::number(&nat["snat_ports"], "snat_ports"), 8192.0);
    assert!(support::number(&nat["map_entries"], "map_entries") > 0.0);
    let targets = report["nat_targets"].as_array().expect("nat_targets");
    let target_paths: Vec<&str> = targets
        .iter()
        .map(|t| t["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        target_paths,
        [
            "snat_new_flow",
            "snat_established",
            "snat_reply",
            "dnat_new_flow",
            "dnat_established"
        ]
    );
    for t in targets {
        assert!(
            support::number(&t["raw_over_floor"], "raw_over_floor") > 0.0,
            "{t}"
        );
        support::number(&t["target_ns"], "target_ns");
        support::number(&t["over_vpc_local"], "over_vpc_local");
    }

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
        "NAT targets",
        "snat_exhausted_drop",
        "verdict reasons a test run can reach have a path in this run",
        "Out of a test run's reach",
    ] {
        assert!(summary.contains(needle), "{needle} missing:\n{summary}");
    }
    // Every reason a test run can reach was measured: "N of the N verdict reasons ...".
    let coverage = summary
        .lines()
        .find(|l| l.contains("verdict reasons a test run can reach"))
        .expect("the coverage line");
    let counts: Vec<&str> = coverage.split_whitespace().take(4).collect();
    assert_eq!(
        (counts[1], counts[2]),
        ("of", "the"),
        "coverage line: {coverage}"
    );
    assert_eq!(
        counts[0], counts[3],
        "not every reason measured: {coverage}"
    );
    let svg = std::fs::read_to_string(out.join("micro.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "not an SVG");
    std::fs::remove_dir_all(&out).ok();
}

/// Both labs of an end-to-end report were torn down: none of their namespaces is left.
fn assert_labs_gone(r: &Value) {
    let labs: Vec<&str> = r["labs"]
        .as_array()
        .expect("labs")
        .iter()
        .map(|l| l.as_str().expect("lab name"))
        .collect();
    assert_eq!(labs.len(), 2);
    assert_eq!(r["leftover_namespaces"].as_array().map(Vec::len), Some(0));
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    for lab in labs {
        assert!(
            !netns.contains(&format!("{lab}-")),
            "namespaces of lab {lab} left:\n{netns}"
        );
    }
}

/// `mode` wrote its section of summary.md, keeping the other mode's, and its chart; then
/// the output directory goes.
fn assert_section_and_chart(out: &std::path::Path, mode: &str) {
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.starts_with(support::FOREIGN_SUMMARY), "{summary}");
    assert!(
        summary.contains(&format!("<!-- sluice-bench {mode}: begin -->")),
        "{summary}"
    );
    let svg = std::fs::read_to_string(out.join(format!("{mode}.svg"))).unwrap();
    assert!(svg.starts_with("<svg"), "not an SVG");
    std::fs::remove_dir_all(out).ok();
}

/// A Summary over rounds: min ≤ median ≤ max.
fn check_summary(s: &Value, what: &str) {
    let (min, med, max) = (
        support::number(&s["min"], what),
        support::number(&s["median"], what),
        support::number(&s["max"], what),
    );
    assert!(min <= med && med <= max, "{what}: {s}");
}

/// Every comparison e2e reports, Sluice against the kernel.
const E2E_METRICS: [&str; 9] = [
    "UDP sent",
    "UDP arrived at rx NIC",
    "UDP received",
    "UDP loss",
    "latency p50",
    "latency p99",
    "latency p99.9",
    "TCP throughput",
    "TCP connections",
];

#[test]
fn e2e_quick_writes_json_summary_and_chart_and_leaves_no_namespace() {
    if !support::privileged("e2e_quick_writes_json_summary_and_chart_and_leaves_no_namespace") {
        return;
    }
    let (out, r, _) = support::run_quick(BIN, "e2e");
    assert_eq!(r["mode"], "e2e");
    let p = &r["params"];
    assert_eq!(p["quick"], true);
    let rounds = p["runs"].as_u64().expect("runs");
    let pings = p["pings"].as_u64().expect("pings");
    assert!(rounds >= 1 && pings >= 1, "{p}");
    assert_ne!(p["sender_cpu"], p["receiver_cpu"]);
    assert!(r["machine"]["kernel_release"].as_str().is_some());

    assert_labs_gone(&r);

    let comparisons = r["comparisons"].as_array().expect("comparisons");
    for metric in E2E_METRICS {
        let c = comparisons
            .iter()
            .find(|c| c["metric"] == metric)
            .unwrap_or_else(|| panic!("no comparison {metric}"));
        check_summary(&c["sluice"], metric);
        check_summary(&c["kernel"], metric);
        if !c["ratio"].is_null() {
            check_summary(&c["ratio"], metric);
        }
    }
    assert_eq!(comparisons.len(), E2E_METRICS.len());

    // The kernel also with stateful filtering: a figure and a ratio for every metric
    // (loss may have none when nothing was lost).
    for c in comparisons {
        check_summary(&c["kernel_nft"], "kernel_nft");
        if !c["ratio_nft"].is_null() {
            check_summary(&c["ratio_nft"], "ratio_nft");
        }
    }

    for dataplane in ["sluice", "kernel", "kernel_nft"] {
        let of = |test: &str| -> Vec<Value> {
            r[test]
                .as_array()
                .unwrap_or_else(|| panic!("{test} is a list"))
                .iter()
                .filter(|x| x["dataplane"] == dataplane)
                .cloned()
                .collect()
        };
        let udp = of("udp");
        assert_eq!(udp.len() as u64, rounds, "{dataplane} UDP runs");
        for u in &udp {
            let (sent, received) = (
                support::number(&u["sent"], "sent"),
                support::number(&u["received"], "received"),
            );
            // Traffic flowed, along the path under test, and nothing foreign was counted.
            assert!(received > 0.0 && received <= sent, "{dataplane}: {u}");
            assert!(
                support::number(&u["path"]["sender_host"], "sender_host") >= received,
                "{u}"
            );
            assert!(
                support::number(&u["path"]["receiver_host"], "receiver_host") >= received,
                "{u}"
            );
            assert_eq!(u["foreign"], 0, "{u}");
        }
        let latency = of("latency");
        assert_eq!(latency.len() as u64, rounds);
        for l in &latency {
            let n = l["n"].as_u64().unwrap() + l["lost"].as_u64().unwrap();
            assert_eq!(n, pings, "{dataplane}: {l}");
            let v: Vec<f64> = ["min_us", "p50_us", "p99_us", "p999_us", "max_us"]
                .iter()
                .map(|k| support::number(&l[k], k))
                .collect();
            assert!(v.windows(2).all(|w| w[0] <= w[1]), "{dataplane}: {l}");
        }
        let tcp = of("tcp");
        assert_eq!(tcp.len() as u64, rounds);
        assert!(tcp
            .iter()
            .all(|t| support::number(&t["gbit_per_s"], "gbit") > 0.0));
        let crr = of("crr");
        assert_eq!(crr.len() as u64, rounds);
        assert!(
            crr.iter().all(|c| c["connections"].as_u64() > Some(0)),
            "{crr:?}"
        );
    }

    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.starts_with("# sluice-bench micro"), "{summary}");
    for needle in [
        "<!-- sluice-bench e2e: begin -->",
        "Sluice ÷ kernel",
        "Sluice ÷ kernel + nftables",
        "UDP received",
        "latency p99.9",
    ] {
        assert!(summary.contains(needle), "{needle} missing:\n{summary}");
    }
    let svg = std::fs::read_to_string(out.join("e2e.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "not an SVG");
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn e2e_refuses_one_cpu_for_both_ends() {
    let run = Command::new(BIN)
        .args([
            "e2e",
            "--quick",
            "--sender-cpu",
            "0",
            "--receiver-cpu",
            "0",
            "--out",
        ])
        .arg(support::scratch_dir("e2e-bad-args"))
        .output()
        .expect("run sluice-bench");
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("both 0"), "{stderr}");
}

#[test]
fn bad_arguments_are_refused_with_a_clear_error() {
    let run = Command::new(BIN)
        .args(["micro", "--runs", "0", "--out"])
        .arg(support::scratch_dir("bad-args"))
        .output()
        .expect("run sluice-bench");
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("--runs must be at least 1"), "{stderr}");
}

#[test]
fn nat_quick_compares_connections_through_both_nats_and_leaves_no_namespace() {
    if !support::privileged(
        "nat_quick_compares_connections_through_both_nats_and_leaves_no_namespace",
    ) {
        return;
    }
    let (out, r, _) = support::run_quick(BIN, "nat");
    assert_eq!(r["mode"], "nat");
    assert_eq!(r["params"]["quick"], true);
    let rounds = r["params"]["runs"].as_u64().expect("runs");
    assert_labs_gone(&r);
    // Sluice's VM left from an EIP of the lab's pool.
    assert!(
        r["eip"]
            .as_str()
            .is_some_and(|e| e.starts_with("203.0.113.")),
        "{}",
        r["eip"]
    );

    let comparisons = r["comparisons"].as_array().expect("comparisons");
    assert_eq!(comparisons.len(), 2);
    for c in comparisons {
        assert!(
            c["metric"]
                .as_str()
                .unwrap()
                .starts_with("TCP connections through NAT"),
            "{c}"
        );
        check_summary(&c["sluice"], "sluice");
        check_summary(&c["kernel"], "kernel");
    }
    for dataplane in ["sluice", "kernel"] {
        let runs: Vec<&Value> = r["crr"]
            .as_array()
            .expect("crr")
            .iter()
            .filter(|x| x["dataplane"] == dataplane)
            .collect();
        assert_eq!(
            runs.len() as u64,
            2 * rounds,
            "{dataplane}: two tests per round"
        );
        for run in runs {
            // Connections completed, every one translated (the Internet has no route to
            // the VPC, so none could complete otherwise).
            let n = support::number(&run["connections"], "connections");
            assert!(n > 0.0, "{dataplane}: {run}");
            let out = support::number(&run["counters"]["translated_out"], "translated_out");
            assert!(out >= n, "{dataplane}: {run}");
            if dataplane == "sluice" {
                let back = support::number(&run["counters"]["translated_in"], "translated_in");
                assert!(back >= n, "{run}");
            }
        }
    }
    assert_section_and_chart(&out, "nat");
}

#[test]
fn lb_quick_compares_connections_through_both_balancers_and_leaves_no_namespace() {
    if !support::privileged(
        "lb_quick_compares_connections_through_both_balancers_and_leaves_no_namespace",
    ) {
        return;
    }
    let (out, r, _) = support::run_quick(BIN, "lb");
    assert_eq!(r["mode"], "lb");
    assert_eq!(r["params"]["quick"], true);
    let rounds = r["params"]["runs"].as_u64().expect("runs");
    assert_labs_gone(&r);
    assert_eq!(r["vip"], "10.0.1.100:80");
    let backends = r["backends"].as_array().expect("backends").len();
    assert_eq!(backends, 3);

    let comparisons = r["comparisons"].as_array().expect("comparisons");
    assert_eq!(comparisons.len(), 1);
    let c = &comparisons[0];
    assert_eq!(c["metric"], "TCP connections through a VIP");
    check_summary(&c["sluice"], "sluice");
    check_summary(&c["kernel"], "kernel");
    for dataplane in ["sluice", "kernel"] {
        let runs: Vec<&Value> = r["crr"]
            .as_array()
            .expect("crr")
            .iter()
            .filter(|x| x["dataplane"] == dataplane)
            .collect();
        assert_eq!(runs.len() as u64, rounds, "{dataplane}: one test per round");
        for run in runs {
            // Connections completed, and the backends (bound to their own addresses, so
            // only translated connections reach them) answered every one, from the
            // client's own address.
            let n = support::number(&run["connections"], "connections");
            assert!(n > 0.0, "{dataplane}: {run}");
            let served: Vec<f64> = run["served"]
                .as_array()
                .expect("served")
                .iter()
                .map(|v| support::number(v, "served"))
                .collect();
            assert_eq!(served.len(), backends, "{run}");
            assert!(served.iter().sum::<f64>() >= n, "{dataplane}: {run}");
            assert_eq!(run["foreign_peers"], 0, "{dataplane}: {run}");
            if dataplane == "kernel" {
                let matched = support::number(&run["counters"]["dnat_matched"], "dnat_matched");
                assert!(matched >= n, "{run}");
            }
        }
    }
    assert_section_and_chart(&out, "lb");
}
