//! The security-group paths of `micro`: the measured VM of the VPC paths (on `lo`, 10
//! routes) gets a security group with 1, 100 or 1,000 rules in each direction, compiled by
//! the agent's compiler and written by its map writer; a fourth instance has 1 rule and a
//! connection table filled with 1,000,000 other flows.
//!
//! The measured frames go from the VM to its same-subnet neighbour on this host, whose
//! port is `lo` as well, so both the sender's egress policy and the receiver's ingress
//! policy (the same NIC slot) are evaluated. In every policy the rule that decides is the
//! last one (the lowest priority): its bit is found in the last word the rule count uses,
//! and the tries hold every rule's prefixes.
//!
//! - `sg_new_flow`: each test run one packet of a flow never seen (its ports count up):
//!   connection lookup (miss), both policies, insert. Measured like the ARP reply (fresh
//!   frames, one repetition per call).
//! - `sg_first_packet`: an ICMP echo reply no request opened: looked up (miss), judged by
//!   both policies and let through, never inserted; so it repeats, and measures the rule
//!   evaluation itself to the nanosecond.
//! - `sg_established`: a packet of a live flow: one lookup, the policy-id comparison, the
//!   state update; compare with `vpc_local@10`, the same path on an unfiltered NIC.

use std::net::Ipv4Addr;

use anyhow::{ensure, Context, Result};
use aya::maps::{HashMap, MapData};
use etherparse::{IpNumber, PacketBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_common::{
    conntrack::{self, CtConfig, CtEntry, CtKey, CT_COUNT_USERSPACE, TCP_ACK},
    programs::{XDP_BENCH_VM, XDP_VM},
    proto::{IPPROTO_ICMP, IPPROTO_TCP},
    stats::Reason,
    vpc::Ipv4,
};
use sluice_dataplane::{
    conntrack as ct,
    intent::Intent,
    loader::Dataplane,
    sg::{apply, compile::compile_host},
};

use crate::{
    micro::{Method, PathSpec, NEW_FLOW_REPEAT, SOURCE_PORT_OFFSET, XDP_REDIRECT},
    vpc::{self, Scale, LO, LOCAL_PEER, ROUTER_MAC, VM},
};

/// The security-group state an SG path runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SgScale {
    Rules1,
    Rules100,
    Rules1000,
    /// One rule; 1,000,000 other flows in the connection table.
    #[serde(rename = "flows_1m")]
    Flows1M,
}

/// Flows put into the table of the `Flows1M` instance.
pub const FILL_FLOWS: u32 = 1_000_000;
/// Its admission limit: none, so the measured new flows are admitted past the fill (the
/// LRU then evicts the oldest fill entries: the table stays full).
const FILL_LIMIT: u32 = u32::MAX;

impl SgScale {
    pub const ALL: [SgScale; 4] = [
        SgScale::Rules1,
        SgScale::Rules100,
        SgScale::Rules1000,
        SgScale::Flows1M,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            SgScale::Rules1 => "1r",
            SgScale::Rules100 => "100r",
            SgScale::Rules1000 => "1000r",
            SgScale::Flows1M => "1m",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SgScale::Rules1 => "1 rule per direction",
            SgScale::Rules100 => "100 rules per direction",
            SgScale::Rules1000 => "1,000 rules per direction",
            SgScale::Flows1M => "1 rule, 1,000,000 flows in the connection table",
        }
    }

    pub fn rules(self) -> usize {
        match self {
            SgScale::Rules1 | SgScale::Flows1M => 1,
            SgScale::Rules100 => 100,
            SgScale::Rules1000 => 1000,
        }
    }

    pub fn filled(self) -> u32 {
        match self {
            SgScale::Flows1M => FILL_FLOWS,
            _ => 0,
        }
    }
}

/// What an SG instance was given, for the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgInfo {
    pub scale: SgScale,
    pub label: String,
    /// Rules per direction on the measured NIC.
    pub rules: usize,
    /// Entries of the compiled policies' tries (both directions).
    pub trie_entries: usize,
    /// Flows put into the connection table before measuring.
    pub filled_flows: u32,
    /// Seconds to compile the policies, and to write them (and the fill) into the maps.
    pub compile_secs: f64,
    pub fill_secs: f64,
}

fn rule(
    direction: &str,
    protocol: &str,
    ports: Option<String>,
    cidr: String,
    priority: i64,
) -> Value {
    let mut r = json!({"direction": direction, "protocol": protocol, "cidr": cidr,
        "action": "allow", "priority": priority});
    if let Some(p) = ports {
        r["ports"] = json!(p);
    }
    r
}

/// `n` rules in each direction: `n - 1` TCP rules on other ports and remotes first, then
/// the one that decides (all protocols, the VPC's subnet), last by priority.
pub(crate) fn rules(n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for k in 0..n - 1 {
        let (hi, lo) = (100 + k / 250, k % 250);
        let port = Some((1000 + k).to_string());
        out.push(rule(
            "ingress",
            "tcp",
            port.clone(),
            format!("10.{hi}.{lo}.0/24"),
            10 + k as i64,
        ));
        out.push(rule(
            "egress",
            "tcp",
            port,
            format!("172.{}.{lo}.0/24", 16 + k / 250),
            10 + k as i64,
        ));
    }
    out.push(rule("ingress", "all", None, "10.0.1.0/24".into(), 60000));
    out.push(rule("egress", "all", None, "10.0.1.0/24".into(), 60000));
    out
}

fn spec<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v.clone()).with_context(|| format!("spec {v}"))
}

/// The measured VM as an intent: its NIC's interface is `lo`, its group holds the rules.
fn intent(n: usize) -> Result<Intent> {
    fn err<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> anyhow::Error {
        move |e| anyhow::anyhow!("{what}: {e:?}")
    }
    let i = Intent::default();
    let (i, _) = i
        .create_host(spec(
            json!({"name": "bench", "underlay_ip": "192.168.0.1", "underlay_ifname": "ul0"}),
        )?)
        .map_err(err("host"))?;
    let (i, _) = i
        .create_vpc(spec(json!({"name": "a", "cidr": "10.0.0.0/16"}))?)
        .map_err(err("vpc"))?;
    let (i, _) = i
        .create_subnet(spec(
            json!({"vpc": "a", "name": "s", "cidr": "10.0.1.0/24"}),
        )?)
        .map_err(err("subnet"))?;
    let vm = Ipv4Addr::from(VM).to_string();
    let (i, _) = i
        .create_nic(spec(json!({"name": "vm", "vpc": "a", "subnet": "s", "host": "bench", "ifname": "lo", "ip": vm}))?)
        .map_err(err("nic"))?;
    let (i, _) = i
        .create_security_group(spec(json!({"vpc": "a", "name": "g", "rules": rules(n)}))?)
        .map_err(err("security group"))?;
    let (i, _) = i
        .set_nic_security_groups("vm", vec!["g".into()])
        .map_err(err("nic groups"))?;
    Ok(i)
}

/// Writes the VPC tables (10 routes), the policies of `scale`, and its fill.
pub fn install(dp: &mut Dataplane, scale: SgScale) -> Result<SgInfo> {
    vpc::install(dp, &vpc::tables(Scale::Routes10))?;
    let started = std::time::Instant::now();
    let t = compile_host(&intent(scale.rules())?, "bench");
    let compile_secs = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let resolved = apply::resolve(&t, apply::nic_slots(dp)?, |n| (n == "lo").then_some(LO));
    ensure!(resolved.nics.len() == 1, "the measured NIC did not resolve");
    apply::apply(dp, &resolved)?;
    if scale == SgScale::Flows1M {
        let cfg = CtConfig {
            max_entries: FILL_LIMIT,
            ..CtConfig::DEFAULT
        };
        ct::write_config(dp, &cfg)?;
    }
    fill(dp, scale.filled())?;
    let trie_entries = t
        .policies
        .iter()
        .map(|p| p.remotes.len() + p.services.len())
        .sum();
    Ok(SgInfo {
        scale,
        label: scale.label().into(),
        rules: scale.rules(),
        trie_entries,
        filled_flows: scale.filled(),
        compile_secs,
        fill_secs: started.elapsed().as_secs_f64(),
    })
}

/// `n` established TCP flows of another VPC, counted as userspace inserts.
fn fill(dp: &mut Dataplane, n: u32) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let now = ct::monotonic_ns();
    {
        let mut table: HashMap<&mut MapData, CtKey, CtEntry> =
            HashMap::try_from(dp.map_mut(conntrack::maps::CONNTRACK)?)?;
        for k in 0..n {
            let a = [172, 20, (k >> 8) as u8, k as u8];
            let b = [172, 21, (k >> 16) as u8, 1];
            let (key, a_first) = CtKey::new(77, IPPROTO_TCP, a, [0x9c, 0x40], b, [0, 80]);
            let e = CtEntry::new(now, IPPROTO_TCP, a_first, TCP_ACK);
            table
                .insert(key, e, 0)
                .with_context(|| format!("filling the connection table: flow {k}"))?;
        }
    }
    ct::add_to_slot(dp, CT_COUNT_USERSPACE, u64::from(n), 0)?;
    let c = ct::counts(dp)?;
    ensure!(
        c.entries == u64::from(n),
        "{} entries after the fill",
        c.entries
    );
    Ok(())
}

/// Flows per destination port: a multiple of [`NEW_FLOW_REPEAT`], so a call's flows
/// differ in the source port alone (the field the wrapper counts up).
pub const FLOWS_PER_PORT: u32 = 15 * NEW_FLOW_REPEAT;

/// `frame` (untagged IPv4 UDP or TCP) as flow `k`: the source port counts up, then the
/// destination port.
pub fn next_flow(frame: &[u8], k: u32) -> Vec<u8> {
    let sport = 1024 + (k % FLOWS_PER_PORT) as u16;
    let dport = 5000 + (k / FLOWS_PER_PORT) as u16;
    let mut f = frame.to_vec();
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f
}

/// An ICMP echo reply from the VM to `dst`, 60 bytes, router MACs (rewrites are no-ops).
fn echo_reply(dst: Ipv4) -> Vec<u8> {
    let mut out = Vec::new();
    let msg = [0u8, 0, 0, 0, 0x12, 0x34, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    PacketBuilder::ethernet2(ROUTER_MAC, ROUTER_MAC)
        .ipv4(VM, dst, 64)
        .write(&mut out, IpNumber(IPPROTO_ICMP), &msg)
        .expect("write to a Vec");
    out.resize(out.len().max(60), 0);
    out
}

/// The SG paths at `scale`, named `<path>@<suffix>`.
pub fn paths(scale: SgScale) -> Vec<PathSpec> {
    let p = |base: &str, description: String, frame: Vec<u8>, method| PathSpec {
        name: format!("{base}@{}", scale.suffix()),
        program: XDP_VM,
        description,
        frame,
        ingress_ifindex: LO,
        action: XDP_REDIRECT,
        reason: Some(Reason::FwdLocal),
        method,
        scale: None,
        sg: Some(scale),
        vary: None,
    };
    let label = scale.label();
    let mut out = vec![PathSpec {
        program: XDP_BENCH_VM,
        vary: Some(next_flow),
        ..p(
            "sg_new_flow",
            format!("vpc_local with both NICs filtered ({label}), a new flow each packet: connection lookup (miss), egress and ingress policy, insert"),
            vpc::from_vm(LOCAL_PEER),
            Method::NewFlows { vary_offset: SOURCE_PORT_OFFSET },
        )
    }];
    if scale != SgScale::Flows1M {
        out.push(p(
            "sg_first_packet",
            format!("ICMP echo reply without a request ({label}): connection lookup (miss), egress and ingress policy, forwarded without an entry"),
            echo_reply(LOCAL_PEER),
            Method::Repeat,
        ));
    }
    if matches!(
        scale,
        SgScale::Rules1 | SgScale::Rules1000 | SgScale::Flows1M
    ) {
        out.push(p(
            "sg_established",
            format!("vpc_local with both NICs filtered ({label}), a live flow: connection lookup (hit), policy-id check, state update"),
            vpc::from_vm(LOCAL_PEER),
            Method::Repeat,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_sets_have_the_promised_sizes_and_end_with_the_deciding_rule() {
        for n in [1, 100, 1000] {
            let r = rules(n);
            assert_eq!(r.len(), 2 * n);
            let last = &r[r.len() - 1];
            assert_eq!(last["protocol"], "all");
            assert!(r.iter().all(|x| x["priority"].as_i64().unwrap() <= 60000));
        }
    }

    #[test]
    fn the_measured_vm_compiles_to_one_nic_with_both_policies() {
        let t = compile_host(&intent(100).unwrap(), "bench");
        assert_eq!(t.nics.len(), 1);
        assert_eq!(t.nics[0].ifname, "lo");
        assert_eq!(t.policies.len(), 2);
        assert!(t.policies.iter().all(|p| p.rules.len() == 100));
    }

    #[test]
    fn new_flows_never_repeat_a_tuple() {
        let base = vpc::from_vm(LOCAL_PEER);
        let a = next_flow(&base, 0);
        let b = next_flow(&base, FLOWS_PER_PORT);
        assert_ne!(a[34..38], b[34..38]);
        assert_eq!(a.len(), base.len());
        assert_eq!(a[..34], base[..34]);
    }

    #[test]
    fn every_scale_has_a_new_flow_path_and_the_table_scale_an_established_one() {
        for s in SgScale::ALL {
            let names: Vec<String> = paths(s).into_iter().map(|p| p.name).collect();
            assert!(names.contains(&format!("sg_new_flow@{}", s.suffix())));
        }
        assert!(paths(SgScale::Flows1M)
            .iter()
            .any(|p| p.name == "sg_established@1m"));
    }
}
