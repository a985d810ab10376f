//! The lab's Internet: a namespace on the fabric playing the cloud's border router and a
//! public server behind it, reachable from VMs only through NAT or EIPs.
//!
//! ```text
//!   internet   inet0 <public_gateway>/24 on the fabric bridge, forwarding
//!              lo: 198.51.100.10/32 (the public server: HTTP, UDP echo)
//!              route 203.0.113.0/24 (the cloud's EIPs) via every host (ECMP, L4 hash)
//! ```
//!
//! Any host may receive any EIP's packet (the hosts pass it on to the one owning its
//! flow). A dead host leaves the ECMP set once its neighbour entry fails: the short ARP
//! timers below stand in for the fabric's BFD. A packet from a VM to an EIP goes out to
//! the border router and comes back (hairpin through the fabric).

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result};
use serde::Deserialize;

use super::{cmd, overlay::FABRIC, Lab, LabProcess, EXEC_TIMEOUT};

/// The namespace label.
pub const INTERNET: &str = "internet";
/// Its fabric interface.
pub const INTERNET_IF: &str = "inet0";
/// The public server's address (documentation range).
pub const PUBLIC_SERVER: &str = "198.51.100.10";
/// Where the lab's EIP pools must lie: the border router sends it to the hosts.
pub const EIP_RANGE: &str = "203.0.113.0/24";

impl Lab {
    /// The Internet namespace on the fabric: border router at `gateway_cidr` (in the
    /// fabric's subnet), EIPs routed over `hosts` (their underlay addresses).
    pub fn internet(&self, gateway_cidr: &str, hosts: &[Ipv4Addr]) -> Result<()> {
        let bridge = self.fabric()?;
        self.add_host(INTERNET)?;
        self.disable_ipv6(INTERNET)?;
        let fabric_if = self.ifname("inet")?;
        self.veth(INTERNET, INTERNET_IF, FABRIC, &fabric_if)?;
        self.enslave(FABRIC, &fabric_if, &bridge)?;
        self.up(FABRIC, &fabric_if)?;
        self.addr(INTERNET, INTERNET_IF, gateway_cidr)?;
        self.up(INTERNET, INTERNET_IF)?;
        self.up(INTERNET, "lo")?;
        // XDP cannot complete a partial checksum: what the Internet sends the hosts
        // translate must be checksummed in full, as from a real router (see lab::overlay).
        self.exec(INTERNET, &["ethtool", "-K", INTERNET_IF, "tx", "off"])?;
        self.addr(INTERNET, "lo", &format!("{PUBLIC_SERVER}/32"))?;
        let neigh = |k: &str, v: &str| format!("net.ipv4.neigh.{INTERNET_IF}.{k}={v}");
        for setting in [
            "net.ipv4.ip_forward=1".to_string(),
            // Flows, not address pairs, spread over the hosts; dead hosts drop out.
            "net.ipv4.fib_multipath_hash_policy=1".into(),
            "net.ipv4.fib_multipath_use_neigh=1".into(),
            // A hairpinned packet leaves by the interface it came in: no redirects.
            "net.ipv4.conf.all.send_redirects=0".into(),
            format!("net.ipv4.conf.{INTERNET_IF}.send_redirects=0"),
            neigh("base_reachable_time_ms", "1000"),
            neigh("delay_first_probe_time", "1"),
            neigh("retrans_time_ms", "200"),
            neigh("ucast_solicit", "2"),
        ] {
            self.exec(INTERNET, &["sysctl", "-q", "-w", &setting])?;
        }
        // From the public server's address, as a host on the Internet would be: a reply
        // from the router's own fabric address would match no flow.
        let mut route = vec!["route".to_string(), "add".into(), EIP_RANGE.into()];
        route.extend(["src".into(), PUBLIC_SERVER.into()]);
        for h in hosts {
            route.extend(["nexthop".into(), "via".into(), h.to_string()]);
            route.extend(["dev".into(), INTERNET_IF.into()]);
        }
        let argv: Vec<&str> = route.iter().map(String::as_str).collect();
        cmd::ip_in(&self.netns(INTERNET), &argv).context("routing the EIP range to the hosts")?;
        Ok(())
    }

    /// An HTTP server on `port` in `host` answering every GET with `<name> <client ip>
    /// <client port>` (what it saw), listening before this returns.
    pub fn http_server(&self, host: &str, port: u16, name: &str) -> Result<LabProcess<'_>> {
        let mut p = self.spawn(
            host,
            &["python3", "-c", HTTP_SERVER, &port.to_string(), name],
        )?;
        p.wait_for_stdout(Duration::from_secs(20), |s| s.contains("listening"))?;
        Ok(p)
    }

    /// `GET url` from `host`; a failure is a report with `error` set.
    pub fn http_get(&self, host: &str, url: &str, timeout: Duration) -> Result<HttpReport> {
        let t = timeout.as_secs_f64().to_string();
        let done = self
            .spawn(host, &["python3", "-c", HTTP_GET, url, &t])?
            .wait(timeout * 2 + EXEC_TIMEOUT)?;
        super::traffic::parse_report(&done.stdout)
            .with_context(|| format!("GET {url} from {host}: {}", done.stderr.trim()))
    }

    /// A UDP server on `port` in `host` answering each datagram with `<name> <client ip>
    /// <client port>`.
    pub fn udp_echo_server(&self, host: &str, port: u16, name: &str) -> Result<LabProcess<'_>> {
        let mut p = self.spawn(host, &["python3", "-c", UDP_ECHO, &port.to_string(), name])?;
        p.wait_for_stdout(Duration::from_secs(20), |s| s.contains("listening"))?;
        Ok(p)
    }

    /// One datagram from `host` to `dst:port`; the answer's text, or an error report.
    pub fn udp_request(
        &self,
        host: &str,
        dst: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<HttpReport> {
        let (p, t) = (port.to_string(), timeout.as_secs_f64().to_string());
        let done = self
            .spawn(host, &["python3", "-c", UDP_REQUEST, dst, &p, &t])?
            .wait(timeout * 2 + EXEC_TIMEOUT)?;
        super::traffic::parse_report(&done.stdout)
            .with_context(|| format!("UDP to {dst}:{port} from {host}: {}", done.stderr.trim()))
    }
}

/// What [`HTTP_GET`] and [`UDP_REQUEST`] report.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct HttpReport {
    pub status: Option<u16>,
    pub body: String,
    pub error: Option<String>,
}

impl HttpReport {
    /// The answering server's name and the client (address, port) it saw.
    pub fn seen(&self) -> Option<(String, String, u16)> {
        let mut w = self.body.split_whitespace();
        let (name, ip, port) = (w.next()?, w.next()?, w.next()?.parse().ok()?);
        Some((name.to_string(), ip.to_string(), port))
    }
}

/// argv: port name.
const HTTP_SERVER: &str = r#"
import http.server, socketserver, sys
port, name = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s %s %d" % (name, self.client_address[0], self.client_address[1])).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
s = S(("0.0.0.0", port), H)
print("listening", flush=True)
s.serve_forever()
"#;

/// argv: url timeout. Prints a JSON report.
const HTTP_GET: &str = r#"
import json, sys, urllib.request
url, timeout = sys.argv[1], float(sys.argv[2])
out = {"status": None, "body": "", "error": None}
try:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        out["status"] = r.status
        out["body"] = r.read().decode()
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out), flush=True)
"#;

/// argv: port name.
const UDP_ECHO: &str = r#"
import socket, sys
port, name = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
print("listening", flush=True)
while True:
    d, a = s.recvfrom(65535)
    s.sendto(("%s %s %d" % (name, a[0], a[1])).encode(), a)
"#;

/// argv: dst port timeout. Prints a JSON report (status 0 on an answer).
const UDP_REQUEST: &str = r#"
import json, socket, sys
dst, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out = {"status": None, "body": "", "error": None}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(timeout)
try:
    s.sendto(b"hello", (dst, port))
    out["body"] = s.recv(65535).decode()
    out["status"] = 0
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out), flush=True)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_names_the_server_and_the_client_it_saw() {
        let r = HttpReport {
            status: Some(200),
            body: "public 203.0.113.1 1030".into(),
            error: None,
        };
        assert_eq!(
            r.seen(),
            Some(("public".into(), "203.0.113.1".into(), 1030))
        );
        let bad = HttpReport {
            body: "public".into(),
            ..r
        };
        assert_eq!(bad.seen(), None);
    }
}
