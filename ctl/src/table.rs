//! Human-readable output: pure functions from the API's JSON types to text.

use sluice_common::stats::Reason;
use sluice_dataplane::{
    api::{StatsJson, StatusJson},
    intent::{
        ApplySummary, BlocklistEntry, DnatEntry, Eip, EipPool, EipState, Host, NatGateway, Nic,
        Peering, Protocol, Remote, Route, RouteTableEntry, RouteTarget, SecurityGroup, SgRule,
        SnatEntry, SnatSource, Subnet, Vpc,
    },
};

use sluice_dataplane::{
    controller::lb_status::LbStatus,
    intent::lb::{HealthCheck, HealthCheckKind, LbBackend, LbListener, LoadBalancer},
};

use crate::resource::next_hop_text;

/// Columns aligned to their widest cell; numeric columns (`right[i]`) right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let w = widths[i];
            if right.get(i).copied().unwrap_or(false) {
                out.push_str(&format!("{cell:>w$}"));
            } else {
                out.push_str(&format!("{cell:<w$}"));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// Sort key: the kernel's reason order (passes, then drops); names this CLI does not know
/// (a newer daemon) come last, alphabetically.
fn reason_order(name: &str) -> (u32, &str) {
    let index = Reason::ALL
        .iter()
        .find(|r| r.name() == name)
        .map_or(u32::MAX, |r| r.index());
    (index, name)
}

/// REASON / PACKETS / BYTES for every non-zero reason, then a TOTAL line.
pub fn stats(stats: &StatsJson) -> String {
    let mut nonzero: Vec<_> = stats
        .reasons
        .iter()
        .filter(|(_, c)| c.packets != 0 || c.bytes != 0)
        .collect();
    nonzero.sort_by_key(|(name, _)| reason_order(name));
    let mut rows: Vec<Vec<String>> = nonzero
        .iter()
        .map(|(name, c)| vec![name.to_string(), c.packets.to_string(), c.bytes.to_string()])
        .collect();
    let packets: u64 = stats.reasons.values().map(|c| c.packets).sum();
    let bytes: u64 = stats.reasons.values().map(|c| c.bytes).sum();
    rows.push(vec!["TOTAL".into(), packets.to_string(), bytes.to_string()]);
    table(&["REASON", "PACKETS", "BYTES"], &rows, &[false, true, true])
}

/// Version, pin dir and uptime, then one row per interface.
pub fn status(status: &StatusJson) -> String {
    let mut out = format!(
        "version:  {}\npin dir:  {}\nuptime:   {}\n\n",
        status.version,
        status.pin_dir,
        uptime(status.uptime_secs)
    );
    // Before the blank line that ends the header.
    out.pop();
    if let Some(c) = &status.controller {
        out.push_str(&format!(
            "intent:   generation {} (controller)\n",
            c.generation
        ));
    }
    if let Some(a) = &status.agent {
        let applied = a
            .applied_generation
            .map_or("nothing applied yet".to_string(), |g| {
                format!("applied generation {g}")
            });
        out.push_str(&format!(
            "agent:    host {}, controller {}, {applied}\n",
            a.host, a.controller
        ));
        let lists = [
            ("attached", &a.attached),
            ("missing interfaces", &a.missing_interfaces),
            ("unresolved neighbors", &a.unresolved_neighbors),
        ];
        for (what, list) in lists {
            if !list.is_empty() {
                out.push_str(&format!("          {what}: {}\n", list.join(", ")));
            }
        }
        if let Some(e) = &a.last_error {
            out.push_str(&format!("          last error: {e}\n"));
        }
    }
    out.push('\n');
    if status.interfaces.is_empty() {
        out.push_str("no interfaces attached\n");
        return out;
    }
    let rows: Vec<Vec<String>> = status
        .interfaces
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                json_word(&i.role),
                i.ifindex.to_string(),
                json_word(&i.attach),
            ]
        })
        .collect();
    out.push_str(&table(
        &["INTERFACE", "ROLE", "IFINDEX", "ATTACH"],
        &rows,
        &[false, false, true, false],
    ));
    out
}

pub fn hosts(hosts: &[Host]) -> String {
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.underlay_ip.to_string(),
                h.underlay_ifname.clone(),
                h.router_mac.to_string(),
                h.underlay_mtu.to_string(),
                h.public_gateway
                    .map_or_else(|| "-".to_string(), |g| g.to_string()),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "UNDERLAY-IP",
            "UNDERLAY-IF",
            "ROUTER-MAC",
            "MTU",
            "PUBLIC-GW",
        ],
        &rows,
        &[false, false, false, false, true, false],
    )
}

pub fn vpcs(vpcs: &[Vpc]) -> String {
    let rows: Vec<Vec<String>> = vpcs
        .iter()
        .map(|v| {
            vec![
                v.id.clone(),
                v.name.clone(),
                v.cidr.to_string(),
                v.vni.to_string(),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "CIDR", "VNI"],
        &rows,
        &[false, false, false, true],
    )
}

pub fn subnets(subnets: &[Subnet]) -> String {
    let rows: Vec<Vec<String>> = subnets
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.name.clone(),
                s.vpc.clone(),
                s.cidr.to_string(),
                s.gateway.to_string(),
            ]
        })
        .collect();
    table(&["ID", "NAME", "VPC", "CIDR", "GATEWAY"], &rows, &[])
}

pub fn nics(nics: &[Nic]) -> String {
    let rows: Vec<Vec<String>> = nics
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                n.name.clone(),
                n.vpc.clone(),
                n.subnet.clone(),
                n.host.clone(),
                n.ifname.clone(),
                n.ip.to_string(),
                n.mac.to_string(),
                if n.source_check { "on" } else { "off" }.into(),
                n.security_groups.join(","),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "VPC",
            "SUBNET",
            "HOST",
            "IFNAME",
            "IP",
            "MAC",
            "SOURCE-CHECK",
            "SECURITY-GROUPS",
        ],
        &rows,
        &[],
    )
}

pub fn routes(routes: &[Route]) -> String {
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            vec![
                r.vpc.clone(),
                r.destination.to_string(),
                next_hop_text(&r.next_hop),
            ]
        })
        .collect();
    table(&["VPC", "DESTINATION", "NEXT-HOP"], &rows, &[])
}

pub fn peerings(peerings: &[Peering]) -> String {
    let rows: Vec<Vec<String>> = peerings
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                p.name.clone(),
                p.vpc.clone(),
                p.peer_vpc.clone(),
                json_word(&p.state),
            ]
        })
        .collect();
    table(&["ID", "NAME", "VPC", "PEER-VPC", "STATE"], &rows, &[])
}

pub fn security_groups(groups: &[SecurityGroup]) -> String {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            vec![
                g.id.clone(),
                g.name.clone(),
                g.vpc.clone(),
                g.rules.len().to_string(),
                g.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "VPC", "RULES", "DESCRIPTION"],
        &rows,
        &[false, false, false, true, false],
    )
}

/// One group: its row, then its rules.
pub fn security_group(g: &SecurityGroup) -> String {
    format!(
        "{}\n{}",
        security_groups(std::slice::from_ref(g)),
        rules(&g.rules)
    )
}

/// PORTS shows tcp/udp port ranges, ICMP `type` or `type/code`, `*` for every one.
pub fn rules(rules: &[SgRule]) -> String {
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            let ports = match (r.protocol, r.ports, r.icmp_type, r.icmp_code) {
                (Protocol::Tcp | Protocol::Udp, Some(p), _, _) => p.to_string(),
                (Protocol::Icmp, _, Some(t), Some(c)) => format!("{t}/{c}"),
                (Protocol::Icmp, _, Some(t), None) => t.to_string(),
                _ => "*".into(),
            };
            let remote = match &r.remote {
                Remote::Cidr(c) => c.to_string(),
                Remote::Group(g) => format!("group:{g}"),
            };
            vec![
                r.id.clone(),
                r.priority.to_string(),
                json_word(&r.direction),
                json_word(&r.protocol),
                ports,
                remote,
                json_word(&r.action),
                r.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "PRIORITY",
            "DIRECTION",
            "PROTOCOL",
            "PORTS",
            "REMOTE",
            "ACTION",
            "DESCRIPTION",
        ],
        &rows,
        &[false, true],
    )
}

pub fn blocklist(entries: &[BlocklistEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|b| {
            vec![
                b.prefix.to_string(),
                json_word(&b.applies_to),
                b.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["PREFIX", "APPLIES-TO", "DESCRIPTION"], &rows, &[])
}

pub fn eip_pools(pools: &[EipPool]) -> String {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            let cidrs: Vec<String> = p.cidrs.iter().map(|c| c.to_string()).collect();
            vec![
                p.id.clone(),
                p.name.clone(),
                cidrs.join(","),
                p.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["ID", "NAME", "CIDRS", "DESCRIPTION"], &rows, &[])
}

/// TARGET is the NIC an EIP is bound to or the gateway it is attached to.
pub fn eips(eips: &[Eip]) -> String {
    let rows: Vec<Vec<String>> = eips
        .iter()
        .map(|e| {
            let (state, target) = match &e.state {
                EipState::Free => ("free", String::new()),
                EipState::Bound { nic } => ("bound", nic.clone()),
                EipState::Attached { nat_gateway } => ("attached", nat_gateway.clone()),
            };
            vec![
                e.id.clone(),
                e.name.clone(),
                e.address.to_string(),
                e.pool.clone(),
                state.into(),
                target,
                e.snat_blocks
                    .iter()
                    .map(|(host, b)| format!("{host}:{}", b.len()))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "ADDRESS",
            "POOL",
            "STATE",
            "TARGET",
            "SNAT-BLOCKS",
        ],
        &rows,
        &[],
    )
}

pub fn nat_gateways(gws: &[NatGateway]) -> String {
    let rows: Vec<Vec<String>> = gws
        .iter()
        .map(|g| {
            vec![
                g.id.clone(),
                g.name.clone(),
                g.vpc.clone(),
                g.subnet.clone(),
                g.eips.join(","),
                g.snat.len().to_string(),
                g.dnat.len().to_string(),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "VPC", "SUBNET", "EIPS", "SNAT", "DNAT"],
        &rows,
        &[false, false, false, false, false, true, true],
    )
}

/// One gateway: its row, then its SNAT and DNAT entries.
pub fn nat_gateway(g: &NatGateway) -> String {
    format!(
        "{}
{}
{}",
        nat_gateways(std::slice::from_ref(g)),
        snat(&g.snat),
        dnat(&g.dnat)
    )
}

/// SOURCE as `subnet:<id>`, `cidr:<cidr>` or `nic:<id>`.
pub fn snat(entries: &[SnatEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|s| {
            let source = match &s.source {
                SnatSource::Subnet(id) => format!("subnet:{id}"),
                SnatSource::Cidr(c) => format!("cidr:{c}"),
                SnatSource::Nic(id) => format!("nic:{id}"),
            };
            vec![s.id.clone(), source, s.eips.join(",")]
        })
        .collect();
    table(&["SNAT", "SOURCE", "EIPS"], &rows, &[])
}

pub fn dnat(entries: &[DnatEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.eip.clone(),
                d.protocol.to_string(),
                d.public_port.to_string(),
                format!("{}:{}", d.private_ip, d.private_port),
            ]
        })
        .collect();
    table(
        &["DNAT", "EIP", "PROTOCOL", "PUBLIC-PORT", "PRIVATE"],
        &rows,
        &[false, false, false, true, false],
    )
}

/// System routes say `local:<subnet>`, custom ones their next hop as `--next-hop` takes it.
pub fn route_table(entries: &[RouteTableEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let target = match &e.target {
                RouteTarget::Local { subnet } => format!("local:{subnet}"),
                RouteTarget::Nic { nic } => format!("nic:{nic}"),
                RouteTarget::Peering { peering } => format!("peering:{peering}"),
                RouteTarget::Blackhole => "blackhole".into(),
                RouteTarget::NatGateway { nat_gateway } => format!("nat-gateway:{nat_gateway}"),
            };
            let origin = if e.system { "system" } else { "custom" };
            vec![e.destination.to_string(), target, origin.into()]
        })
        .collect();
    table(&["DESTINATION", "TARGET", "ORIGIN"], &rows, &[])
}

/// One line per created or updated resource, then the counts.
pub fn apply_summary(s: &ApplySummary) -> String {
    let mut out = String::new();
    for c in &s.created {
        out.push_str(&format!("created    {c}\n"));
    }
    for u in &s.updated {
        out.push_str(&format!("updated    {u}\n"));
    }
    out.push_str(&format!(
        "{} created, {} updated, {} unchanged\n",
        s.created.len(),
        s.updated.len(),
        s.unchanged
    ));
    out
}

/// A unit enum's JSON spelling ("vm", "replaced"), so the table says what the API says.
fn json_word(v: &impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

pub fn load_balancers(lbs: &[LoadBalancer]) -> String {
    let rows: Vec<Vec<String>> = lbs
        .iter()
        .map(|l| {
            let listeners: Vec<String> = l
                .listeners
                .iter()
                .map(|x| format!("{}/{}", x.protocol, x.port))
                .collect();
            vec![
                l.id.clone(),
                l.name.clone(),
                l.vpc.clone(),
                l.subnet.clone(),
                l.vip.to_string(),
                listeners.join(","),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "VPC", "SUBNET", "VIP", "LISTENERS"],
        &rows,
        &[],
    )
}

/// One load balancer: its row, its listeners, then each listener's backends.
pub fn load_balancer(l: &LoadBalancer) -> String {
    let mut out = format!(
        "{}\n{}",
        load_balancers(std::slice::from_ref(l)),
        lb_listeners(&l.listeners)
    );
    for x in &l.listeners {
        out.push_str(&format!("\n{} ({}/{})\n", x.id, x.protocol, x.port));
        out.push_str(&lb_backends(&x.backends));
    }
    out
}

/// CHECK as `tcp` or `http GET <path> -> <codes>`, with its port when not the backend's.
fn check_text(h: &HealthCheck) -> String {
    let what = match &h.kind {
        HealthCheckKind::Tcp => "tcp".to_string(),
        HealthCheckKind::Http {
            path,
            expected_status,
        } => {
            let codes: Vec<String> = expected_status.iter().map(u16::to_string).collect();
            format!("http {path} -> {}", codes.join(","))
        }
    };
    let port = h.port.map(|p| format!(" port {p}")).unwrap_or_default();
    format!(
        "{what}{port} every {}ms/{}ms up {} down {}",
        h.interval_ms, h.timeout_ms, h.healthy_threshold, h.unhealthy_threshold
    )
}

pub fn lb_listeners(listeners: &[LbListener]) -> String {
    let rows: Vec<Vec<String>> = listeners
        .iter()
        .map(|l| {
            vec![
                l.id.clone(),
                l.protocol.to_string(),
                l.port.to_string(),
                json_word(&l.scheduler),
                json_word(&l.all_down),
                check_text(&l.health_check),
                l.backends.len().to_string(),
                l.slot.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "LISTENER",
            "PROTOCOL",
            "PORT",
            "SCHEDULER",
            "ALL-DOWN",
            "CHECK",
            "BACKENDS",
            "SLOT",
        ],
        &rows,
        &[false, false, true, false, false, false, true, true],
    )
}

pub fn lb_backends(backends: &[LbBackend]) -> String {
    let rows: Vec<Vec<String>> = backends
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                b.nic.clone().unwrap_or_else(|| "-".into()),
                format!("{}:{}", b.ip, b.port),
                b.weight.to_string(),
                b.slot.to_string(),
            ]
        })
        .collect();
    table(
        &["BACKEND", "NIC", "ADDRESS", "WEIGHT", "SLOT"],
        &rows,
        &[false, false, false, true, true],
    )
}

/// One row per backend of every listener: what `sluicectl lb status` shows.
pub fn lb_status(s: &LbStatus) -> String {
    let mut rows: Vec<Vec<String>> = vec![];
    for l in &s.listeners {
        for b in &l.backends {
            let last = match &b.last_check {
                None => "-".to_string(),
                Some(c) => format!(
                    "{} {:.1}ms {}",
                    if c.ok { "ok" } else { "failed" },
                    c.latency_ms,
                    c.detail
                ),
            };
            rows.push(vec![
                format!("{} {}/{}", l.id, l.protocol, l.port),
                b.id.clone(),
                format!("{}:{}", b.ip, b.port),
                b.weight.to_string(),
                json_word(&b.health),
                b.active_connections.to_string(),
                last,
            ]);
        }
    }
    format!(
        "{} {} VIP {}\n{}",
        s.load_balancer,
        s.name,
        s.vip,
        table(
            &[
                "LISTENER",
                "BACKEND",
                "ADDRESS",
                "WEIGHT",
                "HEALTH",
                "ACTIVE",
                "LAST-CHECK"
            ],
            &rows,
            &[false, false, false, true, false, true, false],
        )
    )
}

/// `3d 4h 5m 6s`, leading zero units dropped.
pub fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m {s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_dataplane::{
        api::{AttachJson, InterfaceJson},
        loader::Role,
        stats::CounterJson,
    };

    fn stats_json(entries: &[(&str, u64, u64)]) -> StatsJson {
        let mut reasons: std::collections::BTreeMap<String, CounterJson> = Reason::ALL
            .iter()
            .map(|r| {
                (
                    r.name().to_string(),
                    CounterJson {
                        packets: 0,
                        bytes: 0,
                    },
                )
            })
            .collect();
        for &(name, packets, bytes) in entries {
            reasons.insert(name.into(), CounterJson { packets, bytes });
        }
        StatsJson { reasons }
    }

    #[test]
    fn stats_table_shows_nonzero_reasons_in_kernel_order_and_a_total() {
        let s = stats_json(&[
            ("drop_udp_bad_len", 3, 180),
            ("pass_ipv4", 1200, 123456),
            ("pass_arp", 2, 84),
        ]);
        assert_eq!(
            stats(&s),
            "\
REASON            PACKETS   BYTES
pass_arp                2      84
pass_ipv4            1200  123456
drop_udp_bad_len        3     180
TOTAL                1205  123720
"
        );
    }

    #[test]
    fn stats_table_with_no_traffic_is_just_the_total() {
        assert_eq!(
            stats(&stats_json(&[])),
            "REASON  PACKETS  BYTES\nTOTAL         0      0\n"
        );
    }

    #[test]
    fn unknown_reasons_from_a_newer_daemon_come_last() {
        let s = stats_json(&[
            ("zz_future", 1, 1),
            ("drop_vlan_too_deep", 1, 1),
            ("pass_non_ip", 1, 1),
        ]);
        let text = stats(&s);
        let names: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(
            names,
            ["pass_non_ip", "drop_vlan_too_deep", "zz_future", "TOTAL"]
        );
    }

    #[test]
    fn status_shows_header_and_interface_table() {
        let s = StatusJson {
            version: "0.1.0".into(),
            pin_dir: "/run/sluice/bpffs/h1".into(),
            uptime_secs: 3725,
            interfaces: vec![
                InterfaceJson {
                    name: "veth-h1".into(),
                    role: Role::Vm,
                    ifindex: 12,
                    attach: AttachJson::New,
                },
                InterfaceJson {
                    name: "ul0".into(),
                    role: Role::Underlay,
                    ifindex: 3,
                    attach: AttachJson::Replaced,
                },
            ],
            controller: None,
            agent: None,
        };
        assert_eq!(
            status(&s),
            "\
version:  0.1.0
pin dir:  /run/sluice/bpffs/h1
uptime:   1h 2m 5s

INTERFACE  ROLE      IFINDEX  ATTACH
veth-h1    vm             12  new
ul0        underlay        3  replaced
"
        );
    }

    #[test]
    fn status_without_interfaces_says_so() {
        let s = StatusJson {
            version: "0.1.0".into(),
            pin_dir: "/p".into(),
            uptime_secs: 0,
            interfaces: vec![],
            controller: None,
            agent: None,
        };
        assert!(status(&s).ends_with("\nno interfaces attached\n"));
    }

    #[test]
    fn status_shows_controller_and_agent_when_present() {
        let s = StatusJson {
            version: "0.1.0".into(),
            pin_dir: "/p".into(),
            uptime_secs: 5,
            interfaces: vec![],
            controller: Some(sluice_dataplane::api::ControllerStatusJson { generation: 12 }),
            agent: Some(sluice_dataplane::agent::AgentStatus {
                host: "h1".into(),
                controller: "unix:/run/c.sock".into(),
                applied_generation: Some(11),
                last_error: Some("fetch failed".into()),
                attached: vec!["ul0".into(), "vm1".into()],
                missing_interfaces: vec![],
                unresolved_neighbors: vec!["192.0.2.2".into()],
            }),
        };
        assert_eq!(
            status(&s),
            "\
version:  0.1.0
pin dir:  /p
uptime:   5s
intent:   generation 12 (controller)
agent:    host h1, controller unix:/run/c.sock, applied generation 11
          attached: ul0, vm1
          unresolved neighbors: 192.0.2.2
          last error: fetch failed

no interfaces attached
"
        );
    }

    fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn host_and_vpc_tables() {
        let h: Vec<Host> = parse(
            serde_json::json!([{"name": "h1", "underlay_ip": "192.0.2.1",
            "underlay_ifname": "ul0", "router_mac": "06:00:00:00:00:01", "underlay_mtu": 9000}]),
        );
        assert_eq!(
            hosts(&h),
            "\
NAME  UNDERLAY-IP  UNDERLAY-IF  ROUTER-MAC          MTU  PUBLIC-GW
h1    192.0.2.1    ul0          06:00:00:00:00:01  9000  -
"
        );
        let v: Vec<Vpc> = parse(serde_json::json!([
            {"id": "vpc-1", "name": "tenant-a", "cidr": "10.0.0.0/16", "vni": 1},
            {"id": "vpc-12", "name": "b", "cidr": "10.0.0.0/16", "vni": 4096}]));
        assert_eq!(
            vpcs(&v),
            "\
ID      NAME      CIDR          VNI
vpc-1   tenant-a  10.0.0.0/16     1
vpc-12  b         10.0.0.0/16  4096
"
        );
    }

    #[test]
    fn subnet_nic_and_peering_tables() {
        let s: Vec<Subnet> = parse(serde_json::json!([{"id": "subnet-1", "vpc": "vpc-1",
            "name": "web", "cidr": "10.0.1.0/24", "gateway": "10.0.1.1"}]));
        assert_eq!(
            subnets(&s),
            "ID        NAME  VPC    CIDR         GATEWAY\nsubnet-1  web   vpc-1  10.0.1.0/24  10.0.1.1\n"
        );
        let n: Vec<Nic> = parse(
            serde_json::json!([{"id": "nic-1", "name": "fw0", "vpc": "vpc-1",
            "subnet": "subnet-1", "host": "h1", "ifname": "fw0", "ip": "10.0.1.10",
            "mac": "02:73:6c:00:00:01", "source_check": false, "security_groups": ["sg-1", "sg-4"]}]),
        );
        assert_eq!(
            nics(&n),
            "\
ID     NAME  VPC    SUBNET    HOST  IFNAME  IP         MAC                SOURCE-CHECK  SECURITY-GROUPS
nic-1  fw0   vpc-1  subnet-1  h1    fw0     10.0.1.10  02:73:6c:00:00:01  off           sg-1,sg-4
"
        );
        let p: Vec<Peering> = parse(serde_json::json!([{"id": "pcx-1", "name": "a-b",
            "vpc": "vpc-1", "peer_vpc": "vpc-2", "state": "pending"}]));
        assert_eq!(
            peerings(&p),
            "ID     NAME  VPC    PEER-VPC  STATE\npcx-1  a-b   vpc-1  vpc-2     pending\n"
        );
    }

    #[test]
    fn load_balancer_and_status_tables() {
        let lb: LoadBalancer = parse(
            serde_json::json!({"id": "lb-1", "name": "web", "vpc": "vpc-1",
            "subnet": "subnet-1", "vip": "10.0.1.5", "listeners": [{"id": "lbl-1", "protocol": "tcp",
            "port": 80, "scheduler": "source_ip", "all_down": "fail_open",
            "health_check": {"type": "http", "path": "/hz", "expected_status": [200, 204],
                "interval_ms": 2000, "timeout_ms": 1000, "healthy_threshold": 3, "unhealthy_threshold": 3},
            "backends": [{"id": "lbb-1", "nic": "nic-1", "ip": "10.0.1.4", "port": 8080, "weight": 100, "slot": 0}],
            "slot": 0}]}),
        );
        assert_eq!(
            load_balancer(&lb),
            "\
ID    NAME  VPC    SUBNET    VIP       LISTENERS
lb-1  web   vpc-1  subnet-1  10.0.1.5  tcp/80

LISTENER  PROTOCOL  PORT  SCHEDULER  ALL-DOWN   CHECK                                                BACKENDS  SLOT
lbl-1     tcp         80  source_ip  fail_open  http /hz -> 200,204 every 2000ms/1000ms up 3 down 3         1     0

lbl-1 (tcp/80)
BACKEND  NIC    ADDRESS        WEIGHT  SLOT
lbb-1    nic-1  10.0.1.4:8080     100     0
"
        );
        let s: LbStatus = parse(serde_json::json!({"load_balancer": "lb-1", "name": "web",
            "vip": "10.0.1.5", "listeners": [{"id": "lbl-1", "protocol": "tcp", "port": 80,
            "scheduler": "maglev", "backends": [
                {"id": "lbb-1", "ip": "10.0.1.4", "port": 8080, "weight": 100, "health": "healthy",
                 "active_connections": 12, "last_check": {"ok": true, "latency_ms": 0.42, "detail": "connected", "at": 1}},
                {"id": "lbb-2", "ip": "10.0.1.6", "port": 8080, "weight": 0, "health": "unknown",
                 "active_connections": 0}]}]}));
        assert_eq!(
            lb_status(&s),
            "\
lb-1 web VIP 10.0.1.5
LISTENER      BACKEND  ADDRESS        WEIGHT  HEALTH   ACTIVE  LAST-CHECK
lbl-1 tcp/80  lbb-1    10.0.1.4:8080     100  healthy      12  ok 0.4ms connected
lbl-1 tcp/80  lbb-2    10.0.1.6:8080       0  unknown       0  -
"
        );
    }

    #[test]
    fn routes_show_next_hops_as_the_flag_takes_them() {
        let r: Vec<Route> = parse(serde_json::json!([
            {"vpc": "vpc-1", "destination": "0.0.0.0/0", "next_hop": {"type": "nic", "nic": "nic-2"}},
            {"vpc": "vpc-1", "destination": "10.1.0.0/16", "next_hop": {"type": "peering", "peering": "pcx-1"}},
            {"vpc": "vpc-1", "destination": "10.9.0.0/16", "next_hop": {"type": "blackhole"}}]));
        assert_eq!(
            routes(&r),
            "\
VPC    DESTINATION  NEXT-HOP
vpc-1  0.0.0.0/0    nic:nic-2
vpc-1  10.1.0.0/16  peering:pcx-1
vpc-1  10.9.0.0/16  blackhole
"
        );
        let t: Vec<RouteTableEntry> = parse(serde_json::json!([
            {"destination": "0.0.0.0/0", "target": {"type": "nic", "nic": "nic-2"}, "system": false},
            {"destination": "10.0.1.0/24", "target": {"type": "local", "subnet": "subnet-1"}, "system": true},
            {"destination": "10.9.0.0/16", "target": {"type": "blackhole"}, "system": false}]));
        assert_eq!(
            route_table(&t),
            "\
DESTINATION  TARGET          ORIGIN
0.0.0.0/0    nic:nic-2       custom
10.0.1.0/24  local:subnet-1  system
10.9.0.0/16  blackhole       custom
"
        );
    }

    #[test]
    fn security_group_rule_and_blocklist_tables() {
        let g: SecurityGroup = parse(
            serde_json::json!({"id": "sg-3", "name": "web", "vpc": "vpc-1",
            "description": "front", "rules": [
            {"id": "sgr-7", "direction": "ingress", "protocol": "tcp", "ports": "8000-8100",
             "cidr": "0.0.0.0/0", "action": "allow", "priority": 10},
            {"id": "sgr-8", "direction": "egress", "protocol": "icmp", "icmp_type": 8,
             "group": "sg-4", "action": "deny", "priority": 200, "description": "no ping"},
            {"id": "sgr-9", "direction": "egress", "protocol": "all", "cidr": "10.0.0.0/8",
             "action": "allow", "priority": 65535}]}),
        );
        assert_eq!(
            security_group(&g),
            "\
ID    NAME  VPC    RULES  DESCRIPTION
sg-3  web   vpc-1      3  front

ID     PRIORITY  DIRECTION  PROTOCOL  PORTS      REMOTE      ACTION  DESCRIPTION
sgr-7        10  ingress    tcp       8000-8100  0.0.0.0/0   allow
sgr-8       200  egress     icmp      8          group:sg-4  deny    no ping
sgr-9     65535  egress     all       *          10.0.0.0/8  allow
"
        );
        let b: Vec<BlocklistEntry> = parse(serde_json::json!([
            {"prefix": "203.0.113.0/24", "applies_to": "source", "description": "ddos"},
            {"prefix": "198.51.100.7/32", "applies_to": "both"}]));
        assert_eq!(
            blocklist(&b),
            "\
PREFIX           APPLIES-TO  DESCRIPTION
203.0.113.0/24   source      ddos
198.51.100.7/32  both
"
        );
    }

    #[test]
    fn apply_summary_lists_changes_then_counts() {
        let s = ApplySummary {
            created: vec!["vpc/a".into(), "subnet/a/web".into()],
            updated: vec!["host/h1".into()],
            unchanged: 4,
        };
        assert_eq!(
            apply_summary(&s),
            "\
created    vpc/a
created    subnet/a/web
updated    host/h1
2 created, 1 updated, 4 unchanged
"
        );
        assert_eq!(
            apply_summary(&ApplySummary {
                unchanged: 9,
                ..Default::default()
            }),
            "0 created, 0 updated, 9 unchanged\n"
        );
    }

    #[test]
    fn uptime_drops_leading_zero_units() {
        assert_eq!(uptime(0), "0s");
        assert_eq!(uptime(59), "59s");
        assert_eq!(uptime(60), "1m 0s");
        assert_eq!(uptime(3600), "1h 0m 0s");
        assert_eq!(uptime(90061), "1d 1h 1m 1s");
    }
}
