//! Two pure models of a flow's first-packet decision, which must always agree:
//!
//! - [`Datapath`]: the kernel's algorithm over the compiled map entries, byte for byte
//!   (ABI keys, LPM semantics, [`sluice_common::sg::decide`] itself);
//! - [`evaluate`]: the rules' meaning, tried one by one in priority order.
//!
//! Fixture and namespace tests can use [`evaluate`] as their oracle.

use std::{collections::BTreeMap, net::Ipv4Addr};

use sluice_common::{
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    sg::{
        decide, NicSg, PolicyInfo, RemoteKey, RuleSet, ServiceKey, DEFAULT_EGRESS_ALLOW,
        DEFAULT_INGRESS_ALLOW, NIC_SG_ENFORCED, POLICY_NONE,
    },
};

use super::SgTables;
use crate::intent::{Action, Direction, Intent, Nic, Protocol, Remote, SgRule};

/// What policy sees of a flow's first packet: the other end's address, the protocol,
/// and the destination port (ICMP: type in the high byte, code in the low one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstPacket {
    pub remote: Ipv4Addr,
    pub proto: u8,
    pub port: u16,
}

impl FirstPacket {
    pub fn tcp(remote: Ipv4Addr, dport: u16) -> Self {
        Self {
            remote,
            proto: IPPROTO_TCP,
            port: dport,
        }
    }

    pub fn udp(remote: Ipv4Addr, dport: u16) -> Self {
        Self {
            remote,
            proto: IPPROTO_UDP,
            port: dport,
        }
    }

    pub fn icmp(remote: Ipv4Addr, icmp_type: u8, code: u8) -> Self {
        Self {
            remote,
            proto: IPPROTO_ICMP,
            port: ServiceKey::icmp_port(icmp_type, code),
        }
    }

    /// A protocol without ports.
    pub fn other(remote: Ipv4Addr, proto: u8) -> Self {
        Self {
            remote,
            proto,
            port: 0,
        }
    }
}

/// Which rule decided, or none did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Rule(Action),
    /// No rule matched: ingress denied, egress allowed.
    Default,
}

impl Decision {
    pub fn allows(self, d: Direction) -> bool {
        match (self, d) {
            (Decision::Rule(a), _) => a == Action::Allow,
            (Decision::Default, Direction::Ingress) => DEFAULT_INGRESS_ALLOW,
            (Decision::Default, Direction::Egress) => DEFAULT_EGRESS_ALLOW,
        }
    }
}

/// An LPM trie entry: prefix length in bits, key data, value.
type LpmEntry = (u32, Vec<u8>, RuleSet);

/// One host's security-group maps as the kernel holds them.
pub struct Datapath {
    nics: BTreeMap<String, NicSg>,
    policies: BTreeMap<u64, PolicyInfo>,
    remotes: Vec<LpmEntry>,
    services: Vec<LpmEntry>,
}

impl Datapath {
    /// The maps after the agent applied `t` (interfaces by name instead of ifindex).
    pub fn new(t: &SgTables) -> Self {
        let mut dp = Datapath {
            nics: t
                .nics
                .iter()
                .map(|n| (n.ifname.clone(), n.to_nic_sg()))
                .collect(),
            policies: BTreeMap::new(),
            remotes: vec![],
            services: vec![],
        };
        for p in &t.policies {
            dp.policies.insert(p.id, p.info());
            for (len, k, v) in p.remote_entries() {
                dp.remotes.push((len, remote_bytes(&k), v));
            }
            for (len, k, v) in p.service_entries() {
                dp.services.push((len, service_bytes(&k), v));
            }
        }
        dp
    }

    /// The decision for a first packet through NIC `ifname` in direction `d`; `None` if
    /// the interface is not a filtered NIC.
    pub fn decide(&self, ifname: &str, d: Direction, pkt: &FirstPacket) -> Option<Decision> {
        let sg = self.nics.get(ifname)?;
        if sg.flags & NIC_SG_ENFORCED == 0 {
            return None;
        }
        let id = sg.version(d == Direction::Egress);
        if id == POLICY_NONE {
            return Some(Decision::Default);
        }
        let r = lpm(
            &self.remotes,
            &remote_bytes(&RemoteKey::new(id, pkt.remote.octets())),
        );
        let s = lpm(
            &self.services,
            &service_bytes(&ServiceKey::new(id, pkt.proto, pkt.port)),
        );
        Some(match decide(r, s, self.policies.get(&id)) {
            Some(true) => Decision::Rule(Action::Allow),
            Some(false) => Decision::Rule(Action::Deny),
            None => Decision::Default,
        })
    }
}

fn remote_bytes(k: &RemoteKey) -> Vec<u8> {
    [&k.policy[..], &k.addr[..]].concat()
}

fn service_bytes(k: &ServiceKey) -> Vec<u8> {
    [&k.policy[..], &[k.proto], &k.port[..], &[k._pad]].concat()
}

/// The kernel LPM trie's lookup: the longest entry whose first `len` bits equal the key's.
fn lpm<'a>(entries: &'a [LpmEntry], key: &[u8]) -> Option<&'a RuleSet> {
    entries
        .iter()
        .filter(|(len, data, _)| prefix_eq(data, key, *len as usize))
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, _, v)| v)
}

fn prefix_eq(a: &[u8], b: &[u8], bits: usize) -> bool {
    let (bytes, rest) = (bits / 8, bits % 8);
    a[..bytes] == b[..bytes]
        && (rest == 0 || (a[bytes] ^ b[bytes]) & (0xff << (8 - rest)) as u8 == 0)
}

/// The rules' meaning: `nic`'s rules of direction `d`, in priority order with deny first
/// on ties; the first that matches decides.
pub fn evaluate(intent: &Intent, nic: &Nic, d: Direction, pkt: &FirstPacket) -> Decision {
    let mut rules: Vec<&SgRule> = nic
        .security_groups
        .iter()
        .filter_map(|g| intent.security_group(None, g))
        .flat_map(|g| g.rules_in(d))
        .collect();
    rules.sort_by_key(|r| (r.priority, r.action));
    rules
        .iter()
        .find(|r| matches(intent, r, pkt))
        .map_or(Decision::Default, |r| Decision::Rule(r.action))
}

fn matches(intent: &Intent, r: &SgRule, pkt: &FirstPacket) -> bool {
    let remote = match &r.remote {
        Remote::Cidr(c) => c.contains(pkt.remote),
        Remote::Group(g) => intent.security_group_members(g).any(|n| n.ip == pkt.remote),
    };
    let service = match r.protocol {
        Protocol::All => true,
        p if p.number() != Some(pkt.proto) => false,
        Protocol::Tcp | Protocol::Udp => r.ports.is_none_or(|range| range.contains(pkt.port)),
        Protocol::Icmp => {
            let [t, c] = pkt.port.to_be_bytes();
            r.icmp_type.is_none_or(|rt| rt == t) && r.icmp_code.is_none_or(|rc| rc == c)
        }
    };
    remote && service
}
