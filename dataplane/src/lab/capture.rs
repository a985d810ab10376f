//! Packet captures in lab namespaces: `tcpdump -w` on an interface, read back as frames.

use std::{
    fs,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::{Lab, LabProcess};

/// Bytes kept of each frame: enough for outer and inner headers and a payload marker.
pub const SNAPLEN: u32 = 512;

/// A running `tcpdump`; [`Capture::finish`] stops it and returns what it saw.
pub struct Capture<'lab> {
    process: LabProcess<'lab>,
    file: PathBuf,
    what: String,
}

impl Lab {
    /// Captures every frame on `iface` in `host` (both directions) until finished. Returns
    /// once tcpdump is listening, so nothing sent afterwards is missed.
    pub fn capture(&self, host: &str, iface: &str) -> Result<Capture<'_>> {
        static CAPTURES: AtomicU32 = AtomicU32::new(0);
        let n = CAPTURES.fetch_add(1, Ordering::Relaxed);
        let file = self.run_dir().join(format!("{host}-{iface}-{n}.pcap"));
        let path = file.to_str().context("capture path is not UTF-8")?;
        let snaplen = SNAPLEN.to_string();
        let mut process = self.spawn(
            host,
            &[
                "tcpdump", "-i", iface, "-n", "-U", "-s", &snaplen, "-Z", "root", "-w", path,
            ],
        )?;
        process.wait_for_stderr(Duration::from_secs(20), |s| s.contains("listening on"))?;
        Ok(Capture {
            process,
            file,
            what: format!("capture on {iface} in {host}"),
        })
    }
}

impl Capture<'_> {
    /// Stops tcpdump (SIGINT flushes the file) and returns the captured frames in order.
    pub fn finish(mut self) -> Result<Vec<Vec<u8>>> {
        self.process
            .signal(libc::SIGINT)
            .with_context(|| format!("stopping the {}", self.what))?;
        let done = self.process.wait(Duration::from_secs(20))?;
        if !done.status.success() {
            bail!(
                "the {} failed ({}): {}",
                self.what,
                done.status,
                done.stderr.trim()
            );
        }
        let bytes =
            fs::read(&self.file).with_context(|| format!("reading {}", self.file.display()))?;
        parse_pcap(&bytes).with_context(|| format!("parsing {}", self.file.display()))
    }
}

/// The frames of a classic pcap file with Ethernet link type (what `tcpdump -w` writes).
pub fn parse_pcap(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    if bytes.len() < 24 {
        bail!("pcap file of {} bytes has no header", bytes.len());
    }
    let magic = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let read: fn([u8; 4]) -> u32 = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => u32::from_le_bytes,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => u32::from_be_bytes,
        m => bail!("not a pcap file (magic {m:#010x})"),
    };
    let u32_at = |off: usize| read(bytes[off..off + 4].try_into().unwrap());
    let linktype = u32_at(20) & 0x0fff_ffff;
    if linktype != 1 {
        bail!("pcap link type {linktype}, expected 1 (Ethernet)");
    }
    let mut frames = Vec::new();
    let mut off = 24;
    while off < bytes.len() {
        if off + 16 > bytes.len() {
            bail!("truncated record header at byte {off}");
        }
        let caplen = u32_at(off + 8) as usize;
        let start = off + 16;
        let Some(frame) = bytes.get(start..start + caplen) else {
            bail!("record at byte {off} claims {caplen} bytes past the end of the file");
        };
        frames.push(frame.to_vec());
        off = start + caplen;
    }
    Ok(frames)
}

// ---- reading captured frames ----

/// The IPv4 packet in an untagged Ethernet frame (the frame may be cut at [`SNAPLEN`]).
pub struct Ip<'a> {
    pub src: sluice_common::vpc::Ipv4,
    pub dst: sluice_common::vpc::Ipv4,
    pub proto: u8,
    pub ttl: u8,
    pub dont_fragment: bool,
    pub l4: &'a [u8],
}

pub fn ipv4(frame: &[u8]) -> Option<Ip<'_>> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[14] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    Some(Ip {
        src: frame[26..30].try_into().ok()?,
        dst: frame[30..34].try_into().ok()?,
        proto: frame[23],
        ttl: frame[22],
        dont_fragment: frame[20] & 0x40 != 0,
        l4: frame.get(14 + ihl..)?,
    })
}

/// Source and destination port of a TCP or UDP header.
pub fn ports(l4: &[u8]) -> Option<(u16, u16)> {
    Some((
        u16::from_be_bytes(l4.get(0..2)?.try_into().ok()?),
        u16::from_be_bytes(l4.get(2..4)?.try_into().ok()?),
    ))
}

/// A VXLAN frame on the underlay: outer packet, UDP source port, VNI and inner frame.
pub struct Vxlan<'a> {
    pub outer: Ip<'a>,
    pub sport: u16,
    pub vni: u32,
    pub inner: &'a [u8],
}

pub fn vxlan(frame: &[u8]) -> Option<Vxlan<'_>> {
    let outer = ipv4(frame)?;
    if outer.proto != 17 {
        return None;
    }
    let (sport, dport) = ports(outer.l4)?;
    if dport != sluice_common::proto::VXLAN_PORT {
        return None;
    }
    let vx = outer.l4.get(8..16)?;
    let vni = u32::from_be_bytes(vx[4..8].try_into().ok()?) >> 8;
    let inner = outer.l4.get(16..)?;
    Some(Vxlan {
        outer,
        sport,
        vni,
        inner,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&SNAPLEN.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        for f in frames {
            out.extend_from_slice(&[0; 8]);
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(&(f.len() as u32 + 100).to_le_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    #[test]
    fn frames_come_back_in_order() {
        let frames = parse_pcap(&pcap(&[b"first frame", b"second"])).unwrap();
        assert_eq!(frames, [b"first frame".to_vec(), b"second".to_vec()]);
        assert_eq!(parse_pcap(&pcap(&[])).unwrap(), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn damaged_files_are_errors() {
        let mut file = pcap(&[b"frame"]);
        file.truncate(file.len() - 2);
        assert!(parse_pcap(&file)
            .unwrap_err()
            .to_string()
            .contains("past the end"));
        assert!(parse_pcap(b"short").is_err());
        let mut bad_magic = pcap(&[]);
        bad_magic[0] = 0;
        assert!(parse_pcap(&bad_magic)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let mut not_ethernet = pcap(&[]);
        not_ethernet[20] = 113;
        assert!(parse_pcap(&not_ethernet)
            .unwrap_err()
            .to_string()
            .contains("113"));
    }
}
