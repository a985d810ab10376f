//! Tier 3: security groups and the connection table with real TCP, UDP and ICMP, set
//! through the controller's REST API on the default lab (`lab/default.yaml`: hosts h1 and
//! h2; tenant-a's a1 and a2 on h1, a3 and a4 on h2).
//!
//! Every change is waited for by generation (each agent's `/v1/status`), never by
//! sleeping. The server VM a3 leaves the VPC's default group for groups of its own, so
//! what reaches it is exactly what its rules allow, and its replies reach the clients
//! (which stay in the default group, where a3 no longer is) only by the connection table.
mod support;

use std::{path::Path, time::Duration};

use serde_json::{json, Value};
use sluice_common::stats::Reason;
use sluice_dataplane::{
    client::Method,
    conntrack::monotonic_ns,
    intent::{Nic, SecurityGroup},
    lab::{
        topology::{default_lab_path, load_topology},
        Lab, LabProcess, TcpReport, TopologyLab,
    },
    stats::StatsSnapshot,
};

const SLUICED: &str = env!("CARGO_BIN_EXE_sluiced");
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// For exchanges that must fail: how long the client tries.
const FAIL_TIMEOUT: Duration = Duration::from_secs(2);
const STARTUP: Duration = Duration::from_secs(20);

fn default_lab(lab: &Lab) -> TopologyLab<'_> {
    let topology = load_topology(&default_lab_path()).expect("lab/default.yaml");
    TopologyLab::build(lab, topology, Path::new(SLUICED)).expect("building the default lab")
}

fn group(t: &mut TopologyLab, name: &str, rules: Value) -> SecurityGroup {
    let g = support::change(
        t,
        Method::POST,
        "/v1/security-groups",
        json!({"vpc": "tenant-a", "name": name, "rules": rules}),
    );
    serde_json::from_value(g).expect("a security group")
}

fn set_groups(t: &mut TopologyLab, nic: &str, groups: &[&str]) -> Nic {
    let n = support::change(
        t,
        Method::PATCH,
        &format!("/v1/nics/{nic}"),
        json!({ "security_groups": groups }),
    );
    serde_json::from_value(n).expect("a NIC")
}

fn allow_in(protocol: &str, ports: Option<&str>, remote: Value, priority: u32) -> Value {
    let mut r = json!({"direction": "ingress", "protocol": protocol, "action": "allow",
        "priority": priority});
    if let Some(p) = ports {
        r["ports"] = json!(p);
    }
    for (k, v) in remote.as_object().expect("cidr or group") {
        r[k] = v.clone();
    }
    r
}

fn tcp(t: &TopologyLab, from: &str, to: &str, port: u16, timeout: Duration) -> TcpReport {
    let dst = t.vm(to).ip();
    t.lab()
        .tcp_exchange(from, &dst, port, 50_000, "sluice-sg-bytes|", timeout)
        .unwrap_or_else(|e| panic!("tcp {from} -> {to}:{port}: {e:#}"))
}

fn assert_tcp(t: &TopologyLab, from: &str, to: &str, port: u16, allowed: bool, what: &str) {
    let r = tcp(
        t,
        from,
        to,
        port,
        if allowed { TCP_TIMEOUT } else { FAIL_TIMEOUT },
    );
    println!("{what}: {from} -> {to}:{port}: {r:?}");
    if allowed {
        assert!(r.ok(), "{what}: {from} -> {to}:{port} must work: {r:?}");
    } else {
        assert!(
            r.error.is_some() && r.received == 0,
            "{what}: {from} -> {to}:{port} must not connect: {r:?}"
        );
    }
}

fn pings(t: &TopologyLab, from: &str, to: &str) -> u64 {
    let r = t
        .lab()
        .ping(from, &t.vm(to).ip(), 3, &[])
        .unwrap_or_else(|e| panic!("ping {from} -> {to}: {e:#}"));
    println!("ping {from} -> {to}: {r:?}");
    r.received
}

fn echo_server<'lab>(t: &TopologyLab<'lab>, vm: &str, port: u16) -> LabProcess<'lab> {
    t.lab()
        .tcp_echo_server(vm, port)
        .unwrap_or_else(|e| panic!("echo server in {vm}: {e:#}"))
}

/// argv: port. Echoes every datagram to its sender; prints "listening" once bound.
const UDP_ECHO_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
while True:
    d, a = s.recvfrom(65535)
    s.sendto(d, a)
"#;

/// argv: dst port count. Sends `count` numbered datagrams from one socket, 100 ms apart,
/// and prints how many came back.
const UDP_REQUESTS: &str = r#"
import json, socket, sys, time
dst, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.1)
seen = set()
for i in range(count):
    s.sendto(b"%d" % i, (dst, port))
    end = time.monotonic() + 0.1
    while time.monotonic() < end:
        try:
            seen.add(int(s.recv(100)))
        except (socket.timeout, ValueError):
            pass
print(json.dumps({"sent": count, "answered": len(seen)}), flush=True)
"#;

fn udp_server<'lab>(t: &TopologyLab<'lab>, vm: &str, port: u16) -> LabProcess<'lab> {
    let mut p = t
        .lab()
        .spawn(vm, &["python3", "-c", UDP_ECHO_SERVER, &port.to_string()])
        .expect("udp echo server");
    p.wait_for_stdout(STARTUP, |s| s.contains("listening"))
        .expect("udp echo server listening");
    p
}

/// Datagrams answered out of 5 sent from `from` to `to:port`.
fn udp_answered(t: &TopologyLab, from: &str, to: &str, port: u16) -> u64 {
    let dst = t.vm(to).ip();
    let done = t
        .lab()
        .spawn(
            from,
            &["python3", "-c", UDP_REQUESTS, &dst, &port.to_string(), "5"],
        )
        .expect("udp requests")
        .wait(STARTUP)
        .expect("udp requests finish");
    let last = done.stdout.lines().last().unwrap_or_default().to_string();
    let v: Value = serde_json::from_str(&last)
        .unwrap_or_else(|e| panic!("udp report {last:?}: {e}; stderr {}", done.stderr));
    println!("udp {from} -> {to}:{port}: {v}");
    v["answered"].as_u64().expect("answered")
}

/// argv: dst port interval_secs. One TCP connection to an echo server: sends a numbered
/// line every interval, prints "echo <n> <CLOCK_MONOTONIC ns>" for each line echoed back,
/// until killed or the connection fails.
const STREAM_CLIENT: &str = r#"
import socket, sys, threading, time
dst, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((dst, port), timeout=5)
s.settimeout(None)
print("connected", flush=True)
def read():
    buf = b""
    while True:
        d = s.recv(4096)
        if not d:
            print("closed", flush=True)
            return
        buf += d
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            print("echo %s %d" % (line.decode(), time.clock_gettime_ns(time.CLOCK_MONOTONIC)), flush=True)
threading.Thread(target=read, daemon=True).start()
n = 0
while True:
    s.sendall(b"%d\n" % n)
    n += 1
    time.sleep(interval)
"#;

/// The CLOCK_MONOTONIC times of the echoes a stream client saw.
fn echo_times(p: &LabProcess) -> Vec<u64> {
    p.stdout()
        .lines()
        .filter_map(|l| l.strip_prefix("echo "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

fn stream<'lab>(t: &TopologyLab<'lab>, from: &str, to: &str, port: u16) -> LabProcess<'lab> {
    let dst = t.vm(to).ip();
    let mut p = t
        .lab()
        .spawn(
            from,
            &[
                "python3",
                "-c",
                STREAM_CLIENT,
                &dst,
                &port.to_string(),
                "0.05",
            ],
        )
        .expect("stream client");
    p.wait_for_stdout(STARTUP, |s| {
        s.lines().filter(|l| l.starts_with("echo ")).count() >= 3
    })
    .unwrap_or_else(|e| panic!("stream {from} -> {to}:{port} flowing: {e:#}"));
    p
}

type Stats = std::collections::BTreeMap<String, StatsSnapshot>;

fn stats(t: &TopologyLab) -> Stats {
    t.stats().expect("daemon stats")
}

fn moved(t: &TopologyLab, before: &Stats, host: &str, r: Reason) -> u64 {
    stats(t)[host].since(&before[host]).get(r).packets
}

// ---- tests ----

/// Allowed and denied ports (TCP, UDP, ICMP) on one host and across hosts; replies allowed
/// by state alone; two groups on one NIC combined by priority (a deny in one beats an
/// allow in the other); a remote-group rule; an egress deny; the operator blocklist.
#[test]
fn ports_replies_groups_and_the_blocklist() {
    if !support::privileged("ports_replies_groups_and_the_blocklist") {
        return;
    }
    let _serial = support::one_lab_at_a_time();
    let lab = Lab::new().expect("lab");
    let mut t = default_lab(&lab);
    let a1 = t.vm("a1").ip();
    let a2 = t.vm("a2").ip();

    // Before any change: the default group lets the VPC's VMs reach each other.
    let _open = echo_server(&t, "a3", 9090);
    assert_tcp(&t, "a1", "a3", 9090, true, "default group");

    let web = group(
        &mut t,
        "web",
        json!([
            allow_in("tcp", Some("8080"), json!({"cidr": "10.0.0.0/16"}), 100),
            allow_in("udp", Some("5353"), json!({"cidr": "10.0.0.0/16"}), 100),
        ]),
    );
    let admin = group(&mut t, "admin", json!([]));
    let ops = group(
        &mut t,
        "ops",
        json!([
            allow_in("tcp", Some("2222"), json!({"group": "admin"}), 100),
            {"direction": "ingress", "protocol": "icmp", "icmp_type": 8,
             "cidr": format!("{a1}/32"), "action": "allow", "priority": 100},
            {"direction": "ingress", "protocol": "tcp", "ports": "8080",
             "cidr": format!("{a2}/32"), "action": "deny", "priority": 10},
        ]),
    );
    let a3 = set_groups(&mut t, "a3", &["web", "ops"]);
    assert_eq!(a3.security_groups, [web.id.clone(), ops.id.clone()]);
    set_groups(&mut t, "a1", &["default", "admin"]);
    assert_eq!(admin.rules.len(), 0);

    // (9090 is still served by `_open`.)
    let _servers = [8080, 2222].map(|p| echo_server(&t, "a3", p));
    let _udp = [5353, 5454].map(|p| udp_server(&t, "a3", p));
    let before = stats(&t);

    // TCP: the allowed port from the other host and from a3's own host; replies come
    // back to a1/a4 although a3 is not in their default group (state, no rule).
    assert_tcp(&t, "a1", "a3", 8080, true, "allowed port, across hosts");
    assert_tcp(&t, "a4", "a3", 8080, true, "allowed port, same host");
    assert_tcp(&t, "a1", "a3", 9090, false, "no rule: ingress denied");
    // ops denies a2 on 8080 at priority 10; web's allow (100) comes later.
    assert_tcp(
        &t,
        "a2",
        "a3",
        8080,
        false,
        "deny in another group wins by priority",
    );
    // Remote group: only members of admin (a1, on the other host).
    assert_tcp(&t, "a1", "a3", 2222, true, "remote group member");
    assert_tcp(&t, "a2", "a3", 2222, false, "not a remote group member");
    // UDP: requests allowed on 5353 and answered by state; nothing on 5454.
    assert_eq!(udp_answered(&t, "a1", "a3", 5353), 5, "udp allowed port");
    assert_eq!(udp_answered(&t, "a1", "a3", 5454), 0, "udp, no rule");
    // ICMP echo: from a1 only.
    assert_eq!(pings(&t, "a1", "a3"), 3, "icmp allowed from a1");
    assert_eq!(pings(&t, "a2", "a3"), 0, "icmp not allowed from a2");
    let ingress_drops = moved(&t, &before, "h2", Reason::DropSgIngress);
    println!("h2 drop_sg_ingress: {ingress_drops}");
    assert!(
        ingress_drops > 0,
        "denied first packets are counted on a3's host"
    );

    // Egress: admin now denies a1's TCP to port 7100 anywhere; a4 still reaches a1's
    // peers there through the default group.
    let _a4_server = echo_server(&t, "a4", 7100);
    assert_tcp(&t, "a1", "a4", 7100, true, "egress allowed by default");
    support::change(
        &mut t,
        Method::POST,
        "/v1/security-groups/admin/rules?vpc=tenant-a",
        json!({"direction": "egress", "protocol": "tcp", "ports": "7100",
               "cidr": "0.0.0.0/0", "action": "deny", "priority": 1}),
    );
    let before = stats(&t);
    assert_tcp(&t, "a1", "a4", 7100, false, "egress denied");
    assert_tcp(
        &t,
        "a2",
        "a4",
        7100,
        true,
        "another NIC's egress unaffected",
    );
    assert!(moved(&t, &before, "h1", Reason::DropSgEgress) > 0);

    // The blocklist drops a source before any policy, on every host, and counts it.
    support::change(
        &mut t,
        Method::POST,
        "/v1/blocklist",
        json!({"prefix": format!("{a2}/32"), "applies_to": "source"}),
    );
    let before = stats(&t);
    assert_tcp(&t, "a2", "a4", 7100, false, "blocked source");
    assert!(moved(&t, &before, "h1", Reason::DropBlocklistSrc) > 0);
    support::change(
        &mut t,
        Method::DELETE,
        &format!("/v1/blocklist/{a2}%2F32"),
        Value::Null,
    );
    assert_tcp(&t, "a2", "a4", 7100, true, "unblocked");
}

/// Group-to-group rules follow membership across hosts; revoking an allow cuts an open
/// TCP connection by the time every agent has applied the change, while a connection on
/// a port still allowed goes on.
#[test]
fn membership_changes_and_revocation_of_open_connections() {
    if !support::privileged("membership_changes_and_revocation_of_open_connections") {
        return;
    }
    let _serial = support::one_lab_at_a_time();
    let lab = Lab::new().expect("lab");
    let mut t = default_lab(&lab);

    group(&mut t, "app", json!([]));
    let db = group(
        &mut t,
        "db",
        json!([
            allow_in("tcp", Some("5432"), json!({"group": "app"}), 100),
            allow_in("tcp", Some("6432"), json!({"group": "app"}), 100),
        ]),
    );
    set_groups(&mut t, "a3", &["db"]);
    let _servers = [5432, 6432].map(|p| echo_server(&t, "a3", p));

    // Membership: a1 (h1) and a4 (h2, a3's own host) are let in once they join app, and
    // out again once they leave.
    assert_tcp(&t, "a1", "a3", 5432, false, "not in app yet");
    set_groups(&mut t, "a1", &["default", "app"]);
    set_groups(&mut t, "a4", &["app"]);
    assert_tcp(&t, "a1", "a3", 5432, true, "a1 joined app (other host)");
    assert_tcp(&t, "a4", "a3", 5432, true, "a4 joined app (same host)");
    assert_tcp(&t, "a2", "a3", 5432, false, "a2 never joined");
    set_groups(&mut t, "a4", &["default"]);
    assert_tcp(&t, "a4", "a3", 5432, false, "a4 left app");

    // Two open connections from a1, one per allowed port.
    let revoked = stream(&t, "a1", "a3", 5432);
    let kept = stream(&t, "a1", "a3", 6432);
    let before = stats(&t);
    let rule = db
        .rules
        .iter()
        .find(|r| r.ports.map(|p| p.from) == Some(5432))
        .expect("the 5432 rule");
    let asked = monotonic_ns();
    support::change(
        &mut t,
        Method::DELETE,
        &format!("/v1/security-groups/db/rules/{}?vpc=tenant-a", rule.id),
        Value::Null,
    );
    let applied = monotonic_ns();
    // The kept connection goes on well past the change...
    let later = applied + 1_000_000_000;
    while echo_times(&kept).last().is_none_or(|t| *t < later) {
        assert!(
            monotonic_ns() < later + 10_000_000_000,
            "the connection on the port still allowed stopped: {}",
            kept.stdout()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...while the revoked one got no echo once every agent had applied it.
    let echoes = echo_times(&revoked);
    let last = *echoes.last().expect("echoes before the change");
    println!(
        "revoked connection: {} echoes, the last {:.0} ms after the API call; change applied \
         everywhere {:.0} ms after it",
        echoes.len(),
        (last as f64 - asked as f64) / 1e6,
        (applied - asked) as f64 / 1e6
    );
    assert!(
        last <= applied,
        "an echo came back {} ms after the revocation was applied",
        (last - applied) / 1_000_000
    );
    let revoked_drops = moved(&t, &before, "h2", Reason::DropSgRevoked);
    println!("h2 drop_sg_revoked: {revoked_drops}");
    assert!(
        revoked_drops > 0,
        "the revoked flow's packets are dropped and counted"
    );
    // A new connection on the revoked port is refused; the kept port still opens.
    assert_tcp(&t, "a1", "a3", 5432, false, "revoked port, new connection");
    assert_tcp(&t, "a1", "a3", 6432, true, "kept port, new connection");
}
