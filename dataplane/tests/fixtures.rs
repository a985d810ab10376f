//! Tier 2: packet fixtures through BPF_PROG_TEST_RUN. Each fixture is one frame into one
//! program with the expected verdict, output bytes and counter deltas; every drop reason has
//! at least one fixture (checked below), so a new reason without a fixture fails the suite.
#[path = "fixtures/lb.rs"]
mod lb;
#[path = "fixtures/nat.rs"]
mod nat;
#[path = "fixtures/sg.rs"]
mod sg;
mod support;
#[path = "fixtures/vpc.rs"]
mod vpc;

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use etherparse::{IpFragOffset, IpNumber, Ipv4Header, PacketBuilder};
use sluice_common::{
    programs::{XDP_FLOOR, XDP_UNDERLAY, XDP_VM},
    stats::Reason,
};
use sluice_dataplane::{
    fixture::{packets::*, run_all, Fixture, Problem, XdpAction},
    loader::Dataplane,
};

/// Offsets in an untagged frame.
const IP: usize = ETH_LEN;
const L4: usize = ETH_LEN + IPV4_LEN;
const L4_V6: usize = ETH_LEN + IPV6_LEN;
const MIN_FRAME: usize = 60;
const VNI: u32 = 0x00_1234;
const HOST_A: [u8; 4] = [10, 255, 0, 1];
const HOST_B: [u8; 4] = [10, 255, 0, 2];

// ---- frame builders and mutators ----

fn udp4() -> Vec<u8> {
    ipv4_udp(SRC_V4, DST_V4, 40000, 53, b"query")
}

fn tcp4() -> Vec<u8> {
    ipv4_tcp(SRC_V4, DST_V4, 40000, 80, b"GET /")
}

fn udp6() -> Vec<u8> {
    ipv6_udp(SRC_V6, DST_V6, 40000, 53, b"query")
}

fn tcp6() -> Vec<u8> {
    ipv6_tcp(SRC_V6, DST_V6, 40000, 443, b"hello")
}

/// A copy of `frame` changed by `f`.
fn with(frame: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = frame.to_vec();
    f(&mut out);
    out
}

fn set_u16(frame: &mut [u8], off: usize, v: u16) {
    frame[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

fn get_u16(frame: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([frame[off], frame[off + 1]])
}

/// Zero-pads to the 60-byte Ethernet minimum, as a NIC does for short frames.
fn padded(frame: &[u8]) -> Vec<u8> {
    with(frame, |f| f.resize(MIN_FRAME.max(f.len()), 0))
}

fn truncated(frame: &[u8], len: usize) -> Vec<u8> {
    frame[..len].to_vec()
}

/// IPv4 UDP with `options` in the header (IHL = 5 + options.len() / 4).
fn udp4_with_options(options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, TTL, IpNumber::UDP, SRC_V4, DST_V4).unwrap();
    ip.options = options.try_into().unwrap();
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .udp(40000, 53);
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

fn tcp4_with_options(options: &[u8]) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, TTL, IpNumber::TCP, SRC_V4, DST_V4).unwrap();
    ip.options = options.try_into().unwrap();
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(40000, 80, 1, 65535);
    let mut out = Vec::new();
    b.write(&mut out, b"data").unwrap();
    out
}

/// An IPv4 fragment carrying `payload` raw, at `offset` (in 8-byte units).
fn ipv4_fragment(offset: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, TTL, IpNumber::UDP, SRC_V4, DST_V4).unwrap();
    ip.dont_fragment = false;
    ip.more_fragments = more;
    ip.fragment_offset = IpFragOffset::try_new(offset).unwrap();
    ip.identification = 0x4242;
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()));
    let mut out = Vec::new();
    b.write(&mut out, IpNumber::UDP, payload).unwrap();
    out
}

fn lldp() -> Vec<u8> {
    let mut f = vec![0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&[0x88, 0xcc]);
    f.extend_from_slice(&[0x02, 0x07, 0x04]); // chassis ID: MAC
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&[0x04, 0x03, 0x07, b'p', b'1']); // port ID: local
    f.extend_from_slice(&[0x06, 0x02, 0x00, 0x78]); // TTL 120 s
    f.extend_from_slice(&[0x00, 0x00]); // end
    padded(&f)
}

/// A bare Ethernet header with `ethertype` and `rest` behind it.
fn eth_raw(ethertype: u16, rest: &[u8]) -> Vec<u8> {
    let mut f = DST_MAC.to_vec();
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(rest);
    f
}

fn vxlan(inner: &[u8]) -> Vec<u8> {
    vxlan_encap(HOST_A, HOST_B, VNI, inner)
}

// ---- the catalogue ----

/// The same frame and expectation on both entry points.
fn on_both(
    out: &mut Vec<Fixture>,
    description: &str,
    input: Vec<u8>,
    expect: impl Fn(Fixture) -> Fixture,
) {
    for program in [XDP_VM, XDP_UNDERLAY] {
        out.push(expect(Fixture::new(description, program, input.clone())));
    }
}

fn pass_fixtures(f: &mut Vec<Fixture>) {
    use Reason::*;
    let pass = |r| move |x: Fixture| x.passes(r);

    on_both(f, "ARP request", arp_request(SRC_V4, DST_V4), pass(PassArp));
    on_both(
        f,
        "ARP request padded to 60 bytes",
        padded(&arp_request(SRC_V4, DST_V4)),
        pass(PassArp),
    );
    on_both(f, "IPv4 TCP SYN", tcp4(), pass(PassIpv4));
    on_both(f, "IPv4 UDP", udp4(), pass(PassIpv4));
    on_both(
        f,
        "IPv4 UDP, no payload",
        ipv4_udp(SRC_V4, DST_V4, 1, 2, b""),
        pass(PassIpv4),
    );
    on_both(
        f,
        "IPv4 UDP, 1514-byte frame",
        ipv4_udp(SRC_V4, DST_V4, 1, 2, &[0xab; 1472]),
        pass(PassIpv4),
    );
    on_both(
        f,
        "IPv4 ICMP echo request",
        ipv4_icmp_echo(SRC_V4, DST_V4, b"ping"),
        pass(PassIpv4),
    );
    on_both(
        f,
        "IPv4 GRE (no L4 parse)",
        ipv4_raw(SRC_V4, DST_V4, 47, &[0; 4]),
        pass(PassIpv4),
    );
    on_both(
        f,
        "IPv4 options, IHL 6, UDP",
        udp4_with_options(&[1, 1, 1, 0], b"opt"),
        pass(PassIpv4),
    );
    on_both(
        f,
        "IPv4 options, IHL 15, TCP",
        tcp4_with_options(&[1; 40]),
        pass(PassIpv4),
    );
    // The UDP length covers the whole datagram, beyond this fragment's end.
    on_both(
        f,
        "IPv4 first fragment (MF set), UDP length beyond the fragment",
        {
            let udp = ipv4_udp(SRC_V4, DST_V4, 40000, 53, &[7; 2000]);
            ipv4_fragment(0, true, &udp[L4..L4 + UDP_LEN + 1472])
        },
        pass(PassIpv4),
    );
    on_both(
        f,
        "IPv4 first fragment (MF set), TCP",
        {
            let tcp = ipv4_tcp(SRC_V4, DST_V4, 40000, 80, &[7; 64]);
            with(&ipv4_fragment(0, true, &tcp[L4..L4 + TCP_LEN + 32]), |f| {
                f[IP + 9] = 6
            })
        },
        pass(PassIpv4),
    );
    // 4 bytes: parsed as UDP this would be drop_udp_truncated.
    on_both(
        f,
        "IPv4 non-first fragment, not parsed as L4",
        ipv4_fragment(185, false, &[1, 2, 3, 4]),
        pass(PassIpv4),
    );
    on_both(f, "IPv6 TCP", tcp6(), pass(PassIpv6));
    on_both(f, "IPv6 UDP", udp6(), pass(PassIpv6));
    on_both(
        f,
        "IPv6 ICMPv6 echo request",
        ipv6_icmp_echo(SRC_V6, DST_V6, b"ping"),
        pass(PassIpv6),
    );
    on_both(
        f,
        "IPv6 no-next-header (59), empty",
        ipv6_raw(SRC_V6, DST_V6, 59, b""),
        pass(PassIpv6),
    );
    on_both(
        f,
        "802.1Q IPv4 UDP",
        push_vlan(&udp4(), 0x8100, 100),
        pass(PassIpv4),
    );
    on_both(
        f,
        "802.1Q IPv6 TCP",
        push_vlan(&tcp6(), 0x8100, 100),
        pass(PassIpv6),
    );
    on_both(
        f,
        "802.1Q ARP",
        push_vlan(&arp_request(SRC_V4, DST_V4), 0x8100, 100),
        pass(PassArp),
    );
    on_both(
        f,
        "QinQ (802.1ad + 802.1Q) IPv4 UDP",
        push_vlan(&push_vlan(&udp4(), 0x8100, 200), 0x88a8, 100),
        pass(PassIpv4),
    );
    on_both(
        f,
        "double 802.1Q IPv4 TCP",
        push_vlan(&push_vlan(&tcp4(), 0x8100, 2), 0x8100, 1),
        pass(PassIpv4),
    );
    on_both(f, "LLDP (0x88cc) is non-IP", lldp(), pass(PassNonIp));
    on_both(
        f,
        "802.1Q LLDP is non-IP",
        push_vlan(&lldp(), 0x8100, 5),
        pass(PassNonIp),
    );
    on_both(
        f,
        "bare Ethernet header, unknown ethertype",
        eth_raw(0x88b5, b""),
        pass(PassNonIp),
    );
    // Ethernet padding: the IP total length ends before the frame does.
    on_both(
        f,
        "IPv4 UDP padded to 60 bytes",
        padded(&ipv4_udp(SRC_V4, DST_V4, 1, 2, b"hi")),
        pass(PassIpv4),
    );
    on_both(
        f,
        "IPv4 TCP SYN padded to 60 bytes",
        padded(&ipv4_tcp(SRC_V4, DST_V4, 1, 2, b"")),
        pass(PassIpv4),
    );
    on_both(
        f,
        "IPv4 ICMP padded to 60 bytes",
        padded(&ipv4_icmp_echo(SRC_V4, DST_V4, b"")),
        pass(PassIpv4),
    );
    on_both(
        f,
        "IPv6 UDP with trailing padding",
        with(&udp6(), |f| f.extend([0; 6])),
        pass(PassIpv6),
    );
    on_both(
        f,
        "IPv4 UDP, port 4789 as source only",
        ipv4_udp(SRC_V4, DST_V4, 4789, 53, b"x"),
        pass(PassIpv4),
    );

    // The VM entry does not decapsulate: VXLAN from a VM is just IPv4 UDP.
    let vm = |d: &str, input: Vec<u8>| Fixture::new(d, XDP_VM, input).passes(PassIpv4);
    f.push(vm(
        "VXLAN is plain IPv4 UDP on the VM entry",
        vxlan(&udp4()),
    ));
    f.push(vm(
        "VXLAN with I flag clear is plain IPv4 UDP on the VM entry",
        vxlan_raw(HOST_A, HOST_B, &[0; 8], &udp4()),
    ));
    f.push(vm(
        "VXLAN header truncated is plain IPv4 UDP on the VM entry",
        vxlan_raw(HOST_A, HOST_B, &[0x08, 0, 0, 0], b""),
    ));

    let underlay = |d: &str, input: Vec<u8>, r| Fixture::new(d, XDP_UNDERLAY, input).passes(r);
    f.push(underlay("VXLAN: inner IPv4 UDP", vxlan(&udp4()), PassVxlan));
    f.push(underlay("VXLAN: inner IPv4 TCP", vxlan(&tcp4()), PassVxlan));
    f.push(underlay("VXLAN: inner IPv6 TCP", vxlan(&tcp6()), PassVxlan));
    f.push(underlay(
        "VXLAN: inner ARP",
        vxlan(&arp_request(SRC_V4, DST_V4)),
        PassVxlan,
    ));
    f.push(underlay(
        "VXLAN: inner 802.1Q IPv4 UDP",
        vxlan(&push_vlan(&udp4(), 0x8100, 7)),
        PassVxlan,
    ));
    f.push(underlay(
        "VXLAN: inner non-IP (LLDP)",
        vxlan(&lldp()),
        PassVxlan,
    ));
    f.push(underlay(
        "VXLAN: largest VNI",
        vxlan_encap(HOST_A, HOST_B, 0xff_ffff, &udp4()),
        PassVxlan,
    ));
    f.push(underlay(
        "VXLAN: reserved bits set besides I",
        {
            vxlan_raw(
                HOST_A,
                HOST_B,
                &[0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0xff],
                &udp4(),
            )
        },
        PassVxlan,
    ));
    f.push(underlay(
        "VXLAN in outer 802.1Q",
        push_vlan(&vxlan(&udp4()), 0x8100, 10),
        PassVxlan,
    ));
    f.push(underlay(
        "IPv6 UDP to 4789 is not VXLAN (IPv4 underlay)",
        ipv6_udp(SRC_V6, DST_V6, 49152, 4789, &[0; 30]),
        PassIpv6,
    ));
    // A fragmented VXLAN datagram is the kernel's to reassemble, not ours to decapsulate.
    f.push(underlay(
        "VXLAN first fragment (MF set) is not decapsulated",
        {
            let whole = vxlan(&ipv4_udp(SRC_V4, DST_V4, 1, 2, &[9; 1400]));
            ipv4_fragment(0, true, &whole[L4..L4 + 1000])
        },
        PassIpv4,
    ));
    // Looks like UDP to 4789 with a VXLAN header lacking the I flag, but a non-first
    // fragment has no UDP header: parsed as one it would be drop_vxlan_bad_flags.
    f.push(underlay(
        "IPv4 non-first fragment to 4789 is not VXLAN",
        {
            let mut fake = vec![0xc0, 0x00, 0x12, 0xb5, 0x00, 0x20, 0x00, 0x00];
            fake.extend([0; 24]);
            ipv4_fragment(3, false, &fake)
        },
        PassIpv4,
    ));
}

fn drop_fixtures(f: &mut Vec<Fixture>) {
    use Reason::*;
    let drop = |r| move |x: Fixture| x.drops(r);

    // Ethernet and VLAN
    on_both(
        f,
        "Ethernet truncated: 10 bytes",
        truncated(&udp4(), 10),
        drop(DropEthTruncated),
    );
    on_both(
        f,
        "Ethernet truncated: 13 bytes",
        truncated(&udp4(), 13),
        drop(DropEthTruncated),
    );
    on_both(
        f,
        "802.1Q tag truncated: no TCI",
        eth_raw(0x8100, b""),
        drop(DropVlanTruncated),
    );
    on_both(
        f,
        "802.1Q tag truncated: TCI, no ethertype",
        eth_raw(0x8100, &[0, 100]),
        drop(DropVlanTruncated),
    );
    on_both(
        f,
        "QinQ inner tag truncated",
        {
            truncated(
                &push_vlan(&push_vlan(&udp4(), 0x8100, 2), 0x88a8, 1),
                ETH_LEN + VLAN_LEN + 3,
            )
        },
        drop(DropVlanTruncated),
    );
    on_both(
        f,
        "three VLAN tags",
        {
            push_vlan(
                &push_vlan(&push_vlan(&udp4(), 0x8100, 3), 0x8100, 2),
                0x88a8,
                1,
            )
        },
        drop(DropVlanTooDeep),
    );

    // ARP
    on_both(
        f,
        "ARP truncated: 20 of 28 bytes",
        truncated(&arp_request(SRC_V4, DST_V4), ETH_LEN + 20),
        drop(DropArpTruncated),
    );
    on_both(
        f,
        "802.1Q ARP truncated",
        {
            truncated(
                &push_vlan(&arp_request(SRC_V4, DST_V4), 0x8100, 1),
                ETH_LEN + VLAN_LEN + 27,
            )
        },
        drop(DropArpTruncated),
    );

    // IPv4
    on_both(
        f,
        "IPv4 truncated: 19-byte header",
        truncated(&udp4(), IP + 19),
        drop(DropIpv4Truncated),
    );
    on_both(
        f,
        "IPv4 version 5",
        with(&udp4(), |f| f[IP] = 0x55),
        drop(DropIpv4BadVersion),
    );
    on_both(
        f,
        "IPv4 ethertype carrying version 6",
        with(&udp4(), |f| f[IP] = 0x65),
        drop(DropIpv4BadVersion),
    );
    on_both(
        f,
        "IPv4 IHL 4 (< 5)",
        with(&udp4(), |f| f[IP] = 0x44),
        drop(DropIpv4BadIhl),
    );
    on_both(
        f,
        "IPv4 IHL 0",
        with(&udp4(), |f| f[IP] = 0x40),
        drop(DropIpv4BadIhl),
    );
    // 28-byte datagram; IHL 15 claims a 60-byte header.
    on_both(
        f,
        "IPv4 IHL 15 beyond the frame",
        with(&ipv4_udp(SRC_V4, DST_V4, 1, 2, b""), |f| f[IP] = 0x4f),
        drop(DropIpv4Truncated),
    );
    on_both(
        f,
        "IPv4 total length beyond the frame",
        {
            with(&udp4(), |f| {
                let t = get_u16(f, IP + 2);
                set_u16(f, IP + 2, t + 1)
            })
        },
        drop(DropIpv4BadTotalLen),
    );
    on_both(
        f,
        "IPv4 total length 19 (< header)",
        with(&udp4(), |f| set_u16(f, IP + 2, 19)),
        drop(DropIpv4BadTotalLen),
    );
    on_both(
        f,
        "IPv4 IHL 6, total length 20 (< header)",
        {
            with(&udp4_with_options(&[1, 1, 1, 0], b""), |f| {
                set_u16(f, IP + 2, 20)
            })
        },
        drop(DropIpv4BadTotalLen),
    );
    on_both(
        f,
        "802.1Q IPv4 total length beyond the frame",
        {
            with(&push_vlan(&udp4(), 0x8100, 9), |f| {
                set_u16(f, IP + VLAN_LEN + 2, 1500)
            })
        },
        drop(DropIpv4BadTotalLen),
    );

    // IPv6
    on_both(
        f,
        "IPv6 truncated: 4 bytes",
        truncated(&udp6(), IP + 4),
        drop(DropIpv6Truncated),
    );
    on_both(
        f,
        "IPv6 truncated: 39 bytes",
        truncated(&udp6(), IP + 39),
        drop(DropIpv6Truncated),
    );
    on_both(
        f,
        "IPv6 version 4",
        with(&udp6(), |f| f[IP] = 0x40),
        drop(DropIpv6BadVersion),
    );
    on_both(
        f,
        "IPv6 payload length beyond the frame",
        {
            with(&udp6(), |f| {
                let p = get_u16(f, IP + 4);
                set_u16(f, IP + 4, p + 1)
            })
        },
        drop(DropIpv6BadPayloadLen),
    );

    // TCP
    on_both(
        f,
        "TCP truncated: 19 bytes",
        ipv4_raw(SRC_V4, DST_V4, 6, &[0; 19]),
        drop(DropTcpTruncated),
    );
    on_both(
        f,
        "TCP header in Ethernet padding, not in the datagram",
        padded(&ipv4_raw(SRC_V4, DST_V4, 6, &[0x50; 4])),
        drop(DropTcpTruncated),
    );
    on_both(
        f,
        "IPv6 TCP truncated: 12 bytes",
        ipv6_raw(SRC_V6, DST_V6, 6, &[0; 12]),
        drop(DropTcpTruncated),
    );
    on_both(
        f,
        "TCP data offset 4 (< 5)",
        with(&tcp4(), |f| f[L4 + 12] = 0x40),
        drop(DropTcpBadDataOffset),
    );
    on_both(
        f,
        "TCP data offset 0",
        with(&tcp4(), |f| f[L4 + 12] = 0x00),
        drop(DropTcpBadDataOffset),
    );
    on_both(
        f,
        "TCP data offset 15 beyond the datagram",
        with(&ipv4_tcp(SRC_V4, DST_V4, 1, 2, b""), |f| f[L4 + 12] = 0xf0),
        drop(DropTcpBadDataOffset),
    );
    on_both(
        f,
        "TCP data offset 8 reaching into Ethernet padding",
        {
            padded(&with(&ipv4_tcp(SRC_V4, DST_V4, 1, 2, b""), |f| {
                f[L4 + 12] = 0x60
            }))
        },
        drop(DropTcpBadDataOffset),
    );
    on_both(
        f,
        "IPv6 TCP data offset 3",
        with(&tcp6(), |f| f[L4_V6 + 12] = 0x30),
        drop(DropTcpBadDataOffset),
    );

    // UDP
    on_both(
        f,
        "UDP truncated: 7 bytes",
        ipv4_raw(SRC_V4, DST_V4, 17, &[0; 7]),
        drop(DropUdpTruncated),
    );
    on_both(
        f,
        "IPv6 UDP truncated: 4 bytes",
        ipv6_raw(SRC_V6, DST_V6, 17, &[0; 4]),
        drop(DropUdpTruncated),
    );
    on_both(
        f,
        "IPv6 payload length 0 with UDP in the frame",
        with(&udp6(), |f| set_u16(f, IP + 4, 0)),
        drop(DropUdpTruncated),
    );
    on_both(
        f,
        "UDP length 7 (< 8)",
        with(&udp4(), |f| set_u16(f, L4 + 4, 7)),
        drop(DropUdpBadLen),
    );
    on_both(
        f,
        "UDP length 0",
        with(&udp4(), |f| set_u16(f, L4 + 4, 0)),
        drop(DropUdpBadLen),
    );
    on_both(
        f,
        "UDP length beyond the datagram",
        {
            with(&udp4(), |f| {
                let l = get_u16(f, L4 + 4);
                set_u16(f, L4 + 4, l + 1)
            })
        },
        drop(DropUdpBadLen),
    );
    on_both(
        f,
        "UDP length reaching into Ethernet padding",
        {
            padded(&with(&ipv4_udp(SRC_V4, DST_V4, 1, 2, b"hi"), |f| {
                set_u16(f, L4 + 4, 20)
            }))
        },
        drop(DropUdpBadLen),
    );
    on_both(
        f,
        "IPv6 UDP length beyond the datagram",
        {
            with(&udp6(), |f| {
                let l = get_u16(f, L4_V6 + 4);
                set_u16(f, L4_V6 + 4, l + 1)
            })
        },
        drop(DropUdpBadLen),
    );
    on_both(
        f,
        "IPv4 options (IHL 6), UDP length beyond the datagram",
        {
            with(&udp4_with_options(&[1, 1, 1, 0], b"opt"), |f| {
                set_u16(f, L4 + 4 + 4, 200)
            })
        },
        drop(DropUdpBadLen),
    );
    on_both(
        f,
        "QinQ UDP length 7",
        {
            with(&push_vlan(&push_vlan(&udp4(), 0x8100, 2), 0x88a8, 1), |f| {
                set_u16(f, L4 + 8 + 4, 7)
            })
        },
        drop(DropUdpBadLen),
    );

    // ICMP
    on_both(
        f,
        "ICMP truncated: 7 bytes",
        ipv4_raw(SRC_V4, DST_V4, 1, &[8; 7]),
        drop(DropIcmpTruncated),
    );
    on_both(
        f,
        "ICMP header in Ethernet padding, not in the datagram",
        padded(&ipv4_raw(SRC_V4, DST_V4, 1, &[8, 0])),
        drop(DropIcmpTruncated),
    );
    on_both(
        f,
        "ICMPv6 truncated: 3 bytes",
        ipv6_raw(SRC_V6, DST_V6, 58, &[128, 0, 0]),
        drop(DropIcmpv6Truncated),
    );

    // VXLAN (underlay only: the VM entry does not look inside UDP 4789)
    let underlay = |d: &str, input: Vec<u8>, r| Fixture::new(d, XDP_UNDERLAY, input).drops(r);
    f.push(underlay(
        "VXLAN header truncated: 4 bytes",
        vxlan_raw(HOST_A, HOST_B, &[0x08, 0, 0, 0], b""),
        DropVxlanTruncated,
    ));
    f.push(underlay(
        "VXLAN: UDP to 4789 with no payload",
        vxlan_raw(HOST_A, HOST_B, b"", b""),
        DropVxlanTruncated,
    ));
    // The VXLAN header and the inner frame must lie inside the outer UDP datagram;
    // bytes past its end (Ethernet padding, trailing junk) are not part of it.
    f.push(underlay(
        "VXLAN: header in Ethernet padding, past the UDP length",
        padded(&vxlan_raw(HOST_A, HOST_B, b"", b"")),
        DropVxlanTruncated,
    ));
    f.push(underlay(
        "VXLAN: inner frame past the UDP length",
        with(&vxlan(&udp4()), |f| {
            let (ip_total, udp_len) = (
                (IPV4_LEN + UDP_LEN + VXLAN_LEN) as u16,
                (UDP_LEN + VXLAN_LEN) as u16,
            );
            set_u16(f, IP + 2, ip_total);
            set_u16(f, L4 + 4, udp_len);
        }),
        DropInnerEthTruncated,
    ));
    f.push(underlay(
        "VXLAN: inner IPv4 total length past the outer UDP length",
        with(&vxlan(&udp4()), |f| {
            // Cut the outer datagram 4 bytes short of the inner frame's end.
            let cut = (f.len() - 4 - IP) as u16;
            set_u16(f, IP + 2, cut);
            set_u16(f, L4 + 4, cut - IPV4_LEN as u16);
        }),
        DropIpv4BadTotalLen,
    ));
    f.push(underlay(
        "VXLAN I flag clear",
        vxlan_raw(HOST_A, HOST_B, &[0, 0, 0, 0, 0, 0x12, 0x34, 0], &udp4()),
        DropVxlanBadFlags,
    ));
    f.push(underlay(
        "VXLAN: inner Ethernet truncated (6 bytes)",
        vxlan(&udp4()[..6]),
        DropInnerEthTruncated,
    ));
    f.push(underlay(
        "VXLAN: no inner frame",
        vxlan(b""),
        DropInnerEthTruncated,
    ));
    f.push(underlay(
        "VXLAN: inner IPv4 version 5",
        vxlan(&with(&udp4(), |f| f[IP] = 0x55)),
        DropIpv4BadVersion,
    ));
    f.push(underlay(
        "VXLAN: inner IPv4 IHL 3",
        vxlan(&with(&udp4(), |f| f[IP] = 0x43)),
        DropIpv4BadIhl,
    ));
    f.push(underlay(
        "VXLAN: inner IPv4 truncated",
        vxlan(&truncated(&udp4(), IP + 12)),
        DropIpv4Truncated,
    ));
    f.push(underlay(
        "VXLAN: inner IPv4 total length beyond the frame",
        vxlan(&with(&udp4(), |f| set_u16(f, IP + 2, 1000))),
        DropIpv4BadTotalLen,
    ));
    f.push(underlay(
        "VXLAN: inner UDP length 7",
        vxlan(&with(&udp4(), |f| set_u16(f, L4 + 4, 7))),
        DropUdpBadLen,
    ));
    f.push(underlay(
        "VXLAN: inner three VLAN tags",
        {
            vxlan(&push_vlan(
                &push_vlan(&push_vlan(&udp4(), 0x8100, 3), 0x8100, 2),
                0x88a8,
                1,
            ))
        },
        DropVlanTooDeep,
    ));
    f.push(underlay(
        "VXLAN: inner ARP truncated",
        vxlan(&truncated(&arp_request(SRC_V4, DST_V4), 30)),
        DropArpTruncated,
    ));
    f.push(underlay(
        "VXLAN: inner IPv6 bad version",
        vxlan(&with(&udp6(), |f| f[IP] = 0x70)),
        DropIpv6BadVersion,
    ));
}

fn all_fixtures() -> Vec<Fixture> {
    let mut f = Vec::new();
    pass_fixtures(&mut f);
    drop_fixtures(&mut f);
    f.push(Fixture::new(
        "xdp_floor passes without counting",
        XDP_FLOOR,
        udp4(),
    ));
    f
}

// ---- tests ----

#[test]
fn every_reason_has_a_fixture() {
    let mut fixtures = all_fixtures();
    fixtures.extend(vpc::fixtures());
    let mut scenarios = sg::scenarios(sg::Ports::PLACEHOLDER);
    scenarios.extend(nat::scenarios(nat::Ports::PLACEHOLDER));
    scenarios.extend(lb::scenarios(lb::Ports::PLACEHOLDER));
    let missing: Vec<&str> = Reason::ALL
        .iter()
        .filter(|r| !vpc::UNREACHABLE.iter().any(|(u, _)| u == *r))
        .filter(|r| {
            !fixtures
                .iter()
                .chain(scenarios.iter().flat_map(|s| s.fixtures()))
                .any(|f| f.exercised_reasons().any(|e| e == **r))
        })
        .map(|r| r.name())
        .collect();
    assert!(missing.is_empty(), "reasons without a fixture: {missing:?}");
}

#[test]
fn fixture_descriptions_are_unique_per_program() {
    let fixtures = all_fixtures();
    for (i, a) in fixtures.iter().enumerate() {
        for b in &fixtures[i + 1..] {
            assert!(
                a.program != b.program || a.description != b.description,
                "duplicate fixture [{}] {}",
                a.program,
                a.description
            );
        }
    }
}

#[test]
fn every_fixture_passes() {
    if !support::privileged("every_fixture_passes") {
        return;
    }
    let mut dp = Dataplane::load(None).expect("object loads");
    let mut report = run_all(&mut dp, &all_fixtures());
    // The overlay fixtures configure the host, so they get maps of their own.
    let mut vpc_dp = Dataplane::load(None).expect("object loads");
    let vpc_report = run_all(&mut vpc_dp, &vpc::fixtures());
    report.total += vpc_report.total;
    report.failures.extend(vpc_report.failures);
    let mut fixtures = all_fixtures();
    fixtures.extend(vpc::fixtures());
    println!("{report}");
    let summary = format!(
        "fixtures: {} run ({} xdp_vm, {} xdp_underlay, {} other), {} passed, {} failed\n",
        report.total,
        fixtures.iter().filter(|f| f.program == XDP_VM).count(),
        fixtures
            .iter()
            .filter(|f| f.program == XDP_UNDERLAY)
            .count(),
        fixtures
            .iter()
            .filter(|f| f.program != XDP_VM && f.program != XDP_UNDERLAY)
            .count(),
        report.passed(),
        report.failures.len()
    );
    // scripts/test.sh can print this after the run, since cargo captures test output.
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/fixture-report.txt");
    std::fs::write(out, &summary).expect("write fixture report");
    assert!(report.failures.is_empty(), "{report}");
}

/// Runs the scenarios `make` lists (given the VM ports' ifindexes by name), each on
/// programs and maps of its own, in one private network namespace whose veth ends
/// (`pairs`) are the VM ports; writes the summary to `target/<report>` (scripts/test.sh
/// prints it) and fails with every failed step.
fn run_scenarios(
    what: &str,
    pairs: &[(&str, &str)],
    make: impl FnOnce(&std::collections::BTreeMap<String, u32>) -> Vec<sg::Scenario> + Send,
    report: &str,
) {
    let (scenarios, frames, failures) =
        sluice_dataplane::fixture::in_private_netns(pairs, |ifindex| {
            let (mut scenarios, mut frames, mut failures) = (0, 0, Vec::new());
            for s in make(ifindex) {
                let mut dp = Dataplane::load(None).expect("object loads");
                scenarios += 1;
                frames += s.fixtures().count();
                failures.extend(s.run(&mut dp));
            }
            (scenarios, frames, failures)
        })
        .expect("a private network namespace with veth pairs");
    let summary = format!(
        "{what} fixtures: {scenarios} scenarios, {frames} frames, {} failed steps\n",
        failures.len()
    );
    println!("{}\n{summary}", failures.join("\n"));
    let out = format!("{}/../target/{report}", env!("CARGO_MANIFEST_DIR"));
    std::fs::write(&out, &summary).unwrap_or_else(|e| panic!("write {out}: {e}"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn security_group_scenarios_pass() {
    if !support::privileged("security_group_scenarios_pass") {
        return;
    }
    run_scenarios(
        "security-group",
        &sg::PORT_PAIRS,
        |ifindex| sg::scenarios(sg::Ports::from_names(ifindex)),
        "sg-fixture-report.txt",
    );
}

#[test]
fn nat_scenarios_pass() {
    if !support::privileged("nat_scenarios_pass") {
        return;
    }
    run_scenarios(
        "NAT",
        &nat::PORT_PAIRS,
        |ifindex| nat::scenarios(nat::Ports::from_names(ifindex)),
        "nat-fixture-report.txt",
    );
}

#[test]
fn lb_scenarios_pass() {
    if !support::privileged("lb_scenarios_pass") {
        return;
    }
    run_scenarios(
        "load balancer",
        &lb::PORT_PAIRS,
        |ifindex| lb::scenarios(lb::Ports::from_names(ifindex)),
        "lb-fixture-report.txt",
    );
}

#[test]
fn byte_counters_count_the_whole_frame() {
    if !support::privileged("byte_counters_count_the_whole_frame") {
        return;
    }
    let mut dp = Dataplane::load(None).expect("object loads");
    let short = padded(&ipv4_udp(SRC_V4, DST_V4, 1, 2, b"hi"));
    let big = ipv4_udp(SRC_V4, DST_V4, 1, 2, &[0; 1472]);
    let encap = vxlan(&udp4());
    let cases = [
        // Padding counts: the frame, not the IP total length.
        (XDP_VM, short, Reason::PassIpv4),
        (XDP_VM, big, Reason::PassIpv4),
        // Outer headers count on the underlay.
        (XDP_UNDERLAY, encap, Reason::PassVxlan),
        // The metadata put in front of a short frame is not part of it.
        (XDP_VM, truncated(&udp4(), 10), Reason::DropEthTruncated),
        (XDP_UNDERLAY, udp4(), Reason::PassIpv4),
    ];
    for (program, frame, reason) in cases {
        let len = frame.len() as u64;
        let fixture = Fixture::new(format!("{len}-byte frame"), program, frame)
            .expect_action(if reason.is_drop() {
                XdpAction::Drop
            } else {
                XdpAction::Pass
            })
            .expect_count(reason, 1)
            .expect_bytes(reason, len);
        if let Err(failure) = fixture.run(&mut dp) {
            panic!("{failure}");
        }
    }
    assert_eq!(
        dp.stats().unwrap().get(Reason::PassIpv4).bytes,
        60 + 1514 + udp4().len() as u64
    );
}

#[test]
fn counters_accumulate_across_runs() {
    if !support::privileged("counters_accumulate_across_runs") {
        return;
    }
    let mut dp = Dataplane::load(None).expect("object loads");
    let fixture = Fixture::new("IPv4 UDP", XDP_VM, udp4()).passes(Reason::PassIpv4);
    for _ in 0..3 {
        fixture.run(&mut dp).unwrap_or_else(|f| panic!("{f}"));
    }
    let stats = dp.stats().unwrap();
    assert_eq!(stats.get(Reason::PassIpv4).packets, 3);
    assert_eq!(stats.get(Reason::PassIpv4).bytes, 3 * udp4().len() as u64);
    assert_eq!(stats.total_packets(), 3);
}

#[test]
fn a_wrong_expectation_fails_with_a_readable_diff() {
    if !support::privileged("a_wrong_expectation_fails_with_a_readable_diff") {
        return;
    }
    let mut dp = Dataplane::load(None).expect("object loads");
    let input = udp4();
    let wrong = Fixture::new("deliberately wrong", XDP_VM, input.clone())
        .drops(Reason::DropUdpBadLen)
        .expect_output(with(&input, |f| f[L4 + 1] ^= 0xff))
        .expect_bytes(Reason::PassIpv4, 1);
    let failure = wrong.run(&mut dp).expect_err("every expectation is wrong");
    let text = failure.to_string();
    println!("{text}");
    assert_eq!(failure.problems.len(), 4, "{text}");
    assert!(text.contains("[xdp_vm] deliberately wrong"), "{text}");
    assert!(text.contains("expected XDP_DROP, got XDP_PASS"), "{text}");
    assert!(text.contains("drop_udp_bad_len"), "{text}");
    assert!(text.contains("pass_ipv4"), "{text}");
    assert_eq!(text.matches("<-- mismatch").count(), 2, "{text}");
    assert!(
        text.contains(&format!("first difference at offset {:#06x}", L4 + 1)),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "bytes counted under pass_ipv4: expected 1, got {}",
            input.len()
        )),
        "{text}"
    );
}

#[test]
fn map_setup_runs_before_the_frame_and_its_errors_are_reported() {
    if !support::privileged("map_setup_runs_before_the_frame_and_its_errors_are_reported") {
        return;
    }
    let mut dp = Dataplane::load(None).expect("object loads");
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let fixture = Fixture::new("with setup", XDP_VM, udp4())
        .setup(move |dp| {
            // The hook gets the live dataplane: its maps are there to fill.
            dp.map_mut(sluice_common::maps::STATS)?;
            flag.store(true, Ordering::SeqCst);
            Ok(())
        })
        .passes(Reason::PassIpv4);
    fixture.run(&mut dp).unwrap_or_else(|f| panic!("{f}"));
    assert!(ran.load(Ordering::SeqCst), "setup closure did not run");

    let failing = Fixture::new("setup fails", XDP_VM, udp4())
        .setup(|_| anyhow::bail!("no route table"))
        .passes(Reason::PassIpv4);
    let failure = failing
        .run(&mut dp)
        .expect_err("setup error must fail the fixture");
    assert!(
        matches!(&failure.problems[..], [Problem::Setup(e)] if e.contains("no route table")),
        "{failure}"
    );
    // A failed setup must not run the frame.
    assert_eq!(dp.stats().unwrap().get(Reason::PassIpv4).packets, 1);
}

#[test]
fn frames_come_back_unchanged_including_short_ones() {
    if !support::privileged("frames_come_back_unchanged_including_short_ones") {
        return;
    }
    let dp = Dataplane::load(None).expect("object loads");
    let prog = dp.program(XDP_VM).unwrap();
    for len in [0, 1, 9, 10, 13, 14, 15, 60] {
        let frame: Vec<u8> = (0..len as u8).collect();
        let ran = sluice_dataplane::fixture::run_frame(prog, &frame)
            .unwrap_or_else(|e| panic!("{len}-byte frame: {e:#}"));
        assert_eq!(ran.output, frame, "{len}-byte frame");
    }
}
