//! Load balancers on a host: what its LB maps should hold ([`LbTables`], compiled from
//! the intent by [`compile`]), the Maglev table builder ([`maglev`]), the agent's map
//! writes ([`apply`]) and the health checks ([`health`]). The datapath design is at the
//! top of `common/src/lb.rs`; the datapath is `ebpf/src/lb.rs`.
//!
//! The VPC side (in `vpc/compile.rs`): every host with a VPC gets an endpoint per VIP
//! (`ENDPOINT_VIP`), backend NICs carry `ENDPOINT_LB_BACKEND` / `PORT_LB_BACKEND`, and
//! every VPC with listeners gets a health-check port per host ([`health_check_ifname`],
//! the host's health-check address, [`health_check_mac`]) whose endpoint every host of
//! the VPC knows, with a `Local` /32 route so both the route fast path and
//! decapsulation deliver to it.
//!
//! The agent (`agent/mod.rs`) writes the LB maps after the VPC and NAT maps through an
//! [`apply::LbState`] it shares with the health checks; a verdict change goes through
//! [`apply::apply_health`] (backend slot -> healthy; a slot left out is not decided yet
//! and counts as healthy), which rewrites only the tables it changes.

pub mod apply;
pub mod compile;
pub mod health;
pub mod maglev;

use serde::{Deserialize, Serialize};
use sluice_common::{
    lb::ListenerKey,
    vpc::{Ipv4, Mac},
};

use crate::intent::lb::{AllDown, HealthCheck, SchedulerKind};

/// One host's load balancer tables.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbTables {
    /// Every listener of the load balancers whose VPC is present on this host; sorted by
    /// key (VNI, VIP, protocol, port).
    #[serde(default)]
    pub listeners: Vec<ListenerRow>,
    /// This host's health-check port of each present VPC with listeners; sorted by VNI.
    #[serde(default)]
    pub check_ports: Vec<CheckPortRow>,
}

/// A listener: its datapath key, table slot, how it picks, how it is checked, and its
/// backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerRow {
    /// `lbl-<n>`, and its load balancer's `lb-<n>`: for logs, metrics and status.
    pub id: String,
    pub lb: String,
    pub vni: u32,
    pub vip: Ipv4,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub port: u16,
    /// Slot of its table in `SLUICE_LB_TABLES`.
    pub slot: u32,
    pub scheduler: SchedulerKind,
    pub all_down: AllDown,
    pub health_check: HealthCheck,
    /// Sorted by slot.
    pub backends: Vec<BackendRow>,
}

/// A backend of a listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRow {
    /// `lbb-<n>`.
    pub id: String,
    /// Slot in `SLUICE_LB_BACKENDS` (stable while it exists).
    pub slot: u32,
    pub ip: Ipv4,
    pub port: u16,
    /// 0 (draining) to 100.
    pub weight: u8,
    /// The NIC with that address in the VPC, if any, and its host's VTEP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep: Option<Ipv4>,
}

/// This host's health-check port of one VPC: the agent creates the interface (host side
/// `ifname`, where `xdp_vm` runs) and probes from `ip` on its far end, with the VPC's
/// CIDR routed through it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CheckPortRow {
    pub vni: u32,
    pub ifname: String,
    pub ip: Ipv4,
    pub mac: Mac,
    pub vpc: Ipv4,
    pub vpc_len: u8,
}

impl ListenerRow {
    /// Its key in `SLUICE_LB_LISTENERS`.
    pub fn key(&self) -> ListenerKey {
        ListenerKey {
            vni: self.vni,
            vip: self.vip,
            port: self.port.to_be_bytes(),
            proto: self.proto,
            _pad: 0,
        }
    }

    /// The port probed on `b`.
    pub fn check_port(&self, b: &BackendRow) -> u16 {
        self.health_check.port.unwrap_or(b.port)
    }
}

/// The host-side interface of VPC `vni`'s health-check port.
pub fn health_check_ifname(vni: u32) -> String {
    format!("slhc{:06x}", vni & 0xff_ffff)
}

/// The health-check port's MAC: locally administered, unicast, from the VNI and the
/// 22 host bits of its address in 100.64.0.0/10 (unique per port).
pub fn health_check_mac(vni: u32, ip: Ipv4) -> Mac {
    [
        0x02 | ((ip[1] & 0x3f) << 2),
        (vni >> 16) as u8,
        (vni >> 8) as u8,
        vni as u8,
        ip[2],
        ip[3],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_port_names_fit_an_interface_and_macs_are_local_unicast() {
        assert_eq!(health_check_ifname(0x1234), "slhc001234");
        assert!(health_check_ifname(0xff_ffff).len() < 16);
        let a = health_check_mac(7, [100, 64, 0, 1]);
        let b = health_check_mac(7, [100, 127, 0, 1]);
        let c = health_check_mac(8, [100, 64, 0, 1]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        for m in [a, b, c] {
            assert_eq!(m[0] & 0x03, 0x02, "{m:?}");
        }
    }
}
