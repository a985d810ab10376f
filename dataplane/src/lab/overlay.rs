//! Overlay labs: an underlay fabric, hosts on it, and VMs routed by their host's XDP.
//!
//! ```text
//!   fabric  bridge <lab>-br, ports <lab>-h1, <lab>-h2 (GRO on)
//!              │ veth                                  │ veth
//!   h1      <lab>-ul 172.31.0.1/24 [xdp_underlay]   h2 <lab>-ul 172.31.0.2/24 [xdp_underlay]
//!           <lab>-a1 [xdp_vm], no address              ...
//!              │ veth, MTU 1450 both ends
//!   a1      <lab>-a1n 10.0.1.10/24, default via 10.0.1.1, [XDP pass], TX csum offload off
//! ```
//!
//! What XDP between veths needs (verified on this kernel, 6.18, by the overlay tests and by
//! switching each piece off by hand). A frame an XDP program sends into a veth lands in the
//! ring of that veth's *peer*:
//! - XDP_REDIRECT needs the peer to run NAPI (GRO on, or an XDP program): otherwise veth
//!   does not offer `ndo_xdp_xmit` and the redirect fails with EOPNOTSUPP (tracepoint
//!   `xdp:xdp_redirect_err err=-95`) after the program has already counted the frame as
//!   forwarded. The fabric-side ends (targets of encapsulation) have GRO on.
//! - XDP_TX (the ARP responder's answer, back out of the VM's host-side end) needs the peer
//!   to have an XDP *program*: with GRO alone the answer is queued but the peer's NAPI is
//!   not scheduled, so it waits until some redirected frame flushes the ring (a 1 s stall on
//!   the first ping) or forever. The VM-side ends get a pass-everything XDP program, which
//!   also covers redirects into them.
//! - A redirected frame is an `xdp_frame`: the skb's checksum-offload state is gone, so a
//!   TCP/UDP packet sent with a partial checksum arrives with a bad one (`TcpInCsumErrors`).
//!   VMs send fully checksummed packets (TX checksum offload off), as a VM whose virtual NIC
//!   offers no offload would.
//! - The host-side ends need nothing: their own XDP program gives them NAPI.

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sluice_common::{proto::VXLAN_OVERHEAD, vpc::Mac};

use super::{cmd, names, Lab};

/// The label of the underlay namespace.
pub const FABRIC: &str = "fabric";

/// MTU of the underlay links.
pub const UNDERLAY_MTU: u32 = 1500;

/// MTU of VM links: the underlay's minus the VXLAN encapsulation, so every frame a VM sends
/// fits the underlay once encapsulated.
pub const VM_MTU: u32 = UNDERLAY_MTU - VXLAN_OVERHEAD as u32;

/// A host's link to the fabric.
#[derive(Clone, Debug)]
pub struct UnderlayPort {
    pub host: String,
    /// The host-side interface (`<lab>-ul`, in the host's namespace): where `xdp_underlay`
    /// attaches and where the host's VTEP address lives.
    pub ifname: String,
    /// The other end, on the fabric bridge (`<lab>-<host>`, in the fabric namespace).
    pub fabric_if: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: Mac,
}

/// A VM namespace attached to a host, routed (not bridged) by the host's XDP.
#[derive(Clone, Debug)]
pub struct OverlayVm {
    pub vm: String,
    pub host: String,
    /// Inside the VM namespace (`<lab>-<vm>n`).
    pub vm_if: String,
    /// Inside the host namespace (`<lab>-<vm>`): where `xdp_vm` attaches.
    pub host_if: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// The subnet's first address: the VM's default route.
    pub gateway: Ipv4Addr,
    pub mac: Mac,
}

impl OverlayVm {
    /// The subnet's network address.
    pub fn subnet(&self) -> Ipv4Addr {
        network(self.ip, self.prefix_len)
    }
}

/// `10.0.1.10/24` into its address and prefix length.
pub fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8)> {
    let (ip, len) = cidr
        .split_once('/')
        .with_context(|| format!("{cidr:?} needs a prefix length (e.g. 10.0.1.10/24)"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .with_context(|| format!("{cidr:?}: {ip:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .with_context(|| format!("{cidr:?}: prefix length {len:?} is not 0..=32"))?;
    Ok((ip, len))
}

/// The network address of `ip/len`.
pub fn network(ip: Ipv4Addr, len: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip) & mask_bits(len))
}

/// The netmask of a prefix length, as an address.
pub fn netmask(len: u8) -> Ipv4Addr {
    Ipv4Addr::from(mask_bits(len))
}

fn mask_bits(len: u8) -> u32 {
    match len {
        0 => 0,
        l => u32::MAX << (32 - u32::from(l.min(32))),
    }
}

/// The gateway of `ip/len`'s subnet (its first address); the VM must not be the gateway,
/// the network or the broadcast address.
pub fn gateway(ip: Ipv4Addr, len: u8) -> Result<Ipv4Addr> {
    if len > 30 {
        bail!("{ip}/{len}: a VM subnet needs room for a gateway (prefix length at most 30)");
    }
    let net = u32::from(network(ip, len));
    let gw = Ipv4Addr::from(net + 1);
    let broadcast = net | !mask_bits(len);
    let host = u32::from(ip);
    if host == net || host == broadcast || ip == gw {
        bail!("{ip}/{len}: the network, gateway ({gw}) and broadcast addresses are not for VMs");
    }
    Ok(gw)
}

/// `aa:bb:cc:dd:ee:ff` to bytes.
pub fn parse_mac(s: &str) -> Result<Mac> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{s:?} is not a MAC address"))?;
    parts
        .try_into()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a MAC address (six octets)"))
}

pub fn format_mac(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One entry of `ip -j link show`.
#[derive(Deserialize)]
struct LinkJson {
    ifindex: u32,
    ifname: String,
    address: Option<String>,
}

fn parse_link_json(text: &str, ifname: &str) -> Result<LinkJson> {
    let links: Vec<LinkJson> = serde_json::from_str(text)
        .with_context(|| format!("`ip -j link show {ifname}` printed unexpected JSON: {text}"))?;
    links
        .into_iter()
        .find(|l| l.ifname == ifname)
        .with_context(|| format!("`ip -j link show {ifname}` does not list {ifname}: {text}"))
}

impl Lab {
    /// The underlay: namespace [`FABRIC`] with a bridge (`<lab>-br`). Returns the bridge name.
    pub fn fabric(&self) -> Result<String> {
        if !self.has_host(FABRIC) {
            self.add_host(FABRIC)?;
            self.disable_ipv6(FABRIC)?;
        }
        let bridge = self.ifname("br")?;
        if !cmd::list_links(Some(&self.netns(FABRIC)))?.contains(&bridge) {
            self.bridge(FABRIC, &bridge)?;
        }
        Ok(bridge)
    }

    /// Host namespace `host` wired to the fabric (created if needed), with underlay address
    /// `cidr` (e.g. `172.31.0.1/24`) on its end.
    pub fn underlay_host(&self, host: &str, cidr: &str) -> Result<UnderlayPort> {
        self.underlay_host_named(host, &self.ifname("ul")?, cidr, UNDERLAY_MTU)
    }

    /// [`Lab::underlay_host`] with the host's end named `ifname` (names inside a lab
    /// namespace need no lab prefix) and underlay links of MTU `mtu`.
    pub fn underlay_host_named(
        &self,
        host: &str,
        ifname: &str,
        cidr: &str,
        mtu: u32,
    ) -> Result<UnderlayPort> {
        let (ip, prefix_len) = parse_cidr(cidr)?;
        let bridge = self.fabric()?;
        self.add_host(host)?;
        self.disable_ipv6(host)?;
        let fabric_if = self.ifname(host)?;
        self.veth(host, ifname, FABRIC, &fabric_if)?;
        self.mtu(host, ifname, mtu)?;
        self.mtu(FABRIC, &fabric_if, mtu)?;
        self.enslave(FABRIC, &fabric_if, &bridge)?;
        self.up(FABRIC, &fabric_if)?;
        // Encapsulated frames are redirected into the host's end: its fabric-side peer must
        // run NAPI to receive them.
        self.enable_gro(FABRIC, &fabric_if)?;
        self.addr(host, ifname, cidr)?;
        self.up(host, ifname)?;
        let mac = self.link_mac(host, ifname)?;
        Ok(UnderlayPort {
            host: host.to_string(),
            ifname: ifname.to_string(),
            fabric_if,
            ip,
            prefix_len,
            mac,
        })
    }

    /// Two new host namespaces wired back to back by one veth pair, without a fabric: each
    /// end is named `ifname` in its host, gets its address (`a_cidr`, `b_cidr`, one
    /// subnet), MTU `mtu` and GRO. XDP_REDIRECT into one end lands in the other host's ring
    /// as an XDP frame, as from a NIC, where a bridge in between would make skbs of it.
    /// Each port's `fabric_if` is the other end: the same name, in the other host.
    pub fn underlay_back_to_back(
        &self,
        (a, a_cidr): (&str, &str),
        (b, b_cidr): (&str, &str),
        ifname: &str,
        mtu: u32,
    ) -> Result<(UnderlayPort, UnderlayPort)> {
        let (a_ip, a_len) = parse_cidr(a_cidr)?;
        let (b_ip, b_len) = parse_cidr(b_cidr)?;
        if a_len != b_len || network(a_ip, a_len) != network(b_ip, b_len) {
            bail!("back-to-back underlay: {a_cidr} and {b_cidr} are not one subnet");
        }
        for host in [a, b] {
            self.add_host(host)?;
            self.disable_ipv6(host)?;
        }
        self.veth(a, ifname, b, ifname)?;
        let mut ports = Vec::new();
        for (host, cidr, ip) in [(a, a_cidr, a_ip), (b, b_cidr, b_ip)] {
            self.mtu(host, ifname, mtu)?;
            self.addr(host, ifname, cidr)?;
            self.up(host, ifname)?;
            self.enable_gro(host, ifname)?;
            ports.push(UnderlayPort {
                host: host.to_string(),
                ifname: ifname.to_string(),
                fabric_if: ifname.to_string(),
                ip,
                prefix_len: a_len,
                mac: self.link_mac(host, ifname)?,
            });
        }
        let b_port = ports.pop().expect("two ports");
        let a_port = ports.pop().expect("two ports");
        Ok((a_port, b_port))
    }

    /// VM namespace `vm` attached to `host` by a veth pair: the VM end gets `cidr`, `mac`,
    /// MTU [`VM_MTU`], a default route via the subnet's gateway, an XDP pass program (to
    /// receive what the host's XDP sends it) and no TX checksum offload (redirected frames
    /// lose it); the host end has no address and waits for `xdp_vm`.
    pub fn overlay_vm(&self, host: &str, vm: &str, cidr: &str, mac: Mac) -> Result<OverlayVm> {
        names::check_label(vm)?;
        let host_if = self.ifname(vm)?;
        let vm_if = names::ifname(self.name(), &format!("{vm}n"))
            .with_context(|| format!("VM label {vm:?} is one character too long"))?;
        self.overlay_vm_named(host, vm, &host_if, &vm_if, cidr, mac, VM_MTU)
    }

    /// [`Lab::overlay_vm`] with the host end named `host_if`, the VM end `vm_if` (names
    /// inside lab namespaces need no lab prefix) and links of MTU `mtu` (the underlay's
    /// minus [`VXLAN_OVERHEAD`]).
    #[allow(clippy::too_many_arguments)]
    pub fn overlay_vm_named(
        &self,
        host: &str,
        vm: &str,
        host_if: &str,
        vm_if: &str,
        cidr: &str,
        mac: Mac,
        mtu: u32,
    ) -> Result<OverlayVm> {
        let (ip, prefix_len) = parse_cidr(cidr)?;
        let gateway = gateway(ip, prefix_len)?;
        self.known_netns(host)?;
        names::check_label(vm)?;
        self.add_host(vm)?;
        self.disable_ipv6(vm)?;
        let (host_if, vm_if) = (host_if.to_string(), vm_if.to_string());
        self.veth(host, &host_if, vm, &vm_if)?;
        self.mtu(vm, &vm_if, mtu)?;
        self.mtu(host, &host_if, mtu)?;
        self.set_mac(vm, &vm_if, &format_mac(&mac))?;
        self.addr(vm, &vm_if, cidr)?;
        self.up(vm, &vm_if)?;
        // Redirected frames and the ARP responder's XDP_TX land here: see `lab::xdp`.
        self.attach_xdp_pass(vm, &vm_if)?;
        self.exec(vm, &["ethtool", "-K", &vm_if, "tx", "off"])?;
        self.guest_nic(vm, &vm_if)?;
        self.up(host, &host_if)?;
        let gw = gateway.to_string();
        cmd::ip_in(
            &self.netns(vm),
            &["route", "add", "default", "via", &gw, "dev", &vm_if],
        )?;
        Ok(OverlayVm {
            vm: vm.to_string(),
            host: host.to_string(),
            vm_if,
            host_if,
            ip,
            prefix_len,
            gateway,
            mac,
        })
    }

    /// Gives a VM's interface a qdisc, as a guest's NIC has.
    ///
    /// A veth has none, and when its peer runs NAPI (here `xdp_vm`) a full peer ring (256
    /// frames) drops the VM's TCP segments: hundreds of retransmits per second. With a
    /// qdisc the veth stops the queue instead and the stack requeues (kernel 6.15+), as
    /// with a guest's full virtio TX ring.
    pub fn guest_nic(&self, vm: &str, vm_if: &str) -> Result<()> {
        self.exec(
            vm,
            &["tc", "qdisc", "replace", "dev", vm_if, "root", "pfifo_fast"],
        )?;
        Ok(())
    }

    pub fn mtu(&self, host: &str, iface: &str, mtu: u32) -> Result<()> {
        cmd::ip_in(
            &self.known_netns(host)?,
            &["link", "set", iface, "mtu", &mtu.to_string()],
        )?;
        Ok(())
    }

    /// No IPv6 in `host`'s namespace (for interfaces created from now on): keeps router
    /// solicitations and MLD reports out of counters and captures.
    pub fn disable_ipv6(&self, host: &str) -> Result<()> {
        for scope in ["all", "default"] {
            self.exec(
                host,
                &[
                    "sysctl",
                    "-q",
                    "-w",
                    &format!("net.ipv6.conf.{scope}.disable_ipv6=1"),
                ],
            )?;
        }
        Ok(())
    }

    /// The ifindex of `iface` inside `host`'s namespace.
    pub fn ifindex(&self, host: &str, iface: &str) -> Result<u32> {
        Ok(self.link(host, iface)?.ifindex)
    }

    /// The MAC address of `iface` inside `host`'s namespace.
    pub fn link_mac(&self, host: &str, iface: &str) -> Result<Mac> {
        let link = self.link(host, iface)?;
        let addr = link
            .address
            .with_context(|| format!("{iface} in {host} has no MAC address"))?;
        parse_mac(&addr)
    }

    fn link(&self, host: &str, iface: &str) -> Result<LinkJson> {
        let out = cmd::ip_in(
            &self.known_netns(host)?,
            &["-j", "link", "show", "dev", iface],
        )?;
        parse_link_json(&String::from_utf8_lossy(&out.stdout), iface)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_cidr("10.0.1.10/24").unwrap(),
            ("10.0.1.10".parse().unwrap(), 24)
        );
        for bad in ["10.0.1.10", "10.0.1/24", "10.0.1.10/33", "10.0.1.10/x"] {
            let err = parse_cidr(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn gateway_is_the_first_address_and_reserved_addresses_are_refused() {
        let ip = "10.0.2.20".parse().unwrap();
        assert_eq!(gateway(ip, 24).unwrap(), Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!(network(ip, 24), Ipv4Addr::new(10, 0, 2, 0));
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        for reserved in ["10.0.2.0", "10.0.2.1", "10.0.2.255"] {
            assert!(
                gateway(reserved.parse().unwrap(), 24).is_err(),
                "{reserved}"
            );
        }
        assert!(gateway(ip, 31).is_err());
    }

    #[test]
    fn vm_mtu_leaves_room_for_vxlan() {
        assert_eq!(VM_MTU, 1450);
    }

    #[test]
    fn macs_round_trip() {
        let m = parse_mac("02:a0:00:01:0a:ff").unwrap();
        assert_eq!(m, [0x02, 0xa0, 0, 1, 0x0a, 0xff]);
        assert_eq!(format_mac(&m), "02:a0:00:01:0a:ff");
        assert!(parse_mac("02:a0:00:01:0a").is_err());
        assert!(parse_mac("zz:a0:00:01:0a:ff").is_err());
    }

    #[test]
    fn link_json_is_searched_by_name() {
        let text = r#"[{"ifindex":7,"ifname":"sl0001-ul","address":"02:00:00:00:00:07"}]"#;
        let l = parse_link_json(text, "sl0001-ul").unwrap();
        assert_eq!(l.ifindex, 7);
        assert_eq!(l.address.as_deref(), Some("02:00:00:00:00:07"));
        assert!(parse_link_json(text, "other").is_err());
        assert!(parse_link_json("oops", "x").is_err());
    }
}
