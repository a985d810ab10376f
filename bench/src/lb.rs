//! The load balancer paths of `micro`: the measured VM of the VPC paths (on `lo`, 10
//! routes, no security group) sending to a VIP of its subnet, in an instance of its own.
//! The VIP has [`LB_PORTS`] UDP listeners from port [`LB_PORT`], each with a Maglev table
//! of the default size ([`MAGLEV_SIZE`] entries) naming its backend: the local NIC
//! [`LOCAL_PEER`] on port [`BACKEND_PORT`] + i (so every packet ends as `fwd_local`).
//!
//! - `lb_new_flow`: a new flow each packet (its source port counts up, then its listener
//!   port): forward entry (miss), listener, table, backend, conflict lookup, rewrite,
//!   translated entry and forward entry inserted, counted.
//! - `lb_established`: a live balanced flow: forward entry hit, backend still usable,
//!   rewrite, translated entry kept.
//!
//! Both rewrite their frame, so they are measured on a fresh copy per call with one
//! repetition, net of the floor measured the same way (as NAT's).

use anyhow::{ensure, Context, Result};
use aya::{
    maps::{Array, ArrayOfMaps, HashMap, MapData},
    programs::TestRun,
    TestRunOptions,
};
use sluice_common::{
    lb::{self, *},
    maps,
    programs::{XDP_BENCH_VM, XDP_VM},
    proto::IPPROTO_UDP,
    stats::Reason,
    vpc::{Endpoint, EndpointKey, Ipv4, ENDPOINT_LB_BACKEND, ENDPOINT_VIP},
};
use sluice_dataplane::loader::Dataplane;

use crate::{
    micro::{xdp_md, Method, PathSpec, SOURCE_PORT_OFFSET, XDP_DROP, XDP_REDIRECT},
    sg::FLOWS_PER_PORT,
    vpc::{self, Scale, LO, LOCAL_PEER, VNI},
};

/// The VIP, in the measured VM's subnet.
pub const VIP: Ipv4 = [10, 0, 1, 100];
/// The first listener port (the VPC frames' destination port).
pub const LB_PORT: u16 = 5000;
/// Listener ports: new flows take 60,000 source ports on each.
pub const LB_PORTS: u16 = 16;
pub const BACKEND_PORT: u16 = 8080;

/// The base names of the balancer paths (they run on the balancer instance).
pub const PATHS: [&str; 3] = ["lb_new_flow", "lb_established", "lb_no_listener_drop"];

/// Whether `name` is a balancer path.
pub fn is_lb_path(name: &str) -> bool {
    PATHS.contains(&name)
}

/// Writes the VPC tables (10 routes), the VIP, its listeners, table and backend, and
/// opens the established flow as its first packet would.
pub fn install(dp: &mut Dataplane) -> Result<()> {
    vpc::install(dp, &vpc::tables(Scale::Routes10))?;
    {
        let mut eps: HashMap<_, EndpointKey, Endpoint> =
            HashMap::try_from(dp.map_mut(maps::ENDPOINTS)?)?;
        let peer = EndpointKey {
            vni: VNI,
            ip: LOCAL_PEER,
        };
        let mut e = eps.get(&peer, 0).context("the local peer's endpoint")?;
        e.flags |= ENDPOINT_LB_BACKEND;
        eps.insert(peer, e, 0)?;
        let vip = Endpoint {
            flags: ENDPOINT_VIP,
            ..Default::default()
        };
        eps.insert(EndpointKey { vni: VNI, ip: VIP }, vip, 0)?;
    }
    // Listener `i` has a table of its own naming backend slot `i + 1`: the backend NIC
    // on port `BACKEND_PORT + i`, so flows of two listeners never share a translated tuple.
    for i in 0..u32::from(LB_PORTS) {
        let slot = i + 1;
        let mut backends: Array<_, Backend> = Array::try_from(dp.map_mut(lb::maps::BACKENDS)?)?;
        let b = Backend {
            ip: LOCAL_PEER,
            port: (BACKEND_PORT + i as u16).to_be_bytes(),
            weight: 100,
            flags: BACKEND_USABLE,
        };
        backends.set(slot, b, 0)?;
        let mut table = Array::<MapData, u32>::create(MAGLEV_SIZE, INNER_MAP_FLAGS)?;
        for j in 0..MAGLEV_SIZE {
            table.set(j, slot, 0)?;
        }
        let mut tables: ArrayOfMaps<_, Array<MapData, u32>> =
            ArrayOfMaps::try_from(dp.map_mut(lb::maps::TABLES)?)?;
        tables.set(i, &table, 0)?;
        let mut listeners: HashMap<_, ListenerKey, Listener> =
            HashMap::try_from(dp.map_mut(lb::maps::LISTENERS)?)?;
        let k = ListenerKey {
            vni: VNI,
            vip: VIP,
            port: (LB_PORT + i as u16).to_be_bytes(),
            proto: IPPROTO_UDP,
            _pad: 0,
        };
        let l = Listener {
            table: i,
            size: MAGLEV_SIZE,
            scheduler: Scheduler::Maglev as u8,
            flags: 0,
            _pad: [0; 2],
        };
        listeners.insert(k, l, 0)?;
    }
    // The established flow, opened as its first packet would.
    let frame = vpc::from_vm(VIP);
    let md = xdp_md(frame.len(), LO);
    let mut out = vec![0u8; frame.len() + 512];
    let r = dp
        .program(XDP_VM)?
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ctx_in: Some(&md[..]),
            repeat: 1,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN on the balanced flow's first packet")?;
    ensure!(
        r.return_value == XDP_REDIRECT && out[30..34] == LOCAL_PEER,
        "the balanced flow's first packet was not sent to the backend (action {})",
        r.return_value
    );
    Ok(())
}

/// The VM's frame to the VIP as flow `k`: its source port counts up, then its listener
/// port.
pub fn next_lb_flow(frame: &[u8], k: u32) -> Vec<u8> {
    let sport = 1024 + (k % FLOWS_PER_PORT) as u16;
    let dport = LB_PORT + ((k / FLOWS_PER_PORT) % u32::from(LB_PORTS)) as u16;
    let mut f = frame.to_vec();
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f
}

/// A VIP port past the listeners.
const NO_LISTENER_PORT: u16 = LB_PORT + LB_PORTS + 100;

/// The balancer paths.
pub fn paths() -> Vec<PathSpec> {
    let p = |name: &str, description: &str, method, vary| PathSpec {
        name: name.into(),
        program: XDP_BENCH_VM,
        description: description.into(),
        frame: vpc::from_vm(VIP),
        ingress_ifindex: LO,
        action: XDP_REDIRECT,
        reason: Some(Reason::FwdLocal),
        method,
        scale: None,
        sg: None,
        vary,
    };
    vec![
        p(
            "lb_new_flow",
            "VM to a VIP (Maglev, 65,537-entry table), a new flow each packet: forward entry (miss), listener, table, backend, rewrite, translated and forward entries inserted, counted, to the backend's NIC here",
            Method::NewFlows {
                vary_offset: SOURCE_PORT_OFFSET,
            },
            Some(next_lb_flow),
        ),
        p(
            "lb_established",
            "VM to a VIP, a live balanced flow: forward entry (hit), backend usable, rewrite, translated entry kept, to the backend's NIC here",
            Method::RepeatRestoredFrame,
            None,
        ),
        PathSpec {
            program: XDP_VM,
            frame: {
                let mut f = vpc::from_vm(VIP);
                f[36..38].copy_from_slice(&NO_LISTENER_PORT.to_be_bytes());
                f
            },
            action: XDP_DROP,
            reason: Some(Reason::DropLbNoListener),
            ..p(
                "lb_no_listener_drop",
                "VM to a VIP port no listener serves: forward entry (miss), listener (miss): dropped",
                Method::Repeat,
                None,
            )
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lb_path_is_listed_and_named_once() {
        let names: Vec<String> = paths().into_iter().map(|p| p.name).collect();
        assert_eq!(names, PATHS);
        assert!(names.iter().all(|n| is_lb_path(n)));
    }

    #[test]
    fn new_flows_never_repeat_a_tuple_and_stay_on_listeners() {
        let base = vpc::from_vm(VIP);
        let (a, b) = (next_lb_flow(&base, 0), next_lb_flow(&base, FLOWS_PER_PORT));
        assert_ne!(a[34..38], b[34..38]);
        let dport = u16::from_be_bytes([a[36], a[37]]);
        assert!((LB_PORT..LB_PORT + LB_PORTS).contains(&dport));
    }
}
