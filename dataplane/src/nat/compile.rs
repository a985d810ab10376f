//! Intent in, one host's [`NatTables`] out (pure).
//!
//! - Every allocated EIP is listed, so an EIP nobody uses is still default-deny rather than
//!   the host's own address: free and attached EIPs compile as SNAT EIPs (no flow, no
//!   owner: dropped), DNAT-published ones as DNAT, bound ones with their NIC.
//! - DNAT targets and bound NICs carry their host, so any host receiving the packet can
//!   send it on; SNAT blocks carry theirs (`owners`).
//! - SNAT sources and bindings only for this host's VPCs and NICs: translation happens at
//!   the VM's host.

use std::collections::{BTreeMap, BTreeSet};

use sluice_common::nat::{EipKind, MAX_SNAT_EIPS};

use super::{BindingRow, BlockRow, DnatRow, EipRow, NatTables, OwnerRow, SourceRow};
use crate::intent::{
    nat::{EipState, NatProtocol, SnatSource},
    Intent,
};

pub fn compile_host(intent: &Intent, host: &str) -> NatTables {
    let mut t = NatTables::default();
    let Some(h) = intent.hosts.get(host) else {
        return t;
    };
    t.border = h.public_gateway.map(|g| g.octets());
    let vtep_of = |host: &str| intent.hosts.get(host).map(|h| h.underlay_ip.octets());
    let local_vpcs: BTreeSet<&str> = intent
        .nics
        .values()
        .filter(|n| n.host == host)
        .map(|n| n.vpc.as_str())
        .collect();

    // EIPs published by DNAT entries.
    let dnat_eips: BTreeSet<&str> = intent
        .nat_gateways
        .values()
        .flat_map(|g| g.dnat.iter().map(|d| d.eip.as_str()))
        .collect();
    for eip in intent.eips.values() {
        let mut row = EipRow {
            eip: eip.address.octets(),
            kind: EipKind::Snat as u32,
            vni: 0,
            ip: [0; 4],
            vtep: [0; 4],
        };
        match &eip.state {
            EipState::Bound { nic } => {
                let Some(n) = intent.nics.get(nic) else {
                    continue;
                };
                let (Some(vpc), Some(vtep)) = (intent.vpcs.get(&n.vpc), vtep_of(&n.host)) else {
                    continue;
                };
                row.kind = EipKind::Bound as u32;
                row.vni = vpc.vni;
                row.ip = n.ip.octets();
                row.vtep = vtep;
                if n.host == host {
                    t.bindings.push(BindingRow {
                        vni: vpc.vni,
                        ip: n.ip.octets(),
                        eip: eip.address.octets(),
                    });
                }
            }
            _ if dnat_eips.contains(eip.id.as_str()) => row.kind = EipKind::Dnat as u32,
            _ => {}
        }
        t.eips.push(row);
        for (owner, blocks) in &eip.snat_blocks {
            let Some(vtep) = vtep_of(owner) else {
                continue;
            };
            t.owners.extend(blocks.iter().map(|&block| OwnerRow {
                eip: eip.address.octets(),
                block,
                vtep,
            }));
            if owner == host {
                t.blocks.push(BlockRow {
                    eip: eip.address.octets(),
                    blocks: blocks.clone(),
                });
            }
        }
    }

    let address = |id: &str| intent.eips.get(id).map(|e| e.address.octets());
    for g in intent.nat_gateways.values() {
        let Some(vpc) = intent.vpcs.get(&g.vpc) else {
            continue;
        };
        for d in &g.dnat {
            // The target: the NIC with that address in the VPC, wherever it is; or a VIP,
            // which no one host has (VTEP 0.0.0.0: the receiving host balances).
            let target = intent
                .nics
                .values()
                .find(|n| n.vpc == g.vpc && n.ip == d.private_ip);
            let vtep = match target {
                Some(n) => vtep_of(&n.host),
                None => intent
                    .load_balancer_at(&g.vpc, d.private_ip)
                    .map(|_| [0; 4]),
            };
            let (Some(eip), Some(vtep)) = (address(&d.eip), vtep) else {
                continue;
            };
            t.dnat.push(DnatRow {
                eip,
                proto: match d.protocol {
                    NatProtocol::Tcp => sluice_common::proto::IPPROTO_TCP,
                    NatProtocol::Udp => sluice_common::proto::IPPROTO_UDP,
                    NatProtocol::Any => 0,
                },
                port: d.public_port,
                vni: vpc.vni,
                ip: d.private_ip.octets(),
                target_port: d.private_port,
                vtep,
            });
        }
        if !local_vpcs.contains(g.vpc.as_str()) {
            continue;
        }
        // One row per prefix: a prefix listed twice keeps the first entry's EIPs.
        let mut sources: BTreeMap<([u8; 4], u8), Vec<[u8; 4]>> = BTreeMap::new();
        for s in &g.snat {
            let (ip, len) = match &s.source {
                SnatSource::Subnet(id) => match intent.subnets.get(id) {
                    Some(sub) => (sub.cidr.addr().octets(), sub.cidr.prefix_len()),
                    None => continue,
                },
                SnatSource::Cidr(c) => (c.addr().octets(), c.prefix_len()),
                SnatSource::Nic(id) => match intent.nics.get(id) {
                    Some(n) => (n.ip.octets(), 32),
                    None => continue,
                },
            };
            let eips: Vec<[u8; 4]> = s
                .eips
                .iter()
                .filter_map(|e| address(e))
                .take(MAX_SNAT_EIPS)
                .collect();
            sources.entry((ip, len)).or_insert(eips);
        }
        t.sources
            .extend(sources.into_iter().map(|((ip, len), eips)| SourceRow {
                vni: vpc.vni,
                ip,
                len,
                eips,
            }));
    }
    t.eips.sort_unstable();
    t.dnat.sort_unstable();
    t.dnat.dedup_by_key(|d| (d.eip, d.proto, d.port));
    t.sources.sort_unstable();
    t.blocks.sort_unstable();
    t.owners.sort_unstable();
    t.bindings.sort_unstable();
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intent::{
        nat::{DnatSpec, EipPoolSpec, EipSpec, NatGatewaySpec, SnatSpec},
        HostSpec, NicSpec, SubnetSpec, VpcSpec,
    };
    use sluice_common::nat::{block_first_port, BLOCKS_PER_EIP};

    fn host(i: Intent, name: &str, ip: &str) -> Intent {
        i.create_host(HostSpec {
            name: name.into(),
            underlay_ip: ip.into(),
            underlay_ifname: "ul0".into(),
            public_gateway: Some("172.31.0.254".into()),
            ..Default::default()
        })
        .unwrap()
        .0
    }

    /// Two hosts; tenant VPC with NICs n1 (h1) and n2 (h2); a gateway with EIPs e1 (SNAT for
    /// the subnet) and e2 (DNAT tcp 80 -> n2:8080); e3 bound to n1; e4 free.
    fn cloud() -> Intent {
        let i = host(Intent::default(), "h1", "172.31.0.1");
        let i = host(i, "h2", "172.31.0.2");
        let (i, _) = i
            .create_vpc(VpcSpec {
                name: Some("t".into()),
                cidr: "10.0.0.0/16".into(),
            })
            .unwrap();
        let (i, _) = i
            .create_subnet(SubnetSpec {
                vpc: "t".into(),
                name: Some("web".into()),
                cidr: "10.0.1.0/24".into(),
            })
            .unwrap();
        let nic = |i: Intent, name: &str, host: &str, ip: &str| {
            i.create_nic(NicSpec {
                name: Some(name.into()),
                vpc: "t".into(),
                subnet: "web".into(),
                host: host.into(),
                ifname: format!("vm-{name}"),
                ip: Some(ip.into()),
                ..Default::default()
            })
            .unwrap()
            .0
        };
        let i = nic(i, "n1", "h1", "10.0.1.10");
        let i = nic(i, "n2", "h2", "10.0.1.11");
        let (i, _) = i
            .create_eip_pool(EipPoolSpec {
                name: Some("public".into()),
                cidrs: vec!["203.0.113.0/28".into()],
                description: None,
            })
            .unwrap();
        let eip = |i: Intent, name: &str, nic: Option<&str>| {
            i.create_eip(EipSpec {
                name: Some(name.into()),
                pool: Some("public".into()),
                nic: nic.map(str::to_string),
                ..Default::default()
            })
            .unwrap()
            .0
        };
        let i = eip(i, "e1", None);
        let i = eip(i, "e2", None);
        let i = eip(i, "e3", Some("n1"));
        let i = eip(i, "e4", None);
        let (i, _) = i
            .create_nat_gateway(NatGatewaySpec {
                name: Some("gw".into()),
                vpc: "t".into(),
                subnet: "web".into(),
                eips: vec!["e1".into(), "e2".into()],
                ..Default::default()
            })
            .unwrap();
        let (i, _) = i
            .add_snat(
                "gw",
                SnatSpec {
                    subnet: Some("web".into()),
                    eips: vec!["e1".into()],
                    ..Default::default()
                },
            )
            .unwrap();
        i.add_dnat(
            "gw",
            DnatSpec {
                eip: "e2".into(),
                protocol: NatProtocol::Tcp,
                public_port: 80,
                private_ip: "10.0.1.11".into(),
                private_port: Some(8080),
            },
        )
        .unwrap()
        .0
    }

    const E1: [u8; 4] = [203, 0, 113, 1];
    const E2: [u8; 4] = [203, 0, 113, 2];
    const E3: [u8; 4] = [203, 0, 113, 3];
    const E4: [u8; 4] = [203, 0, 113, 4];
    const H1: [u8; 4] = [172, 31, 0, 1];
    const H2: [u8; 4] = [172, 31, 0, 2];

    #[test]
    fn every_eip_is_listed_with_its_role() {
        let t = compile_host(&cloud(), "h1");
        let kinds: Vec<([u8; 4], u32)> = t.eips.iter().map(|e| (e.eip, e.kind)).collect();
        assert_eq!(
            kinds,
            [
                (E1, EipKind::Snat as u32),
                (E2, EipKind::Dnat as u32),
                (E3, EipKind::Bound as u32),
                (E4, EipKind::Snat as u32),
            ]
        );
        let bound = t.eips.iter().find(|e| e.eip == E3).unwrap();
        assert_eq!((bound.ip, bound.vtep), ([10, 0, 1, 10], H1));
        assert_eq!(t.border, Some([172, 31, 0, 254]));
    }

    #[test]
    fn dnat_to_a_vip_is_balanced_wherever_it_arrives() {
        use crate::intent::lb::{BackendSpec, LbProtocol, ListenerSpec, LoadBalancerSpec};
        // A third host with a border but no NIC of the VPC.
        let i = host(cloud(), "h3", "172.31.0.3");
        assert!(!i
            .present_vpcs("h3")
            .contains(i.vpc("t").unwrap().id.as_str()));
        let (i, _) = i
            .create_load_balancer(LoadBalancerSpec {
                name: Some("web".into()),
                vpc: "t".into(),
                subnet: "web".into(),
                vip: Some("10.0.1.100".into()),
                listeners: vec![ListenerSpec {
                    protocol: LbProtocol::Tcp,
                    port: 80,
                    scheduler: None,
                    health_check: None,
                    all_down: None,
                    backends: vec![BackendSpec {
                        nic: Some("n2".into()),
                        port: 8080,
                        ..Default::default()
                    }],
                }],
            })
            .unwrap();
        let (i, _) = i
            .add_dnat(
                "gw",
                DnatSpec {
                    eip: "e2".into(),
                    protocol: NatProtocol::Tcp,
                    public_port: 81,
                    private_ip: "10.0.1.100".into(),
                    private_port: Some(80),
                },
            )
            .unwrap();
        let t3 = compile_host(&i, "h3");
        let d = t3
            .dnat
            .iter()
            .find(|d| d.port == 81)
            .expect("the VIP's DNAT row");
        assert_eq!((d.ip, d.target_port, d.vtep), ([10, 0, 1, 100], 80, [0; 4]));
        assert!(!t3.vteps([172, 31, 0, 3]).contains(&[0; 4]));
        // h3 now holds the VPC: it may pick the backend of any flow the fabric hands it.
        let vpc = i.vpc("t").unwrap().id.clone();
        assert!(i.present_vpcs("h3").contains(vpc.as_str()));
        let lb = crate::lb::compile::compile_host(&i, "h3");
        assert_eq!(lb.listeners.len(), 1);
        assert_eq!(lb.check_ports.len(), 1, "h3 checks the backends too");
    }

    #[test]
    fn hosts_get_disjoint_blocks_and_everyone_knows_the_owners() {
        let i = cloud();
        let (t1, t2) = (compile_host(&i, "h1"), compile_host(&i, "h2"));
        assert_eq!(t1.blocks.len(), 1);
        assert_eq!(t2.blocks.len(), 1);
        let b1: BTreeSet<u16> = t1.blocks[0].blocks.iter().copied().collect();
        let b2: BTreeSet<u16> = t2.blocks[0].blocks.iter().copied().collect();
        assert!(!b1.is_empty() && !b2.is_empty());
        assert!(b1.is_disjoint(&b2), "{b1:?} {b2:?}");
        assert_eq!(t1.owners, t2.owners);
        for o in &t1.owners {
            let expect = if b1.contains(&o.block) { H1 } else { H2 };
            assert_eq!(o.vtep, expect);
            assert!(o.block < BLOCKS_PER_EIP);
        }
        assert!(block_first_port(*b1.iter().next().unwrap()) >= 1024);
    }

    #[test]
    fn sources_and_bindings_are_local_dnat_is_everywhere() {
        let i = cloud();
        let t1 = compile_host(&i, "h1");
        assert_eq!(t1.sources.len(), 1);
        assert_eq!(
            (t1.sources[0].ip, t1.sources[0].len, &t1.sources[0].eips[..]),
            ([10, 0, 1, 0], 24, &[E1][..])
        );
        assert_eq!(t1.bindings.len(), 1);
        assert_eq!(t1.bindings[0].eip, E3);
        let t2 = compile_host(&i, "h2");
        assert!(t2.bindings.is_empty());
        assert_eq!(t1.dnat, t2.dnat);
        assert_eq!(t1.dnat.len(), 1);
        let d = t1.dnat[0];
        assert_eq!((d.eip, d.proto, d.port), (E2, 6, 80));
        assert_eq!((d.ip, d.target_port, d.vtep), ([10, 0, 1, 11], 8080, H2));
        assert_eq!(t1.vteps(H1), vec![[172, 31, 0, 2], [172, 31, 0, 254]]);
    }

    #[test]
    fn a_host_keeps_its_blocks_when_another_joins_and_frees_them_when_it_leaves() {
        let i = cloud();
        let before = i.eip("e1").unwrap().snat_blocks.clone();
        // A third host with a NIC in the subnet gets new blocks; the others keep theirs.
        let i = host(i, "h3", "172.31.0.3");
        let (i, _) = i
            .create_nic(NicSpec {
                name: Some("n3".into()),
                vpc: "t".into(),
                subnet: "web".into(),
                host: "h3".into(),
                ifname: "vm-n3".into(),
                ip: Some("10.0.1.12".into()),
                ..Default::default()
            })
            .unwrap();
        let after = i.eip("e1").unwrap().snat_blocks.clone();
        assert_eq!(after.get("h1"), before.get("h1"));
        assert_eq!(after.get("h2"), before.get("h2"));
        let h3: BTreeSet<u16> = after["h3"].iter().copied().collect();
        for b in before.values().flatten() {
            assert!(!h3.contains(b));
        }
        // Its NIC gone, h3 gives its blocks back.
        let i = i.delete_nic("n3").unwrap();
        assert_eq!(i.eip("e1").unwrap().snat_blocks, before);
    }
}
