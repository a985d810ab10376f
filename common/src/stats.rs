//! Per-packet verdict accounting. Every packet an XDP entry point sees is counted
//! exactly once, under the reason that decided its fate.

/// Packets and bytes for one reason, per CPU (userspace sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(core::mem::align_of::<Counter>() == 8);

/// Slots in the stats map: more than [`Reason::COUNT`], so a program version that adds
/// reasons still fits the map pinned by an older one (restarts across upgrades are hitless).
pub const STATS_SLOTS: u32 = 256;

/// What happened to a packet, and why. The discriminant is the index into the stats map;
/// new reasons are appended, never inserted, so pinned counters keep their meaning.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    // ---- passed to the kernel stack ----
    PassNonIp = 0,
    PassArp,
    PassIpv4,
    PassIpv6,
    PassVxlan,
    // ---- dropped: malformed (each check its own reason) ----
    DropEthTruncated,
    DropVlanTruncated,
    DropVlanTooDeep,
    DropArpTruncated,
    DropIpv4Truncated,
    DropIpv4BadVersion,
    DropIpv4BadIhl,
    DropIpv4BadTotalLen,
    DropIpv6Truncated,
    DropIpv6BadVersion,
    DropIpv6BadPayloadLen,
    DropTcpTruncated,
    DropTcpBadDataOffset,
    DropUdpTruncated,
    DropUdpBadLen,
    DropIcmpTruncated,
    DropIcmpv6Truncated,
    DropVxlanTruncated,
    DropVxlanBadFlags,
    DropInnerEthTruncated,
    // ---- VPC overlay ----
    /// Answered an ARP request from a VM with the router MAC (XDP_TX).
    ArpReply,
    /// Delivered to a VM NIC on this host (XDP_REDIRECT).
    FwdLocal,
    /// Encapsulated toward another host (XDP_REDIRECT to the underlay).
    FwdEncap,
    /// Decapsulated from the underlay and delivered to a local VM NIC.
    FwdDecap,
    DropSpoofedMac,
    DropSpoofedIp,
    DropArpNotInVpc,
    DropVmNotIpv4,
    DropNoRoute,
    DropBlackhole,
    DropNoEndpoint,
    DropTtlExceeded,
    DropMtuExceeded,
    DropNoUnderlayNeighbor,
    DropUnknownVni,
    DropVxlanUnknownDest,
    DropVxlanSpoofedSource,
    DropVxlanInnerNotIpv4,
    DropEncapFailed,
    // ---- security groups and connection tracking ----
    /// The sending NIC's egress policy denies the flow's first packet.
    DropSgEgress,
    /// The receiving NIC's ingress policy denies the flow's first packet.
    DropSgIngress,
    /// A policy change revoked what an established flow was admitted under.
    DropSgRevoked,
    /// A new flow while the connection table is at its admission limit.
    DropCtFull,
    /// Source (VM packet, outer or inner VXLAN source) in the operator blocklist.
    DropBlocklistSrc,
    /// Destination (VM packet, inner VXLAN destination) in the operator blocklist.
    DropBlocklistDst,
    // ---- NAT gateway and elastic IPs (`nat.rs`) ----
    /// Translated to a public address and sent to the border router.
    FwdNatOut,
    /// An EIP's packet translated to its private target and delivered to a local NIC.
    FwdNatIn,
    /// An EIP's packet sent on, unchanged, to the host that owns its flow.
    FwdNatOwner,
    /// A packet for the Internet while the border router's MAC is unknown.
    DropNatNoBorder,
    /// A new SNAT flow found no free port on any of its EIPs toward its destination.
    DropNatPortsExhausted,
    /// An EIP's packet that no flow, binding or DNAT entry claims (default deny).
    DropNatNoRule,
    /// Routed to a NAT gateway, but no SNAT entry covers the source and it has no EIP.
    DropNatNoSource,
    /// A packet that cannot open a translation (RST, echo reply, ICMP error, fragment)
    /// and belongs to none.
    DropNatNoState,
    /// The host owning an EIP's flow has no resolved underlay MAC.
    DropNatUnresolvedOwner,
    /// A packet to a VIP with no listener for its protocol and port (or without ports), or
    /// from a client in a peered VPC (a VIP serves its own VPC and, through DNAT, the
    /// Internet).
    DropLbNoListener,
    /// A new flow to a listener with nothing to pick: every backend drained, or down
    /// with `fail_closed`.
    DropLbNoBackend,
    /// A new flow to a listener whose table slot holds no table, or of an unknown
    /// scheduler: a guard (the agent writes a table before any listener names it).
    DropLbNoTable,
    /// The translated 5-tuple is held by another flow (not balanced, or another VIP's).
    DropLbConflict,
    /// An EIP's packet a peer host handed over for a flow that this host sees owned by
    /// yet another host (the two disagree while an owner changes): dropped, never sent
    /// on again, so it cannot bounce between hosts.
    DropNatNotOwner,
}

impl Reason {
    /// Number of reasons: the stats map's size.
    pub const COUNT: u32 = Reason::DropNatNotOwner as u32 + 1;

    /// Every reason, in index order.
    pub const ALL: [Reason; Reason::COUNT as usize] = [
        Reason::PassNonIp,
        Reason::PassArp,
        Reason::PassIpv4,
        Reason::PassIpv6,
        Reason::PassVxlan,
        Reason::DropEthTruncated,
        Reason::DropVlanTruncated,
        Reason::DropVlanTooDeep,
        Reason::DropArpTruncated,
        Reason::DropIpv4Truncated,
        Reason::DropIpv4BadVersion,
        Reason::DropIpv4BadIhl,
        Reason::DropIpv4BadTotalLen,
        Reason::DropIpv6Truncated,
        Reason::DropIpv6BadVersion,
        Reason::DropIpv6BadPayloadLen,
        Reason::DropTcpTruncated,
        Reason::DropTcpBadDataOffset,
        Reason::DropUdpTruncated,
        Reason::DropUdpBadLen,
        Reason::DropIcmpTruncated,
        Reason::DropIcmpv6Truncated,
        Reason::DropVxlanTruncated,
        Reason::DropVxlanBadFlags,
        Reason::DropInnerEthTruncated,
        Reason::ArpReply,
        Reason::FwdLocal,
        Reason::FwdEncap,
        Reason::FwdDecap,
        Reason::DropSpoofedMac,
        Reason::DropSpoofedIp,
        Reason::DropArpNotInVpc,
        Reason::DropVmNotIpv4,
        Reason::DropNoRoute,
        Reason::DropBlackhole,
        Reason::DropNoEndpoint,
        Reason::DropTtlExceeded,
        Reason::DropMtuExceeded,
        Reason::DropNoUnderlayNeighbor,
        Reason::DropUnknownVni,
        Reason::DropVxlanUnknownDest,
        Reason::DropVxlanSpoofedSource,
        Reason::DropVxlanInnerNotIpv4,
        Reason::DropEncapFailed,
        Reason::DropSgEgress,
        Reason::DropSgIngress,
        Reason::DropSgRevoked,
        Reason::DropCtFull,
        Reason::DropBlocklistSrc,
        Reason::DropBlocklistDst,
        Reason::FwdNatOut,
        Reason::FwdNatIn,
        Reason::FwdNatOwner,
        Reason::DropNatNoBorder,
        Reason::DropNatPortsExhausted,
        Reason::DropNatNoRule,
        Reason::DropNatNoSource,
        Reason::DropNatNoState,
        Reason::DropNatUnresolvedOwner,
        Reason::DropLbNoListener,
        Reason::DropLbNoBackend,
        Reason::DropLbNoTable,
        Reason::DropLbConflict,
        Reason::DropNatNotOwner,
    ];

    pub const fn index(self) -> u32 {
        self as u32
    }

    pub fn from_index(i: u32) -> Option<Reason> {
        Reason::ALL.get(i as usize).copied()
    }

    pub const fn is_drop(self) -> bool {
        !matches!(
            self,
            Reason::PassNonIp
                | Reason::PassArp
                | Reason::PassIpv4
                | Reason::PassIpv6
                | Reason::PassVxlan
                | Reason::ArpReply
                | Reason::FwdLocal
                | Reason::FwdEncap
                | Reason::FwdDecap
                | Reason::FwdNatOut
                | Reason::FwdNatIn
                | Reason::FwdNatOwner
        )
    }

    /// Stable snake_case name, used in metrics labels, JSON and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNonIp => "pass_non_ip",
            Reason::PassArp => "pass_arp",
            Reason::PassIpv4 => "pass_ipv4",
            Reason::PassIpv6 => "pass_ipv6",
            Reason::PassVxlan => "pass_vxlan",
            Reason::DropEthTruncated => "drop_eth_truncated",
            Reason::DropVlanTruncated => "drop_vlan_truncated",
            Reason::DropVlanTooDeep => "drop_vlan_too_deep",
            Reason::DropArpTruncated => "drop_arp_truncated",
            Reason::DropIpv4Truncated => "drop_ipv4_truncated",
            Reason::DropIpv4BadVersion => "drop_ipv4_bad_version",
            Reason::DropIpv4BadIhl => "drop_ipv4_bad_ihl",
            Reason::DropIpv4BadTotalLen => "drop_ipv4_bad_total_len",
            Reason::DropIpv6Truncated => "drop_ipv6_truncated",
            Reason::DropIpv6BadVersion => "drop_ipv6_bad_version",
            Reason::DropIpv6BadPayloadLen => "drop_ipv6_bad_payload_len",
            Reason::DropTcpTruncated => "drop_tcp_truncated",
            Reason::DropTcpBadDataOffset => "drop_tcp_bad_data_offset",
            Reason::DropUdpTruncated => "drop_udp_truncated",
            Reason::DropUdpBadLen => "drop_udp_bad_len",
            Reason::DropIcmpTruncated => "drop_icmp_truncated",
            Reason::DropIcmpv6Truncated => "drop_icmpv6_truncated",
            Reason::DropVxlanTruncated => "drop_vxlan_truncated",
            Reason::DropVxlanBadFlags => "drop_vxlan_bad_flags",
            Reason::DropInnerEthTruncated => "drop_inner_eth_truncated",
            Reason::ArpReply => "arp_reply",
            Reason::FwdLocal => "fwd_local",
            Reason::FwdEncap => "fwd_encap",
            Reason::FwdDecap => "fwd_decap",
            Reason::DropSpoofedMac => "drop_spoofed_mac",
            Reason::DropSpoofedIp => "drop_spoofed_ip",
            Reason::DropArpNotInVpc => "drop_arp_not_in_vpc",
            Reason::DropVmNotIpv4 => "drop_vm_not_ipv4",
            Reason::DropNoRoute => "drop_no_route",
            Reason::DropBlackhole => "drop_blackhole",
            Reason::DropNoEndpoint => "drop_no_endpoint",
            Reason::DropTtlExceeded => "drop_ttl_exceeded",
            Reason::DropMtuExceeded => "drop_mtu_exceeded",
            Reason::DropNoUnderlayNeighbor => "drop_no_underlay_neighbor",
            Reason::DropUnknownVni => "drop_unknown_vni",
            Reason::DropVxlanUnknownDest => "drop_vxlan_unknown_dest",
            Reason::DropVxlanSpoofedSource => "drop_vxlan_spoofed_source",
            Reason::DropVxlanInnerNotIpv4 => "drop_vxlan_inner_not_ipv4",
            Reason::DropEncapFailed => "drop_encap_failed",
            Reason::DropSgEgress => "drop_sg_egress",
            Reason::DropSgIngress => "drop_sg_ingress",
            Reason::DropSgRevoked => "drop_sg_revoked",
            Reason::DropCtFull => "drop_ct_full",
            Reason::DropBlocklistSrc => "drop_blocklist_src",
            Reason::DropBlocklistDst => "drop_blocklist_dst",
            Reason::FwdNatOut => "fwd_nat_out",
            Reason::FwdNatIn => "fwd_nat_in",
            Reason::FwdNatOwner => "fwd_nat_owner",
            Reason::DropNatNoBorder => "drop_nat_no_border",
            Reason::DropNatPortsExhausted => "drop_nat_ports_exhausted",
            Reason::DropNatNoRule => "drop_nat_no_rule",
            Reason::DropNatNoSource => "drop_nat_no_source",
            Reason::DropNatNoState => "drop_nat_no_state",
            Reason::DropNatUnresolvedOwner => "drop_nat_unresolved_owner",
            Reason::DropLbNoListener => "drop_lb_no_listener",
            Reason::DropLbNoBackend => "drop_lb_no_backend",
            Reason::DropLbNoTable => "drop_lb_no_table",
            Reason::DropLbConflict => "drop_lb_conflict",
            Reason::DropNatNotOwner => "drop_nat_not_owner",
        }
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Counter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_complete() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index() as usize, i, "{r:?} out of order");
            assert_eq!(Reason::from_index(i as u32), Some(*r));
        }
        assert_eq!(Reason::from_index(Reason::COUNT), None);
    }

    // Checked at compile time: a reason past the map's end would be counted nowhere.
    const _: () = assert!(Reason::COUNT <= STATS_SLOTS);

    #[test]
    fn names_are_unique_and_drop_prefix_matches_is_drop() {
        for (i, a) in Reason::ALL.iter().enumerate() {
            assert_eq!(a.name().starts_with("drop_"), a.is_drop(), "{a:?}");
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
