//! The frames each benchmark path feeds the programs. Sizes are realistic minimum frames
//! (60 bytes without FCS where the protocol allows), so figures compare like with like.

use etherparse::{ArpHardwareId, ArpOperation, ArpPacket, EtherType, PacketBuilder, VlanId};
use sluice_common::proto::VXLAN_PORT;

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
