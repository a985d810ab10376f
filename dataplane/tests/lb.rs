//! Tier 3: the load balancer with real HTTP servers on backend VMs on both hosts of the
//! default lab (`lab/default.yaml`) and real clients, everything set through the
//! controller's REST API on the running lab. Backends: a2 (h1, the client a1's host, so
//! balanced packets are delivered locally) and a3, a4 (h2: encapsulated, and their replies
//! translated back after decapsulation).
mod support;

use std::{
    collections::BTreeMap,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use sluice_common::stats::Reason;
use sluice_dataplane::{
    client::Method,
    lab::{
        internet::{INTERNET, PUBLIC_SERVER},
        process::LabProcess,
        topology::{default_lab_path, load_topology},
        Lab, TopologyLab,
    },
};

const SLUICED: &str = env!("CARGO_BIN_EXE_sluiced");
const VIP: &str = "10.0.1.100";
const HTTP_PORT: u16 = 8080;

/// A keep-alive HTTP/1.1 server answering every GET with `<name> <client ip> <client
/// port>`: what it saw. argv: port name.
const SERVER: &str = r#"
import http.server, socketserver, sys
port, name = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("%s %s %d" % (name, self.client_address[0], self.client_address[1])).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
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

/// `count` GETs, each on a new connection. argv: host port count. One line per request:
/// the server's answer, or `ERR <why>`.
const MANY: &str = r#"
import http.client, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    c = http.client.HTTPConnection(host, port, timeout=2)
    try:
        c.request("GET", "/")
        print(c.getresponse().read().decode(), flush=True)
    except Exception as e:
        print("ERR", repr(e), flush=True)
    finally:
        c.close()
"#;

/// GETs on ONE connection every `interval` s for `seconds`. argv: host port interval
/// seconds. One line per request, like [`MANY`]; stops at the first error.
const HOLD: &str = r#"
import http.client, sys, time
host, port, interval, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
c = http.client.HTTPConnection(host, port, timeout=2)
end = time.time() + seconds
while time.time() < end:
    try:
        c.request("GET", "/")
        print(c.getresponse().read().decode(), flush=True)
    except Exception as e:
        print("ERR", repr(e), flush=True)
        break
    time.sleep(interval)
"#;

fn lab_of(lab: &Lab) -> TopologyLab<'_> {
    let topology = load_topology(&default_lab_path()).expect("lab/default.yaml");
    TopologyLab::build(lab, topology, Path::new(SLUICED)).expect("building the lab")
}

fn server<'l>(lab: &'l Lab, vm: &str) -> LabProcess<'l> {
    let mut p = lab
        .spawn(vm, &["python3", "-c", SERVER, &HTTP_PORT.to_string(), vm])
        .expect("HTTP server");
    p.wait_for_stdout(Duration::from_secs(20), |s| s.contains("listening"))
        .expect("HTTP server listening");
    p
}

/// The server (first word) of each answer line; errors as `ERR`.
fn servers(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

/// `count` new connections from `vm` to `VIP:port`; the server of each.
fn many(lab: &Lab, vm: &str, port: u16, count: usize) -> Vec<String> {
    servers(&many_to(lab, vm, VIP, port, count))
}

/// `count` new connections from `vm` to `host:port`; each answer line.
fn many_to(lab: &Lab, vm: &str, host: &str, port: u16, count: usize) -> String {
    let (port, n) = (port.to_string(), count.to_string());
    let done = lab
        .spawn(vm, &["python3", "-c", MANY, host, &port, &n])
        .expect("client")
        .wait(Duration::from_secs(10 + count as u64))
        .expect("client ran");
    assert_eq!(done.stdout.lines().count(), count, "{vm}: {}", done.stderr);
    done.stdout
}

/// Sets the weight of `victim`'s backend in the first listener of `web` to 0 (drain).
fn drain(t: &mut TopologyLab, victim: &str) {
    let lb: Value = t.get("/v1/load-balancers/web").unwrap().json().unwrap();
    let listener = &lb["listeners"][0];
    let nic = nic_id(t, victim);
    let backend = listener["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["nic"] == nic.as_str())
        .expect("the held connection's backend")
        .clone();
    support::change(
        t,
        Method::PATCH,
        &format!(
            "/v1/load-balancers/web/listeners/{}/backends/{}",
            listener["id"].as_str().unwrap(),
            backend["id"].as_str().unwrap()
        ),
        json!({"weight": 0}),
    );
}

fn tally(servers: &[String]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for s in servers {
        *t.entry(s.clone()).or_default() += 1;
    }
    t
}

/// A keep-alive client from `vm` to `VIP:port` for `seconds`, one GET every 0.2 s.
fn hold<'l>(lab: &'l Lab, vm: &str, port: u16, seconds: u64) -> LabProcess<'l> {
    hold_to(lab, vm, VIP, port, seconds)
}

/// [`hold`] to `host:port`.
fn hold_to<'l>(lab: &'l Lab, vm: &str, host: &str, port: u16, seconds: u64) -> LabProcess<'l> {
    let (port, secs) = (port.to_string(), seconds.to_string());
    let mut p = lab
        .spawn(vm, &["python3", "-c", HOLD, host, &port, "0.2", &secs])
        .expect("keep-alive client");
    p.wait_for_stdout(Duration::from_secs(10), |s| !s.is_empty())
        .expect("first answer on the held connection");
    p
}

/// The held connection's answers: one server throughout, no error.
fn held_by(p: LabProcess<'_>, seconds: u64) -> (String, usize) {
    let done = p
        .wait(Duration::from_secs(seconds + 10))
        .expect("keep-alive client ended");
    let s = servers(&done.stdout);
    assert!(!s.is_empty(), "no answers: {}", done.stderr);
    assert!(
        s.iter().all(|x| x == &s[0]),
        "the held connection moved or broke: {:?}",
        tally(&s)
    );
    (s[0].clone(), s.len())
}

/// The health-check interval of tests that measure shares, not health.
const STEADY_CHECK_MS: u64 = 5000;

fn health_check(interval_ms: u64) -> Value {
    json!({"type": "http", "path": "/health", "expected_status": [200],
           "interval_ms": interval_ms, "timeout_ms": interval_ms / 2,
           "healthy_threshold": 2, "unhealthy_threshold": 2})
}

fn backends(weights: &[(&str, u64)]) -> Value {
    weights
        .iter()
        .map(|(nic, w)| json!({"nic": nic, "port": HTTP_PORT, "weight": w}))
        .collect()
}

/// Every backend of `lb` reported `health` by every host's checks, waited for.
fn wait_health(t: &TopologyLab, lb: &str, want: &[(&str, &str)], within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let status: Value = t
            .get(&format!("/v1/load-balancers/{lb}/status"))
            .expect("status")
            .json()
            .expect("status JSON");
        let ok = want.iter().all(|(ip, health)| {
            status["listeners"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|l| {
                    l["backends"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|b| b["ip"] == *ip)
                        .all(|b| b["health"] == *health)
                })
        });
        if ok {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "backends of {lb} never became {want:?}: {status:#}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn weights_affinity_isolation_and_drain_through_a_vip() {
    if !support::privileged("lb::weights") {
        return;
    }
    let _serial = support::one_lab_at_a_time();
    let lab = Lab::new().expect("lab");
    let mut t = lab_of(&lab);
    let _servers: Vec<_> = ["a2", "a3", "a4", "b1"]
        .into_iter()
        .map(|vm| server(&lab, vm))
        .collect();

    let weights = [("a2", 100), ("a3", 100), ("a4", 50)];
    support::change(
        &mut t,
        Method::POST,
        "/v1/load-balancers",
        json!({"name": "web", "vpc": "tenant-a", "subnet": "web", "vip": VIP,
               "listeners": [
                   {"protocol": "tcp", "port": 80, "scheduler": "maglev",
                    "health_check": health_check(STEADY_CHECK_MS), "backends": backends(&weights)},
                   {"protocol": "tcp", "port": 81, "scheduler": "source_ip",
                    "health_check": health_check(STEADY_CHECK_MS), "backends": backends(&weights)}]}),
    );
    // Tenant b: the same VIP address, its own pool.
    support::change(
        &mut t,
        Method::POST,
        "/v1/load-balancers",
        json!({"name": "web-b", "vpc": "tenant-b", "subnet": "web", "vip": VIP,
               "listeners": [{"protocol": "tcp", "port": 80,
                              "backends": [{"nic": "b1", "port": HTTP_PORT, "weight": 10}]}]}),
    );

    // (A slow check interval: 400 quick connections keep the servers busy, and a probe that
    // times out twice would take a backend out mid-count and skew the shares.)
    // Distribution follows the weights (40/40/20 %) within 10 points over 400 connections
    // (4 standard deviations of a fair draw: a random source port per connection).
    let seen = tally(&many(&lab, "a1", 80, 400));
    // Shown on failure: whether a backend's health changed during the count.
    let status: Value = t
        .get("/v1/load-balancers/web/status")
        .and_then(|r| r.json())
        .unwrap_or_default();
    for (vm, w) in weights {
        let share = *seen.get(vm).unwrap_or(&0) as f64 / 400.0;
        let want = w as f64 / 250.0;
        assert!(
            (share - want).abs() <= 0.10,
            "{vm}: share {share:.2}, weight share {want:.2}: {seen:?}; status {status:#}"
        );
    }
    assert_eq!(seen.values().sum::<usize>(), 400, "errors: {seen:?}");

    // Isolation: tenant b's client at the same VIP reaches only tenant b's pool.
    let seen_b = tally(&many(&lab, "b2", 80, 20));
    assert_eq!(seen_b.get("b1"), Some(&20), "{seen_b:?}");

    // Source affinity: every connection of one client reaches one backend.
    for client in ["a1", "a4"] {
        let seen = tally(&many(&lab, client, 81, 30));
        assert_eq!(seen.len(), 1, "{client} spread over {seen:?}");
        assert!(!seen.contains_key("ERR"), "{client}: {seen:?}");
    }

    // Drain: an open connection to the drained backend keeps working, new ones go elsewhere.
    let held = hold(&lab, "a1", 80, 6);
    let first = held.stdout();
    let victim = servers(&first)[0].clone();
    drain(&mut t, &victim);
    let after = tally(&many(&lab, "a1", 80, 60));
    assert!(
        !after.contains_key(&victim) && !after.contains_key("ERR"),
        "new connections still reach drained {victim}: {after:?}"
    );
    let (server, answers) = held_by(held, 6);
    assert_eq!(server, victim);
    assert!(answers >= 10, "{answers} answers in 6 s");
}

/// The NIC ID of the lab VM `vm` (NICs are named like their VMs).
fn nic_id(t: &TopologyLab, vm: &str) -> String {
    let n: Value = t.get(&format!("/v1/nics/{vm}")).unwrap().json().unwrap();
    n["id"].as_str().unwrap().to_string()
}

#[test]
fn health_checks_isolate_a_killed_backend_and_bring_it_back() {
    if !support::privileged("lb::health") {
        return;
    }
    let _serial = support::one_lab_at_a_time();
    let lab = Lab::new().expect("lab");
    let mut t = lab_of(&lab);
    let mut servers_by_vm: BTreeMap<&str, LabProcess> = ["a2", "a3", "a4"]
        .into_iter()
        .map(|vm| (vm, server(&lab, vm)))
        .collect();
    support::change(
        &mut t,
        Method::POST,
        "/v1/load-balancers",
        json!({"name": "web", "vpc": "tenant-a", "subnet": "web", "vip": VIP,
               "listeners": [{"protocol": "tcp", "port": 80, "scheduler": "maglev",
                              "health_check": health_check(1000),
                              "backends": backends(&[("a2", 100), ("a3", 100), ("a4", 100)])}]}),
    );
    // The checks come through tenant a's own path from 100.64.0.0/10: its default group
    // admits only members, so this also proves the system rule.
    let all_healthy = [
        ("10.0.1.11", "healthy"),
        ("10.0.2.10", "healthy"),
        ("10.0.1.12", "healthy"),
    ];
    wait_health(&t, "web", &all_healthy, Duration::from_secs(15));

    // A connection held to some backend while another one dies.
    let held = hold(&lab, "a1", 80, 12);
    let first = held.stdout();
    let keep = servers(&first)[0].clone();
    // Never a4: it is the client checked after h2's restart below.
    let victim = ["a2", "a3"].into_iter().find(|v| *v != keep).unwrap();
    let victim_ip = match victim {
        "a2" => "10.0.1.11",
        "a3" => "10.0.2.10",
        _ => "10.0.1.12",
    };
    drop(servers_by_vm.remove(victim));
    let killed = Instant::now();
    // interval x unhealthy threshold + one interval.
    wait_health(
        &t,
        "web",
        &[(victim_ip, "unhealthy")],
        Duration::from_secs(3) + Duration::from_millis(500),
    );
    eprintln!(
        "{victim} marked unhealthy {:?} after its server died",
        killed.elapsed()
    );
    let seen = tally(&many(&lab, "a1", 80, 40));
    assert!(
        !seen.contains_key(victim) && !seen.contains_key("ERR"),
        "new connections still reach dead {victim}: {seen:?}"
    );
    // A restarted agent (h2) keeps the dead backend out from its first apply: its new
    // checks start from what the maps held, not from "unknown".
    // a4 is a client and one of the two live backends: all its connections go to the
    // other (never to itself: its own packets would not leave the VM to come back as the
    // VIP's).
    let live = ["a2", "a3"].into_iter().find(|v| *v != victim).unwrap();
    let seen = tally(&many(&lab, "a4", 80, 30));
    assert_eq!(seen, BTreeMap::from([(live.to_string(), 30)]), "from a4");
    t.host_mut("h2")
        .expect("h2")
        .daemon
        .restart()
        .expect("restarting h2's sluiced");
    let seen = tally(&many(&lab, "a4", 80, 30));
    assert_eq!(
        seen,
        BTreeMap::from([(live.to_string(), 30)]),
        "after h2's restart, from a4"
    );
    // The open connection to a live backend never broke, restart included.
    let (server_held, _) = held_by(held, 12);
    assert_eq!(server_held, keep);

    // Recovery: the backend comes back after the healthy threshold.
    servers_by_vm.insert(victim, server(&lab, victim));
    wait_health(&t, "web", &[(victim_ip, "healthy")], Duration::from_secs(5));
    let seen = tally(&many(&lab, "a1", 80, 60));
    assert!(
        seen.contains_key(victim),
        "{victim} never came back: {seen:?}"
    );
}

#[test]
fn internet_clients_reach_the_pool_through_an_eip_and_dnat() {
    if !support::privileged("lb::internet") {
        return;
    }
    let _serial = support::one_lab_at_a_time();
    let lab = Lab::new().expect("lab");
    let mut t = lab_of(&lab);
    let _servers: Vec<_> = ["a2", "a3", "a4"]
        .into_iter()
        .map(|vm| server(&lab, vm))
        .collect();
    support::change(
        &mut t,
        Method::POST,
        "/v1/load-balancers",
        json!({"name": "web", "vpc": "tenant-a", "subnet": "web", "vip": VIP,
               "listeners": [{"protocol": "tcp", "port": 80, "scheduler": "maglev",
                              "health_check": health_check(1000),
                              "backends": backends(&[("a2", 100), ("a3", 100), ("a4", 100)])}]}),
    );
    // A NAT gateway: SNAT for the VPC (its default route carries the replies out), and
    // DNAT of EIP `web` tcp 80 to the VIP's listener.
    support::change(
        &mut t,
        Method::POST,
        "/v1/eip-pools",
        json!({"name": "public", "cidrs": ["203.0.113.0/24"]}),
    );
    let mut address = BTreeMap::new();
    for name in ["snat-a", "web"] {
        let e = support::change(
            &mut t,
            Method::POST,
            "/v1/eips",
            json!({"name": name, "pool": "public"}),
        );
        address.insert(name, e["address"].as_str().unwrap().to_string());
    }
    support::change(
        &mut t,
        Method::POST,
        "/v1/nat-gateways",
        json!({"name": "gw-a", "vpc": "tenant-a", "subnet": "web", "eips": ["snat-a", "web"],
               "snat": [{"cidr": "10.0.0.0/16", "eips": ["snat-a"]}],
               "dnat": [{"eip": "web", "protocol": "tcp", "public_port": 80,
                         "private_ip": VIP, "private_port": 80}]}),
    );
    support::change(
        &mut t,
        Method::POST,
        "/v1/routes",
        json!({"vpc": "tenant-a", "destination": "0.0.0.0/0",
               "next_hop": {"type": "nat_gateway", "nat_gateway": "gw-a"}}),
    );
    support::change(
        &mut t,
        Method::POST,
        "/v1/security-groups/default/rules?vpc=tenant-a",
        json!({"direction": "ingress", "protocol": "tcp", "ports": HTTP_PORT.to_string(),
               "cidr": "0.0.0.0/0", "action": "allow", "priority": 10}),
    );

    // The fabric spreads the Internet's flows over both hosts; each reaches the pool (a
    // host without the chosen backend hands the packet to the backend's host), and every
    // backend sees the real client.
    let before = t.stats().expect("stats");
    let answers = many_to(&lab, INTERNET, &address["web"], 80, 60);
    let mut seen = BTreeMap::new();
    for line in answers.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(words.len() == 3 && words[0] != "ERR", "{line}: {answers}");
        assert_eq!(words[1], PUBLIC_SERVER, "the backend saw {line}");
        *seen.entry(words[0].to_string()).or_insert(0) += 1;
    }
    assert!(
        seen.len() >= 2,
        "one backend took every connection: {seen:?}"
    );
    eprintln!("Internet -> EIP -> VIP: {seen:?}");
    let after = t.stats().expect("stats");
    let moved = |r: Reason| -> u64 {
        after
            .iter()
            .map(|(h, s)| s.get(r).packets - before.get(h).map_or(0, |b| b.get(r).packets))
            .sum()
    };
    assert!(
        moved(Reason::FwdNatIn) >= 60,
        "translated: {}",
        moved(Reason::FwdNatIn)
    );
    assert!(
        moved(Reason::FwdNatOwner) >= 1,
        "no flow was handed to its backend's host"
    );

    // Drain the backend of a held Internet connection: the connection stays (pinned at
    // the host that received it and at the backend's host), new ones go elsewhere.
    let held = hold_to(&lab, INTERNET, &address["web"], 80, 6);
    let victim = servers(&held.stdout())[0].clone();
    drain(&mut t, &victim);
    let after = tally(&servers(&many_to(&lab, INTERNET, &address["web"], 80, 30)));
    assert!(
        !after.contains_key(&victim) && !after.contains_key("ERR"),
        "new Internet connections still reach drained {victim}: {after:?}"
    );
    let (server, answers) = held_by(held, 6);
    assert_eq!(server, victim);
    assert!(answers >= 10, "{answers} answers in 6 s");
}
