//! The security-group compiler: pure code from [`Intent`] to each host's [`SgTables`].
//!
//! For every NIC on the host and each direction: the rules of that direction of all its
//! groups become [`SlotRule`]s, deduplicated and sorted (priority, deny before allow,
//! then the match), slot `k` being the `k`-th. Then, as `common/src/sg.rs` describes:
//!
//! - remotes: each rule's prefixes (its CIDR, or a /32 per current member of its remote
//!   group, wherever that member lives); each distinct prefix gets the set of rules with
//!   a prefix containing it (found by walking its at most 33 ancestors);
//! - services: each rule's protocol/port prefixes in a 24-bit space (protocol, then port;
//!   length 0 is "every protocol"), port ranges split into aligned prefixes; same
//!   containment rule;
//! - the allow set, and an id hashing all of it. NICs whose policies are equal share one;
//!   a direction without rules gets [`POLICY_NONE`].
//!
//! A NIC with more than [`MAX_RULES`] rules in a direction (validation refuses that; only
//! a damaged store could hold it) keeps its first `MAX_RULES - 1` slots and a last one
//! denying everything: it fails closed.
//!
//! The operator blocklist is the same on every host: [`compile_blocklist`].

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{Hash, Hasher},
    net::Ipv4Addr,
};

use sluice_common::sg::{RuleSet, MAX_RULES, POLICY_NONE, POLICY_UNENFORCED};

use super::{
    apply::BlockPrefix, NicPolicies, Policy, RemoteEntry, ServiceEntry, SgTables, SlotRule,
};
use crate::intent::{
    mask, Action, BlockAppliesTo, Cidr, Direction, Intent, Nic, PortRange, Protocol, Remote,
};

/// The blocklist (every host's), sorted by (address, length): one entry per prefix.
pub fn compile_blocklist(intent: &Intent) -> Vec<BlockPrefix> {
    let mut out: Vec<BlockPrefix> = intent
        .blocklist()
        .map(|b| BlockPrefix {
            addr: b.prefix.addr().octets(),
            len: b.prefix.prefix_len(),
            src: b.applies_to != BlockAppliesTo::Destination,
            dst: b.applies_to != BlockAppliesTo::Source,
        })
        .collect();
    out.sort_unstable();
    out
}

/// Tables of every registered host, by host name.
pub fn compile_all(intent: &Intent) -> BTreeMap<String, SgTables> {
    let index = Index::new(intent);
    intent
        .hosts()
        .map(|h| (h.name.clone(), index.compile(&h.name)))
        .collect()
}

/// Everything `host`'s security-group maps should hold (empty for an unknown host).
pub fn compile_host(intent: &Intent, host: &str) -> SgTables {
    Index::new(intent).compile(host)
}

/// The rule slots of `nic` in direction `d` (what its policy's slot `k` is).
pub fn slot_rules(intent: &Intent, nic: &Nic, d: Direction) -> Vec<SlotRule> {
    Index::new(intent).slot_rules(nic, d)
}

/// A policy without its id: what the id is a hash of.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Body {
    rules: Vec<SlotRule>,
    allow: RuleSet,
    remotes: Vec<RemoteEntry>,
    services: Vec<ServiceEntry>,
}

struct Index<'a> {
    intent: &'a Intent,
    /// Group ID -> its members' addresses (host order), sorted.
    members: BTreeMap<&'a str, Vec<u32>>,
}

impl<'a> Index<'a> {
    fn new(intent: &'a Intent) -> Self {
        let mut members: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for n in intent.nics() {
            for g in &n.security_groups {
                members.entry(g).or_default().push(u32::from(n.ip));
            }
        }
        for m in members.values_mut() {
            m.sort_unstable();
            m.dedup();
        }
        Self { intent, members }
    }

    fn slot_rules(&self, nic: &Nic, d: Direction) -> Vec<SlotRule> {
        let set: BTreeSet<SlotRule> = nic
            .security_groups
            .iter()
            .filter_map(|g| self.intent.security_group(None, g))
            .flat_map(|g| g.rules_in(d).cloned())
            // Load balancer health checks (intent/sg.rs): rules users see but do not edit.
            .chain(self.intent.system_rules(nic, d))
            .map(|r| SlotRule {
                priority: r.priority,
                action: r.action,
                protocol: r.protocol,
                ports: r.ports,
                icmp_type: r.icmp_type,
                icmp_code: r.icmp_code,
                remote: r.remote,
            })
            .collect();
        let mut rules: Vec<SlotRule> = set.into_iter().collect();
        if rules.len() > MAX_RULES {
            rules.truncate(MAX_RULES - 1);
            rules.push(SlotRule {
                priority: u32::MAX,
                action: Action::Deny,
                protocol: Protocol::All,
                ports: None,
                icmp_type: None,
                icmp_code: None,
                remote: Remote::Cidr(Cidr::new(Ipv4Addr::UNSPECIFIED, 0).expect("0.0.0.0/0")),
            });
        }
        rules
    }

    fn compile(&self, host: &str) -> SgTables {
        if self.intent.host(host).is_none() {
            return SgTables::default();
        }
        let mut bodies: BTreeMap<Vec<SlotRule>, Body> = BTreeMap::new();
        let mut nics: Vec<(&Nic, [Vec<SlotRule>; 2])> = vec![];
        for nic in self.intent.nics().filter(|n| n.host == host) {
            let rules = [Direction::Ingress, Direction::Egress].map(|d| self.slot_rules(nic, d));
            for r in &rules {
                if !r.is_empty() && !bodies.contains_key(r) {
                    bodies.insert(r.clone(), self.body(r.clone()));
                }
            }
            nics.push((nic, rules));
        }
        // Ids in content order, so a collision is resolved the same way every time.
        let mut sorted: Vec<&Body> = bodies.values().collect();
        sorted.sort();
        let mut ids: BTreeMap<&Vec<SlotRule>, u64> = BTreeMap::new();
        let mut policies: BTreeMap<u64, Policy> = BTreeMap::new();
        for body in sorted {
            let id = (0u64..)
                .map(|salt| policy_id(body, salt))
                .find(|id| {
                    *id != POLICY_NONE && *id != POLICY_UNENFORCED && !policies.contains_key(id)
                })
                .expect("a free 64-bit id");
            ids.insert(&body.rules, id);
            policies.insert(
                id,
                Policy {
                    id,
                    rules: body.rules.clone(),
                    allow: body.allow,
                    remotes: body.remotes.clone(),
                    services: body.services.clone(),
                },
            );
        }
        let id_of = |r: &Vec<SlotRule>| ids.get(r).copied().unwrap_or(POLICY_NONE);
        let mut nics: Vec<NicPolicies> = nics
            .iter()
            .map(|(nic, [ingress, egress])| NicPolicies {
                ifname: nic.ifname.clone(),
                nic: nic.id.clone(),
                ingress: id_of(ingress),
                egress: id_of(egress),
            })
            .collect();
        nics.sort();
        SgTables {
            nics,
            policies: policies.into_values().collect(),
        }
    }

    fn body(&self, rules: Vec<SlotRule>) -> Body {
        let mut allow = RuleSet::EMPTY;
        let mut remotes = Prefixes::new(32);
        let mut services = Prefixes::new(24);
        for (k, r) in rules.iter().enumerate() {
            if r.action == Action::Allow {
                allow.insert(k);
            }
            match &r.remote {
                Remote::Cidr(c) => remotes.add(u32::from(c.addr()), c.prefix_len(), k),
                Remote::Group(g) => {
                    for ip in self.members.get(g.as_str()).into_iter().flatten() {
                        remotes.add(*ip, 32, k);
                    }
                }
            }
            for (value, len) in service_prefixes(r) {
                services.add(value, len, k);
            }
        }
        let remotes = remotes
            .resolve()
            .map(|(addr, len, rules)| RemoteEntry {
                addr: addr.to_be_bytes(),
                len,
                rules,
            })
            .collect();
        let services = services
            .resolve()
            .map(|(value, len, rules)| ServiceEntry {
                proto: (len > 0).then_some((value >> 16) as u8),
                port: value as u16,
                len: len.saturating_sub(8),
                rules,
            })
            .collect();
        Body {
            rules,
            allow,
            remotes,
            services,
        }
    }
}

/// A rule's prefixes in the service space: protocol (8 bits) then port (16 bits).
fn service_prefixes(r: &SlotRule) -> Vec<(u32, u8)> {
    let Some(proto) = r.protocol.number() else {
        return vec![(0, 0)];
    };
    let base = (proto as u32) << 16;
    match r.protocol {
        Protocol::Icmp => match (r.icmp_type, r.icmp_code) {
            (None, _) => vec![(base, 8)],
            (Some(t), None) => vec![(base | (t as u32) << 8, 16)],
            (Some(t), Some(c)) => vec![(base | (t as u32) << 8 | c as u32, 24)],
        },
        _ => match r.ports {
            None => vec![(base, 8)],
            Some(range) => port_prefixes(range)
                .into_iter()
                .map(|(p, len)| (base | p as u32, 8 + len))
                .collect(),
        },
    }
}

/// An inclusive port range as aligned prefixes (at most 30), in order.
pub fn port_prefixes(r: PortRange) -> Vec<(u16, u8)> {
    let mut out = vec![];
    let (mut from, to) = (r.from as u32, r.to as u32);
    while from <= to {
        let mut k = if from == 0 {
            16
        } else {
            from.trailing_zeros().min(16)
        };
        while from + (1 << k) - 1 > to {
            k -= 1;
        }
        out.push((from as u16, 16 - k as u8));
        from += 1 << k;
    }
    out
}

/// Prefixes of a `width`-bit space with the rules that have each one exactly; resolved
/// into the rules *containing* each one (what an LPM trie entry must hold).
struct Prefixes {
    width: u8,
    exact: BTreeMap<(u32, u8), RuleSet>,
}

impl Prefixes {
    fn new(width: u8) -> Self {
        Self {
            width,
            exact: BTreeMap::new(),
        }
    }

    fn mask(&self, len: u8) -> u32 {
        mask(len) >> (32 - self.width)
    }

    fn add(&mut self, value: u32, len: u8, slot: usize) {
        let value = value & self.mask(len);
        self.exact.entry((value, len)).or_default().insert(slot);
    }

    fn resolve(&self) -> impl Iterator<Item = (u32, u8, RuleSet)> + '_ {
        self.exact.keys().map(|&(value, len)| {
            let mut rules = RuleSet::EMPTY;
            for l in 0..=len {
                if let Some(r) = self.exact.get(&(value & self.mask(l), l)) {
                    rules.union(r);
                }
            }
            (value, len, rules)
        })
    }
}

/// FNV-1a 64 with a final avalanche: stable across runs and platforms of one build.
struct Fnv(u64);

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}

fn policy_id(body: &Body, salt: u64) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    body.hash(&mut h);
    salt.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sluice_common::{
        proto::{IPPROTO_TCP, IPPROTO_UDP},
        sg::{RemoteKey, ServiceKey, NIC_SG_ENFORCED},
    };

    use super::*;
    use crate::intent::{
        sg::tests::{cidr, group, rule, Rm},
        validate::tests::{host, lab, nic, subnet, vpc},
        NicSpec, SgRuleSpec,
    };
    use crate::sg::lookup::{evaluate, Datapath, Decision, FirstPacket};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn tcp_in(ports: &str, remote: Rm, action: Action, priority: i64) -> SgRuleSpec {
        rule(
            Direction::Ingress,
            Protocol::Tcp,
            Some(ports),
            remote,
            action,
            priority,
        )
    }

    /// The lab with groups on tenant-a: `web` (a-vm1 on h1, a-fw on h2) allows 80 from
    /// anywhere; `db` (a-vm2 on h2) allows 5432 from `web`'s members.
    fn groups() -> Intent {
        let (i, _) = lab()
            .create_security_group(group(
                "web",
                "tenant-a",
                vec![tcp_in("80", cidr("0.0.0.0/0"), Action::Allow, 100)],
            ))
            .unwrap();
        let (i, _) = i
            .create_security_group(group(
                "db",
                "tenant-a",
                vec![tcp_in("5432", Rm::Group("web"), Action::Allow, 100)],
            ))
            .unwrap();
        let (i, _) = i
            .set_nic_security_groups("a-vm1", vec!["web".into()])
            .unwrap();
        let (i, _) = i
            .set_nic_security_groups("a-fw", vec!["web".into()])
            .unwrap();
        i.set_nic_security_groups("a-vm2", vec!["db".into()])
            .unwrap()
            .0
    }

    fn decide(t: &SgTables, ifname: &str, d: Direction, p: FirstPacket) -> Decision {
        Datapath::new(t)
            .decide(ifname, d, &p)
            .expect("a filtered NIC")
    }

    #[test]
    fn priority_orders_the_rules_and_deny_wins_a_tie() {
        let (i, _) = lab()
            .create_security_group(group(
                "ssh",
                "tenant-a",
                vec![
                    tcp_in("22", cidr("10.0.0.0/8"), Action::Allow, 10),
                    tcp_in("22", cidr("10.0.1.0/24"), Action::Deny, 10),
                    tcp_in("1-1024", cidr("10.0.1.7/32"), Action::Allow, 5),
                ],
            ))
            .unwrap();
        let (i, _) = i
            .set_nic_security_groups("a-vm1", vec!["ssh".into()])
            .unwrap();
        let t = compile_host(&i, "h1");
        let n = t.nic("a-vm1").unwrap();
        let p = t.policy(n.ingress).unwrap();
        let order: Vec<(u32, Action)> = p.rules.iter().map(|r| (r.priority, r.action)).collect();
        assert_eq!(
            order,
            [(5, Action::Allow), (10, Action::Deny), (10, Action::Allow)]
        );
        let d = Direction::Ingress;
        let rule = |a| Decision::Rule(a);
        assert_eq!(
            decide(&t, "a-vm1", d, FirstPacket::tcp(ip("10.0.2.5"), 22)),
            rule(Action::Allow)
        );
        assert_eq!(
            decide(&t, "a-vm1", d, FirstPacket::tcp(ip("10.0.1.5"), 22)),
            rule(Action::Deny)
        );
        assert_eq!(
            decide(&t, "a-vm1", d, FirstPacket::tcp(ip("10.0.1.7"), 22)),
            rule(Action::Allow)
        );
        assert_eq!(
            decide(&t, "a-vm1", d, FirstPacket::tcp(ip("10.0.1.5"), 23)),
            Decision::Default
        );
        assert!(!Decision::Default.allows(Direction::Ingress));
        assert!(Decision::Default.allows(Direction::Egress));
        // No egress rules: no policy, the default (allowed).
        assert_eq!(n.egress, POLICY_NONE);
        assert_eq!(
            decide(
                &t,
                "a-vm1",
                Direction::Egress,
                FirstPacket::udp(ip("8.8.8.8"), 53)
            ),
            Decision::Default
        );
    }

    #[test]
    fn remote_groups_expand_to_their_members_on_every_host() {
        let i = groups();
        let t = compile_host(&i, "h2");
        let db = t.policy(t.nic("a-vm2").unwrap().ingress).unwrap();
        let addrs: Vec<Ipv4Addr> = db.remotes.iter().map(|e| Ipv4Addr::from(e.addr)).collect();
        // a-vm1 (h1) and a-fw (h2), as /32s.
        assert_eq!(addrs, [ip("10.0.1.10"), ip("10.0.1.20")]);
        assert!(db.remotes.iter().all(|e| e.len == 32));
        let d = Direction::Ingress;
        assert_eq!(
            decide(&t, "a-vm2", d, FirstPacket::tcp(ip("10.0.1.10"), 5432)),
            Decision::Rule(Action::Allow)
        );
        assert_eq!(
            decide(&t, "a-vm2", d, FirstPacket::tcp(ip("10.0.1.11"), 5432)),
            Decision::Default
        );
        // An empty remote group matches nothing.
        let (j, _) = i
            .set_nic_security_groups("a-vm1", vec!["db".into()])
            .unwrap();
        let (j, _) = j
            .set_nic_security_groups("a-fw", vec!["db".into()])
            .unwrap();
        let t = compile_host(&j, "h2");
        let db = t.policy(t.nic("a-vm2").unwrap().ingress).unwrap();
        assert!(db.remotes.is_empty());
    }

    #[test]
    fn a_member_leaving_changes_only_the_policies_that_reference_its_group() {
        let i = groups();
        let before = compile_all(&i);
        // a-vm1 leaves `web`: db's policy (which expands `web`) changes, web's does not.
        let (j, _) = i
            .create_security_group(group("other", "tenant-a", vec![]))
            .unwrap();
        let (j, _) = j
            .set_nic_security_groups("a-vm1", vec!["other".into()])
            .unwrap();
        let after = compile_all(&j);
        let db = |t: &BTreeMap<String, SgTables>| t["h2"].nic("a-vm2").unwrap().ingress;
        let fw = |t: &BTreeMap<String, SgTables>| t["h2"].nic("a-fw").unwrap().ingress;
        assert_ne!(db(&before), db(&after), "revocation must change the id");
        assert_eq!(fw(&before), fw(&after), "unrelated flows keep their id");
        // Recompiling is deterministic; unrelated intent leaves ids alone.
        assert_eq!(compile_all(&j), after);
        let (k, _) = j
            .create_security_group(group(
                "unused",
                "tenant-a",
                vec![tcp_in("1", cidr("1.0.0.0/8"), Action::Deny, 1)],
            ))
            .unwrap();
        assert_eq!(compile_all(&k), after);
    }

    #[test]
    fn identical_nics_share_a_policy_and_nics_without_rules_have_none() {
        let i = groups();
        let t = compile_host(&i, "h2");
        let fw = t.nic("a-fw").unwrap();
        assert_eq!(fw.egress, POLICY_NONE);
        // a-fw (web) and a-vm2 (db) differ; two web NICs on one host would share.
        let (j, _) = i
            .create_nic(NicSpec {
                ifname: "a-web2".into(),
                ..nic("a-web2", "tenant-a", "web", "h2")
            })
            .unwrap();
        let (j, _) = j
            .set_nic_security_groups("a-web2", vec!["web".into()])
            .unwrap();
        let t2 = compile_host(&j, "h2");
        assert_eq!(
            t2.nic("a-web2").unwrap().ingress,
            t2.nic("a-fw").unwrap().ingress
        );
        // Every policy a NIC uses is there, and only those.
        let used: BTreeSet<u64> = t2
            .nics
            .iter()
            .flat_map(|n| [n.ingress, n.egress])
            .filter(|id| *id != POLICY_NONE)
            .collect();
        let have: BTreeSet<u64> = t2.policies.iter().map(|p| p.id).collect();
        assert_eq!(used, have);
        // A NIC whose groups have no rules is filtered with no policy: ingress denied,
        // egress allowed.
        let (j, _) = j
            .create_security_group(group("empty", "tenant-b", vec![]))
            .unwrap();
        let (j, _) = j
            .set_nic_security_groups("b-vm1", vec!["empty".into()])
            .unwrap();
        let b = compile_host(&j, "h2");
        let b1 = b.nic("b-vm1").unwrap();
        assert_eq!((b1.ingress, b1.egress), (POLICY_NONE, POLICY_NONE));
        assert_eq!(b1.to_nic_sg().flags, NIC_SG_ENFORCED);
        assert_eq!(
            decide(
                &b,
                "b-vm1",
                Direction::Ingress,
                FirstPacket::tcp(ip("10.0.1.4"), 80)
            ),
            Decision::Default
        );
    }

    #[test]
    fn only_the_hosts_own_nics_are_compiled() {
        let i = groups();
        let h1 = compile_host(&i, "h1");
        let names: Vec<&str> = h1.nics.iter().map(|n| n.ifname.as_str()).collect();
        assert_eq!(names, ["a-vm1", "b-vm2"]);
        assert_eq!(compile_host(&i, "nope"), SgTables::default());
        let all = compile_all(&i);
        assert_eq!(all.len(), 2);
        assert_eq!(all["h1"], h1);
    }

    #[test]
    fn map_entries_put_the_policy_first_and_use_the_abi_prefix_lengths() {
        let (i, _) = lab()
            .create_security_group(group(
                "g",
                "tenant-a",
                vec![
                    tcp_in("443", cidr("10.0.0.0/16"), Action::Allow, 1),
                    rule(
                        Direction::Ingress,
                        Protocol::All,
                        None,
                        cidr("192.168.0.0/16"),
                        Action::Deny,
                        2,
                    ),
                    rule(
                        Direction::Ingress,
                        Protocol::Udp,
                        None,
                        cidr("0.0.0.0/0"),
                        Action::Allow,
                        3,
                    ),
                ],
            ))
            .unwrap();
        let (i, _) = i
            .set_nic_security_groups("a-vm1", vec!["g".into()])
            .unwrap();
        let t = compile_host(&i, "h1");
        let p = &t.policies[0];
        let remotes: Vec<(u32, RemoteKey)> = p.remote_entries().map(|(l, k, _)| (l, k)).collect();
        assert!(remotes.contains(&(64 + 16, RemoteKey::new(p.id, [10, 0, 0, 0]))));
        assert!(remotes.contains(&(64, RemoteKey::new(p.id, [0, 0, 0, 0]))));
        let services: Vec<(u32, ServiceKey)> =
            p.service_entries().map(|(l, k, _)| (l, k)).collect();
        assert_eq!(
            services,
            [
                (64, ServiceKey::new(p.id, 0, 0)),
                (72 + 16, ServiceKey::new(p.id, IPPROTO_TCP, 443)),
                (72, ServiceKey::new(p.id, IPPROTO_UDP, 0)),
            ]
        );
        // Containment: the TCP/443 entry also holds the all-protocols rule (slot 1).
        let tcp443 = p
            .services
            .iter()
            .find(|s| s.proto == Some(IPPROTO_TCP))
            .unwrap();
        assert!(tcp443.rules.contains(0) && tcp443.rules.contains(1) && !tcp443.rules.contains(2));
        assert_eq!(p.info().rules, 3);
        assert!(p.info().allow.contains(0) && !p.info().allow.contains(1));
        // The tables travel as JSON to the agent.
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<SgTables>(&json).unwrap(), t);
    }

    #[test]
    fn icmp_types_and_other_protocols() {
        let icmp = |t: Option<i64>, c: Option<i64>, action, prio| SgRuleSpec {
            icmp_type: t,
            icmp_code: c,
            ..rule(
                Direction::Ingress,
                Protocol::Icmp,
                None,
                cidr("0.0.0.0/0"),
                action,
                prio,
            )
        };
        let (i, _) = lab()
            .create_security_group(group(
                "g",
                "tenant-a",
                vec![
                    icmp(Some(8), None, Action::Allow, 10),
                    icmp(Some(3), Some(4), Action::Allow, 10),
                    icmp(None, None, Action::Deny, 20),
                    rule(
                        Direction::Ingress,
                        Protocol::All,
                        None,
                        cidr("10.0.0.0/8"),
                        Action::Allow,
                        30,
                    ),
                ],
            ))
            .unwrap();
        let (i, _) = i
            .set_nic_security_groups("a-vm1", vec!["g".into()])
            .unwrap();
        let t = compile_host(&i, "h1");
        let d = Direction::Ingress;
        let at = |p| decide(&t, "a-vm1", d, p);
        assert_eq!(
            at(FirstPacket::icmp(ip("8.8.8.8"), 8, 0)),
            Decision::Rule(Action::Allow)
        );
        assert_eq!(
            at(FirstPacket::icmp(ip("8.8.8.8"), 0, 0)),
            Decision::Rule(Action::Deny)
        );
        assert_eq!(
            at(FirstPacket::icmp(ip("8.8.8.8"), 3, 4)),
            Decision::Rule(Action::Allow)
        );
        assert_eq!(
            at(FirstPacket::icmp(ip("8.8.8.8"), 3, 3)),
            Decision::Rule(Action::Deny)
        );
        // GRE only matches the all-protocols rule.
        assert_eq!(
            at(FirstPacket::other(ip("10.1.1.1"), 47)),
            Decision::Rule(Action::Allow)
        );
        assert_eq!(at(FirstPacket::other(ip("8.8.8.8"), 47)), Decision::Default);
    }

    #[test]
    fn a_nic_over_the_rule_limit_fails_closed() {
        // Validation refuses this; build it as a damaged store would hold it.
        let (i, _) = lab()
            .create_security_group(group("big", "tenant-a", vec![]))
            .unwrap();
        let (i, _) = i
            .set_nic_security_groups("a-vm1", vec!["big".into()])
            .unwrap();
        let mut r = i.to_records();
        let g = r
            .security_groups
            .iter_mut()
            .find(|g| g.name == "big")
            .unwrap();
        for k in 0..MAX_RULES + 10 {
            let (_, rule) = i
                .add_security_group_rule(
                    Some("tenant-a"),
                    "big",
                    tcp_in(&(k + 1).to_string(), cidr("10.0.0.0/8"), Action::Allow, 1),
                )
                .unwrap();
            g.rules.push(rule);
        }
        let i = Intent::from_records(r);
        let t = compile_host(&i, "h1");
        let p = t.policy(t.nic("a-vm1").unwrap().ingress).unwrap();
        assert_eq!(p.rules.len(), MAX_RULES);
        assert_eq!(p.rules[MAX_RULES - 1].action, Action::Deny);
        let d = Direction::Ingress;
        assert_eq!(
            decide(&t, "a-vm1", d, FirstPacket::tcp(ip("10.0.0.1"), 2)),
            Decision::Rule(Action::Allow)
        );
        // Rule 1030 (port 1030) did not fit: denied, never the default.
        assert_eq!(
            decide(&t, "a-vm1", d, FirstPacket::tcp(ip("10.0.0.1"), 1030)),
            Decision::Rule(Action::Deny)
        );
    }

    #[test]
    fn the_blocklist_compiles_to_sorted_prefixes_with_the_addresses_they_apply_to() {
        let mut i = lab();
        for (p, a) in [
            ("203.0.113.0/24", None),
            ("198.51.100.7/32", Some(BlockAppliesTo::Source)),
            ("203.0.0.0/8", Some(BlockAppliesTo::Destination)),
        ] {
            i = i
                .add_blocklist(crate::intent::BlocklistSpec {
                    prefix: p.into(),
                    applies_to: a,
                    description: None,
                })
                .unwrap()
                .0;
        }
        let b = compile_blocklist(&i);
        let p = |addr, len, src, dst| BlockPrefix {
            addr,
            len,
            src,
            dst,
        };
        assert_eq!(
            b,
            [
                p([198, 51, 100, 7], 32, true, false),
                p([203, 0, 0, 0], 8, false, true),
                p([203, 0, 113, 0], 24, true, true),
            ]
        );
        assert!(compile_blocklist(&lab()).is_empty());
    }

    #[test]
    fn port_ranges_split_into_aligned_prefixes() {
        let r = |from, to| port_prefixes(PortRange { from, to });
        assert_eq!(r(80, 80), [(80, 16)]);
        assert_eq!(r(0, 65535), [(0, 0)]);
        assert_eq!(r(8000, 8003), [(8000, 14)]);
        assert_eq!(r(1, 65535).len(), 16);
        assert_eq!(r(1, 65534).len(), 30);
    }

    proptest! {
        #[test]
        fn port_prefixes_cover_exactly_the_range(from in any::<u16>(), span in any::<u16>()) {
            let to = from.saturating_add(span);
            let ps = port_prefixes(PortRange { from, to });
            prop_assert!(ps.len() <= 30);
            let mut next = from as u32;
            for (p, len) in ps {
                let size = 1u32 << (16 - len);
                prop_assert_eq!(p as u32, next, "contiguous, in order");
                prop_assert_eq!(p as u32 % size, 0, "aligned");
                next += size;
            }
            prop_assert_eq!(next, to as u32 + 1);
        }
    }

    // ---- compiled lookup == rule-by-rule evaluation, for random rules and packets ----

    /// Remote prefixes with nesting, shared boundaries and members' addresses.
    const CIDRS: [&str; 10] = [
        "0.0.0.0/0",
        "10.0.0.0/8",
        "10.0.0.0/16",
        "10.0.1.0/24",
        "10.0.1.0/25",
        "10.0.1.128/25",
        "10.0.1.5/32",
        "10.0.2.0/23",
        "192.168.0.0/16",
        "8.8.8.8/32",
    ];
    /// Port boundaries rules and packets share, so ranges meet at their edges.
    const PORTS: [u16; 12] = [0, 1, 22, 79, 80, 81, 443, 1023, 1024, 8000, 8080, 65535];

    #[derive(Clone, Debug)]
    struct RuleGen {
        egress: bool,
        protocol: usize,
        ports: Option<(usize, usize)>,
        icmp: (Option<u8>, Option<u8>),
        remote: Result<usize, usize>,
        allow: bool,
        priority: i64,
    }

    #[derive(Clone, Debug)]
    struct Case {
        /// (host, subnet, last octet, groups)
        nics: Vec<(usize, usize, u8, Vec<usize>)>,
        groups: Vec<Vec<RuleGen>>,
        packets: Vec<(Result<usize, u32>, usize, u16)>,
    }

    fn rule_gen(groups: usize) -> impl Strategy<Value = RuleGen> {
        (
            any::<bool>(),
            0..4usize,
            prop::option::of((0..PORTS.len(), 0..PORTS.len())),
            (
                prop::option::of(prop::sample::select(vec![0u8, 3, 8])),
                prop::option::of(0..2u8),
            ),
            prop_oneof![
                3 => (0..CIDRS.len()).prop_map(Ok),
                1 => (0..groups).prop_map(Err),
            ],
            any::<bool>(),
            1..4i64,
        )
            .prop_map(
                |(egress, protocol, ports, icmp, remote, allow, priority)| RuleGen {
                    egress,
                    protocol,
                    ports,
                    icmp,
                    remote,
                    allow,
                    priority,
                },
            )
    }

    fn case() -> impl Strategy<Value = Case> {
        (1..4usize).prop_flat_map(|g| {
            (
                prop::collection::vec(
                    (
                        0..2usize,
                        0..2usize,
                        prop::sample::select(vec![4u8, 5, 6, 127, 128, 200]),
                        prop::collection::vec(0..g, 0..4),
                    ),
                    1..6,
                ),
                prop::collection::vec(prop::collection::vec(rule_gen(g), 0..10), g),
                prop::collection::vec(
                    (
                        prop_oneof![
                            2 => (0..6usize).prop_map(Ok),
                            1 => any::<u32>().prop_map(Err),
                        ],
                        0..4usize,
                        prop_oneof![
                            2 => prop::sample::select(PORTS.to_vec()),
                            1 => any::<u16>(),
                        ],
                    ),
                    1..24,
                ),
            )
                .prop_map(|(nics, groups, packets)| Case {
                    nics,
                    groups,
                    packets,
                })
        })
    }

    const PROTOCOLS: [Protocol; 4] = [Protocol::Tcp, Protocol::Udp, Protocol::Icmp, Protocol::All];

    fn build(c: &Case) -> Intent {
        let mut i = Intent::default();
        i = i.create_host(host("h0", "192.168.50.1")).unwrap().0;
        i = i.create_host(host("h1", "192.168.50.2")).unwrap().0;
        i = i.create_vpc(vpc("a", "10.0.0.0/16")).unwrap().0;
        i = i.create_subnet(subnet("a", "s0", "10.0.1.0/24")).unwrap().0;
        i = i.create_subnet(subnet("a", "s1", "10.0.2.0/24")).unwrap().0;
        for g in 0..c.groups.len() {
            i = i
                .create_security_group(group(&format!("g{g}"), "a", vec![]))
                .unwrap()
                .0;
        }
        for (g, rules) in c.groups.iter().enumerate() {
            for r in rules {
                let protocol = PROTOCOLS[r.protocol];
                let ports = match (protocol, r.ports) {
                    (Protocol::Tcp | Protocol::Udp, Some((a, b))) => {
                        let (a, b) = (PORTS[a].min(PORTS[b]), PORTS[a].max(PORTS[b]));
                        Some(format!("{a}-{b}"))
                    }
                    _ => None,
                };
                let (icmp_type, icmp_code) = match (protocol, r.icmp) {
                    (Protocol::Icmp, (Some(t), c)) => (Some(t as i64), c.map(i64::from)),
                    _ => (None, None),
                };
                let group_name = match r.remote {
                    Ok(_) => String::new(),
                    Err(k) => format!("g{k}"),
                };
                let remote = match r.remote {
                    Ok(k) => Rm::Cidr(CIDRS[k]),
                    Err(_) => Rm::Group(&group_name),
                };
                let direction = if r.egress {
                    Direction::Egress
                } else {
                    Direction::Ingress
                };
                let action = if r.allow { Action::Allow } else { Action::Deny };
                let spec = SgRuleSpec {
                    icmp_type,
                    icmp_code,
                    ..rule(direction, protocol, None, remote, action, r.priority)
                };
                let spec = SgRuleSpec { ports, ..spec };
                // Duplicates are refused; skip them.
                if let Ok((next, _)) = i.add_security_group_rule(Some("a"), &format!("g{g}"), spec)
                {
                    i = next;
                }
            }
        }
        for (k, (h, s, last, groups)) in c.nics.iter().enumerate() {
            let spec = NicSpec {
                ip: Some(format!("10.0.{}.{last}", s + 1)),
                ifname: format!("n{k}"),
                ..nic(&format!("n{k}"), "a", &format!("s{s}"), &format!("h{h}"))
            };
            // Address clashes are refused; skip them.
            let Ok((next, _)) = i.create_nic(spec) else {
                continue;
            };
            i = next;
            let mut names: Vec<String> = groups.iter().map(|g| format!("g{g}")).collect();
            names.sort();
            names.dedup();
            if !names.is_empty() {
                i = i
                    .set_nic_security_groups(&format!("n{k}"), names)
                    .unwrap()
                    .0;
            }
        }
        i
    }

    fn packet(i: &Intent, (remote, proto, port): &(Result<usize, u32>, usize, u16)) -> FirstPacket {
        let nics: Vec<&Nic> = i.nics().collect();
        let remote = match remote {
            Ok(k) if !nics.is_empty() => nics[k % nics.len()].ip,
            Ok(k) => ip(CIDRS[k % CIDRS.len()].split('/').next().unwrap()),
            Err(a) => Ipv4Addr::from(*a),
        };
        match proto {
            0 => FirstPacket::tcp(remote, *port),
            1 => FirstPacket::udp(remote, *port),
            // Types 0, 3, 8 with codes 0/1 hit the rules' choices; others miss them.
            2 => FirstPacket::icmp(
                remote,
                [0, 3, 8, 11][*port as usize % 4],
                (*port >> 8) as u8 % 3,
            ),
            _ => FirstPacket::other(remote, 47),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn the_compiled_lookup_decides_like_the_rules(c in case()) {
            let i = build(&c);
            for h in ["h0", "h1"] {
                let t = compile_host(&i, h);
                let dp = Datapath::new(&t);
                for n in i.nics().filter(|n| n.host == h) {
                    for d in [Direction::Ingress, Direction::Egress] {
                        for p in &c.packets {
                            let pkt = packet(&i, p);
                            let want = evaluate(&i, n, d, &pkt);
                            let got = dp.decide(&n.ifname, d, &pkt);
                            prop_assert_eq!(got, Some(want), "{} {:?} {:?}", n.id, d, pkt);
                        }
                    }
                }
            }
        }

        #[test]
        fn policy_ids_are_equal_exactly_when_the_policies_are(c in case()) {
            let i = build(&c);
            for t in compile_all(&i).values() {
                let mut by_id: BTreeMap<u64, &Policy> = BTreeMap::new();
                for p in &t.policies {
                    prop_assert!(by_id.insert(p.id, p).is_none());
                    prop_assert!(p.id != POLICY_NONE && p.id != POLICY_UNENFORCED);
                }
                let distinct: BTreeSet<&Vec<SlotRule>> =
                    t.policies.iter().map(|p| &p.rules).collect();
                prop_assert_eq!(distinct.len(), t.policies.len());
            }
        }
    }
}
