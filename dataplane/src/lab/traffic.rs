//! Real traffic for labs: a paced UDP sender and a counting UDP receiver (python3, run
//! inside a namespace), carrying 8-byte sequence numbers so losses are countable; a TCP
//! echo server and a client that checks the echo; `ping` with its replies' TTLs.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::{Lab, LabProcess, EXEC_TIMEOUT};

impl Lab {
    /// A TCP echo server on `port` in `host`, listening before this returns.
    pub fn tcp_echo_server(&self, host: &str, port: u16) -> Result<LabProcess<'_>> {
        let mut p = self.spawn(host, &["python3", "-c", TCP_ECHO_SERVER, &port.to_string()])?;
        p.wait_for_stdout(Duration::from_secs(20), |s| s.contains("listening"))?;
        Ok(p)
    }

    /// Sends `bytes` bytes of `marker` from `host` to the echo server at `dst:port` and
    /// reports what came back; a failed exchange is a report with `error` set, not an `Err`.
    pub fn tcp_exchange(
        &self,
        host: &str,
        dst: &str,
        port: u16,
        bytes: u64,
        marker: &str,
        timeout: Duration,
    ) -> Result<TcpReport> {
        if marker.is_empty() {
            anyhow::bail!("tcp_exchange needs a non-empty marker");
        }
        let args = [
            port.to_string(),
            bytes.to_string(),
            timeout.as_secs_f64().to_string(),
        ];
        let p = self.spawn(
            host,
            &[
                "python3", "-c", TCP_CLIENT, dst, &args[0], &args[1], marker, &args[2],
            ],
        )?;
        let done = p.wait(timeout * 3 + EXEC_TIMEOUT)?;
        parse_report(&done.stdout).with_context(|| format!("stderr: {}", done.stderr.trim()))
    }

    /// `ping -c count -i interval -W 1 [extra...] dst` in `host`; lost replies are a report,
    /// not an error.
    pub fn ping(&self, host: &str, dst: &str, count: u32, extra: &[&str]) -> Result<PingReport> {
        let count = count.to_string();
        let mut argv = vec!["ping", "-n", "-c", &count, "-i", "0.2", "-W", "1"];
        argv.extend_from_slice(extra);
        argv.push(dst);
        let done = self.spawn(host, &argv)?.wait(EXEC_TIMEOUT)?;
        parse_ping(&done.stdout)
            .with_context(|| format!("`{}` in {host}: {}", argv.join(" "), done.stderr.trim()))
    }
}

/// argv: dst port count rate. count 0 sends until SIGTERM. Prints "sending", then a JSON
/// report. IP_RECVERR makes a local drop (ENOBUFS) visible, so it is retried and counted
/// instead of silently lost before reaching the dataplane.
pub const UDP_SENDER: &str = r#"
import errno, json, signal, socket, sys, time
dst, port, count, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
pad = b"sluice-lab-traffic" * 3
sent = retries = 0
start = time.monotonic()
print("sending", flush=True)
while not stop and (count == 0 or sent < count):
    delay = start + sent / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    try:
        s.sendto(sent.to_bytes(8, "big") + pad, (dst, port))
        sent += 1
    except OSError as e:
        if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
            raise
        retries += 1
        time.sleep(0.001)
print(json.dumps({"sent": sent, "retries": retries, "secs": time.monotonic() - start}), flush=True)
"#;

/// argv: port idle_secs first_wait_secs. Prints "listening" once bound; exits after
/// `idle` seconds without a datagram and prints a JSON report.
pub const UDP_RECEIVER: &str = r#"
import json, socket, sys
port, idle, first_wait = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: a slow reader must not drop
s.bind(("0.0.0.0", port))
print("listening", flush=True)
seen = set()
received = 0
s.settimeout(first_wait)
try:
    while True:
        data = s.recv(65535)
        received += 1
        seen.add(int.from_bytes(data[:8], "big"))
        s.settimeout(idle)
except socket.timeout:
    pass
top = max(seen) + 1 if seen else 0
missing = [i for i in range(top) if i not in seen][:20]
print(json.dumps({"received": received, "unique": len(seen), "top": top, "missing": missing}), flush=True)
"#;

/// argv: port. A TCP echo server: prints "listening" once bound, then echoes every
/// connection's bytes back until that client shuts down its side.
pub const TCP_ECHO_SERVER: &str = r#"
import socket, sys, threading
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(64)
print("listening", flush=True)
def serve(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
while True:
    c, addr = s.accept()
    print("connection from %s:%d" % addr, flush=True)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// argv: dst port bytes marker timeout_secs. Sends `bytes` bytes of `marker` repeated to an
/// echo server while reading the echo, and prints a JSON report (also when it fails).
pub const TCP_CLIENT: &str = r#"
import json, socket, sys, threading
dst, port, n, marker, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
data = (marker.encode() * (n // len(marker) + 1))[:n]
got = bytearray()
error = None
try:
    s = socket.create_connection((dst, port), timeout=timeout)
    s.settimeout(timeout)
    def send():
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send, daemon=True)
    t.start()
    while True:
        d = s.recv(65536)
        if not d:
            break
        got += d
    t.join(timeout)
except OSError as e:
    error = "%s: %s" % (type(e).__name__, e)
print(json.dumps({"sent": n, "received": len(got), "intact": bytes(got) == data, "error": error}), flush=True)
sys.exit(0 if error is None else 1)
"#;

/// What [`TCP_CLIENT`] reports.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct TcpReport {
    pub sent: u64,
    /// Bytes echoed back.
    pub received: u64,
    /// The echo equals what was sent.
    pub intact: bool,
    /// Why the exchange failed (connect timeout, reset, ...).
    pub error: Option<String>,
}

impl TcpReport {
    /// Everything sent came back unchanged.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.intact && self.received == self.sent
    }
}

/// What `ping` printed: packets sent and answered, and the TTL of each reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PingReport {
    pub transmitted: u64,
    pub received: u64,
    pub ttls: Vec<u8>,
}

/// Parses iputils `ping` output ("N packets transmitted, M received", "ttl=63").
pub fn parse_ping(stdout: &str) -> Result<PingReport> {
    let summary = stdout
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| format!("no ping summary in: {stdout:?}"))?;
    let number_before = |word: &str| -> Result<u64> {
        let words: Vec<&str> = summary.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| w.trim_end_matches(',') == word)
            .with_context(|| format!("ping summary {summary:?} lacks {word:?}"))?;
        at.checked_sub(1)
            .and_then(|i| words[i].parse().ok())
            .with_context(|| format!("ping summary {summary:?}: no count before {word:?}"))
    };
    let ttls = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("ttl=")))
        .map(|t| t.parse().with_context(|| format!("bad ttl {t:?}")))
        .collect::<Result<_>>()?;
    Ok(PingReport {
        transmitted: number_before("packets")?,
        received: number_before("received")?,
        ttls,
    })
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct SenderReport {
    pub sent: u64,
    /// Sends the local stack refused (ENOBUFS) and that were retried.
    pub retries: u64,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ReceiverReport {
    /// Datagrams received, duplicates included.
    pub received: u64,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Highest sequence number seen, plus one.
    pub top: u64,
    /// The first few sequence numbers below `top` that never arrived.
    pub missing: Vec<u64>,
}

/// The report is the last line of the script's stdout.
pub fn parse_report<T: for<'de> Deserialize<'de>>(stdout: &str) -> Result<T> {
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("no JSON report in the traffic tool's output: {stdout:?}"))?;
    serde_json::from_str(last).with_context(|| format!("bad traffic report {last:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_parses_into_counts_and_ttls() {
        let out = "PING 10.0.2.11 (10.0.2.11) 56(84) bytes of data.\n\
                   64 bytes from 10.0.2.11: icmp_seq=1 ttl=63 time=0.1 ms\n\
                   64 bytes from 10.0.2.11: icmp_seq=2 ttl=63 time=0.1 ms\n\n\
                   --- 10.0.2.11 ping statistics ---\n\
                   3 packets transmitted, 2 received, 33% packet loss, time 2003ms\n";
        let r = parse_ping(out).unwrap();
        assert_eq!((r.transmitted, r.received), (3, 2));
        assert_eq!(r.ttls, [63, 63]);
        let lost =
            parse_ping("2 packets transmitted, 0 received, +2 errors, 100% packet loss\n").unwrap();
        assert_eq!(
            (lost.transmitted, lost.received, lost.ttls.len()),
            (2, 0, 0)
        );
        assert!(parse_ping("ping: connect: Network is unreachable").is_err());
    }

    #[test]
    fn tcp_reports_parse_and_judge_the_echo() {
        let ok: TcpReport =
            parse_report(r#"{"sent": 10, "received": 10, "intact": true, "error": null}"#).unwrap();
        assert!(ok.ok());
        let failed: TcpReport = parse_report(
            r#"{"sent": 10, "received": 0, "intact": false, "error": "TimeoutError: timed out"}"#,
        )
        .unwrap();
        assert!(!failed.ok());
        assert_eq!(failed.error.as_deref(), Some("TimeoutError: timed out"));
    }

    #[test]
    fn reports_parse_from_the_last_json_line() {
        let s: SenderReport =
            parse_report("sending\n{\"sent\": 10, \"retries\": 1, \"secs\": 0.5}\n").unwrap();
        assert_eq!(
            s,
            SenderReport {
                sent: 10,
                retries: 1
            }
        );
        let r: ReceiverReport = parse_report(
            "listening\n{\"received\": 9, \"unique\": 9, \"top\": 10, \"missing\": [4]}\n",
        )
        .unwrap();
        assert_eq!(r.missing, [4]);
        assert!(parse_report::<SenderReport>("sending\n").is_err());
    }
}
