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
    conntrack::{self, CtConfig, CtEntry, CtKey, CT_COUNT_USERSPACE, TCP_ACK, TCP_SYN},
    nat::EipKind,
    programs::{XDP_BENCH_VM, XDP_UNDERLAY, XDP_VM},
    proto::{IPPROTO_ICMP, IPPROTO_TCP},
    stats::Reason,
    vpc::Ipv4,
};
use sluice_dataplane::{
    conntrack as ct,
    intent::Intent,
    loader::Dataplane,
    nat::{apply as nat_apply, BlockRow, EipRow, NatTables, OwnerRow, SourceRow},
    sg::{
        apply::{self, BlockPrefix},
        compile::compile_host,
        SgTables,
    },
};

use crate::{
    micro::{
        run_one, Method, PathSpec, NEW_FLOW_REPEAT, SOURCE_PORT_OFFSET, XDP_DROP, XDP_REDIRECT,
    },
    nat,
    vpc::{self, Scale, LO, LOCAL_PEER, ROUTER_MAC, THIS_VTEP, VM, VNI},
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
    /// One rule; the connection table at its admission limit ([`FULL_FLOWS`]).
    Full,
    /// The state the drop paths need: deny rules, a flow they revoked, the operator
    /// blocklist, and a NAT gateway whose SNAT rule covers another subnet than the VM's.
    Drops,
}

/// The admission limit of the `Full` instance, and the flows filling it.
pub const FULL_FLOWS: u32 = 1_000;
/// The `Drops` instance: a port the VM's egress policy denies (after a flow to it opened),
/// and one its ingress policy denies.
const DENIED_EGRESS_PORT: u16 = 4444;
const DENIED_INGRESS_PORT: u16 = 3333;
/// Source ports of the revoked flow and of the denied new one.
const REVOKED_SPORT: u16 = 40000;
const DENIED_SPORT: u16 = 40001;
/// On the operator blocklist (as source and destination) in the `Drops` instance.
pub const BLOCKED: Ipv4 = [203, 0, 113, 66];
/// The subnet the `Drops` instance's SNAT rule covers (not the VM's).
const SNAT_SUBNET: Ipv4 = [10, 0, 2, 0];

/// Flows put into the table of the `Flows1M` instance.
pub const FILL_FLOWS: u32 = 1_000_000;
/// Its admission limit: none, so the measured new flows are admitted past the fill (the
/// LRU then evicts the oldest fill entries: the table stays full).
const FILL_LIMIT: u32 = u32::MAX;

impl SgScale {
    pub const ALL: [SgScale; 6] = [
        SgScale::Rules1,
        SgScale::Rules100,
        SgScale::Rules1000,
        SgScale::Flows1M,
        SgScale::Full,
        SgScale::Drops,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            SgScale::Rules1 => "1r",
            SgScale::Rules100 => "100r",
            SgScale::Rules1000 => "1000r",
            SgScale::Flows1M => "1m",
            SgScale::Full => "full",
            SgScale::Drops => "drops",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SgScale::Rules1 => "1 rule per direction",
            SgScale::Rules100 => "100 rules per direction",
            SgScale::Rules1000 => "1,000 rules per direction",
            SgScale::Flows1M => "1 rule, 1,000,000 flows in the connection table",
            SgScale::Full => "1 rule, the connection table at its admission limit (1,000 flows)",
            SgScale::Drops => "1 rule plus a deny rule per direction, a flow the egress one revoked, the operator blocklist, a NAT gateway whose SNAT rule covers another subnet",
        }
    }

    pub fn rules(self) -> usize {
        match self {
            SgScale::Rules1 | SgScale::Flows1M | SgScale::Full | SgScale::Drops => 1,
            SgScale::Rules100 => 100,
            SgScale::Rules1000 => 1000,
        }
    }

    pub fn filled(self) -> u32 {
        match self {
            SgScale::Flows1M => FILL_FLOWS,
            SgScale::Full => FULL_FLOWS,
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

/// A deny rule for `port` of `protocol` to or from the VM's subnet, ahead of every allow.
fn deny(direction: &str, protocol: &str, port: u16) -> Value {
    let mut r = rule(
        direction,
        protocol,
        Some(port.to_string()),
        "10.0.1.0/24".into(),
        5,
    );
    r["action"] = json!("deny");
    r
}

/// The `Drops` instance's rules: one per direction plus a deny rule for ingress and, once
/// `revoking`, one for egress.
fn drop_rules(revoking: bool) -> Vec<Value> {
    let mut r = rules(1);
    r.push(deny("ingress", "udp", DENIED_INGRESS_PORT));
    if revoking {
        r.push(deny("egress", "tcp", DENIED_EGRESS_PORT));
    }
    r
}

/// The measured VM as an intent: its NIC's interface is `lo`, its group holds `rules`.
fn intent(rules: Vec<Value>) -> Result<Intent> {
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
        .create_security_group(spec(json!({"vpc": "a", "name": "g", "rules": rules}))?)
        .map_err(err("security group"))?;
    let (i, _) = i
        .set_nic_security_groups("vm", vec!["g".into()])
        .map_err(err("nic groups"))?;
    Ok(i)
}

/// Compiles `rules` for the measured VM and writes them as the agent would: the compile
/// time, and the tables.
fn apply_rules(dp: &mut Dataplane, rules: Vec<Value>) -> Result<(f64, SgTables)> {
    let started = std::time::Instant::now();
    let t = compile_host(&intent(rules)?, "bench");
    let compile_secs = started.elapsed().as_secs_f64();
    let resolved = apply::resolve(&t, apply::nic_slots(dp)?, |n| (n == "lo").then_some(LO));
    ensure!(resolved.nics.len() == 1, "the measured NIC did not resolve");
    apply::apply(dp, &resolved)?;
    Ok((compile_secs, t))
}

/// Writes the VPC tables (10 routes), the policies of `scale`, and its fill.
pub fn install(dp: &mut Dataplane, scale: SgScale) -> Result<SgInfo> {
    vpc::install(dp, &vpc::tables(Scale::Routes10))?;
    let started = std::time::Instant::now();
    let (compile_secs, t) = if scale == SgScale::Drops {
        install_drops(dp)?
    } else {
        apply_rules(dp, rules(scale.rules()))?
    };
    let limit = match scale {
        SgScale::Flows1M => Some(FILL_LIMIT),
        SgScale::Full => Some(FULL_FLOWS),
        _ => None,
    };
    if let Some(max_entries) = limit {
        let cfg = CtConfig {
            max_entries,
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
        fill_secs: started.elapsed().as_secs_f64() - compile_secs,
    })
}

/// The `Drops` instance: a flow to [`DENIED_EGRESS_PORT`] opened under rules that allow
/// it, then revoked by a deny rule (the connection table keeps revoked entries for a day
/// here, not 10 s, so it stays revoked for the whole run); the blocklist; the NAT maps.
fn install_drops(dp: &mut Dataplane) -> Result<(f64, SgTables)> {
    apply_rules(dp, drop_rules(false))?;
    let (action, _) = run_one(
        dp,
        XDP_VM,
        &vpc::tcp_from_vm(REVOKED_SPORT, LOCAL_PEER, DENIED_EGRESS_PORT, TCP_ACK),
    )?;
    ensure!(
        action == XDP_REDIRECT,
        "the flow to be revoked was not opened (action {action})"
    );
    let applied = apply_rules(dp, drop_rules(true))?;
    let day = 86_400 * 1_000_000_000;
    ct::write_config(
        dp,
        &CtConfig {
            tcp_close_ns: day,
            ..CtConfig::DEFAULT
        },
    )?;
    let blocked = BlockPrefix {
        addr: BLOCKED,
        len: 32,
        src: true,
        dst: true,
    };
    apply::apply_blocklist(dp, &[blocked])?;
    let t = NatTables {
        border: Some(nat::BORDER),
        eips: vec![EipRow {
            eip: nat::EIP_S,
            kind: EipKind::Snat as u32,
            vni: 0,
            ip: [0; 4],
            vtep: [0; 4],
        }],
        dnat: vec![],
        sources: vec![SourceRow {
            vni: VNI,
            ip: SNAT_SUBNET,
            len: 24,
            eips: vec![nat::EIP_S],
        }],
        blocks: vec![BlockRow {
            eip: nat::EIP_S,
            blocks: vec![0],
        }],
        owners: vec![OwnerRow {
            eip: nat::EIP_S,
            block: 0,
            vtep: THIS_VTEP,
        }],
        bindings: vec![],
    };
    let resolved = nat_apply::resolve(&t, THIS_VTEP, |ip| {
        (ip == nat::BORDER).then_some(nat::BORDER_MAC)
    });
    nat_apply::apply(dp, &resolved).context("writing the NAT maps")?;
    Ok(applied)
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
    let dropped = |base: &str, description: &str, frame: Vec<u8>, reason: Reason| PathSpec {
        action: XDP_DROP,
        reason: Some(reason),
        ..p(base, description.into(), frame, Method::Repeat)
    };
    match scale {
        SgScale::Full => {
            return vec![dropped(
                "sg_ct_full_drop",
                "a new flow allowed by both policies while the connection table is at its admission limit: lookup (miss), both policies, admission refused (counted), dropped; no entry is evicted",
                vpc::from_vm(LOCAL_PEER),
                Reason::DropCtFull,
            )]
        }
        SgScale::Drops => {
            let internet = PathSpec {
                program: XDP_UNDERLAY,
                ingress_ifindex: 0,
                ..dropped(
                    "blocklist_src_drop",
                    "the Internet to an elastic IP from a blocklisted address: EIP, blocklist (hit): dropped before anything else",
                    nat::from_internet(BLOCKED, 53, nat::EIP_S, 40000),
                    Reason::DropBlocklistSrc,
                )
            };
            return vec![
                dropped(
                    "sg_egress_drop",
                    "a new TCP flow the VM's egress policy denies (a deny rule ahead of the allow): lookup (miss), egress policy: dropped",
                    vpc::tcp_from_vm(DENIED_SPORT, LOCAL_PEER, DENIED_EGRESS_PORT, TCP_SYN),
                    Reason::DropSgEgress,
                ),
                dropped(
                    "sg_ingress_drop",
                    "a new UDP flow the egress policy allows and the receiver's ingress policy denies: lookup (miss), both policies: dropped",
                    vpc::udp_from_vm(40000, LOCAL_PEER, DENIED_INGRESS_PORT),
                    Reason::DropSgIngress,
                ),
                dropped(
                    "sg_revoked_drop",
                    "a packet of a live flow that a rule added since denies: lookup (hit), policy ids differ once (re-checked, revoked), then the revoked flag: dropped",
                    vpc::tcp_from_vm(REVOKED_SPORT, LOCAL_PEER, DENIED_EGRESS_PORT, TCP_ACK),
                    Reason::DropSgRevoked,
                ),
                dropped(
                    "blocklist_dst_drop",
                    "the VM to a blocklisted address: blocklist (hit): dropped before anything else",
                    vpc::from_vm(BLOCKED),
                    Reason::DropBlocklistDst,
                ),
                internet,
                dropped(
                    "nat_no_source_drop",
                    "the VM to the Internet through a NAT gateway whose SNAT rule covers another subnet: route (NAT gateway), its egress policy, connection entry, binding (miss), SNAT rule (miss): dropped",
                    vpc::from_vm(vpc::BEHIND_NAT),
                    Reason::DropNatNoSource,
                ),
            ];
        }
        _ => {}
    }
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
        let t = compile_host(&intent(rules(100)).unwrap(), "bench");
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
    fn the_drops_instance_adds_one_deny_rule_per_direction_once_revoking() {
        let count = |revoking, direction: &str| {
            let t = compile_host(&intent(drop_rules(revoking)).unwrap(), "bench");
            let nic = &t.nics[0];
            let id = if direction == "egress" {
                nic.egress
            } else {
                nic.ingress
            };
            t.policy(id).map_or(0, |p| p.rules.len())
        };
        assert_eq!((count(false, "ingress"), count(false, "egress")), (2, 1));
        assert_eq!((count(true, "ingress"), count(true, "egress")), (2, 2));
    }

    #[test]
    fn every_scale_has_a_new_flow_path_and_the_table_scale_an_established_one() {
        for s in SgScale::ALL
            .into_iter()
            .filter(|s| !matches!(s, SgScale::Full | SgScale::Drops))
        {
            let names: Vec<String> = paths(s).into_iter().map(|p| p.name).collect();
            assert!(names.contains(&format!("sg_new_flow@{}", s.suffix())));
        }
        assert!(paths(SgScale::Flows1M)
            .iter()
            .any(|p| p.name == "sg_established@1m"));
    }
}
