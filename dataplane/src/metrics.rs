//! Prometheus metrics. A custom collector reads the stats map at scrape time, so there is no
//! polling loop and no copy of the counters to keep in sync with the kernel.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use anyhow::{anyhow, Result};
use prometheus::{
    core::{Collector, Desc},
    proto::{self, LabelPair, MetricFamily, MetricType},
    Encoder, Registry, TextEncoder,
};
use sluice_common::stats::Reason;

use crate::{loader::Dataplane, stats::StatsSnapshot};

pub const PACKETS_TOTAL: &str = "sluice_packets_total";
pub const BYTES_TOTAL: &str = "sluice_bytes_total";
pub const INTERFACES_ATTACHED: &str = "sluice_interfaces_attached";

/// Something that can produce the current counters: the loaded dataplane, or a fake in tests.
pub trait StatsSource: Send + Sync {
    fn snapshot(&self) -> Result<StatsSnapshot>;
}

impl StatsSource for Mutex<Dataplane> {
    fn snapshot(&self) -> Result<StatsSnapshot> {
        self.lock()
            .map_err(|_| anyhow!("dataplane lock poisoned"))?
            .stats()
    }
}

/// Emits `sluice_packets_total` / `sluice_bytes_total` per reason and the attached-interface gauge.
pub struct StatsCollector {
    source: Arc<dyn StatsSource>,
    interfaces_attached: usize,
    descs: Vec<Desc>,
}

impl StatsCollector {
    pub fn new(source: Arc<dyn StatsSource>, interfaces_attached: usize) -> Self {
        let reason = || vec!["reason".to_string()];
        let descs = vec![
            Desc::new(
                PACKETS_TOTAL.into(),
                "Packets seen by the XDP programs, by the reason that decided their fate.".into(),
                reason(),
                HashMap::new(),
            ),
            Desc::new(
                BYTES_TOTAL.into(),
                "Bytes seen by the XDP programs, by the reason that decided their fate.".into(),
                reason(),
                HashMap::new(),
            ),
            Desc::new(
                INTERFACES_ATTACHED.into(),
                "Interfaces this daemon attached an XDP program to.".into(),
                vec![],
                HashMap::new(),
            ),
        ]
        .into_iter()
        .collect::<prometheus::Result<Vec<_>>>()
        .expect("metric descriptions are valid");
        Self {
            source,
            interfaces_attached,
            descs,
        }
    }
}

impl Collector for StatsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = vec![gauge(&self.descs[2], self.interfaces_attached as f64)];
        match self.source.snapshot() {
            Ok(snapshot) => families.extend(stats_families(&self.descs, &snapshot)),
            // A scrape cannot carry an error; omitting the counters makes the gap visible.
            Err(e) => log::error!("reading stats for /metrics: {e:#}"),
        }
        families
    }
}

fn stats_families(descs: &[Desc], snapshot: &StatsSnapshot) -> [MetricFamily; 2] {
    let per_reason = |desc: &Desc, value: fn(&sluice_common::stats::Counter) -> u64| {
        let metrics = Reason::ALL
            .iter()
            .map(|&r| {
                let mut label = LabelPair::default();
                label.set_name("reason".into());
                label.set_value(r.name().into());
                let mut counter = proto::Counter::default();
                counter.set_value(value(&snapshot.get(r)) as f64);
                let mut m = proto::Metric::from_label(vec![label]);
                m.set_counter(counter);
                m
            })
            .collect();
        family(desc, MetricType::COUNTER, metrics)
    };
    [
        per_reason(&descs[0], |c| c.packets),
        per_reason(&descs[1], |c| c.bytes),
    ]
}

fn gauge(desc: &Desc, value: f64) -> MetricFamily {
    let mut g = proto::Gauge::default();
    g.set_value(value);
    family(desc, MetricType::GAUGE, vec![proto::Metric::from_gauge(g)])
}

fn family(desc: &Desc, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(desc.fq_name.clone());
    f.set_help(desc.help.clone());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

/// A registry holding the stats collector.
pub fn registry(source: Arc<dyn StatsSource>, interfaces_attached: usize) -> Registry {
    let registry = Registry::new();
    registry
        .register(Box::new(StatsCollector::new(source, interfaces_attached)))
        .expect("the stats collector registers once");
    registry
}

/// The host agent's health: what generation the maps hold, how long applies take, how
/// often they fail (a full map is one such failure), and how full each VPC map is.
#[derive(Clone)]
pub struct AgentMetrics {
    pub applied_generation: prometheus::IntGauge,
    pub apply_errors: prometheus::IntCounter,
    pub apply_seconds: prometheus::Histogram,
    pub map_entries: prometheus::IntGaugeVec,
    /// The load balancer's health checks (`lb::health`).
    pub lb_health: crate::lb::health::HealthMetrics,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        use prometheus::{histogram_opts, opts, Histogram, IntCounter, IntGauge, IntGaugeVec};
        Self {
            applied_generation: IntGauge::with_opts(opts!(
                "sluice_agent_applied_generation",
                "The intent generation this host's maps hold."
            ))
            .expect("valid metric"),
            apply_errors: IntCounter::with_opts(opts!(
                "sluice_agent_apply_errors_total",
                "Fetches or applies of this host's tables that failed (maps full included)."
            ))
            .expect("valid metric"),
            apply_seconds: Histogram::with_opts(histogram_opts!(
                "sluice_agent_apply_seconds",
                "Time to resolve and write one generation of this host's tables.",
                vec![0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
            ))
            .expect("valid metric"),
            map_entries: IntGaugeVec::new(
                opts!(
                    "sluice_vpc_map_entries",
                    "Entries this agent keeps in each VPC map."
                ),
                &["map"],
            )
            .expect("valid metric"),
            lb_health: Default::default(),
        }
    }

    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.applied_generation.clone()))?;
        registry.register(Box::new(self.apply_errors.clone()))?;
        registry.register(Box::new(self.apply_seconds.clone()))?;
        registry.register(Box::new(self.map_entries.clone()))?;
        self.lb_health.register(registry)
    }
}

pub const CONNTRACK_ENTRIES: &str = "sluice_conntrack_entries";
pub const CONNTRACK_INSERTS: &str = "sluice_conntrack_inserts_total";
pub const CONNTRACK_INSERT_FAILURES: &str = "sluice_conntrack_insert_failures_total";
pub const CONNTRACK_EVICTIONS: &str = "sluice_conntrack_evictions_total";
pub const CONNTRACK_COLLECTIONS: &str = "sluice_conntrack_collections_total";

/// Something that can read the connection table's counters: the loaded dataplane, or a
/// fake in tests.
pub trait ConntrackSource: Send + Sync {
    fn conntrack_counts(&self) -> Result<crate::conntrack::CtCounts>;
}

impl ConntrackSource for Mutex<Dataplane> {
    fn conntrack_counts(&self) -> Result<crate::conntrack::CtCounts> {
        let dp = self
            .lock()
            .map_err(|_| anyhow!("dataplane lock poisoned"))?;
        Ok(crate::conntrack::counts(&*dp)?)
    }
}

/// The connection table's entries, inserts, insert failures (table full), LRU evictions
/// and collections (RST, expiry), read from its maps at scrape time like the packet
/// counters: the kernel's counts are the truth, so there is nothing to keep in sync.
pub struct ConntrackCollector {
    source: Arc<dyn ConntrackSource>,
    descs: Vec<Desc>,
}

impl ConntrackCollector {
    pub fn new(source: Arc<dyn ConntrackSource>) -> Self {
        let descs = [
            (
                CONNTRACK_ENTRIES,
                "Entries in the connection table (inserted minus deleted).",
            ),
            (
                CONNTRACK_INSERTS,
                "Flows inserted into the connection table.",
            ),
            (
                CONNTRACK_INSERT_FAILURES,
                "New flows dropped because the connection table was full (or refused the insert).",
            ),
            (
                CONNTRACK_EVICTIONS,
                "Connection-table entries the LRU evicted, as found by the sweeper.",
            ),
            (
                CONNTRACK_COLLECTIONS,
                "Connection-table entries collected after RST or expiry, by the datapath or the sweeper.",
            ),
        ]
        .into_iter()
        .map(|(name, help)| Desc::new(name.into(), help.into(), vec![], HashMap::new()))
        .collect::<prometheus::Result<Vec<_>>>()
        .expect("metric descriptions are valid");
        Self { source, descs }
    }
}

impl Collector for ConntrackCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let c = match self.source.conntrack_counts() {
            Ok(c) => c,
            Err(e) => {
                log::error!("reading the connection table's counters for /metrics: {e:#}");
                return vec![];
            }
        };
        let counter = |desc: &Desc, v: u64| {
            let mut x = proto::Counter::default();
            x.set_value(v as f64);
            let mut m = proto::Metric::default();
            m.set_counter(x);
            family(desc, MetricType::COUNTER, vec![m])
        };
        vec![
            gauge(&self.descs[0], c.entries as f64),
            counter(&self.descs[1], c.inserts),
            counter(&self.descs[2], c.insert_failures),
            counter(&self.descs[3], c.evictions),
            counter(&self.descs[4], c.collections),
        ]
    }
}

/// The Prometheus text exposition of everything in `registry`.
pub fn render(registry: &Registry) -> Result<String> {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    Ok(String::from_utf8(buf)?)
}

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sluice_common::stats::Counter;

    /// A fixed snapshot standing in for the BPF map.
    pub(crate) struct FakeStats(pub Option<StatsSnapshot>);

    impl StatsSource for FakeStats {
        fn snapshot(&self) -> Result<StatsSnapshot> {
            self.0.clone().ok_or_else(|| anyhow!("map gone"))
        }
    }

    pub(crate) fn snapshot_with(entries: &[(Reason, u64, u64)]) -> StatsSnapshot {
        let mut counters = vec![Counter::default(); Reason::COUNT as usize];
        for &(r, packets, bytes) in entries {
            counters[r.index() as usize] = Counter { packets, bytes };
        }
        StatsSnapshot { counters }
    }

    fn rendered(source: FakeStats, attached: usize) -> String {
        render(&registry(Arc::new(source), attached)).unwrap()
    }

    #[test]
    fn renders_every_reason_with_values_and_zeros() {
        let snap = snapshot_with(&[(Reason::PassIpv4, 7, 980), (Reason::DropUdpBadLen, 2, 120)]);
        let text = rendered(FakeStats(Some(snap)), 3);
        assert!(
            text.contains("# TYPE sluice_packets_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE sluice_bytes_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_packets_total{reason=\"pass_ipv4\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_bytes_total{reason=\"pass_ipv4\"} 980\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_packets_total{reason=\"drop_udp_bad_len\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_packets_total{reason=\"pass_arp\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE sluice_interfaces_attached gauge\n"),
            "{text}"
        );
        assert!(text.contains("sluice_interfaces_attached 3\n"), "{text}");
        for name in [PACKETS_TOTAL, BYTES_TOTAL] {
            let lines = text
                .lines()
                .filter(|l| l.starts_with(&format!("{name}{{")))
                .count();
            assert_eq!(lines, Reason::COUNT as usize, "{name}: one line per reason");
        }
        for r in Reason::ALL {
            let line = format!("sluice_packets_total{{reason=\"{}\"}} ", r.name());
            assert!(text.contains(&line), "missing {line}");
        }
    }

    #[test]
    fn a_failed_map_read_omits_the_counters_but_keeps_the_gauge() {
        let text = rendered(FakeStats(None), 1);
        assert!(!text.contains(PACKETS_TOTAL), "{text}");
        assert!(text.contains("sluice_interfaces_attached 1\n"), "{text}");
    }

    #[test]
    fn conntrack_metrics_render_the_counts_and_vanish_on_a_failed_read() {
        struct Fixed(Option<crate::conntrack::CtCounts>);
        impl ConntrackSource for Fixed {
            fn conntrack_counts(&self) -> Result<crate::conntrack::CtCounts> {
                self.0.ok_or_else(|| anyhow!("map gone"))
            }
        }
        let counts = crate::conntrack::CtCounts {
            entries: 7,
            inserts: 12,
            insert_failures: 3,
            evictions: 1,
            collections: 4,
            ..Default::default()
        };
        let reg = Registry::new();
        reg.register(Box::new(ConntrackCollector::new(Arc::new(Fixed(Some(
            counts,
        ))))))
        .unwrap();
        let text = render(&reg).unwrap();
        for line in [
            "# TYPE sluice_conntrack_entries gauge\nsluice_conntrack_entries 7\n",
            "# TYPE sluice_conntrack_inserts_total counter\nsluice_conntrack_inserts_total 12\n",
            "sluice_conntrack_insert_failures_total 3\n",
            "sluice_conntrack_evictions_total 1\n",
            "sluice_conntrack_collections_total 4\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in {text}");
        }
        let reg = Registry::new();
        reg.register(Box::new(ConntrackCollector::new(Arc::new(Fixed(None)))))
            .unwrap();
        assert!(!render(&reg).unwrap().contains("sluice_conntrack"));
    }

    #[test]
    fn collector_reads_the_source_at_every_scrape() {
        struct Counting(Mutex<u64>);
        impl StatsSource for Counting {
            fn snapshot(&self) -> Result<StatsSnapshot> {
                let mut n = self.0.lock().unwrap();
                *n += 1;
                Ok(snapshot_with(&[(Reason::PassArp, *n, 0)]))
            }
        }
        let reg = registry(Arc::new(Counting(Mutex::new(0))), 0);
        assert!(render(&reg).unwrap().contains("{reason=\"pass_arp\"} 1\n"));
        assert!(render(&reg).unwrap().contains("{reason=\"pass_arp\"} 2\n"));
    }
}
