//! The harness refuses a figure when the program did not take the intended path: checked
//! against the real kernel, not only the unit tests' synthetic stats.
mod support;

use sluice_bench::{
    micro::{self, Method, PathSpec, Plan, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    packets,
    vpc::{self, Scale},
};
use sluice_common::{programs, stats::Reason};
use sluice_dataplane::loader::Dataplane;

fn spec(frame: Vec<u8>, action: u32, reason: Option<Reason>) -> PathSpec {
    PathSpec {
        name: "probe".into(),
        program: programs::XDP_VM,
        description: "verification probe".into(),
        frame,
        ingress_ifindex: 0,
        action,
        reason,
        method: Method::Repeat,
        scale: None,
        sg: None,
        vary: None,
    }
}

/// A VM-port probe against the 10-route tables.
fn vpc_spec(
    program: &'static str,
    frame: Vec<u8>,
    action: u32,
    reason: Reason,
    method: Method,
) -> PathSpec {
    PathSpec {
        program,
        ingress_ifindex: vpc::LO,
        method,
        scale: Some(Scale::Routes10),
        ..spec(frame, action, Some(reason))
    }
}

fn repeated(repeat: u32) -> Plan {
    Plan { repeat, calls: 1 }
}

fn vpc_dataplane() -> Dataplane {
    let mut dp = Dataplane::load(None).expect("object loads");
    vpc::install(&mut dp, &vpc::tables(Scale::Routes10)).expect("tables install");
    dp
}

#[test]
fn a_run_that_takes_another_path_fails_loudly() {
    if !support::privileged("a_run_that_takes_another_path_fails_loudly") {
        return;
    }
    let dp = Dataplane::load(None).expect("object loads");
    // The intended path passes the check.
    let good = spec(packets::arp_request(), XDP_PASS, Some(Reason::PassArp));
    micro::run_plan(&dp, &good, repeated(100)).expect("ARP is counted as pass_arp");

    // ARP claimed as IPv4: the counts give it away.
    let wrong_reason = spec(packets::arp_request(), XDP_PASS, Some(Reason::PassIpv4));
    let err = micro::run_plan(&dp, &wrong_reason, repeated(100))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("took the wrong path") && err.contains("pass_arp"),
        "{err}"
    );

    // Right reason, wrong action.
    let wrong_action = spec(packets::arp_request(), XDP_DROP, Some(Reason::PassArp));
    let err = micro::run_plan(&dp, &wrong_action, repeated(100))
        .unwrap_err()
        .to_string();
    assert!(err.contains("XDP_PASS"), "{err}");
}

#[test]
fn encap_repeated_without_the_restoring_wrapper_is_refused() {
    if !support::privileged("encap_repeated_without_the_restoring_wrapper_is_refused") {
        return;
    }
    let dp = vpc_dataplane();
    let frame = vpc::from_vm(vpc::REMOTE_PEER);
    // Plain xdp_vm: the second repetition sees the outer header (the underlay MAC as
    // source) and is dropped as spoofed, so the run is refused.
    let naked = vpc_spec(
        programs::XDP_VM,
        frame.clone(),
        XDP_REDIRECT,
        Reason::FwdEncap,
        Method::Repeat,
    );
    let err = micro::run_plan(&dp, &naked, repeated(100))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("took the wrong path") && err.contains("drop_spoofed_mac"),
        "{err}"
    );
    // Through the wrapper every repetition encapsulates, and the frame comes back whole.
    let wrapped = vpc_spec(
        programs::XDP_BENCH_VM,
        frame,
        XDP_REDIRECT,
        Reason::FwdEncap,
        Method::RepeatRestored,
    );
    micro::run_plan(&dp, &wrapped, repeated(100)).expect("every repetition encapsulates");
}

#[test]
fn decap_repeated_through_the_wrapper_decapsulates_every_time() {
    if !support::privileged("decap_repeated_through_the_wrapper_decapsulates_every_time") {
        return;
    }
    let dp = vpc_dataplane();
    let wrapped = PathSpec {
        ingress_ifindex: 0,
        ..vpc_spec(
            programs::XDP_BENCH_UNDERLAY,
            vpc::from_underlay(),
            XDP_REDIRECT,
            Reason::FwdDecap,
            Method::RepeatRestored,
        )
    };
    micro::run_plan(&dp, &wrapped, repeated(100)).expect("every repetition decapsulates");
    // Without the wrapper the second repetition parses the inner frame as the outer one.
    let naked = PathSpec {
        program: programs::XDP_UNDERLAY,
        method: Method::Repeat,
        ..wrapped
    };
    let err = micro::run_plan(&dp, &naked, repeated(100))
        .unwrap_err()
        .to_string();
    assert!(err.contains("took the wrong path"), "{err}");
}

#[test]
fn paths_that_change_their_frame_are_refused_as_repeated() {
    if !support::privileged("paths_that_change_their_frame_are_refused_as_repeated") {
        return;
    }
    let dp = vpc_dataplane();
    // A routed frame keeps its path for 200 repetitions, but its TTL changes: the harness
    // sees the frame come back different and refuses the figure.
    let routed = vpc_spec(
        programs::XDP_VM,
        vpc::routed_from_vm(vpc::ROUTED_LOCAL),
        XDP_REDIRECT,
        Reason::FwdLocal,
        Method::Repeat,
    );
    let err = micro::run_plan(&dp, &routed, repeated(vpc::ROUTED_REPEAT))
        .unwrap_err()
        .to_string();
    assert!(err.contains("changed its frame"), "{err}");
    // Fresh frames: every call starts again at TTL 255.
    let fresh = PathSpec {
        method: Method::Fresh {
            repeat: vpc::ROUTED_REPEAT,
        },
        ..routed
    };
    micro::run_plan(
        &dp,
        &fresh,
        Plan {
            repeat: vpc::ROUTED_REPEAT,
            calls: 3,
        },
    )
    .expect("each fresh frame is routed 200 times");

    // An ARP request becomes a reply: repeated, the second repetition is another path.
    let arp = vpc_spec(
        programs::XDP_VM,
        vpc::arp_request(),
        XDP_TX,
        Reason::ArpReply,
        Method::Repeat,
    );
    let err = micro::run_plan(&dp, &arp, repeated(2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("took the wrong path"), "{err}");
    let fresh_arp = PathSpec {
        method: Method::Fresh { repeat: 1 },
        ..arp
    };
    micro::run_plan(
        &dp,
        &fresh_arp,
        Plan {
            repeat: 1,
            calls: 10,
        },
    )
    .expect("every call answers");
}
