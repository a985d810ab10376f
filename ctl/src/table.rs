//! Human-readable output: pure functions from the API's JSON types to text.

use sluice_common::stats::Reason;
use sluice_dataplane::api::{StatsJson, StatusJson};

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

/// A unit enum's JSON spelling ("vm", "replaced"), so the table says what the API says.
fn json_word(v: &impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
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
        };
        assert!(status(&s).ends_with("\nno interfaces attached\n"));
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
