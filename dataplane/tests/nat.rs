//! Tier 3: the NAT gateway and elastic IPs with real HTTP, UDP and ICMP, on the default lab
//! (`lab/default.yaml`: tenants a and b with identical addresses on hosts h1 and h2) given
//! a border router and the lab's Internet (`lab::internet`: public server 198.51.100.10,
//! EIPs from 203.0.113.0/24). Everything NAT is set through the controller's REST API on
//! the running lab, so each step is also a change to running VMs.
mod support;

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use sluice_common::stats::Reason;
use sluice_dataplane::{
    client::Method,
    lab::{
        internet::{HttpReport, INTERNET, PUBLIC_SERVER},
        topology::{default_lab_path, load_topology},
        Lab, TopologyLab,
    },
    stats::StatsSnapshot,
};

const SLUICED: &str = env!("CARGO_BIN_EXE_sluiced");
const TIMEOUT: Duration = Duration::from_secs(5);
/// For requests that must fail.
const FAIL_TIMEOUT: Duration = Duration::from_secs(2);
const BORDER: &str = "172.31.0.254";
const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const VMS: [&str; 8] = ["a1", "a2", "a3", "a4", "b1", "b2", "b3", "b4"];

/// The default lab with a border router: its hosts send Internet traffic there.
fn internet_lab(lab: &Lab) -> TopologyLab<'_> {
    let mut topology = load_topology(&default_lab_path()).expect("lab/default.yaml");
    for h in &mut topology.hosts {
        h.public_gateway = Some(BORDER.into());
    }
    TopologyLab::build(lab, topology, Path::new(SLUICED)).expect("building the lab")
}

/// An EIP from the lab's pool (created on first use); returns its address.
fn eip(t: &mut TopologyLab, name: &str) -> String {
    if t.get("/v1/eip-pools/public").is_err() {
        support::change(
            t,
            Method::POST,
            "/v1/eip-pools",
            json!({"name": "public", "cidrs": ["203.0.113.0/24"]}),
        );
    }
    let e = support::change(
        t,
        Method::POST,
        "/v1/eips",
        json!({"name": name, "pool": "public"}),
    );
    e["address"].as_str().expect("an EIP address").to_string()
}

/// Tenant `tenant`'s NAT gateway `gw-<x>` with SNAT EIP `snat-<x>` for the whole VPC and
/// the default route to it; returns the SNAT EIP.
fn snat_gateway(t: &mut TopologyLab, tenant: &str) -> String {
    let x = tenant.trim_start_matches("tenant-");
    let (gw, name) = (format!("gw-{x}"), format!("snat-{x}"));
    let address = eip(t, &name);
    support::change(
        t,
        Method::POST,
        "/v1/nat-gateways",
        json!({"name": gw, "vpc": tenant, "subnet": "web", "eips": [name],
               "snat": [{"cidr": "10.0.0.0/16", "eips": [name]}]}),
    );
    support::change(
        t,
        Method::POST,
        "/v1/routes",
        json!({"vpc": tenant, "destination": "0.0.0.0/0",
               "next_hop": {"type": "nat_gateway", "nat_gateway": gw}}),
    );
    address
}

/// Lets the Internet reach `port` of tenant `tenant`'s VMs (its default group).
fn allow_from_internet(t: &mut TopologyLab, tenant: &str, port: u16) {
    support::change(
        t,
        Method::POST,
        &format!("/v1/security-groups/default/rules?vpc={tenant}"),
        json!({"direction": "ingress", "protocol": "tcp", "ports": port.to_string(),
               "cidr": "0.0.0.0/0", "action": "allow", "priority": 10}),
    );
}

fn get(t: &TopologyLab, from: &str, url: &str, timeout: Duration) -> HttpReport {
    t.lab()
        .http_get(from, url, timeout)
        .unwrap_or_else(|e| panic!("GET {url} from {from}: {e:#}"))
}

/// `GET url` from `from` must answer 200 from `server`; returns the client it saw.
fn seen_by(t: &TopologyLab, from: &str, url: &str, server: &str) -> (String, u16) {
    let r = get(t, from, url, TIMEOUT);
    assert_eq!(r.status, Some(200), "GET {url} from {from}: {r:?}");
    let (name, ip, port) = r.seen().unwrap_or_else(|| panic!("{from}: {r:?}"));
    assert_eq!(
        name, server,
        "GET {url} from {from} reached the wrong server"
    );
    (ip, port)
}

fn stats(t: &TopologyLab) -> std::collections::BTreeMap<String, StatsSnapshot> {
    t.stats().expect("stats")
}

fn packets(
    before: &std::collections::BTreeMap<String, StatsSnapshot>,
    after: &std::collections::BTreeMap<String, StatsSnapshot>,
    reason: Reason,
) -> u64 {
    after
        .iter()
        .map(|(h, s)| {
            let b = before.get(h).map(|b| b.get(reason).packets).unwrap_or(0);
            s.get(reason).packets - b
        })
        .sum()
}

#[test]
fn vms_with_identical_addresses_in_two_tenants_share_the_internet_through_snat() {
    if !support::privileged("nat::snat") {
        return;
    }
    let _serial = support::one_lab_at_a_time();
    let lab = Lab::new().expect("lab");
    let mut t = internet_lab(&lab);
    let _http = lab
        .http_server(INTERNET, HTTP_PORT, "public")
        .expect("public HTTP server");
    let _udp = lab
        .udp_echo_server(INTERNET, UDP_PORT, "public")
        .expect("public UDP server");
    let url = format!("http://{PUBLIC_SERVER}:{HTTP_PORT}/");

    // No gateway yet: the Internet is unreachable (no route), and so is an EIP.
    let r = get(&t, "a1", &url, FAIL_TIMEOUT);
    assert!(
        r.error.is_some(),
        "a1 reached the Internet without NAT: {r:?}"
    );

    let eip_a = snat_gateway(&mut t, "tenant-a");
    let eip_b = snat_gateway(&mut t, "tenant-b");
    let before = stats(&t);

    // Every VM (a1/b1, a2/b2... share addresses) gets its own (EIP, port), by tenant.
    let mut pairs = BTreeSet::new();
    for vm in VMS {
        let (ip, port) = seen_by(&t, vm, &url, "public");
        let want = if vm.starts_with('a') { &eip_a } else { &eip_b };
        assert_eq!(&ip, want, "{vm} left from the other tenant's EIP");
        assert!(pairs.insert((ip, port)), "{vm}: ({port}) seen twice");
        let u = lab
            .udp_request(vm, PUBLIC_SERVER, UDP_PORT, TIMEOUT)
            .expect("udp");
        assert_eq!(u.status, Some(0), "{vm}: UDP through SNAT: {u:?}");
        let (_, uip, uport) = u.seen().expect("UDP answer");
        assert_eq!(&uip, want, "{vm}: UDP source");
        assert!(pairs.insert((uip, uport)), "{vm}: UDP pair seen twice");
    }
    // ICMP echo: the identifier is translated and the reply finds its VM.
    for vm in ["a1", "b1"] {
        let p = lab.ping(vm, PUBLIC_SERVER, 3, &[]).expect("ping");
        assert_eq!(p.received, 3, "{vm}: ping through SNAT: {p:?}");
    }
    let after = stats(&t);
    assert!(packets(&before, &after, Reason::FwdNatOut) >= 2 * VMS.len() as u64);
    assert!(packets(&before, &after, Reason::FwdNatIn) >= 2 * VMS.len() as u64);

    // Default deny: the Internet cannot open a flow to a SNAT EIP.
    let before = stats(&t);
    let r = get(
        &t,
        INTERNET,
        &format!("http://{eip_a}:{HTTP_PORT}/"),
        FAIL_TIMEOUT,
    );
    assert!(r.error.is_some(), "a SNAT EIP answered the Internet: {r:?}");
    let after = stats(&t);
    assert!(packets(&before, &after, Reason::DropNatNoRule) >= 1);
}

#[test]
fn dnat_and_bound_eips_serve_http_from_the_internet_and_rebind_live() {
    if !support::privileged("nat::dnat") {
        return;
    }
    let _serial = support::one_lab_at_a_time();
    let lab = Lab::new().expect("lab");
    let mut t = internet_lab(&lab);
    let _servers: Vec<_> = ["a1", "a3", "b1"]
        .into_iter()
        .map(|vm| lab.http_server(vm, HTTP_PORT, vm).expect("VM HTTP server"))
        .collect();
    let _public = lab
        .http_server(INTERNET, HTTP_PORT, "public")
        .expect("public HTTP server");

    // DNAT: tcp 80 of EIP `web` to a3 (on h2) port 8080.
    let snat_a = snat_gateway(&mut t, "tenant-a");
    let web = eip(&mut t, "web");
    support::change(
        &mut t,
        Method::POST,
        "/v1/nat-gateways/gw-a/eips",
        json!({"eip": "web"}),
    );
    support::change(
        &mut t,
        Method::POST,
        "/v1/nat-gateways/gw-a/dnat",
        json!({"eip": "web", "protocol": "tcp", "public_port": 80,
               "private_ip": "10.0.2.10", "private_port": HTTP_PORT}),
    );
    let web_url = format!("http://{web}/");
    // Security groups still apply to translated traffic: a3's group admits members only.
    let before = stats(&t);
    let r = get(&t, INTERNET, &web_url, FAIL_TIMEOUT);
    assert!(
        r.error.is_some(),
        "DNAT bypassed a3's security group: {r:?}"
    );
    assert!(packets(&before, &stats(&t), Reason::DropSgIngress) >= 1);
    allow_from_internet(&mut t, "tenant-a", HTTP_PORT);
    // The backend sees the real client.
    let (ip, _) = seen_by(&t, INTERNET, &web_url, "a3");
    assert_eq!(ip, PUBLIC_SERVER);
    // Another port of the EIP is not published.
    let r = get(&t, INTERNET, &format!("http://{web}:81/"), FAIL_TIMEOUT);
    assert!(r.error.is_some(), "an unpublished port answered: {r:?}");

    // Hairpin: a VM of the VPC reaches the DNAT address; it arrives from the SNAT EIP.
    let (ip, _) = seen_by(&t, "a1", &web_url, "a3");
    assert_eq!(ip, snat_a, "hairpinned flow's source");

    // A bound EIP: every port of a1 (h1), both ways.
    let pet = eip(&mut t, "pet");
    support::change(
        &mut t,
        Method::POST,
        "/v1/eips/pet/bind",
        json!({"nic": "a1"}),
    );
    let pet_url = format!("http://{pet}:{HTTP_PORT}/");
    let (ip, _) = seen_by(&t, INTERNET, &pet_url, "a1");
    assert_eq!(ip, PUBLIC_SERVER);
    let (ip, _) = seen_by(
        &t,
        "a1",
        &format!("http://{PUBLIC_SERVER}:{HTTP_PORT}/"),
        "public",
    );
    assert_eq!(ip, pet, "a1 leaves from its bound EIP");

    // Rebind to b1 (the other tenant, the other host) while both VMs run.
    support::change(&mut t, Method::POST, "/v1/eips/pet/unbind", Value::Null);
    let r = get(&t, INTERNET, &pet_url, FAIL_TIMEOUT);
    assert!(r.error.is_some(), "an unbound EIP still answered: {r:?}");
    allow_from_internet(&mut t, "tenant-b", HTTP_PORT);
    support::change(
        &mut t,
        Method::POST,
        "/v1/eips/pet/bind",
        json!({"nic": "b1"}),
    );
    let (ip, _) = seen_by(&t, INTERNET, &pet_url, "b1");
    assert_eq!(ip, PUBLIC_SERVER);
    // a1 is back on the gateway's SNAT; the DNAT service never noticed.
    let (ip, _) = seen_by(
        &t,
        "a1",
        &format!("http://{PUBLIC_SERVER}:{HTTP_PORT}/"),
        "public",
    );
    assert_eq!(ip, snat_a);
    seen_by(&t, INTERNET, &web_url, "a3");
}

#[test]
fn a_failed_host_leaves_new_flows_through_the_others_working() {
    if !support::privileged("nat::host_failure") {
        return;
    }
    let _serial = support::one_lab_at_a_time();
    let lab = Lab::new().expect("lab");
    let mut t = internet_lab(&lab);
    let _public = lab
        .http_server(INTERNET, HTTP_PORT, "public")
        .expect("public HTTP server");
    let url = format!("http://{PUBLIC_SERVER}:{HTTP_PORT}/");
    snat_gateway(&mut t, "tenant-a");
    for vm in ["a1", "a3"] {
        seen_by(&t, vm, &url, "public");
    }

    // A live connection of h1's a1, paced across the failure.
    let _echo = lab
        .tcp_echo_server(INTERNET, ECHO_PORT)
        .expect("public echo server");
    let mut kept = lab
        .spawn(
            "a1",
            &[
                "python3",
                "-c",
                PACED_ECHO_CLIENT,
                PUBLIC_SERVER,
                &ECHO_PORT.to_string(),
            ],
        )
        .expect("paced client");
    kept.wait_for_stdout(TIMEOUT, |s| s.contains("connected"))
        .expect("the paced client connected");

    // h2 fails: its agent dies and its fabric link goes down (its VMs a3, a4 with it).
    let h2 = t.host("h2").expect("h2");
    let ul = h2.underlay.ifname.clone();
    lab.exec("h2", &["ip", "link", "set", &ul, "down"])
        .expect("h2's link down");
    let failed = Instant::now();

    // New flows from h1's VMs: the first that completes, then every one after it. The
    // Internet keeps sending some replies to h2 until its neighbour entry fails.
    let mut first = None;
    while first.is_none() {
        let r = get(&t, "a1", &url, Duration::from_secs(1));
        if r.status == Some(200) {
            first = Some(failed.elapsed());
        }
        assert!(
            failed.elapsed() < Duration::from_secs(20),
            "no new flow from a1 completed after h2 failed: {r:?}"
        );
    }
    for _ in 0..10 {
        for vm in ["a1", "a2"] {
            seen_by(&t, vm, &url, "public");
        }
    }
    // The connection that lived through it lost nothing (TCP may have retransmitted).
    let done = kept.wait(Duration::from_secs(60)).expect("paced client");
    let report: Value = serde_json::from_str(done.stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("paced client: {e}: {} {}", done.stdout, done.stderr));
    assert_eq!(report["error"], Value::Null, "{report}");
    assert_eq!(report["intact"], true, "{report}");
    eprintln!(
        "after h2 failed, a1's first new flow completed {:?} later; its live connection's longest stall: {} s",
        first.unwrap(),
        report["max_gap"]
    );
}

const ECHO_PORT: u16 = 7000;

/// argv: dst port. One connection: 100 bytes every 50 ms for 4 s, each echoed before the
/// next; prints "connected", then a JSON report (longest wait for an echo in `max_gap`).
const PACED_ECHO_CLIENT: &str = r#"
import json, socket, sys, time
dst, port = sys.argv[1], int(sys.argv[2])
out = {"sent": 0, "received": 0, "intact": False, "max_gap": 0.0, "error": None}
try:
    s = socket.create_connection((dst, port), timeout=10)
    s.settimeout(20)
    print("connected", flush=True)
    ok = True
    for i in range(80):
        msg = (b"%03d" % i) * 33 + b"\n"
        t0 = time.monotonic()
        s.sendall(msg)
        out["sent"] += len(msg)
        got = b""
        while len(got) < len(msg):
            d = s.recv(len(msg) - len(got))
            if not d:
                raise OSError("closed by the server")
            got += d
        out["max_gap"] = max(out["max_gap"], time.monotonic() - t0)
        out["received"] += len(got)
        ok = ok and got == msg
        time.sleep(0.05)
    out["intact"] = ok and out["received"] == out["sent"]
except OSError as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out), flush=True)
"#;
