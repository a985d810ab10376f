//! The harness refuses a figure when the program did not take the intended path: checked
//! against the real kernel, not only the unit tests' synthetic stats.
mod support;

use sluice_bench::{
    micro::{self, PathSpec, XDP_DROP, XDP_PASS},
    packets,
};
use sluice_common::{programs, stats::Reason};
use sluice_dataplane::loader::Dataplane;

fn spec(frame: Vec<u8>, action: u32, reason: Option<Reason>) -> PathSpec {
    PathSpec {
        name: "probe",
        program: programs::XDP_VM,
        description: "verification probe",
        frame,
        action,
        reason,
        method: micro::Method::Repeat,
    }
}

#[test]
fn a_run_that_takes_another_path_fails_loudly() {
    if !support::privileged("a_run_that_takes_another_path_fails_loudly") {
        return;
    }
    let dp = Dataplane::load(None).expect("object loads");
    // The intended path passes the check.
    let good = spec(packets::arp_request(), XDP_PASS, Some(Reason::PassArp));
    micro::run_once(&dp, &good, 100).expect("ARP is counted as pass_arp");

    // ARP claimed as IPv4: the counts give it away.
    let wrong_reason = spec(packets::arp_request(), XDP_PASS, Some(Reason::PassIpv4));
    let err = micro::run_once(&dp, &wrong_reason, 100)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("took the wrong path") && err.contains("pass_arp"),
        "{err}"
    );

    // Right reason, wrong action.
    let wrong_action = spec(packets::arp_request(), XDP_DROP, Some(Reason::PassArp));
    let err = micro::run_once(&dp, &wrong_action, 100)
        .unwrap_err()
        .to_string();
    assert!(err.contains("XDP_PASS"), "{err}");
}
