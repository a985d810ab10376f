//! The NAT paths of `micro`: the measured VM of the VPC paths (on `lo`, 10 routes, no
//! security group) in a VPC whose default route is a NAT gateway, in an instance of its
//! own. The NAT maps are compiled from a [`NatTables`] by the agent's resolver and map
//! writer (`sluice_dataplane::nat::apply`): SNAT EIP [`EIP_S`] for the whole VPC with 32
//! blocks (8,192 ports) on this host, DNAT EIP [`EIP_D`] publishing UDP port 80 as the
//! VM's 8080, the border router resolved. `lo` is also the underlay, so translated
//! packets are "sent" to `lo` (test runs transmit nothing).
//!
//! - `nat_vpc_local`: calibration, `vpc_local` measured as the translating paths are
//!   (through the frame-restoring wrapper), so their figures can be read against a plain
//!   forwarding path measured the same way.
//! - `snat_new_flow`: a new flow each packet (its ports count up, toward its own
//!   destination so no measured flow is disturbed): private entry inserted, SNAT port
//!   allocated (public entry inserted), rewritten, to the border. The destination port
//!   changes with every flow, so the first port probed is free: the common case.
//! - `snat_established`: a live SNAT flow: private entry hit, its link, rewrite.
//! - `snat_reply`: the Internet's answer to it at `xdp_underlay`: public entry, private
//!   entry, reverse rewrite, to the VM.
//! - `dnat_new_flow` / `dnat_established`: the Internet to the published port, a new
//!   flow each packet (its source counts up) / a live one.
//! - `nat_default_deny`: the Internet to a port of the SNAT EIP no flow holds: dropped.
//! - `snat_exhausted_drop`: a new flow toward a destination for which every port of the
//!   host's blocks is taken: all `PORT_PROBES` probes fail, dropped.
//! - `nat_unresolved_owner_drop`: the Internet to a port of the SNAT EIP in a block
//!   another host holds ([`UNRESOLVED_OWNER_BLOCK`], owned by
//!   [`UNRESOLVED_OWNER_VTEP`]) whose underlay MAC this host has not resolved: EIP, public
//!   entry (miss), block owner (another host, no MAC): dropped.
//! - `nat_to_owner`: the same to a block of a resolved host ([`PEER_OWNER_BLOCK`], owned
//!   by [`vpc::PEER_VTEP`]): sent on to it unchanged but for the hop (TTL, MACs), `XDP_TX`.
//! - `nat_not_owner_drop`: the packet of `nat_to_owner` as the peer host would hand it
//!   over (its source MAC the peer's, not the border router's): this host sees the block
//!   elsewhere too, so it drops it rather than send it on (no bouncing between hosts).
//! - `snat_icmp_error_no_state_drop`: the VM's ICMP port unreachable about a UDP packet
//!   from the Internet that no flow carried (no private entry, so no translation to
//!   leave by): route (NAT gateway), quoted flow, private entry (miss), SNAT rule,
//!   dropped.
//!
//! Every path but the drops rewrites its frame (addresses, ports, TTL), so it runs
//! through the bench wrapper that writes the frame back after each repetition
//! (`Method::RepeatRestoredFrame`; new flows: `Method::NewFlows`, which also counts a
//! field up so every repetition is another flow); the wrapper's cost is included.
//! The exhaustion drop costs microseconds and runs 200 repetitions per call, like the
//! routed paths.

use std::net::Ipv4Addr;

use anyhow::{ensure, Context, Result};
use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, MapData};
use etherparse::PacketBuilder;
use serde::{Deserialize, Serialize};
use sluice_common::{
    conntrack::{self, CtEntry, CtKey, CT_COUNT_USERSPACE},
    maps,
    nat::{
        block_first_port, EipKind, BLOCK_SIZE, LINK_SNAT, MAX_HOST_BLOCKS, NAT_VNI, PORT_PROBES,
    },
    programs::{XDP_BENCH_UNDERLAY, XDP_BENCH_VM, XDP_UNDERLAY, XDP_VM},
    proto::IPPROTO_UDP,
    stats::Reason,
    vpc::{flow_hash, Ipv4, Mac, NextHop, NextHopKind, RouteKey},
};
use sluice_dataplane::{
    conntrack as ct,
    loader::Dataplane,
    nat::{apply, BlockRow, DnatRow, EipRow, NatTables, OwnerRow, SourceRow},
};

use crate::{
    micro::{run_one, Method, PathSpec, XDP_DROP, XDP_REDIRECT, XDP_TX},
    sg::FLOWS_PER_PORT,
    vpc::{
        self, Scale, LO, LOCAL_PEER, PEER_VTEP, PEER_VTEP_MAC, ROUTER_MAC, THIS_VTEP, UNDERLAY_MAC,
        VM, VNI,
    },
};

/// The SNAT EIP of the VPC, and the DNAT one.
pub const EIP_S: Ipv4 = [203, 0, 113, 1];
pub const EIP_D: Ipv4 = [203, 0, 113, 2];
/// The border router (underlay address and MAC).
pub const BORDER: Ipv4 = [192, 168, 0, 254];
pub const BORDER_MAC: Mac = [0x02, 0xdd, 0, 0, 0, 0xfe];
/// The public server of the established flows.
pub const PUBLIC: Ipv4 = [198, 51, 100, 10];
/// Where the new SNAT flows go (nothing else does).
pub const NEW_FLOW_DST: Ipv4 = [198, 51, 100, 11];
/// The destination whose every SNAT port is taken.
pub const EXHAUSTED_DST: Ipv4 = [198, 51, 100, 12];
const EXHAUSTED_DPORT: u16 = 53;
const EXHAUSTED_SPORT: u16 = 40001;
/// The DNAT entry: UDP `EIP_D:80` to the VM's 8080.
pub const DNAT_PORT: u16 = 80;
pub const DNAT_TARGET_PORT: u16 = 8080;
/// Ports of the established SNAT flow (`vpc::from_vm`'s) and the established DNAT flow.
const VM_SPORT: u16 = 40000;
const VM_DPORT: u16 = 5000;
const DNAT_SPORT: u16 = 41000;
/// Blocks of `EIP_S` this host holds: all it may (8,192 ports).
pub const BLOCKS: u16 = MAX_HOST_BLOCKS as u16;
/// A host holding a block of `EIP_S` whose underlay MAC this host has not resolved.
pub const UNRESOLVED_OWNER_VTEP: Ipv4 = [192, 168, 0, 98];
/// A block of `EIP_S` held by the peer host ([`PEER_VTEP`], resolved), and one held by
/// [`UNRESOLVED_OWNER_VTEP`]; neither is this host's.
pub const PEER_OWNER_BLOCK: u16 = BLOCKS;
pub const UNRESOLVED_OWNER_BLOCK: u16 = BLOCKS + 1;
/// The ports of those blocks the Internet's packets go to (no flow of this host can
/// hold them: it allocates from its own blocks only).
const PEER_OWNER_PORT: u16 = block_first_port(PEER_OWNER_BLOCK) + 7;
const UNRESOLVED_OWNER_PORT: u16 = block_first_port(UNRESOLVED_OWNER_BLOCK) + 7;
/// The public server of the ICMP error path, and the ports of the UDP packet its error
/// quotes (public -> VM), which no flow ever carried.
pub const ICMP_ERROR_PEER: Ipv4 = [198, 51, 100, 13];
const ICMP_ERROR_SPORT: u16 = 53;
const ICMP_ERROR_DPORT: u16 = 33333;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;

/// The base names of the NAT paths (they run on the NAT instance).
pub const PATHS: [&str; 12] = [
    "nat_vpc_local",
    "snat_new_flow",
    "snat_established",
    "snat_reply",
    "dnat_new_flow",
    "dnat_established",
    "nat_default_deny",
    "snat_exhausted_drop",
    "nat_unresolved_owner_drop",
    "nat_to_owner",
    "nat_not_owner_drop",
    "snat_icmp_error_no_state_drop",
];

/// Whether `name` is a NAT path.
pub fn is_nat_path(name: &str) -> bool {
    PATHS.contains(&name)
}

/// What the NAT instance was given, for the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NatInfo {
    pub label: String,
    pub snat_eip: String,
    pub dnat_eip: String,
    /// SNAT ports of `EIP_S` on this host.
    pub snat_ports: u32,
    /// The SNAT port the established flow got (computed from the datapath's hash, checked).
    pub established_port: u16,
    /// Public entries written to exhaust `EXHAUSTED_DST`.
    pub exhausted_entries: u32,
    /// NAT map entries written by `nat::apply`.
    pub map_entries: usize,
    pub fill_secs: f64,
}

/// The NAT tables of the instance: one VPC (the measured one), this host with every block
/// it may hold, and two blocks of other hosts (one resolved, one not).
pub fn tables() -> NatTables {
    let eip = |eip, kind: EipKind| EipRow {
        eip,
        kind: kind as u32,
        vni: 0,
        ip: [0; 4],
        vtep: [0; 4],
    };
    NatTables {
        border: Some(BORDER),
        eips: vec![eip(EIP_S, EipKind::Snat), eip(EIP_D, EipKind::Dnat)],
        dnat: vec![DnatRow {
            eip: EIP_D,
            proto: IPPROTO_UDP,
            port: DNAT_PORT,
            vni: VNI,
            ip: VM,
            target_port: DNAT_TARGET_PORT,
            vtep: THIS_VTEP,
        }],
        sources: vec![SourceRow {
            vni: VNI,
            ip: [10, 0, 0, 0],
            len: 16,
            eips: vec![EIP_S],
        }],
        blocks: vec![BlockRow {
            eip: EIP_S,
            blocks: (0..BLOCKS).collect(),
        }],
        owners: (0..BLOCKS)
            .map(|block| OwnerRow {
                eip: EIP_S,
                block,
                vtep: THIS_VTEP,
            })
            .chain([
                OwnerRow {
                    eip: EIP_S,
                    block: PEER_OWNER_BLOCK,
                    vtep: PEER_VTEP,
                },
                OwnerRow {
                    eip: EIP_S,
                    block: UNRESOLVED_OWNER_BLOCK,
                    vtep: UNRESOLVED_OWNER_VTEP,
                },
            ])
            .collect(),
        bindings: vec![],
    }
}

/// The SNAT port a flow's first probe takes (the datapath's hash over the host's ports,
/// which are contiguous here: blocks 0..BLOCKS).
pub fn first_probe_port(src: Ipv4, dst: Ipv4, proto: u8, sport: u16, dport: u16) -> u16 {
    let total = u32::from(BLOCKS) * u32::from(BLOCK_SIZE);
    block_first_port(0) + (flow_hash(src, dst, proto, sport, dport) % total) as u16
}

/// The port the established SNAT flow holds.
pub fn established_port() -> u16 {
    first_probe_port(VM, PUBLIC, IPPROTO_UDP, VM_SPORT, VM_DPORT)
}

/// Writes the VPC tables (10 routes) plus the default route to the NAT gateway, the NAT
/// maps, the two established flows, and the exhausted destination's public entries.
pub fn install(dp: &mut Dataplane) -> Result<NatInfo> {
    vpc::install(dp, &vpc::tables(Scale::Routes10))?;
    let started = std::time::Instant::now();
    {
        let mut routes: LpmTrie<_, RouteKey, NextHop> =
            LpmTrie::try_from(dp.map_mut(maps::ROUTES)?)?;
        let hop = NextHop {
            kind: NextHopKind::NatGateway as u32,
            vni: VNI,
            ip: [0; 4],
        };
        routes
            .insert(
                &Key::new(RouteKey::trie_prefix_len(0), RouteKey::new(VNI, [0; 4])),
                hop,
                0,
            )
            .context("inserting the default route to the NAT gateway")?;
    }
    let t = tables();
    // The border router and the peer host are resolved; `UNRESOLVED_OWNER_VTEP` is not.
    let resolved = apply::resolve(&t, THIS_VTEP, |ip| match ip {
        BORDER => Some(BORDER_MAC),
        PEER_VTEP => Some(PEER_VTEP_MAC),
        _ => None,
    });
    let applied = apply::apply(dp, &resolved).context("writing the NAT maps")?;

    // The established flows, opened as their first packet would.
    let out = run_one(dp, XDP_VM, &vpc::from_vm(PUBLIC))?;
    ensure!(
        out.0 == XDP_REDIRECT,
        "the SNAT flow's first packet was not forwarded (action {})",
        out.0
    );
    let port = established_port();
    ensure!(
        out.1[26..30] == EIP_S && out.1[34..36] == port.to_be_bytes(),
        "the SNAT flow left as {:?}:{}, expected {:?}:{port} (the datapath's port choice changed?)",
        &out.1[26..30],
        u16::from_be_bytes([out.1[34], out.1[35]]),
        EIP_S
    );
    let out = run_one(dp, XDP_UNDERLAY, &dnat_established_frame())?;
    ensure!(
        out.0 == XDP_REDIRECT,
        "the DNAT flow's first packet was not forwarded (action {})",
        out.0
    );

    // Every port of the host's blocks toward EXHAUSTED_DST:53 held by other flows.
    let exhausted = u32::from(BLOCKS) * u32::from(BLOCK_SIZE);
    {
        let mut table: HashMap<&mut MapData, CtKey, CtEntry> =
            HashMap::try_from(dp.map_mut(conntrack::maps::CONNTRACK)?)?;
        let now = ct::monotonic_ns();
        for i in 0..exhausted {
            let p = (u32::from(block_first_port(0)) + i) as u16;
            let (key, a_first) = CtKey::new(
                NAT_VNI,
                IPPROTO_UDP,
                EIP_S,
                p.to_be_bytes(),
                EXHAUSTED_DST,
                EXHAUSTED_DPORT.to_be_bytes(),
            );
            let mut e = CtEntry::new(now, IPPROTO_UDP, a_first, 0);
            e.nat.kind = LINK_SNAT;
            e.nat.vni = VNI;
            e.nat.addr = [10, 0, 9, 9];
            e.nat.port = p.to_be_bytes();
            table
                .insert(key, e, 0)
                .with_context(|| format!("holding SNAT port {p}"))?;
        }
    }
    ct::add_to_slot(dp, CT_COUNT_USERSPACE, u64::from(exhausted), 0)?;
    Ok(NatInfo {
        label: format!(
            "SNAT {} ({} ports on this host), DNAT {}:{DNAT_PORT}/udp",
            Ipv4Addr::from(EIP_S),
            exhausted,
            Ipv4Addr::from(EIP_D)
        ),
        snat_eip: Ipv4Addr::from(EIP_S).to_string(),
        dnat_eip: Ipv4Addr::from(EIP_D).to_string(),
        snat_ports: exhausted,
        established_port: port,
        exhausted_entries: exhausted,
        map_entries: applied.written,
        fill_secs: started.elapsed().as_secs_f64(),
    })
}

/// A UDP frame from the Internet (border router to this host's underlay MAC).
pub(crate) fn from_internet(src: Ipv4, sport: u16, dst: Ipv4, dport: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(60);
    PacketBuilder::ethernet2(BORDER_MAC, UNDERLAY_MAC)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, &[0xab; 60 - 14 - 20 - 8])
        .expect("etherparse serialises a valid frame");
    out
}

/// A port of the SNAT EIP in this host's blocks but the established flow's: no flow
/// holds it (inside the blocks, so the block owner says "this host").
fn unheld_port() -> u16 {
    let p = established_port();
    if p + 1 < block_first_port(BLOCKS) {
        p + 1
    } else {
        p - 1
    }
}

fn dnat_established_frame() -> Vec<u8> {
    from_internet(PUBLIC, DNAT_SPORT, EIP_D, DNAT_PORT)
}

/// Offset of the destination port, the field SNAT flows count up.
pub const DEST_PORT_OFFSET: u32 = 36;

/// The VM's frame as SNAT flow `k`: the destination port counts up (so its public tuple
/// is new whatever port it gets, and the first port probed is free), then the source
/// port.
pub fn next_snat_flow(frame: &[u8], k: u32) -> Vec<u8> {
    let dport = 1 + (k % FLOWS_PER_PORT) as u16;
    let sport = 1024 + (k / FLOWS_PER_PORT) as u16;
    let mut f = frame.to_vec();
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f
}

/// Offset of the low half of the source address, the field DNAT flows count up.
pub const SOURCE_ADDRESS_LOW_OFFSET: u32 = 28;

/// The Internet's frame as DNAT flow `k`: its source address counts up (in
/// 198.18.0.0/15, the benchmarking range), its source port every 131,072 flows. The
/// header checksum is the first flow's: nothing on the path checks it.
pub fn next_dnat_flow(frame: &[u8], k: u32) -> Vec<u8> {
    let src = [198, 18 + ((k >> 16) & 1) as u8, (k >> 8) as u8, k as u8];
    let sport = 20000 + (k >> 17) as u16;
    let mut f = frame.to_vec();
    f[26..30].copy_from_slice(&src);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    ipv4_checksum(&mut f[14..34]);
    f
}

/// Recomputes the IPv4 header checksum of `h` (20 bytes).
fn ipv4_checksum(h: &mut [u8]) {
    h[10..12].copy_from_slice(&[0, 0]);
    let mut s: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    h[10..12].copy_from_slice(&(!(s as u16)).to_be_bytes());
}

/// The NAT paths.
pub fn paths() -> Vec<PathSpec> {
    let p = |name: &str,
             program: &'static str,
             description: String,
             frame: Vec<u8>,
             action: u32,
             reason: Reason,
             method: Method| PathSpec {
        name: name.into(),
        program,
        description,
        frame,
        ingress_ifindex: if program == XDP_VM || program == XDP_BENCH_VM {
            LO
        } else {
            0
        },
        action,
        reason: Some(reason),
        method,
        scale: None,
        sg: None,
        vary: None,
    };
    let restored = Method::RepeatRestoredFrame;
    let reply = from_internet(PUBLIC, VM_DPORT, EIP_S, established_port());
    let unheld = unheld_port();
    vec![
        p(
            "nat_vpc_local",
            XDP_BENCH_VM,
            "calibration: vpc_local (VM to a NIC on this host) in the NAT instance, measured like the translating paths (through the frame-restoring wrapper): what that method alone adds to a forwarding path".into(),
            vpc::from_vm(LOCAL_PEER),
            XDP_REDIRECT,
            Reason::FwdLocal,
            restored,
        ),
        PathSpec {
            vary: Some(next_snat_flow),
            ..p(
                "snat_new_flow",
                XDP_BENCH_VM,
                "VM to the Internet through the NAT gateway, a new flow each packet: route (NAT gateway), private entry inserted, SNAT rule, port allocated (public entry inserted), rewrite, to the border router".into(),
                vpc::from_vm(NEW_FLOW_DST),
                XDP_REDIRECT,
                Reason::FwdNatOut,
                Method::NewFlows {
                    vary_offset: DEST_PORT_OFFSET,
                },
            )
        },
        p(
            "snat_established",
            XDP_BENCH_VM,
            "VM to the Internet, a live SNAT flow: route (NAT gateway), private entry hit, its link, rewrite, to the border router".into(),
            vpc::from_vm(PUBLIC),
            XDP_REDIRECT,
            Reason::FwdNatOut,
            restored,
        ),
        p(
            "snat_reply",
            XDP_BENCH_UNDERLAY,
            "the Internet's reply to a live SNAT flow at the underlay: EIP, public entry, private entry, reverse rewrite, to the VM".into(),
            reply,
            XDP_REDIRECT,
            Reason::FwdNatIn,
            restored,
        ),
        PathSpec {
            vary: Some(next_dnat_flow),
            ..p(
                "dnat_new_flow",
                XDP_BENCH_UNDERLAY,
                format!("the Internet to a published port (UDP {DNAT_PORT} to the VM's {DNAT_TARGET_PORT}), a new flow each packet: EIP, public entry (miss), DNAT entry, private entry and public entry inserted, rewrite, to the VM"),
                dnat_established_frame(),
                XDP_REDIRECT,
                Reason::FwdNatIn,
                Method::NewFlows {
                    vary_offset: SOURCE_ADDRESS_LOW_OFFSET,
                },
            )
        },
        p(
            "dnat_established",
            XDP_BENCH_UNDERLAY,
            "the Internet to a published port, a live DNAT flow: EIP, public entry, private entry, rewrite, to the VM".into(),
            dnat_established_frame(),
            XDP_REDIRECT,
            Reason::FwdNatIn,
            restored,
        ),
        p(
            "nat_default_deny",
            XDP_UNDERLAY,
            "the Internet to a port of the SNAT EIP that no flow holds: EIP, public entry (miss), block owner (this host): dropped".into(),
            from_internet(PUBLIC, VM_DPORT, EIP_S, unheld),
            XDP_DROP,
            Reason::DropNatNoRule,
            Method::Repeat,
        ),
        p(
            "snat_exhausted_drop",
            XDP_VM,
            format!("VM to a destination for which all {} SNAT ports of this host are taken: SNAT rule, {PORT_PROBES} port probes (each a failed insert), dropped", u32::from(BLOCKS) * u32::from(BLOCK_SIZE)),
            vpc::udp_from_vm(EXHAUSTED_SPORT, EXHAUSTED_DST, EXHAUSTED_DPORT),
            XDP_DROP,
            Reason::DropNatPortsExhausted,
            // Microseconds per packet: measured like the routed paths (200 repetitions per
            // call), so a run is 4,000 packets rather than a million.
            Method::Fresh {
                repeat: vpc::ROUTED_REPEAT,
            },
        ),
        p(
            "nat_unresolved_owner_drop",
            XDP_UNDERLAY,
            format!("the Internet to a port of the SNAT EIP in a block another host holds (block {UNRESOLVED_OWNER_BLOCK}), whose underlay MAC this host has not resolved: EIP, public entry (miss), block owner (another host, no MAC): dropped"),
            from_internet(PUBLIC, VM_DPORT, EIP_S, UNRESOLVED_OWNER_PORT),
            XDP_DROP,
            Reason::DropNatUnresolvedOwner,
            Method::Repeat,
        ),
        p(
            "nat_to_owner",
            XDP_BENCH_UNDERLAY,
            format!("the Internet to a port of the SNAT EIP in a block the peer host holds (block {PEER_OWNER_BLOCK}, its MAC resolved): EIP, public entry (miss), block owner (another host), TTL decrement, MACs rewritten, sent back out the underlay (XDP_TX) to that host"),
            from_internet(PUBLIC, VM_DPORT, EIP_S, PEER_OWNER_PORT),
            XDP_TX,
            Reason::FwdNatOwner,
            restored,
        ),
        p(
            "nat_not_owner_drop",
            XDP_UNDERLAY,
            format!("the packet of nat_to_owner handed over by the peer host (its MAC as the source, not the border router's) while this host sees block {PEER_OWNER_BLOCK} elsewhere too: EIP, public entry (miss), block owner (another host), not from the border: dropped, never sent on again"),
            {
                let mut f = from_internet(PUBLIC, VM_DPORT, EIP_S, PEER_OWNER_PORT);
                f[6..12].copy_from_slice(&PEER_VTEP_MAC);
                f
            },
            XDP_DROP,
            Reason::DropNatNotOwner,
            Method::Repeat,
        ),
        p(
            "snat_icmp_error_no_state_drop",
            XDP_VM,
            "VM to the Internet: an ICMP port unreachable about a UDP packet from a public server that no flow carried (the NAT never saw it): route (NAT gateway), quoted flow reversed, private entry (miss), SNAT rule, no entry to translate by: dropped".into(),
            icmp_error_from_vm(),
            XDP_DROP,
            Reason::DropNatNoState,
            Method::Repeat,
        ),
    ]
}

/// The VM's ICMP port unreachable (type 3, code 3) to [`ICMP_ERROR_PEER`], quoting that
/// server's UDP packet to the VM (IPv4 header without options, the UDP header): a packet
/// that never crossed the NAT, so no flow of either side matches it.
pub fn icmp_error_from_vm() -> Vec<u8> {
    let mut quoted = [0u8; 28];
    quoted[0] = 0x45;
    quoted[2..4].copy_from_slice(&(28u16 + 32).to_be_bytes());
    quoted[8] = 57;
    quoted[9] = IPPROTO_UDP;
    quoted[12..16].copy_from_slice(&ICMP_ERROR_PEER);
    quoted[16..20].copy_from_slice(&VM);
    ipv4_checksum(&mut quoted[..20]);
    quoted[20..22].copy_from_slice(&ICMP_ERROR_SPORT.to_be_bytes());
    quoted[22..24].copy_from_slice(&ICMP_ERROR_DPORT.to_be_bytes());
    quoted[24..26].copy_from_slice(&(8u16 + 32).to_be_bytes());
    let mut out = Vec::with_capacity(14 + 20 + 8 + quoted.len());
    PacketBuilder::ethernet2(ROUTER_MAC, ROUTER_MAC)
        .ipv4(VM, ICMP_ERROR_PEER, 64)
        .icmpv4_raw(ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, [0; 4])
        .write(&mut out, &quoted)
        .expect("etherparse serialises a valid frame");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::nat::block_of;

    #[test]
    fn every_nat_path_is_listed_and_named_once() {
        crate::micro::tests::assert_listed_once_and_drops_repeat(paths(), &PATHS);
        assert!(PATHS.iter().all(|n| is_nat_path(n)));
        assert!(!is_nat_path("vpc_local@10"));
    }

    #[test]
    fn new_flows_never_repeat_a_tuple() {
        let base = vpc::from_vm(NEW_FLOW_DST);
        let (a, b) = (
            next_snat_flow(&base, 0),
            next_snat_flow(&base, FLOWS_PER_PORT),
        );
        assert_ne!(a[34..38], b[34..38]);
        assert_eq!(a[..34], base[..34]);
        let base = dnat_established_frame();
        let (a, b) = (next_dnat_flow(&base, 0), next_dnat_flow(&base, 1 << 16));
        assert_ne!(a[26..36], b[26..36]);
        // The header checksum stays valid: the sum over the header folds to 0xffff.
        let mut h = a[14..34].to_vec();
        let before = u16::from_be_bytes([h[10], h[11]]);
        ipv4_checksum(&mut h);
        assert_eq!(u16::from_be_bytes([h[10], h[11]]), before);
    }

    #[test]
    fn tables_give_the_host_every_block_it_may_hold() {
        let t = tables();
        assert_eq!(t.blocks[0].blocks.len(), MAX_HOST_BLOCKS);
        let ours = t.owners.iter().filter(|o| o.vtep == THIS_VTEP).count();
        assert_eq!(ours, MAX_HOST_BLOCKS);
        let p = established_port();
        assert!(p >= block_first_port(0) && p < block_first_port(BLOCKS));
        let u = unheld_port();
        assert!(u != p && u >= block_first_port(0) && u < block_first_port(BLOCKS));
    }

    #[test]
    fn owner_paths_go_to_other_hosts_blocks() {
        let t = tables();
        let owner_of = |port: u16| {
            let block = block_of(port).expect("an SNAT port");
            t.owners
                .iter()
                .find(|o| o.eip == EIP_S && o.block == block)
                .map(|o| o.vtep)
        };
        assert_eq!(owner_of(PEER_OWNER_PORT), Some(PEER_VTEP));
        assert_eq!(owner_of(UNRESOLVED_OWNER_PORT), Some(UNRESOLVED_OWNER_VTEP));
        assert!(!t.blocks[0].blocks.contains(&PEER_OWNER_BLOCK));
        assert!(!t.blocks[0].blocks.contains(&UNRESOLVED_OWNER_BLOCK));
        // Each block has one owner.
        let mut blocks: Vec<u16> = t.owners.iter().map(|o| o.block).collect();
        blocks.sort_unstable();
        blocks.dedup();
        assert_eq!(blocks.len(), t.owners.len());
    }

    #[test]
    fn icmp_error_quotes_a_plain_header_to_the_vm() {
        let f = icmp_error_from_vm();
        let icmp = 14 + 20;
        assert_eq!(f[23], sluice_common::proto::IPPROTO_ICMP);
        assert_eq!(
            (f[icmp], f[icmp + 1]),
            (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH)
        );
        let inner = &f[icmp + 8..icmp + 28];
        assert_eq!(inner[0], 0x45);
        assert_eq!(inner[16..20], VM);
        assert_eq!(inner[12..16], ICMP_ERROR_PEER);
        assert!(f.len() >= icmp + 8 + 28);
    }
}
