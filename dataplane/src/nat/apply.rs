//! The agent's NAT map I/O: [`resolve`] turns a host's [`NatTables`] into map contents
//! (hosts' MACs filled in from the underlay neighbours), [`apply`] brings the maps there.
//!
//! Hitless order: every map gets its new and changed entries before any stale entry goes,
//! and the maps that lead somewhere (owners, DNAT targets, EIPs) are written before the
//! ones that start a translation (sources, blocks, bindings), so a packet never finds a
//! translation whose way back is missing. Re-applying the same tables writes nothing.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData},
    Pod,
};
use sluice_common::{
    nat::{
        block_first_port, maps, Binding, BlockOwner, DnatKey, DnatTarget, EipEntry, HostBlocks,
        NatConfig, OwnerKey, SnatRule, SourceKey, MAX_HOST_BLOCKS, MAX_SNAT_EIPS,
    },
    vpc::{EndpointKey, Ipv4, Mac},
};

use super::NatTables;
use crate::loader::Dataplane;

/// What the NAT maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatResolved {
    pub config: NatConfig,
    pub eips: BTreeMap<Ipv4, EipEntry>,
    pub dnat: BTreeMap<DnatKey, DnatTarget>,
    pub sources: BTreeMap<(SourceKey, u8), SnatRule>,
    pub blocks: BTreeMap<Ipv4, HostBlocks>,
    pub owners: BTreeMap<OwnerKey, BlockOwner>,
    pub bindings: BTreeMap<EndpointKey, Binding>,
}

/// Map contents for `t` on the host whose VTEP is `own`; `mac_of` gives a host's (or the
/// border router's) underlay MAC, `None` while unresolved (written as zero: the datapath
/// then counts such packets instead of sending them to a wrong MAC).
pub fn resolve(t: &NatTables, own: Ipv4, mac_of: impl Fn(Ipv4) -> Option<Mac>) -> NatResolved {
    let mac = |vtep: Ipv4| {
        if vtep == own {
            [0; 6]
        } else {
            mac_of(vtep).unwrap_or_default()
        }
    };
    let mut r = NatResolved {
        config: NatConfig {
            configured: 1,
            border_mac: t.border.and_then(&mac_of).unwrap_or_default(),
            _pad: [0; 2],
        },
        ..Default::default()
    };
    for e in &t.eips {
        r.eips.insert(
            e.eip,
            EipEntry {
                kind: e.kind,
                vni: e.vni,
                ip: e.ip,
                vtep: e.vtep,
                vtep_mac: if e.vtep == [0; 4] {
                    [0; 6]
                } else {
                    mac(e.vtep)
                },
                _pad: [0; 2],
            },
        );
    }
    for d in &t.dnat {
        r.dnat.insert(
            DnatKey {
                eip: d.eip,
                port: d.port.to_be_bytes(),
                proto: d.proto,
                _pad: 0,
            },
            DnatTarget {
                vni: d.vni,
                ip: d.ip,
                vtep: d.vtep,
                vtep_mac: mac(d.vtep),
                port: d.target_port.to_be_bytes(),
            },
        );
    }
    for s in &t.sources {
        let mut rule = SnatRule::default();
        for (slot, eip) in rule.eips.iter_mut().zip(s.eips.iter().take(MAX_SNAT_EIPS)) {
            *slot = *eip;
            rule.count += 1;
        }
        if rule.count > 0 {
            r.sources.insert((SourceKey::new(s.vni, s.ip), s.len), rule);
        }
    }
    for b in &t.blocks {
        let mut hb = HostBlocks::default();
        for (slot, block) in hb
            .first_ports
            .iter_mut()
            .zip(b.blocks.iter().take(MAX_HOST_BLOCKS))
        {
            *slot = block_first_port(*block);
            hb.count += 1;
        }
        if hb.count > 0 {
            r.blocks.insert(b.eip, hb);
        }
    }
    for o in &t.owners {
        r.owners.insert(
            OwnerKey {
                eip: o.eip,
                block: o.block as u32,
            },
            BlockOwner {
                vtep: o.vtep,
                vtep_mac: mac(o.vtep),
                _pad: [0; 2],
            },
        );
    }
    for b in &t.bindings {
        r.bindings.insert(
            EndpointKey {
                vni: b.vni,
                ip: b.ip,
            },
            Binding { eip: b.eip },
        );
    }
    r
}

/// Entries written and deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatApplied {
    pub written: usize,
    pub deleted: usize,
}

/// Brings the NAT maps of `dp` to `want` (order: see the module comment).
pub fn apply(dp: &mut Dataplane, want: &NatResolved) -> Result<NatApplied> {
    let mut done = NatApplied::default();
    // Writes, the ways back first.
    let stale_owners = sync_hash(
        dp.map_mut(maps::OWNERS)?,
        maps::OWNERS,
        &want.owners,
        &mut done,
    )?;
    let stale_dnat = sync_hash(dp.map_mut(maps::DNAT)?, maps::DNAT, &want.dnat, &mut done)?;
    let stale_eips = sync_hash(dp.map_mut(maps::EIPS)?, maps::EIPS, &want.eips, &mut done)?;
    {
        let mut config: Array<&mut MapData, NatConfig> =
            Array::try_from(dp.map_mut(maps::CONFIG)?)?;
        if config.get(&0, 0).ok() != Some(want.config) {
            config.set(0, want.config, 0).context(maps::CONFIG)?;
            done.written += 1;
        }
    }
    let stale_blocks = sync_hash(
        dp.map_mut(maps::BLOCKS)?,
        maps::BLOCKS,
        &want.blocks,
        &mut done,
    )?;
    let stale_bindings = sync_hash(
        dp.map_mut(maps::BINDINGS)?,
        maps::BINDINGS,
        &want.bindings,
        &mut done,
    )?;
    let stale_sources = {
        let mut trie: LpmTrie<&mut MapData, SourceKey, SnatRule> =
            LpmTrie::try_from(dp.map_mut(maps::SOURCES)?)?;
        let current: BTreeMap<(SourceKey, u8), SnatRule> = trie
            .iter()
            .filter_map(|kv| kv.ok())
            .map(|(k, v)| ((k.data(), (k.prefix_len() - 32) as u8), v))
            .collect();
        for (&(key, len), rule) in &want.sources {
            if current.get(&(key, len)) != Some(rule) {
                trie.insert(&Key::new(SourceKey::trie_prefix_len(len), key), rule, 0)
                    .with_context(|| format!("{}: writing a source", maps::SOURCES))?;
                done.written += 1;
            }
        }
        current
            .into_keys()
            .filter(|k| !want.sources.contains_key(k))
            .collect::<Vec<_>>()
    };
    // Deletes, the starts of translations first.
    {
        let mut trie: LpmTrie<&mut MapData, SourceKey, SnatRule> =
            LpmTrie::try_from(dp.map_mut(maps::SOURCES)?)?;
        for (key, len) in stale_sources {
            if trie
                .remove(&Key::new(SourceKey::trie_prefix_len(len), key))
                .is_ok()
            {
                done.deleted += 1;
            }
        }
    }
    remove_all::<EndpointKey, Binding>(dp.map_mut(maps::BINDINGS)?, stale_bindings, &mut done)?;
    remove_all::<Ipv4, HostBlocks>(dp.map_mut(maps::BLOCKS)?, stale_blocks, &mut done)?;
    remove_all::<Ipv4, EipEntry>(dp.map_mut(maps::EIPS)?, stale_eips, &mut done)?;
    remove_all::<DnatKey, DnatTarget>(dp.map_mut(maps::DNAT)?, stale_dnat, &mut done)?;
    remove_all::<OwnerKey, BlockOwner>(dp.map_mut(maps::OWNERS)?, stale_owners, &mut done)?;
    Ok(done)
}

/// Writes the entries of `want` that differ; returns the keys that should go.
fn sync_hash<K: Pod + Ord, V: Pod + PartialEq>(
    map: &mut Map,
    name: &'static str,
    want: &BTreeMap<K, V>,
    done: &mut NatApplied,
) -> Result<Vec<K>> {
    let mut m: HashMap<&mut MapData, K, V> = HashMap::try_from(map)?;
    let current: BTreeMap<K, V> = m.iter().filter_map(|kv| kv.ok()).collect();
    for (k, v) in want {
        if current.get(k) != Some(v) {
            m.insert(k, v, 0)
                .with_context(|| format!("{name}: writing an entry ({} wanted)", want.len()))?;
            done.written += 1;
        }
    }
    Ok(current
        .into_keys()
        .filter(|k| !want.contains_key(k))
        .collect())
}

fn remove_all<K: Pod, V: Pod>(map: &mut Map, keys: Vec<K>, done: &mut NatApplied) -> Result<()> {
    let mut m: HashMap<&mut MapData, K, V> = HashMap::try_from(map)?;
    for k in keys {
        if m.remove(&k).is_ok() {
            done.deleted += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::{BlockRow, EipRow, OwnerRow};
    use sluice_common::nat::EipKind;

    #[test]
    fn resolve_fills_macs_and_leaves_own_and_unresolved_hosts_zero() {
        let own = [172, 31, 0, 1];
        let other = [172, 31, 0, 2];
        let lost = [172, 31, 0, 3];
        let t = NatTables {
            border: Some([172, 31, 0, 254]),
            eips: vec![EipRow {
                eip: [203, 0, 113, 5],
                kind: EipKind::Bound as u32,
                vni: 7,
                ip: [10, 0, 0, 5],
                vtep: other,
            }],
            blocks: vec![BlockRow {
                eip: [203, 0, 113, 1],
                blocks: vec![0, 3],
            }],
            owners: vec![
                OwnerRow {
                    eip: [203, 0, 113, 1],
                    block: 0,
                    vtep: own,
                },
                OwnerRow {
                    eip: [203, 0, 113, 1],
                    block: 1,
                    vtep: lost,
                },
                OwnerRow {
                    eip: [203, 0, 113, 1],
                    block: 2,
                    vtep: other,
                },
            ],
            ..Default::default()
        };
        let mac_of = |ip: Ipv4| match ip {
            [172, 31, 0, 2] => Some([2, 0, 0, 0, 0, 2]),
            [172, 31, 0, 254] => Some([2, 0, 0, 0, 0, 0xfe]),
            _ => None,
        };
        let r = resolve(&t, own, mac_of);
        assert_eq!(r.config.border_mac, [2, 0, 0, 0, 0, 0xfe]);
        assert_eq!(r.eips[&[203, 0, 113, 5]].vtep_mac, [2, 0, 0, 0, 0, 2]);
        let owner = |b| {
            r.owners[&OwnerKey {
                eip: [203, 0, 113, 1],
                block: b,
            }]
                .vtep_mac
        };
        assert_eq!(owner(0), [0; 6]);
        assert_eq!(owner(1), [0; 6]);
        assert_eq!(owner(2), [2, 0, 0, 0, 0, 2]);
        let hb = r.blocks[&[203, 0, 113, 1]];
        assert_eq!(hb.count, 2);
        assert_eq!(&hb.first_ports[..2], &[1024, 1024 + 3 * 256]);
    }
}
