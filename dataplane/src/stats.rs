//! Reading the per-CPU verdict counters and turning them into totals per reason.

use std::collections::BTreeMap;

use anyhow::Result;
use aya::maps::{Map, MapData, PerCpuArray};
use serde::{Deserialize, Serialize};
use sluice_common::stats::{Counter, Reason};

/// Totals over all CPUs, one per [`Reason`], in index order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub counters: Vec<Counter>,
}

impl StatsSnapshot {
    pub fn read(map: &Map) -> Result<Self> {
        let array: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(map)?;
        Self::from_array(&array)
    }

    /// Reads a map opened from its pin (see [`crate::loader::open_pinned_map`]).
    pub fn read_pinned(map: MapData) -> Result<Self> {
        Self::read(&Map::PerCpuArray(map))
    }

    fn from_array(array: &PerCpuArray<&MapData, Counter>) -> Result<Self> {
        let counters = Reason::ALL
            .iter()
            .map(|r| {
                let per_cpu = array.get(&r.index(), 0)?;
                Ok(sum(per_cpu.iter()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { counters })
    }

    pub fn get(&self, reason: Reason) -> Counter {
        self.counters[reason.index() as usize]
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        let counters = self
            .counters
            .iter()
            .zip(&earlier.counters)
            .map(|(now, then)| Counter {
                packets: now.packets.saturating_sub(then.packets),
                bytes: now.bytes.saturating_sub(then.bytes),
            })
            .collect();
        StatsSnapshot { counters }
    }

    pub fn total_packets(&self) -> u64 {
        self.counters.iter().map(|c| c.packets).sum()
    }

    /// Non-zero reasons by name, the form the API and CLI show.
    pub fn by_name(&self) -> BTreeMap<&'static str, CounterJson> {
        Reason::ALL
            .iter()
            .zip(&self.counters)
            .filter(|(_, c)| c.packets != 0)
            .map(|(r, c)| (r.name(), CounterJson::from(*c)))
            .collect()
    }
}

fn sum<'a>(counters: impl Iterator<Item = &'a Counter>) -> Counter {
    counters.fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    })
}

/// JSON form of a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterJson {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Counter> for CounterJson {
    fn from(c: Counter) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(packets: &[u64]) -> StatsSnapshot {
        let mut counters = vec![Counter::default(); Reason::COUNT as usize];
        for (c, p) in counters.iter_mut().zip(packets) {
            *c = Counter {
                packets: *p,
                bytes: *p * 100,
            };
        }
        StatsSnapshot { counters }
    }

    #[test]
    fn since_subtracts_per_reason() {
        let d = snap(&[10, 5, 7]).since(&snap(&[4, 5, 1]));
        assert_eq!(d.get(Reason::PassNonIp).packets, 6);
        assert_eq!(d.get(Reason::PassArp).packets, 0);
        assert_eq!(d.get(Reason::PassIpv4).bytes, 600);
        assert_eq!(d.total_packets(), 12);
    }

    #[test]
    fn by_name_lists_only_nonzero() {
        let names = snap(&[0, 3]).by_name();
        assert_eq!(names.len(), 1);
        assert_eq!(names["pass_arp"].packets, 3);
    }

    #[test]
    fn sum_adds_cpus() {
        let cpus = [
            Counter {
                packets: 1,
                bytes: 10,
            },
            Counter {
                packets: 2,
                bytes: 20,
            },
        ];
        assert_eq!(
            sum(cpus.iter()),
            Counter {
                packets: 3,
                bytes: 30
            }
        );
    }
}
