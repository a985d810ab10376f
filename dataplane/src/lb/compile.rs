//! Intent in, one host's [`LbTables`] out (pure).
//!
//! - A host balances the flows of its own VMs, and Internet flows to a DNAT entry whose
//!   target is a VIP: it gets every listener of every load balancer whose VPC is present
//!   on it ([`Intent::present_vpcs`]), with all its backends (the datapath's choice and
//!   the checks need them all, healthy or not, drained or not).
//! - Each such VPC with at least one listener gets this host's health-check port
//!   ([`health_check_ip`]); the VPC compile (`vpc/compile.rs`) adds its port, endpoint
//!   and route to the VPC tables.

use std::collections::BTreeSet;

use sluice_common::{
    proto::{IPPROTO_TCP, IPPROTO_UDP},
    vpc::Ipv4,
};

use super::{
    health_check_ifname, health_check_mac, BackendRow, CheckPortRow, LbTables, ListenerRow,
};
use crate::intent::{
    lb::{LbProtocol, LoadBalancer},
    Intent,
};

/// The address `host`'s health checks leave from, in every VPC: the controller gives each
/// host one inside [`sluice_common::lb::HEALTH_CHECK_NET`] (`Host::health_check_ip`).
pub fn health_check_ip(intent: &Intent, host: &str) -> Option<Ipv4> {
    intent.host(host)?.health_check_ip.map(|ip| ip.octets())
}

/// IDs of the VPCs with at least one listener.
pub fn vpcs_with_listeners(intent: &Intent) -> BTreeSet<&str> {
    intent
        .load_balancers()
        .filter(|lb| !lb.listeners.is_empty())
        .map(|lb| lb.vpc.as_str())
        .collect()
}

pub fn proto_number(p: LbProtocol) -> u8 {
    match p {
        LbProtocol::Tcp => IPPROTO_TCP,
        LbProtocol::Udp => IPPROTO_UDP,
    }
}

pub fn compile_host(intent: &Intent, host: &str) -> LbTables {
    let mut t = LbTables::default();
    if intent.host(host).is_none() {
        return t;
    }
    let present = intent.present_vpcs(host);
    for lb in intent.load_balancers() {
        if !present.contains(lb.vpc.as_str()) {
            continue;
        }
        listeners(intent, lb, &mut t.listeners);
    }
    t.listeners.sort_by_key(|l| l.key());
    // Two listeners with one key (a damaged store): the first one stays.
    t.listeners.dedup_by_key(|l| l.key());
    if let Some(ip) = health_check_ip(intent, host) {
        for vpc_id in vpcs_with_listeners(intent) {
            let Some(vpc) = intent.vpc(vpc_id).filter(|_| present.contains(vpc_id)) else {
                continue;
            };
            t.check_ports.push(CheckPortRow {
                vni: vpc.vni,
                ifname: health_check_ifname(vpc.vni),
                ip,
                mac: health_check_mac(vpc.vni, ip),
                vpc: vpc.cidr.addr().octets(),
                vpc_len: vpc.cidr.prefix_len(),
            });
        }
    }
    t.check_ports.sort();
    t
}

fn listeners(intent: &Intent, lb: &LoadBalancer, out: &mut Vec<ListenerRow>) {
    let Some(vpc) = intent.vpc(&lb.vpc) else {
        return;
    };
    let vtep_of = |host: &str| intent.host(host).map(|h| h.underlay_ip.octets());
    for l in &lb.listeners {
        let mut backends: Vec<BackendRow> = l
            .backends
            .iter()
            .map(|b| {
                // The NIC named, or the one with that address in the VPC.
                let nic = b
                    .nic
                    .as_deref()
                    .and_then(|id| intent.nic(id))
                    .or_else(|| intent.nics().find(|n| n.vpc == lb.vpc && n.ip == b.ip));
                BackendRow {
                    id: b.id.clone(),
                    slot: b.slot,
                    ip: b.ip.octets(),
                    port: b.port,
                    weight: b.weight,
                    nic: nic.map(|n| n.id.clone()),
                    vtep: nic.and_then(|n| vtep_of(&n.host)),
                }
            })
            .collect();
        backends.sort_by_key(|b| b.slot);
        out.push(ListenerRow {
            id: l.id.clone(),
            lb: lb.id.clone(),
            vni: vpc.vni,
            vip: lb.vip.octets(),
            proto: proto_number(l.protocol),
            port: l.port,
            slot: l.slot,
            scheduler: l.scheduler,
            all_down: l.all_down,
            health_check: l.health_check.clone(),
            backends,
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::intent::{
        lb::{AllDown, HealthCheck, HealthCheckKind, LbBackend, LbListener, SchedulerKind},
        validate::tests as validate,
        NicSpec,
    };
    use sluice_common::lb::{HEALTH_CHECK_NET, HEALTH_CHECK_PREFIX};

    fn host(i: Intent, name: &str, ip: &str) -> Intent {
        i.create_host(validate::host(name, ip)).unwrap().0
    }

    fn nic(i: Intent, name: &str, vpc: &str, host: &str, ip: &str) -> Intent {
        i.create_nic(NicSpec {
            name: Some(name.into()),
            vpc: vpc.into(),
            subnet: format!("{vpc}-web"),
            host: host.into(),
            ifname: format!("vm-{name}"),
            ip: Some(ip.into()),
            ..Default::default()
        })
        .unwrap()
        .0
    }

    fn vpc(i: Intent, name: &str) -> Intent {
        let (i, _) = i.create_vpc(validate::vpc(name, "10.0.0.0/16")).unwrap();
        let web = format!("{name}-web");
        i.create_subnet(validate::subnet(name, &web, "10.0.1.0/24"))
            .unwrap()
            .0
    }

    pub(crate) fn backend(id: &str, slot: u32, ip: &str, nic: Option<&str>) -> LbBackend {
        LbBackend {
            id: id.into(),
            nic: nic.map(str::to_string),
            ip: ip.parse().unwrap(),
            port: 8080,
            weight: 10,
            slot,
        }
    }

    /// Hosts h1, h2 (VPC `t`: client c1 and backend b1 on h1, backend b2 on h2) and h3
    /// (VPC `u` only). `lb-1` in `t`: VIP 10.0.1.100, tcp 80 (maglev, b1 + b2, http
    /// check) and udp 53 (least_conn, b2 by address, fail_closed).
    pub(crate) fn cloud() -> Intent {
        let i = host(Intent::default(), "h1", "172.31.0.1");
        let i = host(i, "h2", "172.31.0.2");
        let i = host(i, "h3", "172.31.0.3");
        let i = vpc(vpc(i, "t"), "u");
        let i = nic(i, "c1", "t", "h1", "10.0.1.10");
        let i = nic(i, "b1", "t", "h1", "10.0.1.11");
        let i = nic(i, "b2", "t", "h2", "10.0.1.12");
        let mut i = nic(i, "x3", "u", "h3", "10.0.1.10");
        let t = i.vpc("t").unwrap().id.clone();
        let subnet = i.subnets_of(&t).next().unwrap().id.clone();
        let (b1, b2) = (
            i.nic("b1").unwrap().id.clone(),
            i.nic("b2").unwrap().id.clone(),
        );
        let lb = LoadBalancer {
            id: "lb-1".into(),
            name: "web".into(),
            vpc: t,
            subnet,
            vip: "10.0.1.100".parse().unwrap(),
            listeners: vec![
                LbListener {
                    id: "lbl-1".into(),
                    protocol: LbProtocol::Tcp,
                    port: 80,
                    scheduler: SchedulerKind::Maglev,
                    health_check: HealthCheck {
                        kind: HealthCheckKind::Http {
                            path: "/health".into(),
                            expected_status: vec![200],
                        },
                        ..Default::default()
                    },
                    all_down: AllDown::FailOpen,
                    backends: vec![
                        backend("lbb-2", 4, "10.0.1.12", Some(&b2)),
                        backend("lbb-1", 3, "10.0.1.11", Some(&b1)),
                    ],
                    slot: 0,
                },
                LbListener {
                    id: "lbl-2".into(),
                    protocol: LbProtocol::Udp,
                    port: 53,
                    scheduler: SchedulerKind::LeastConn,
                    health_check: HealthCheck {
                        port: Some(5353),
                        ..Default::default()
                    },
                    all_down: AllDown::FailClosed,
                    backends: vec![backend("lbb-3", 5, "10.0.1.12", None)],
                    slot: 1,
                },
            ],
        };
        i.load_balancers.insert(lb.id.clone(), lb);
        i
    }

    #[test]
    fn listeners_of_present_vpcs_with_all_their_backends() {
        let i = cloud();
        let t1 = compile_host(&i, "h1");
        let vni = i.vpc("t").unwrap().vni;
        assert_eq!(t1.listeners.len(), 2);
        // Sorted by key: (VNI, VIP, port, protocol): udp 53 first.
        let (udp, tcp) = (&t1.listeners[0], &t1.listeners[1]);
        assert_eq!(
            (
                tcp.id.as_str(),
                tcp.vni,
                tcp.vip,
                tcp.proto,
                tcp.port,
                tcp.slot
            ),
            ("lbl-1", vni, [10, 0, 1, 100], IPPROTO_TCP, 80, 0)
        );
        let slots: Vec<u32> = tcp.backends.iter().map(|b| b.slot).collect();
        assert_eq!(slots, [3, 4], "sorted by slot");
        assert_eq!(tcp.backends[0].vtep, Some([172, 31, 0, 1]));
        assert_eq!(tcp.backends[1].vtep, Some([172, 31, 0, 2]));
        assert_eq!(tcp.check_port(&tcp.backends[0]), 8080);
        assert_eq!(
            (udp.proto, udp.port, udp.all_down),
            (IPPROTO_UDP, 53, AllDown::FailClosed)
        );
        assert_eq!(udp.check_port(&udp.backends[0]), 5353);
        // Given by address only: the NIC with it is found.
        assert_eq!(udp.backends[0].nic, Some(i.nic("b2").unwrap().id.clone()));
        assert_eq!(udp.backends[0].vtep, Some([172, 31, 0, 2]));
        // h2 has the VPC (through b2) and the same listeners; h3 does not.
        assert_eq!(compile_host(&i, "h2").listeners, t1.listeners);
        assert!(compile_host(&i, "h3").listeners.is_empty());
        assert_eq!(compile_host(&i, "h9"), LbTables::default());
    }

    #[test]
    fn hosts_of_vpcs_with_listeners_get_a_check_port_each() {
        let i = cloud();
        let vni = i.vpc("t").unwrap().vni;
        let (t1, t2) = (compile_host(&i, "h1"), compile_host(&i, "h2"));
        assert_eq!(t1.check_ports.len(), 1);
        let p = &t1.check_ports[0];
        assert_eq!(p.vni, vni);
        assert_eq!(p.ifname, health_check_ifname(vni));
        let hc = |h: &str| i.host(h).unwrap().health_check_ip.unwrap().octets();
        assert_eq!(p.ip, hc("h1"));
        assert_eq!((p.vpc, p.vpc_len), ([10, 0, 0, 0], 16));
        assert_eq!(t2.check_ports[0].ip, hc("h2"));
        assert_ne!(hc("h1"), hc("h2"));
        assert_ne!(t2.check_ports[0].mac, p.mac);
        assert!(compile_host(&i, "h3").check_ports.is_empty());
        // Every address is inside the range.
        let net = u32::from_be_bytes(HEALTH_CHECK_NET);
        let ip = u32::from_be_bytes(p.ip);
        assert_eq!(
            ip >> (32 - HEALTH_CHECK_PREFIX),
            net >> (32 - HEALTH_CHECK_PREFIX)
        );
    }

    #[test]
    fn tables_round_trip_through_json() {
        let t = compile_host(&cloud(), "h1");
        let json = serde_json::to_string(&t).unwrap();
        let back: LbTables = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
    }
}
