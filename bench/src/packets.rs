//! The frames each benchmark path feeds the programs. Sizes are realistic minimum frames
//! (60 bytes without FCS where the protocol allows), so figures compare like with like.

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, IpNumber, PacketBuilder, VlanId,
};
use sluice_common::{proto::VXLAN_PORT, stats::Reason};

const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const HOST_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xa, 0x01];
const HOST_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xb, 0x01];
const VM_IP: [u8; 4] = [10, 0, 1, 10];
const PEER_IP: [u8; 4] = [10, 0, 2, 20];
const HOST_A_IP: [u8; 4] = [192, 0, 2, 1];
const HOST_B_IP: [u8; 4] = [192, 0, 2, 2];
const VM_IP6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const PEER_IP6: [u8; 16] = [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20];
/// Pads a frame's payload up to the 60-byte Ethernet minimum.
const MIN_FRAME: usize = 60;
const ETH_LEN: usize = 14;
const VNI: u32 = 4242;
/// VXLAN flags byte with the I (VNI valid) bit set.
const VXLAN_FLAG_I: u8 = 0x08;

/// Serialises a builder step (UDP or TCP: etherparse gives them `write` by name only).
macro_rules! build {
    ($builder:expr, $payload:expr) => {{
        let payload: &[u8] = $payload;
        let mut out = Vec::with_capacity(MIN_FRAME + payload.len());
        $builder
            .write(&mut out, payload)
            .expect("etherparse serialises a valid frame");
        out
    }};
}

/// Payload that brings a frame with `headers` bytes of headers up to the minimum size.
fn pad(headers: usize) -> Vec<u8> {
    vec![0xab; MIN_FRAME.saturating_sub(headers)]
}

/// VM → peer, IPv4 UDP, 60 bytes.
pub fn ipv4_udp() -> Vec<u8> {
    let b = PacketBuilder::ethernet2(VM_MAC, GW_MAC)
        .ipv4(VM_IP, PEER_IP, 64)
        .udp(40000, 53);
    build!(b, &pad(ETH_LEN + 20 + 8))
}

/// VM → peer, IPv4 TCP (ACK), 60 bytes.
pub fn ipv4_tcp() -> Vec<u8> {
    let b = PacketBuilder::ethernet2(VM_MAC, GW_MAC)
        .ipv4(VM_IP, PEER_IP, 64)
        .tcp(40000, 443, 1, 65535)
        .ack(1);
    build!(b, &pad(ETH_LEN + 20 + 20))
}

/// ARP request, padded to 60 bytes as on the wire.
pub fn arp_request() -> Vec<u8> {
    let arp = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation::REQUEST,
        &VM_MAC,
        &VM_IP,
        &[0; 6],
        &PEER_IP,
    )
    .expect("valid ARP packet");
    let mut out = Vec::with_capacity(MIN_FRAME);
    PacketBuilder::ethernet2(VM_MAC, [0xff; 6])
        .arp(arp)
        .write(&mut out)
        .expect("valid ARP frame");
    out.resize(MIN_FRAME, 0);
    out
}

/// VM → peer, IPv6 UDP (no room for padding: 62 bytes of headers + 2 of payload).
pub fn ipv6_udp() -> Vec<u8> {
    let b = PacketBuilder::ethernet2(VM_MAC, GW_MAC)
        .ipv6(VM_IP6, PEER_IP6, 64)
        .udp(40000, 53);
    build!(b, &[0xab; 2])
}

/// 802.1Q-tagged (VLAN 100) IPv4 UDP, 60 bytes.
pub fn vlan_ipv4_udp() -> Vec<u8> {
    let b = PacketBuilder::ethernet2(VM_MAC, GW_MAC)
        .single_vlan(VlanId::try_new(100).expect("valid VLAN ID"))
        .ipv4(VM_IP, PEER_IP, 64)
        .udp(40000, 53);
    build!(b, &pad(ETH_LEN + 4 + 20 + 8))
}

/// Host's own underlay traffic: IPv4 UDP that is not VXLAN, 60 bytes.
pub fn underlay_ipv4_udp() -> Vec<u8> {
    let b = PacketBuilder::ethernet2(HOST_B_MAC, HOST_A_MAC)
        .ipv4(HOST_B_IP, HOST_A_IP, 64)
        .udp(40000, 53);
    build!(b, &pad(ETH_LEN + 20 + 8))
}

/// VXLAN (VNI 4242) from host B carrying [`ipv4_udp`]: 50 bytes of outer headers + 60.
pub fn vxlan_ipv4_udp() -> Vec<u8> {
    vxlan_with_flags(VXLAN_FLAG_I)
}

/// VXLAN whose I flag is clear: the VNI is not valid, so the frame must be dropped.
pub fn vxlan_i_flag_clear() -> Vec<u8> {
    vxlan_with_flags(0)
}

fn vxlan_with_flags(flags: u8) -> Vec<u8> {
    let vni = VNI.to_be_bytes();
    let mut payload = vec![flags, 0, 0, 0, vni[1], vni[2], vni[3], 0];
    payload.extend_from_slice(&ipv4_udp());
    let b = PacketBuilder::ethernet2(HOST_B_MAC, HOST_A_MAC)
        .ipv4(HOST_B_IP, HOST_A_IP, 64)
        .udp(49152, VXLAN_PORT);
    build!(b, &payload)
}

/// Ethernet + 10 bytes of an IPv4 header: too short for the fixed header.
pub fn ipv4_truncated() -> Vec<u8> {
    let mut frame = ipv4_udp();
    frame.truncate(ETH_LEN + 10);
    frame
}

/// IPv4 whose IHL says 16 bytes, less than the 20-byte minimum.
pub fn ipv4_bad_ihl() -> Vec<u8> {
    let mut frame = ipv4_udp();
    frame[ETH_LEN] = 0x44;
    frame
}

/// A frame the parser must refuse, the entry point it goes through and the reason it must
/// be dropped (or, for non-IP, passed) under.
pub struct ParseCase {
    pub name: &'static str,
    /// `true`: `xdp_underlay` (VXLAN); else `xdp_vm`.
    pub underlay: bool,
    pub frame: Vec<u8>,
    pub reason: Reason,
    pub description: &'static str,
}

/// Zero-pads a frame to the Ethernet minimum, as a NIC does.
fn padded(mut frame: Vec<u8>) -> Vec<u8> {
    frame.resize(frame.len().max(MIN_FRAME), 0);
    frame
}

fn with(mut frame: Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    f(&mut frame);
    frame
}

fn add_u16(frame: &mut [u8], off: usize, by: u16) {
    let v = u16::from_be_bytes([frame[off], frame[off + 1]]).wrapping_add(by);
    frame[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// IPv4 (or IPv6) carrying `payload` raw as protocol `proto`, padded to 60 bytes.
fn ip_raw(v6: bool, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(VM_MAC, GW_MAC);
    let r = if v6 {
        b.ipv6(VM_IP6, PEER_IP6, 64)
            .write(&mut out, IpNumber(proto), payload)
    } else {
        b.ipv4(VM_IP, PEER_IP, 64)
            .write(&mut out, IpNumber(proto), payload)
    };
    r.expect("etherparse serialises a valid frame");
    padded(out)
}

/// An Ethernet header with `ethertype` and `rest` behind it (unpadded: a cut frame).
fn eth_raw(ethertype: u16, rest: &[u8]) -> Vec<u8> {
    let mut f = GW_MAC.to_vec();
    f.extend_from_slice(&VM_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(rest);
    f
}

/// UDP to the VXLAN port from host B carrying `payload` (VXLAN header and inner frame).
fn vxlan_raw(payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(HOST_B_MAC, HOST_A_MAC)
        .ipv4(HOST_B_IP, HOST_A_IP, 64)
        .udp(49152, VXLAN_PORT);
    padded(build!(b, payload))
}

/// One frame for every reason the parser drops a packet (and the non-IP pass), built as
/// the fixture tests build them (`dataplane/tests/fixtures.rs`).
pub fn parse_cases() -> Vec<ParseCase> {
    use Reason::*;
    const L3: usize = ETH_LEN;
    const L4: usize = ETH_LEN + 20;
    let vm = |name, description, frame, reason| ParseCase {
        name,
        underlay: false,
        frame,
        reason,
        description,
    };
    let vni = VNI.to_be_bytes();
    let vxlan_header = [VXLAN_FLAG_I, 0, 0, 0, vni[1], vni[2], vni[3], 0];
    let mut inner_cut = vxlan_header.to_vec();
    inner_cut.extend_from_slice(&ipv4_udp()[..10]);
    vec![
        vm(
            "vm_non_ip_pass",
            "LLDP (0x88cc): not IP, passed",
            eth_raw(0x88cc, &[2, 7, 4]),
            PassNonIp,
        ),
        vm(
            "vm_vlan_truncated_drop",
            "802.1Q ethertype, no tag",
            eth_raw(0x8100, &[]),
            DropVlanTruncated,
        ),
        vm(
            "vm_vlan_too_deep_drop",
            "three VLAN tags",
            padded(eth_raw(
                0x88a8,
                &[0, 1, 0x81, 0, 0, 2, 0x81, 0, 0, 3, 0x08, 0],
            )),
            DropVlanTooDeep,
        ),
        vm(
            "vm_arp_truncated_drop",
            "ARP, 20 of 28 bytes",
            arp_request()[..ETH_LEN + 20].to_vec(),
            DropArpTruncated,
        ),
        vm(
            "vm_ipv4_bad_version_drop",
            "IPv4 ethertype, version 5",
            with(ipv4_udp(), |f| f[L3] = 0x55),
            DropIpv4BadVersion,
        ),
        vm(
            "vm_ipv4_bad_total_len_drop",
            "IPv4 total length beyond the frame",
            with(ipv4_udp(), |f| add_u16(f, L3 + 2, 27)),
            DropIpv4BadTotalLen,
        ),
        vm(
            "vm_ipv6_truncated_drop",
            "IPv6, 4 header bytes",
            ipv6_udp()[..ETH_LEN + 4].to_vec(),
            DropIpv6Truncated,
        ),
        vm(
            "vm_ipv6_bad_version_drop",
            "IPv6 ethertype, version 4",
            with(ipv6_udp(), |f| f[L3] = 0x40),
            DropIpv6BadVersion,
        ),
        vm(
            "vm_ipv6_bad_payload_len_drop",
            "IPv6 payload length beyond the frame",
            with(ipv6_udp(), |f| add_u16(f, L3 + 4, 1)),
            DropIpv6BadPayloadLen,
        ),
        vm(
            "vm_tcp_truncated_drop",
            "TCP, 19 bytes",
            ip_raw(false, 6, &[0; 19]),
            DropTcpTruncated,
        ),
        vm(
            "vm_tcp_bad_data_offset_drop",
            "TCP data offset 4",
            with(ipv4_tcp(), |f| f[L4 + 12] = 0x40),
            DropTcpBadDataOffset,
        ),
        vm(
            "vm_udp_truncated_drop",
            "UDP, 7 bytes",
            ip_raw(false, 17, &[0; 7]),
            DropUdpTruncated,
        ),
        vm(
            "vm_udp_bad_len_drop",
            "UDP length 7",
            with(ipv4_udp(), |f| f[L4 + 4..L4 + 6].copy_from_slice(&[0, 7])),
            DropUdpBadLen,
        ),
        vm(
            "vm_icmp_truncated_drop",
            "ICMP, 7 bytes",
            ip_raw(false, 1, &[8, 0, 0, 0, 0, 0, 0]),
            DropIcmpTruncated,
        ),
        vm(
            "vm_icmpv6_truncated_drop",
            "ICMPv6, 3 bytes",
            ip_raw(true, 58, &[128, 0, 0]),
            DropIcmpv6Truncated,
        ),
        ParseCase {
            underlay: true,
            ..vm(
                "underlay_vxlan_truncated_drop",
                "UDP to 4789 with 4 bytes of VXLAN header",
                vxlan_raw(&vxlan_header[..4]),
                DropVxlanTruncated,
            )
        },
        ParseCase {
            underlay: true,
            ..vm(
                "underlay_inner_eth_truncated_drop",
                "VXLAN carrying 10 bytes of an inner frame",
                vxlan_raw(&inner_cut),
                DropInnerEthTruncated,
            )
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    #[test]
    fn valid_frames_parse_as_intended() {
        let frame = ipv4_udp();
        let udp = SlicedPacket::from_ethernet(&frame).unwrap();
        assert!(matches!(udp.net, Some(NetSlice::Ipv4(_))));
        assert!(matches!(udp.transport, Some(TransportSlice::Udp(_))));

        let frame = ipv4_tcp();
        let tcp = SlicedPacket::from_ethernet(&frame).unwrap();
        assert!(matches!(tcp.transport, Some(TransportSlice::Tcp(_))));

        let frame = ipv6_udp();
        let v6 = SlicedPacket::from_ethernet(&frame).unwrap();
        assert!(matches!(v6.net, Some(NetSlice::Ipv6(_))));

        let frame = vlan_ipv4_udp();
        let vlan = SlicedPacket::from_ethernet(&frame).unwrap();
        assert!(vlan.vlan().is_some());
        assert!(matches!(vlan.transport, Some(TransportSlice::Udp(_))));

        let frame = arp_request();
        let arp = SlicedPacket::from_ethernet(&frame).unwrap();
        assert!(matches!(arp.net, Some(NetSlice::Arp(_))));
    }

    #[test]
    fn frames_have_their_intended_sizes() {
        for f in [ipv4_udp(), ipv4_tcp(), arp_request(), vlan_ipv4_udp()] {
            assert_eq!(f.len(), MIN_FRAME);
        }
        assert_eq!(ipv6_udp().len(), 64);
        assert_eq!(vxlan_ipv4_udp().len(), 50 + MIN_FRAME);
        assert_eq!(ipv4_truncated().len(), ETH_LEN + 10);
    }

    #[test]
    fn vxlan_frames_differ_only_in_the_i_flag() {
        let good = vxlan_ipv4_udp();
        let bad = vxlan_i_flag_clear();
        let flags_at = ETH_LEN + 20 + 8;
        assert_eq!(good[flags_at], VXLAN_FLAG_I);
        assert_eq!(bad[flags_at], 0);
        let outer = SlicedPacket::from_ethernet(&good).unwrap();
        match outer.transport {
            Some(TransportSlice::Udp(u)) => assert_eq!(u.destination_port(), VXLAN_PORT),
            _ => panic!("outer is not UDP"),
        }
        // The inner frame is the plain VM frame.
        assert_eq!(&good[50..], &ipv4_udp()[..]);
    }

    #[test]
    fn bad_ihl_frame_has_ihl_four() {
        assert_eq!(ipv4_bad_ihl()[ETH_LEN] & 0x0f, 4);
    }
}
