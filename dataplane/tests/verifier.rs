//! Tier 4: every program loads through the kernel verifier; reports instruction counts.
mod support;

use sluice_common::{maps, programs};
use sluice_dataplane::loader::Dataplane;

#[test]
fn every_program_passes_the_verifier() {
    if !support::privileged("every_program_passes_the_verifier") {
        return;
    }
    let dp = Dataplane::load(None).expect("object loads");
    let mut report = String::new();
    for name in programs::ALL {
        let info = dp.program(name).unwrap().info().expect("program info");
        let verified = info
            .verified_instruction_count()
            .expect("kernel reports insns");
        let xlated = info.size_translated().expect("kernel reports size") / 8;
        let line = format!("verifier: {name:<14} {xlated:>6} instructions, {verified:>7} verified");
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
        assert!(xlated > 0, "{name} has no instructions");
        assert!(verified < 1_000_000, "{name} is near the verifier's limit");
    }
    // scripts/test.sh prints this after the run, since cargo captures test output.
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/verifier-report.txt");
    std::fs::write(out, report).expect("write verifier report");
}

#[test]
fn every_map_in_the_object_is_pinned_by_the_daemon() {
    if !support::privileged("every_map_in_the_object_is_pinned_by_the_daemon") {
        return;
    }
    let dp = Dataplane::load(None).expect("object loads");
    let mut names = dp.map_names();
    names.retain(|n| !n.starts_with('.'));
    names.sort();
    let mut pinned: Vec<String> = maps::ALL.iter().map(|s| s.to_string()).collect();
    pinned.sort();
    assert_eq!(
        names, pinned,
        "maps::ALL must list every map, or restarts lose it"
    );
}
