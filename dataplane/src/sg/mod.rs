//! Security groups, userspace side (the ABI and the datapath design are in
//! `common/src/sg.rs` and `common/src/conntrack.rs`).
//!
//! The intent (groups, rules, NICs' groups; `intent/sg.rs`) is compiled by pure code
//! ([`compile`]) into [`SgTables`], everything one host's security-group maps should
//! hold: a [`NicPolicies`] per local NIC (the agent resolves the interface name into the
//! ifindex that indexes `SLUICE_SG_NICS`) and the [`Policy`]s they use, each with its
//! trie entries and allow set. [`lookup`] is a pure model of the datapath's algorithm
//! over those entries (LPM semantics included) and a straightforward evaluation of the
//! rules themselves; the property tests check that they always agree.

use serde::{Deserialize, Serialize};
use sluice_common::sg::{
    NicSg, PolicyInfo, RemoteKey, RuleSet, ServiceKey, NIC_SG_ENFORCED, RULE_WORDS,
};
use sluice_common::vpc::Ipv4;

use crate::intent::{Action, PortRange, Protocol, Remote};

pub mod apply;
pub mod compile;
pub mod lookup;

/// Everything one host's security-group maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SgTables {
    /// Local NICs, sorted by interface name.
    pub nics: Vec<NicPolicies>,
    /// The policies `nics` use, sorted by id; never [`sluice_common::sg::POLICY_NONE`].
    pub policies: Vec<Policy>,
}

impl SgTables {
    pub fn policy(&self, id: u64) -> Option<&Policy> {
        self.policies
            .binary_search_by_key(&id, |p| p.id)
            .ok()
            .map(|k| &self.policies[k])
    }

    pub fn nic(&self, ifname: &str) -> Option<&NicPolicies> {
        self.nics
            .binary_search_by(|n| n.ifname.as_str().cmp(ifname))
            .ok()
            .map(|k| &self.nics[k])
    }
}

/// A local NIC's policy ids, by its host-side interface name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NicPolicies {
    pub ifname: String,
    /// The NIC's ID (for diagnostics).
    pub nic: String,
    pub ingress: u64,
    pub egress: u64,
}

impl NicPolicies {
    /// The `SLUICE_SG_NICS` value: filtered, with both policy ids.
    pub fn to_nic_sg(&self) -> NicSg {
        NicSg {
            ingress: self.ingress,
            egress: self.egress,
            flags: NIC_SG_ENFORCED,
            _pad: 0,
        }
    }
}

/// One rule slot of a policy: a NIC's rules of one direction, deduplicated and sorted
/// (the derived order is the slot order: priority, deny before allow, then the match).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotRule {
    pub priority: u32,
    pub action: Action,
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    pub remote: Remote,
}

/// A compiled policy: what `SLUICE_SG_POLICIES`, `SLUICE_SG_REMOTES` and
/// `SLUICE_SG_SERVICES` hold for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Policy {
    /// A hash of everything below (see `common/src/sg.rs`, "Policy ids").
    pub id: u64,
    /// Slot `k` is `rules[k]`.
    pub rules: Vec<SlotRule>,
    /// Slots whose rule allows.
    #[serde(with = "slots")]
    pub allow: RuleSet,
    /// Sorted by (address, length).
    pub remotes: Vec<RemoteEntry>,
    /// Sorted by (protocol, port, length).
    pub services: Vec<ServiceEntry>,
}

/// A remote-trie entry: the rules whose remote contains `addr/len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RemoteEntry {
    pub addr: Ipv4,
    pub len: u8,
    #[serde(with = "slots")]
    pub rules: RuleSet,
}

/// A service-trie entry: the rules covering `proto` (`None`: every protocol) and the
/// port prefix `port/len` (16 bits; ICMP: type in the high byte, code in the low one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub proto: Option<u8>,
    pub port: u16,
    pub len: u8,
    #[serde(with = "slots")]
    pub rules: RuleSet,
}

impl Policy {
    /// The `SLUICE_SG_POLICIES` value.
    pub fn info(&self) -> PolicyInfo {
        PolicyInfo {
            allow: self.allow,
            rules: self.rules.len() as u32,
            flags: 0,
        }
    }

    /// `SLUICE_SG_REMOTES` entries: (trie prefix length, key data, value).
    pub fn remote_entries(&self) -> impl Iterator<Item = (u32, RemoteKey, RuleSet)> + '_ {
        self.remotes.iter().map(|e| {
            (
                RemoteKey::trie_prefix_len(e.len),
                RemoteKey::new(self.id, e.addr),
                e.rules,
            )
        })
    }

    /// `SLUICE_SG_SERVICES` entries: (trie prefix length, key data, value).
    pub fn service_entries(&self) -> impl Iterator<Item = (u32, ServiceKey, RuleSet)> + '_ {
        self.services.iter().map(|e| {
            let len = match e.proto {
                None => ServiceKey::ANY_PROTOCOL_PREFIX_LEN,
                Some(_) => ServiceKey::trie_prefix_len(e.len),
            };
            (
                len,
                ServiceKey::new(self.id, e.proto.unwrap_or(0), e.port),
                e.rules,
            )
        })
    }
}

/// A [`RuleSet`] as the sorted list of its slots (compact for the usual sparse sets).
mod slots {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &RuleSet, s: S) -> Result<S::Ok, S::Error> {
        let slots: Vec<u16> = (0..RULE_WORDS * 64)
            .filter(|k| r.contains(*k))
            .map(|k| k as u16)
            .collect();
        slots.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RuleSet, D::Error> {
        let slots = Vec::<u16>::deserialize(d)?;
        let mut r = RuleSet::EMPTY;
        for k in slots {
            if k as usize >= RULE_WORDS * 64 {
                return Err(serde::de::Error::custom(format!(
                    "rule slot {k} out of range"
                )));
            }
            r.insert(k as usize);
        }
        Ok(r)
    }
}
