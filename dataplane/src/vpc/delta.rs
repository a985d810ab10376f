//! The change between two versions of one host's tables, so the controller's long poll can
//! send an agent what changed instead of every table again. At a thousand VPCs a host's
//! tables are ~10 MB of JSON; one route change is a few hundred bytes of delta.
//!
//! Pure: [`TablesDelta::between`] and [`TablesDelta::apply`] satisfy
//! `between(a, b).apply(a) == b` for any two tables (property-tested below).

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::tables::{EndpointEntry, HostTables, HostUnderlay, LocalPort, RouteEntry, RoutePrefix};
use crate::{
    lb::LbTables,
    nat::NatTables,
    sg::{apply::BlockPrefix, NicPolicies, Policy, SgTables},
};
use sluice_common::vpc::Ipv4;

/// Changes to one table, a vector sorted by `K`: keys removed, entries added or replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize, K: Serialize"))]
#[serde(bound(deserialize = "T: DeserializeOwned, K: DeserializeOwned"))]
pub struct VecDelta<T, K> {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<K>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upserted: Vec<T>,
}

impl<T, K> Default for VecDelta<T, K> {
    fn default() -> Self {
        Self {
            removed: Vec::new(),
            upserted: Vec::new(),
        }
    }
}

impl<T: Clone + PartialEq, K: Ord + Clone> VecDelta<T, K> {
    /// `old` and `new` must be sorted by `key`, one entry per key (as the compiler emits).
    pub fn between(old: &[T], new: &[T], key: impl Fn(&T) -> K) -> Self {
        let mut d = Self::default();
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            match (old.get(i), new.get(j)) {
                (Some(o), Some(n)) => match key(o).cmp(&key(n)) {
                    std::cmp::Ordering::Less => {
                        d.removed.push(key(o));
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        d.upserted.push(n.clone());
                        j += 1;
                    }
                    std::cmp::Ordering::Equal => {
                        if o != n {
                            d.upserted.push(n.clone());
                        }
                        i += 1;
                        j += 1;
                    }
                },
                (Some(o), None) => {
                    d.removed.push(key(o));
                    i += 1;
                }
                (None, Some(n)) => {
                    d.upserted.push(n.clone());
                    j += 1;
                }
                (None, None) => unreachable!(),
            }
        }
        d
    }

    /// Applies the change to `v` (sorted by `key`), keeping it sorted.
    pub fn apply(&self, v: &mut Vec<T>, key: impl Fn(&T) -> K) {
        if self.is_empty() {
            return;
        }
        if self.len() * 32 < v.len() {
            // A few changes to a long table: in place, not a copy of it.
            for r in &self.removed {
                if let Ok(k) = v.binary_search_by(|e| key(e).cmp(r)) {
                    v.remove(k);
                }
            }
            for u in &self.upserted {
                match v.binary_search_by(|e| key(e).cmp(&key(u))) {
                    Ok(k) => v[k] = u.clone(),
                    Err(k) => v.insert(k, u.clone()),
                }
            }
            return;
        }
        let mut removed = self.removed.iter().peekable();
        let mut upserted = self.upserted.iter().peekable();
        let mut out = Vec::with_capacity(v.len() + self.upserted.len());
        for item in v.drain(..) {
            let k = key(&item);
            while let Some(u) = upserted.next_if(|u| key(u) < k) {
                out.push(u.clone());
            }
            while removed.next_if(|r| **r < k).is_some() {}
            if removed.next_if(|r| **r == k).is_some() {
                continue;
            }
            match upserted.next_if(|u| key(u) == k) {
                Some(u) => out.push(u.clone()),
                None => out.push(item),
            }
        }
        out.extend(upserted.cloned());
        *v = out;
    }

    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.upserted.is_empty()
    }

    pub fn len(&self) -> usize {
        self.removed.len() + self.upserted.len()
    }
}

/// What changed in a host's tables from one generation to another.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablesDelta {
    /// The underlay, when it changed (`Some(None)`: the host was unregistered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<Option<HostUnderlay>>,
    pub ports: VecDelta<LocalPort, String>,
    pub endpoints: VecDelta<EndpointEntry, (u32, Ipv4)>,
    pub routes: VecDelta<RouteEntry, RoutePrefix>,
    pub vnis: VecDelta<u32, u32>,
    pub remote_vteps: VecDelta<Ipv4, Ipv4>,
    /// Security groups: NICs by interface name, policies by id (a changed policy is a new id).
    #[serde(default)]
    pub sg_nics: VecDelta<NicPolicies, String>,
    #[serde(default)]
    pub sg_policies: VecDelta<Policy, u64>,
    #[serde(default)]
    pub blocklist: VecDelta<BlockPrefix, (Ipv4, u8)>,
    /// The NAT tables, whole, when they changed (they are small: EIPs, not flows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatTables>,
    /// The load balancer tables, whole, when they changed (listeners and backends, not
    /// Maglev tables: those the agent builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<LbTables>,
}

fn port_key(p: &LocalPort) -> String {
    p.ifname.clone()
}
fn endpoint_key(e: &EndpointEntry) -> (u32, Ipv4) {
    (e.vni, e.ip)
}
fn route_key(r: &RouteEntry) -> RoutePrefix {
    r.prefix
}
fn itself<T: Copy>(v: &T) -> T {
    *v
}
fn sg_nic_key(n: &NicPolicies) -> String {
    n.ifname.clone()
}
fn policy_key(p: &Policy) -> u64 {
    p.id
}
fn block_key(b: &BlockPrefix) -> (Ipv4, u8) {
    (b.addr, b.len)
}

impl TablesDelta {
    pub fn between(old: &HostTables, new: &HostTables) -> Self {
        // Destructured so that a field added to HostTables does not compile until it is
        // carried here too.
        let HostTables {
            underlay,
            ports,
            endpoints,
            routes,
            vnis,
            remote_vteps,
            security_groups: SgTables { nics, policies },
            blocklist,
            nat,
            lb,
        } = new;
        Self {
            underlay: (old.underlay != *underlay).then(|| underlay.clone()),
            ports: VecDelta::between(&old.ports, ports, port_key),
            endpoints: VecDelta::between(&old.endpoints, endpoints, endpoint_key),
            routes: VecDelta::between(&old.routes, routes, route_key),
            vnis: VecDelta::between(&old.vnis, vnis, itself),
            remote_vteps: VecDelta::between(&old.remote_vteps, remote_vteps, itself),
            sg_nics: VecDelta::between(&old.security_groups.nics, nics, sg_nic_key),
            sg_policies: VecDelta::between(&old.security_groups.policies, policies, policy_key),
            blocklist: VecDelta::between(&old.blocklist, blocklist, block_key),
            nat: (old.nat != *nat).then(|| nat.clone()),
            lb: (old.lb != *lb).then(|| lb.clone()),
        }
    }

    pub fn apply(&self, t: &mut HostTables) {
        if let Some(u) = &self.underlay {
            t.underlay = u.clone();
        }
        self.ports.apply(&mut t.ports, port_key);
        self.endpoints.apply(&mut t.endpoints, endpoint_key);
        self.routes.apply(&mut t.routes, route_key);
        self.vnis.apply(&mut t.vnis, itself);
        self.remote_vteps.apply(&mut t.remote_vteps, itself);
        self.sg_nics.apply(&mut t.security_groups.nics, sg_nic_key);
        self.sg_policies
            .apply(&mut t.security_groups.policies, policy_key);
        self.blocklist.apply(&mut t.blocklist, block_key);
        if let Some(n) = &self.nat {
            t.nat = n.clone();
        }
        if let Some(l) = &self.lb {
            t.lb = l.clone();
        }
    }

    /// Entries it adds, replaces or removes.
    pub fn len(&self) -> usize {
        usize::from(self.underlay.is_some())
            + self.ports.len()
            + self.endpoints.len()
            + self.routes.len()
            + self.vnis.len()
            + self.remote_vteps.len()
            + self.sg_nics.len()
            + self.sg_policies.len()
            + self.blocklist.len()
            + usize::from(self.nat.is_some())
            + usize::from(self.lb.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn sorted(m: BTreeMap<u8, u8>) -> Vec<(u8, u8)> {
        m.into_iter().collect()
    }

    proptest! {
        #[test]
        fn applying_the_delta_gives_the_new_table(
            a in proptest::collection::btree_map(any::<u8>(), 0u8..4, 0..200),
            edits in proptest::collection::vec((any::<u8>(), proptest::option::of(0u8..4)), 0..12),
            b in proptest::collection::btree_map(any::<u8>(), 0u8..4, 0..40),
            small in any::<bool>(),
        ) {
            // `small`: b is a few edits of a (the in-place path), else unrelated.
            let b = if small {
                let mut m = a.clone();
                for (k, v) in edits {
                    match v {
                        Some(v) => m.insert(k, v),
                        None => m.remove(&k),
                    };
                }
                m
            } else {
                b
            };
            let (a, b) = (sorted(a), sorted(b));
            let d = VecDelta::between(&a, &b, |e: &(u8, u8)| e.0);
            let mut got = a.clone();
            d.apply(&mut got, |e| e.0);
            prop_assert_eq!(&got, &b);
            // Minimal: nothing unchanged is sent.
            let changed = a.iter().filter(|e| !b.contains(e)).map(|e| e.0)
                .chain(b.iter().filter(|e| !a.contains(e)).map(|e| e.0))
                .collect::<std::collections::BTreeSet<_>>().len();
            prop_assert_eq!(d.len(), changed);
        }
    }

    fn route(vni: u32, last: u8, kind: u32) -> RouteEntry {
        RouteEntry {
            prefix: RoutePrefix {
                vni,
                ip: [10, 0, last, 0],
                len: 24,
            },
            next_hop: super::super::tables::NextHopEntry {
                kind,
                vni,
                ip: [0; 4],
            },
        }
    }

    #[test]
    fn one_route_change_is_one_entry_and_round_trips() {
        let old = HostTables {
            routes: (0..100).map(|k| route(7, k, 0)).collect(),
            vnis: vec![7],
            ..Default::default()
        };
        let mut new = old.clone();
        new.routes[40] = route(7, 40, 2);
        new.routes.remove(10);
        new.vnis.push(9);
        let d = TablesDelta::between(&old, &new);
        assert_eq!(d.routes.upserted, vec![route(7, 40, 2)]);
        assert_eq!(d.routes.removed, vec![route(7, 10, 0).prefix]);
        assert_eq!(d.vnis.upserted, vec![9]);
        assert_eq!(d.len(), 3);
        let json = serde_json::to_string(&d).unwrap();
        let back: TablesDelta = serde_json::from_str(&json).unwrap();
        let mut got = old.clone();
        back.apply(&mut got);
        assert_eq!(got, new);
        assert!(TablesDelta::between(&new, &new).is_empty());
    }
}
