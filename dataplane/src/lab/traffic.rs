//! Real traffic for labs: a paced UDP sender and a counting UDP receiver (python3, run
//! inside a namespace), carrying 8-byte sequence numbers so losses are countable.

use anyhow::{Context, Result};
use serde::Deserialize;

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
