//! Working inside lab namespaces from this process: threads that enter one, and counters
//! read with `ip -j -s link`.

use std::{fs::File, os::fd::AsRawFd, path::Path};

use anyhow::{Context, Result};
use serde_json::Value;
use sluice_dataplane::lab::cmd;

/// Moves the calling thread (only it) into namespace `netns`.
pub fn enter(netns: &str) -> Result<()> {
    let f = File::open(Path::new("/run/netns").join(netns))
        .with_context(|| format!("opening namespace {netns}"))?;
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("entering {netns}"));
    }
    Ok(())
}

/// An interface's packet counters (`stats64`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

impl LinkCounters {
    pub fn since(&self, earlier: &LinkCounters) -> LinkCounters {
        LinkCounters {
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
            rx_dropped: self.rx_dropped.saturating_sub(earlier.rx_dropped),
            tx_dropped: self.tx_dropped.saturating_sub(earlier.tx_dropped),
        }
    }
}

/// `iface`'s counters inside `netns`.
pub fn link_counters(netns: &str, iface: &str) -> Result<LinkCounters> {
    let out = cmd::ip_in(netns, &["-j", "-s", "link", "show", "dev", iface])?;
    parse_link_counters(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("counters of {iface} in {netns}"))
}

fn parse_link_counters(text: &str) -> Result<LinkCounters> {
    let v: Value = serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))?;
    let s = &v[0]["stats64"];
    let get = |dir: &str, what: &str| {
        s[dir][what]
            .as_u64()
            .with_context(|| format!("no stats64.{dir}.{what} in {text}"))
    };
    Ok(LinkCounters {
        rx_packets: get("rx", "packets")?,
        tx_packets: get("tx", "packets")?,
        rx_dropped: get("rx", "dropped")?,
        tx_dropped: get("tx", "dropped")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_from_ip_json() {
        let text = r#"[{"ifindex":3,"ifname":"eth0","stats64":{"rx":{"bytes":600,"packets":10,"errors":0,"dropped":1},"tx":{"bytes":60,"packets":1,"errors":0,"dropped":2}}}]"#;
        let c = parse_link_counters(text).unwrap();
        assert_eq!(
            c,
            LinkCounters {
                rx_packets: 10,
                tx_packets: 1,
                rx_dropped: 1,
                tx_dropped: 2
            }
        );
        let zero = LinkCounters::default();
        assert_eq!(c.since(&c), zero);
        assert!(parse_link_counters("[{}]").is_err());
    }
}
