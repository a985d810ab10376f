//! The real `sluicectl` binary against the real controller API (`controller::api::router`
//! over a fresh redb store) on a temporary Unix socket: create, get, list, update, delete
//! and apply, their outputs, and the exit status and message of every kind of error.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Arc,
};

use serde_json::Value;
use sluice_dataplane::controller::{api::router, Controller};

/// A controller serving its API on a Unix socket under a temp dir, from its own thread
/// and runtime; stopped and removed on drop.
struct Api {
    dir: PathBuf,
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Api {
    fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sluicectl-it-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        let controller = Arc::new(Controller::open(&dir.join("intent.redb")).unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sock = socket.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::bind(&sock).unwrap();
                ready_tx.send(()).unwrap();
                axum::serve(listener, router(controller))
                    .with_graceful_shutdown(async {
                        stopped.await.ok();
                    })
                    .await
                    .unwrap();
            });
        });
        // Bound before the first request: connecting cannot race the bind.
        ready_rx.recv().unwrap();
        Api {
            dir,
            socket,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn addr(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// Runs `sluicectl --api <this> args...`.
    fn ctl(&self, args: &[&str]) -> Output {
        ctl_at(&self.addr(), args)
    }

    /// Runs it and requires success; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "sluicectl {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs it with `-o json` and parses the answer.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let text = self.ok(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// Runs it, requires exit status `code`, empty stdout; its stderr.
    fn fails(&self, code: i32, args: &[&str]) -> String {
        fails_with(self.ctl(args), code, args)
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn ctl_at(addr: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .arg("--api")
        .arg(addr)
        .args(args)
        .env_remove("SLUICE_API")
        .output()
        .expect("running sluicectl")
}

fn fails_with(out: Output, code: i32, args: &[&str]) -> String {
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "sluicectl {args:?}: stdout {:?} stderr {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// Cells of the table's data row whose first cell is `key`.
fn row<'a>(table: &'a str, key: &str) -> Vec<&'a str> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&key))
        .unwrap_or_else(|| panic!("no row {key:?} in\n{table}"))
}

/// Applies `file`, requiring `created` among what it created, then again: no changes.
fn apply_twice(api: &Api, file: &str, created: &[&str]) {
    let out = api.ok(&["apply", "-f", file]);
    for line in created {
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().eq(["created", line])),
            "{line}: {out}"
        );
    }
    let again = api.ok(&["apply", "-f", file]);
    assert!(again.starts_with("0 created, 0 updated, "), "{again}");
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn resources_round_trip_through_the_real_api() {
    let api = Api::start("crud");

    // Hosts: table by default, columns as the API answered.
    let out = api.ok(&[
        "create",
        "host",
        "--name",
        "h1",
        "--underlay-ip",
        "192.0.2.1",
        "--underlay-ifname",
        "ul0",
    ]);
    let h1 = row(&out, "h1");
    assert_eq!(h1[1..3], ["192.0.2.1", "ul0"]);
    assert!(out.starts_with("NAME "), "{out}");
    api.ok(&[
        "create",
        "host",
        "--name",
        "h2",
        "--underlay-ip",
        "192.0.2.2",
        "--underlay-ifname",
        "ul0",
        "--underlay-mtu",
        "9000",
    ]);
    // --replace is PUT: updates in place.
    let out = api.ok(&[
        "create",
        "host",
        "--replace",
        "--name",
        "h2",
        "--underlay-ip",
        "192.0.2.22",
        "--underlay-ifname",
        "ul0",
    ]);
    assert_eq!(row(&out, "h2")[1], "192.0.2.22");
    let hosts = api.ok(&["list", "hosts"]);
    assert_eq!(hosts.lines().count(), 3, "{hosts}");

    // VPCs: two tenants with the same CIDR, distinct VNIs.
    let a = api.json(&["create", "vpc", "--name", "a", "--cidr", "10.0.0.0/16"]);
    let b_yaml = api.ok(&[
        "create",
        "vpc",
        "--name",
        "b",
        "--cidr",
        "10.0.0.0/16",
        "-o",
        "yaml",
    ]);
    let b: Value = serde_yaml::from_str(&b_yaml).unwrap();
    assert_eq!(
        (a["name"].as_str(), b["name"].as_str()),
        (Some("a"), Some("b"))
    );
    assert_ne!(a["vni"], b["vni"]);
    let a_id = a["id"].as_str().unwrap().to_string();
    let vpcs = api.ok(&["list", "vpcs"]);
    assert_eq!(row(&vpcs, &a_id)[1..3], ["a", "10.0.0.0/16"]);
    assert_eq!(api.json(&["get", "vpc", "a"]), a);
    assert_eq!(api.json(&["get", "vpc", &a_id]), a);

    // Subnets, looked up by name within their VPC.
    let web = api.json(&[
        "create",
        "subnet",
        "--vpc",
        "a",
        "--name",
        "web",
        "--cidr",
        "10.0.1.0/24",
    ]);
    assert_eq!(web["gateway"], "10.0.1.1");
    api.ok(&[
        "create",
        "subnet",
        "--vpc",
        "b",
        "--name",
        "web",
        "--cidr",
        "10.0.1.0/24",
    ]);
    assert_eq!(api.json(&["get", "subnet", "web", "--vpc", "a"]), web);
    assert_eq!(
        api.json(&["list", "subnets", "--vpc", "a"]),
        Value::Array(vec![web.clone()])
    );
    assert_eq!(api.json(&["list", "subnets"]).as_array().unwrap().len(), 2);

    // NICs: IP and MAC allocated; an appliance without source check.
    let vm1 = api.json(&[
        "create", "nic", "--name", "vm1", "--vpc", "a", "--subnet", "web", "--host", "h1",
        "--ifname", "vm1",
    ]);
    assert_eq!(vm1["ip"], "10.0.1.4");
    assert_eq!(vm1["source_check"], true);
    let out = api.ok(&[
        "create",
        "nic",
        "--name",
        "fw0",
        "--vpc",
        "a",
        "--subnet",
        "web",
        "--host",
        "h2",
        "--ifname",
        "fw0",
        "--ip",
        "10.0.1.10",
        "--source-check",
        "false",
    ]);
    let fw0_id = api.json(&["get", "nic", "fw0"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let fw0 = row(&out, &fw0_id);
    assert_eq!(fw0[1], "fw0");
    assert_eq!(fw0[6], "10.0.1.10");
    assert_eq!(fw0[8], "off");
    assert_eq!(
        api.json(&["list", "nics", "--host", "h1"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api.json(&["list", "nics", "--vpc", "a"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let moved = api.json(&["update", "nic", "vm1", "--host", "h2", "--ifname", "vm1b"]);
    assert_eq!(
        (moved["host"].as_str(), moved["ifname"].as_str()),
        (Some("h2"), Some("vm1b"))
    );
    assert_eq!(moved["ip"], vm1["ip"], "a NIC keeps its IP when it moves");

    // Routes: next hops by flag, destinations with a '/' in the path.
    let out = api.ok(&[
        "create",
        "route",
        "--vpc",
        "a",
        "--destination",
        "0.0.0.0/0",
        "--next-hop",
        "nic:fw0",
    ]);
    assert_eq!(
        row(&out, &a_id)[1..],
        ["0.0.0.0/0", &format!("nic:{fw0_id}")]
    );
    api.ok(&[
        "create",
        "route",
        "--vpc",
        "a",
        "--destination",
        "10.9.0.0/16",
        "--next-hop",
        "blackhole",
    ]);
    let r = api.json(&["get", "route", "--vpc", "a", "10.9.0.0/16"]);
    assert_eq!(r["next_hop"]["type"], "blackhole");
    let table = api.ok(&["get", "route-table", "a"]);
    assert_eq!(row(&table, "10.0.1.0/24")[2], "system");
    assert_eq!(
        row(&table, "0.0.0.0/0")[1..],
        [format!("nic:{fw0_id}").as_str(), "custom"]
    );
    assert_eq!(row(&table, "10.9.0.0/16")[1], "blackhole");
    // PUT replaces.
    api.ok(&[
        "create",
        "route",
        "--replace",
        "--vpc",
        "a",
        "--destination",
        "10.9.0.0/16",
        "--next-hop",
        "nic:vm1",
    ]);
    assert_eq!(
        api.json(&["get", "route", "--vpc", "a", "10.9.0.0/16"])["next_hop"]["type"],
        "nic"
    );
    assert_eq!(
        api.json(&["list", "routes", "--vpc", "a"])
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Peerings (disjoint CIDRs only): pending until accepted; a route into one from a
    // spec file.
    api.ok(&["create", "vpc", "--name", "c", "--cidr", "10.1.0.0/16"]);
    let p = api.json(&[
        "create",
        "peering",
        "--name",
        "a-c",
        "--vpc",
        "a",
        "--peer-vpc",
        "c",
    ]);
    assert_eq!(p["state"], "pending");
    let out = api.ok(&["accept", "peering", "a-c"]);
    assert_eq!(row(&out, p["id"].as_str().unwrap())[4], "active");
    let spec = write(
        &api.dir,
        "route.yaml",
        "vpc: a\ndestination: 10.1.0.0/16\nnext_hop:\n  type: peering\n  peering: a-c\n",
    );
    let r = api.json(&["create", "route", "-f", &spec]);
    assert_eq!(r["next_hop"]["peering"], p["id"]);
    assert_eq!(api.json(&["list", "peerings"]).as_array().unwrap().len(), 1);

    // Deletes, dependents first.
    assert_eq!(
        api.ok(&["delete", "route", "--vpc", "a", "10.1.0.0/16"]),
        "deleted route/a:10.1.0.0/16\n"
    );
    api.ok(&["delete", "route", "--vpc", "a", "0.0.0.0/0"]);
    api.ok(&["delete", "route", "--vpc", "a", "10.9.0.0/16"]);
    api.fails(1, &["get", "route", "--vpc", "a", "10.9.0.0/16"]);
    api.ok(&["delete", "peering", "a-c"]);
    api.ok(&["delete", "nic", "vm1"]);
    api.ok(&["delete", "nic", "fw0"]);
    assert_eq!(
        api.ok(&["delete", "subnet", "web", "--vpc", "a"]),
        "deleted subnet/a/web\n"
    );
    assert_eq!(api.ok(&["delete", "vpc", "a"]), "deleted vpc/a\n");
    api.ok(&["delete", "host", "h1"]);
    let vpcs = api.json(&["list", "vpcs"]);
    let names: Vec<&str> = vpcs
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b", "c"]);
}

#[test]
fn errors_name_the_field_and_exit_1_usage_errors_exit_2() {
    let api = Api::start("errors");
    api.ok(&["create", "vpc", "--name", "a", "--cidr", "10.0.0.0/16"]);
    api.ok(&[
        "create",
        "subnet",
        "--vpc",
        "a",
        "--name",
        "web",
        "--cidr",
        "10.0.1.0/24",
    ]);

    let e = api.fails(
        1,
        &["create", "vpc", "--name", "x", "--cidr", "10.0.0.0/33"],
    );
    assert!(e.starts_with("sluicectl: error: cidr: "), "{e}");
    let e = api.fails(
        1,
        &["create", "subnet", "--vpc", "nope", "--cidr", "10.0.2.0/24"],
    );
    assert!(e.starts_with("sluicectl: error: vpc: "), "{e}");
    let e = api.fails(1, &["get", "vpc", "nope"]);
    assert!(
        e.starts_with("sluicectl: error: vpc: ") && e.contains("nope"),
        "{e}"
    );
    // A refused delete lists what still depends on the VPC, and changes nothing.
    let e = api.fails(1, &["delete", "vpc", "a"]);
    assert!(e.starts_with("sluicectl: error: "), "{e}");
    assert!(e.contains("dependents: subnet/"), "{e}");
    assert_eq!(api.json(&["list", "vpcs"]).as_array().unwrap().len(), 1);
    let e = api.fails(
        1,
        &[
            "create",
            "route",
            "--vpc",
            "a",
            "--destination",
            "10.0.9.0/24",
            "--next-hop",
            "nic:ghost",
        ],
    );
    assert!(e.starts_with("sluicectl: error: next_hop"), "{e}");

    // Usage errors are clap's: exit 2, nothing sent.
    let e = api.fails(2, &["create", "vpc", "--name", "x"]);
    assert!(e.contains("--cidr"), "{e}");
    let e = api.fails(
        2,
        &[
            "create",
            "route",
            "--vpc",
            "a",
            "--destination",
            "0.0.0.0/0",
            "--next-hop",
            "gateway",
        ],
    );
    assert!(
        e.contains("expected nic:<nic>, peering:<peering>, nat-gateway:<gateway> or blackhole"),
        "{e}"
    );
    api.fails(2, &["delete", "frobs", "x"]);
    assert_eq!(api.json(&["list", "vpcs"]).as_array().unwrap().len(), 1);

    // A spec file with a field the spec does not have: named with its file.
    let spec = write(
        &api.dir,
        "vpc.yaml",
        "name: y\ncidr: 10.1.0.0/16\nregion: eu\n",
    );
    let e = api.fails(1, &["create", "vpc", "-f", &spec]);
    assert!(
        e.contains(&spec) && e.contains("unknown field `region`"),
        "{e}"
    );

    // Nobody listening: the address is named.
    let gone = format!("unix:{}", api.dir.join("nobody.sock").display());
    let e = fails_with(ctl_at(&gone, &["list", "vpcs"]), 1, &["list", "vpcs"]);
    assert!(
        e.contains(&format!("cannot connect to sluiced at {gone}")),
        "{e}"
    );
}

const TOPOLOGY: &str = "\
hosts:
  - name: h1
    underlay_ip: 192.0.2.1
    underlay_ifname: ul0
  - name: h2
    underlay_ip: 192.0.2.2
    underlay_ifname: ul0
vpcs:
  - name: tenant-a
    cidr: 10.0.0.0/16
    subnets:
      - {name: web, cidr: 10.0.1.0/24}
      - {name: db, cidr: 10.0.2.0/24}
    routes:
      - destination: 0.0.0.0/0
        next_hop: {type: nic, nic: a-fw}
  - name: tenant-b
    cidr: 10.0.0.0/16
    subnets:
      - {name: web, cidr: 10.0.1.0/24}
nics:
  - {name: a-vm1, vpc: tenant-a, subnet: web, host: h1, ifname: a-vm1, ip: 10.0.1.10}
  - {name: a-fw, vpc: tenant-a, subnet: db, host: h2, ifname: a-fw, source_check: false}
  - {name: b-vm1, vpc: tenant-b, subnet: web, host: h2, ifname: b-vm1, ip: 10.0.1.10}
";

#[test]
fn apply_creates_a_topology_once_and_then_changes_nothing() {
    let api = Api::start("apply");
    let file = write(&api.dir, "topology.yaml", TOPOLOGY);

    let out = api.ok(&["apply", "-f", &file]);
    let last = out.lines().last().unwrap();
    // 2 hosts, 2 VPCs, 3 subnets, 1 route, 3 NICs.
    assert!(last.starts_with("11 created, 0 updated, "), "{out}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["created", "vpc/tenant-a"])),
        "{out}"
    );

    // Idempotent: the same file again changes nothing.
    let out = api.ok(&["apply", "-f", &file]);
    assert!(out.starts_with("0 created, 0 updated, "), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let summary = api.json(&["apply", "-f", &file]);
    assert_eq!(summary["created"], Value::Array(vec![]));
    assert_eq!(summary["updated"], Value::Array(vec![]));
    assert!(summary["unchanged"].as_u64().unwrap() >= 11, "{summary}");

    // What it built is there through the resource commands.
    let nics = api.json(&["list", "nics", "--vpc", "tenant-b"]);
    assert_eq!(nics.as_array().unwrap().len(), 1);
    assert_eq!(nics[0]["ip"], "10.0.1.10");
    let table = api.ok(&["get", "route-table", "tenant-a"]);
    assert_eq!(row(&table, "0.0.0.0/0")[2], "custom");

    // A changed field is an update.
    let changed = TOPOLOGY.replace("underlay_ip: 192.0.2.2", "underlay_ip: 192.0.2.20");
    let file2 = write(&api.dir, "topology2.yaml", &changed);
    let out = api.ok(&["apply", "-f", &file2]);
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["updated", "host/h2"])),
        "{out}"
    );
    assert!(
        out.lines()
            .last()
            .unwrap()
            .starts_with("0 created, 1 updated, "),
        "{out}"
    );

    // Unknown fields are refused before anything is sent, naming the file and the field.
    let bad = write(
        &api.dir,
        "bad.yaml",
        &TOPOLOGY.replace(
            "{name: db, cidr: 10.0.2.0/24}",
            "{name: db, cidr: 10.0.2.0/24, zone: x}",
        ),
    );
    let e = api.fails(1, &["apply", "-f", &bad]);
    assert!(e.starts_with(&format!("sluicectl: error: {bad}: ")), "{e}");
    assert!(
        e.contains("vpcs[0].subnets[1]") && e.contains("unknown field `zone`"),
        "{e}"
    );
    // An invalid value is the API's error, with its field path, and nothing is applied.
    let invalid = write(
        &api.dir,
        "invalid.yaml",
        &format!("{TOPOLOGY}  - {{name: c-vm, vpc: tenant-c, subnet: web, host: h1, ifname: c}}\n"),
    );
    let e = api.fails(1, &["apply", "-f", &invalid]);
    assert!(e.starts_with("sluicectl: error: nics[3]"), "{e}");
    let e = api.fails(
        1,
        &[
            "apply",
            "-f",
            &api.dir.join("missing.yaml").display().to_string(),
        ],
    );
    assert!(e.contains("missing.yaml"), "{e}");
}

/// A command line's words (none of these tests' arguments has a space).
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn security_groups_rules_nic_groups_and_the_blocklist() {
    let api = Api::start("sg");
    let file = write(&api.dir, "topology.yaml", TOPOLOGY);
    api.ok(&["apply", "-f", &file]);

    // Every VPC has its default group; NICs created without groups are in it.
    let groups = api.json(&words("list security-groups --vpc tenant-a"));
    assert_eq!(groups.as_array().unwrap().len(), 1, "{groups}");
    assert_eq!(groups[0]["name"], "default");
    let default_a = groups[0]["id"].as_str().unwrap().to_string();
    let out = api.ok(&words("list rules --sg default --vpc tenant-a"));
    assert_eq!(out.lines().count(), 3, "header and two rules: {out}");
    assert_eq!(
        api.json(&words("get nic a-vm1"))["security_groups"],
        serde_json::json!([default_a])
    );

    // A group from flags, rules added one by one, shown as tables.
    let out = api.ok(&words(
        "create security-group --vpc tenant-a --name web --description front",
    ));
    let web_id = api.json(&words("get sg web --vpc tenant-a"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(row(&out, &web_id)[1..4], ["web", "vpc-1", "0"]);
    let out = api.ok(&words(
        "create rule --sg web --vpc tenant-a --direction ingress --protocol tcp --ports 443 \
         --cidr 0.0.0.0/0 --action allow --priority 10",
    ));
    let https = out
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let https = https.to_string();
    assert_eq!(
        row(&out, &https)[1..],
        ["10", "ingress", "tcp", "443", "0.0.0.0/0", "allow"]
    );
    let ssh = api.json(&words(&format!(
        "create rule --sg {web_id} --direction ingress --protocol tcp --ports 22 --group web \
         --action deny --priority 5"
    )));
    assert_eq!(ssh["group"], web_id.as_str());
    let out = api.ok(&words("get security-group web --vpc tenant-a"));
    assert_eq!(row(&out, &web_id)[3], "2", "{out}");
    assert_eq!(
        row(&out, ssh["id"].as_str().unwrap())[5],
        format!("group:{web_id}")
    );
    let rules = api.json(&words("list rules --sg web --vpc tenant-a"));
    assert_eq!(rules.as_array().unwrap().len(), 2, "{rules}");
    assert_eq!(
        rules,
        api.json(&words("get sg web --vpc tenant-a"))["rules"]
    );

    // A NIC takes groups by name; one in use cannot be deleted, and says who uses it.
    let nic = api.json(&words("update nic a-vm1 --security-groups web,default"));
    assert_eq!(
        nic["security_groups"],
        serde_json::json!([web_id, default_a])
    );
    let e = api.fails(1, &words("delete security-group web --vpc tenant-a"));
    assert!(e.contains("dependents: nic/"), "{e}");
    let e = api.fails(1, &words("delete sg default --vpc tenant-a"));
    assert!(
        e.contains("default group") && e.contains("dependents: vpc/vpc-1"),
        "{e}"
    );
    // Bad requests name the field; nothing changes.
    let e = api.fails(
        1,
        &words(
            "create rule --sg web --vpc tenant-a --direction ingress --protocol icmp --ports 80 \
             --cidr 0.0.0.0/0 --action allow --priority 1",
        ),
    );
    assert!(e.starts_with("sluicectl: error: ports: "), "{e}");
    let e = api.fails(1, &words("update nic a-vm1 --security-groups web,nope"));
    assert!(
        e.starts_with("sluicectl: error: security_groups[1]: "),
        "{e}"
    );
    let e = api.fails(
        2,
        &words(
            "create rule --sg web --direction inbound --protocol tcp --cidr 0.0.0.0/0 \
             --action allow --priority 1",
        ),
    );
    assert!(e.contains("ingress"), "{e}");
    assert_eq!(
        api.json(&words("list rules --sg web --vpc tenant-a")),
        rules
    );

    // Rules go by ID; then the group, once no NIC has it.
    let delete_https = format!("delete rule {https} --sg web --vpc tenant-a");
    assert_eq!(
        api.ok(&words(&delete_https)),
        format!("deleted rule/web:{https}\n")
    );
    api.fails(1, &words(&delete_https));
    api.ok(&words("update nic a-vm1 --security-groups default"));
    api.ok(&words("delete sg web --vpc tenant-a"));
    assert_eq!(
        api.json(&words("list sgs")).as_array().unwrap().len(),
        2,
        "the two VPCs' default groups"
    );

    // The blocklist.
    let out = api.ok(&words(
        "create block --prefix 203.0.113.0/24 --applies-to source --description ddos",
    ));
    assert_eq!(row(&out, "203.0.113.0/24")[1..], ["source", "ddos"]);
    api.ok(&words("create block --prefix 198.51.100.7/32"));
    let e = api.fails(1, &words("create block --prefix 203.0.113.0/24"));
    assert!(
        e.starts_with("sluicectl: error: prefix: ") && e.contains("dependents: block/"),
        "{e}"
    );
    let e = api.fails(1, &words("create block --prefix 203.0.113.9/24"));
    assert!(e.contains("host bits"), "{e}");
    let list = api.ok(&words("list blocklist"));
    assert_eq!(row(&list, "198.51.100.7/32")[1], "both");
    assert_eq!(
        api.json(&words("get block 203.0.113.0/24"))["applies_to"],
        "source"
    );
    assert_eq!(
        api.ok(&words("delete block 203.0.113.0/24")),
        "deleted block/203.0.113.0/24\n"
    );
    assert_eq!(
        api.json(&words("list blocklist")).as_array().unwrap().len(),
        1
    );
}

#[test]
fn apply_declares_security_groups_nic_groups_and_the_blocklist() {
    let api = Api::start("apply-sg");
    let with_groups = TOPOLOGY
        .replace(
            "      - {name: web, cidr: 10.0.1.0/24}\n      - {name: db, cidr: 10.0.2.0/24}\n",
            "      - {name: web, cidr: 10.0.1.0/24}\n      - {name: db, cidr: 10.0.2.0/24}\n    security_groups:\n      - name: web\n        rules:\n          - {direction: ingress, protocol: tcp, ports: 443, cidr: 0.0.0.0/0, action: allow, priority: 10}\n          - {direction: ingress, protocol: tcp, ports: 5432, group: db, action: deny, priority: 5}\n      - name: db\n        rules: []\n",
        )
        .replace(
            "ifname: a-vm1, ip: 10.0.1.10}",
            "ifname: a-vm1, ip: 10.0.1.10, security_groups: [web, db]}",
        )
        + "blocklist:\n  - {prefix: 203.0.113.0/24, applies_to: source}\n";
    assert_ne!(with_groups, TOPOLOGY);
    let file = write(&api.dir, "topology.yaml", &with_groups);
    apply_twice(
        &api,
        &file,
        &[
            "security-group/tenant-a/web",
            "security-group/tenant-a/db",
            "block/203.0.113.0/24",
        ],
    );
    let web = api.json(&["get", "sg", "web", "--vpc", "tenant-a"]);
    let db = api.json(&["get", "sg", "db", "--vpc", "tenant-a"]);
    assert_eq!(web["rules"][1]["group"], db["id"]);
    assert_eq!(
        api.json(&["get", "nic", "a-vm1"])["security_groups"],
        serde_json::json!([web["id"], db["id"]])
    );
    assert_eq!(
        api.json(&["list", "blocklist"]).as_array().unwrap().len(),
        1
    );

    // Dropping a declared rule removes it from the group; the other keeps its ID.
    let fewer = with_groups.replace(
        "          - {direction: ingress, protocol: tcp, ports: 5432, group: db, action: deny, priority: 5}\n",
        "",
    );
    let file2 = write(&api.dir, "fewer.yaml", &fewer);
    let out = api.ok(&["apply", "-f", &file2]);
    assert!(
        out.lines().any(|l| l
            .split_whitespace()
            .eq(["updated", "security-group/tenant-a/web"])),
        "{out}"
    );
    let web2 = api.json(&["get", "sg", "web", "--vpc", "tenant-a"]);
    assert_eq!(web2["rules"].as_array().unwrap().len(), 1);
    assert_eq!(web2["rules"][0]["id"], web["rules"][0]["id"]);

    // A rule naming a group the VPC does not have: the field, and nothing applied.
    let bad = with_groups.replace("group: db, action: deny", "group: ghost, action: deny");
    let file3 = write(&api.dir, "bad.yaml", &bad);
    let e = api.fails(1, &["apply", "-f", &file3]);
    assert!(
        e.starts_with("sluicectl: error: vpcs[0].security_groups[0].rules[1].group: "),
        "{e}"
    );
    assert_eq!(
        api.json(&["get", "sg", "web", "--vpc", "tenant-a"])["rules"],
        web2["rules"]
    );
}

#[test]
fn eips_nat_gateways_and_their_entries() {
    let api = Api::start("nat");
    let file = write(&api.dir, "topology.yaml", TOPOLOGY);
    api.ok(&["apply", "-f", &file]);

    let out = api.ok(&[
        "create",
        "eip-pool",
        "--name",
        "pub",
        "--cidrs",
        "203.0.113.0/28,198.51.100.0/30",
    ]);
    assert_eq!(
        row(&out, "eipp-1"),
        ["eipp-1", "pub", "198.51.100.0/30,203.0.113.0/28"]
    );
    // Lowest free first (not the network address); a given address; an address from no
    // pool names the field.
    let e1 = api.json(&["create", "eip", "--name", "e1"]);
    assert_eq!(e1["address"], "198.51.100.1");
    let out = api.ok(&["create", "eip", "--name", "e2", "--address", "203.0.113.7"]);
    assert_eq!(
        row(&out, "eip-2"),
        ["eip-2", "e2", "203.0.113.7", "eipp-1", "free"]
    );
    api.ok(&["create", "eip", "--name", "e3", "--pool", "pub"]);
    let e = api.fails(1, &["create", "eip", "--address", "192.0.2.9"]);
    assert!(
        e.starts_with("sluicectl: error: address: ") && e.contains("not from any EIP pool"),
        "{e}"
    );

    // Bind, refuse a second NIC, unbind: by name or address.
    let out = api.ok(&["bind", "eip", "e3", "--nic", "a-vm1"]);
    let vm1 = api.json(&["get", "nic", "a-vm1"])["id"].clone();
    assert_eq!(row(&out, "eip-3")[4..], ["bound", vm1.as_str().unwrap()]);
    let e = api.fails(1, &["bind", "eip", "e3", "--nic", "b-vm1"]);
    assert!(e.starts_with("sluicectl: error: eip: "), "{e}");
    assert!(e.contains(&format!("nic/{}", vm1.as_str().unwrap())), "{e}");
    let addr = api.json(&["get", "eip", "e3"])["address"].clone();
    let out = api.ok(&["unbind", "eip", addr.as_str().unwrap()]);
    assert_eq!(row(&out, "eip-3")[4], "free");

    // A gateway with e1 and e2, then entries; a route to it.
    api.ok(&[
        "create",
        "nat-gateway",
        "--name",
        "gw",
        "--vpc",
        "tenant-a",
        "--subnet",
        "web",
        "--eips",
        "e1,e2",
    ]);
    let out = api.ok(&[
        "create",
        "snat",
        "--nat-gateway",
        "gw",
        "--subnet",
        "web",
        "--eips",
        "e1",
    ]);
    assert_eq!(row(&out, "snat-1")[2], "eip-1");
    let out = api.ok(&[
        "create",
        "dnat",
        "--nat-gateway",
        "gw",
        "--eip",
        "203.0.113.7",
        "--protocol",
        "tcp",
        "--public-port",
        "8080",
        "--private-ip",
        "10.0.1.10",
        "--private-port",
        "80",
    ]);
    assert_eq!(
        row(&out, "dnat-1"),
        ["dnat-1", "eip-2", "tcp", "8080", "10.0.1.10:80"]
    );
    // Same EIP for SNAT and DNAT; the same (EIP, port) with any; a source outside the VPC.
    let e = api.fails(
        1,
        &[
            "create",
            "snat",
            "--nat-gateway",
            "gw",
            "--cidr",
            "10.0.2.0/24",
            "--eips",
            "e2",
        ],
    );
    assert!(
        e.starts_with("sluicectl: error: eips[0]: ") && e.contains("dnat/natgw-1:dnat-1"),
        "{e}"
    );
    let e = api.fails(
        1,
        &[
            "create",
            "dnat",
            "--nat-gateway",
            "gw",
            "--eip",
            "e2",
            "--protocol",
            "any",
            "--public-port",
            "8080",
            "--private-ip",
            "10.0.1.11",
        ],
    );
    assert!(e.starts_with("sluicectl: error: public_port: "), "{e}");
    let e = api.fails(
        1,
        &[
            "create",
            "snat",
            "--nat-gateway",
            "gw",
            "--cidr",
            "10.1.0.0/24",
            "--eips",
            "e1",
        ],
    );
    assert!(e.starts_with("sluicectl: error: cidr: "), "{e}");
    api.fails(
        2,
        &[
            "create",
            "snat",
            "--nat-gateway",
            "gw",
            "--cidr",
            "10.0.2.0/24",
            "--nic",
            "a-vm1",
            "--eips",
            "e1",
        ],
    );

    api.ok(&[
        "create",
        "route",
        "--vpc",
        "tenant-a",
        "--destination",
        "198.18.0.0/15",
        "--next-hop",
        "nat-gateway:gw",
    ]);
    let table = api.ok(&["get", "route-table", "tenant-a"]);
    assert_eq!(
        row(&table, "198.18.0.0/15"),
        ["198.18.0.0/15", "nat-gateway:natgw-1", "custom"]
    );
    let gw = api.ok(&["get", "nat-gateway", "gw"]);
    assert_eq!(row(&gw, "natgw-1")[4..], ["eip-1,eip-2", "1", "1"]);
    assert!(
        gw.contains("subnet:") && gw.contains("10.0.1.10:80"),
        "{gw}"
    );
    assert_eq!(
        api.json(&["list", "snat", "--nat-gateway", "gw"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let gws = api.json(&["list", "nat-gateways", "--vpc", "tenant-b"]);
    assert_eq!(gws, serde_json::json!([]));

    // Refused deletes name their dependents; then everything goes in order.
    let e = api.fails(1, &["detach", "eip", "e2", "--nat-gateway", "gw"]);
    assert!(e.contains("dnat/natgw-1:dnat-1"), "{e}");
    let e = api.fails(1, &["delete", "nat-gateway", "gw"]);
    assert!(e.contains("route/"), "{e}");
    let e = api.fails(1, &["delete", "eip-pool", "pub"]);
    assert!(e.contains("eip/eip-1") && e.contains("eip/eip-3"), "{e}");
    assert_eq!(
        api.ok(&["delete", "dnat", "dnat-1", "--nat-gateway", "gw"]),
        "deleted dnat/gw:dnat-1\n"
    );
    let out = api.ok(&["detach", "eip", "e2", "--nat-gateway", "gw"]);
    assert_eq!(row(&out, "natgw-1")[4], "eip-1");
    api.ok(&["attach", "eip", "e3", "--nat-gateway", "gw"]);
    api.ok(&["delete", "snat", "snat-1", "--nat-gateway", "gw"]);
    api.ok(&["delete", "route", "198.18.0.0/15", "--vpc", "tenant-a"]);
    api.ok(&["delete", "nat-gateway", "gw"]);
    let eips = api.ok(&["list", "eips"]);
    assert_eq!(eips.lines().count(), 4, "{eips}");
    assert!(eips.lines().skip(1).all(|l| l.contains(" free")), "{eips}");
    for e in ["e1", "e2", "e3"] {
        api.ok(&["delete", "eip", e]);
    }
    assert_eq!(
        api.ok(&["delete", "eip-pool", "pub"]),
        "deleted eip-pool/pub\n"
    );
}

#[test]
fn apply_declares_eip_pools_eips_and_nat_gateways() {
    let api = Api::start("apply-nat");
    let nat = TOPOLOGY.replace(
        "next_hop: {type: nic, nic: a-fw}",
        "next_hop: {type: nat_gateway, nat_gateway: gw}",
    ) + "\
eip_pools:
  - {name: pub, cidrs: [203.0.113.0/28]}
eips:
  - {name: e1}
  - {name: e2, address: 203.0.113.9}
  - {name: vm-ip, nic: b-vm1}
nat_gateways:
  - name: gw
    vpc: tenant-a
    subnet: web
    eips: [e1, e2]
    snat:
      - {cidr: 10.0.0.0/16, eips: [e1]}
    dnat:
      - {eip: e2, protocol: tcp, public_port: 443, private_ip: 10.0.1.10}
";
    let file = write(&api.dir, "nat.yaml", &nat);
    apply_twice(
        &api,
        &file,
        &[
            "eip-pool/pub",
            "eip/e1",
            "eip/e2",
            "eip/vm-ip",
            "nat-gateway/gw",
        ],
    );
    let gw = api.json(&["get", "nat-gateway", "gw"]);
    assert_eq!(gw["dnat"][0]["private_port"], 443);
    assert_eq!(gw["snat"][0]["cidr"], "10.0.0.0/16");
    assert_eq!(api.json(&["get", "eip", "vm-ip"])["state"], "bound");

    // Declaring a DNAT entry on the SNAT EIP: refused with the field, nothing applied.
    let bad = nat.replace("{eip: e2, protocol: tcp", "{eip: e1, protocol: tcp");
    let file2 = write(&api.dir, "bad.yaml", &bad);
    let e = api.fails(1, &["apply", "-f", &file2]);
    assert!(
        e.starts_with("sluicectl: error: nat_gateways[0].dnat[0].eip: "),
        "{e}"
    );
    assert_eq!(api.json(&["get", "nat-gateway", "gw"]), gw);
}

#[test]
fn load_balancers_listeners_backends_and_status() {
    let api = Api::start("lb");
    let file = write(&api.dir, "topology.yaml", TOPOLOGY);
    api.ok(&["apply", "-f", &file]);

    let out = api.ok(&[
        "lb",
        "create",
        "--name",
        "web",
        "--vpc",
        "tenant-a",
        "--subnet",
        "web",
        "--vip",
        "10.0.1.100",
    ]);
    assert_eq!(
        row(&out, "lb-1"),
        ["lb-1", "web", "vpc-1", "subnet-1", "10.0.1.100"]
    );
    let out = api.ok(&[
        "lb",
        "listener",
        "add",
        "web",
        "--protocol",
        "tcp",
        "--port",
        "80",
        "--backend",
        "a-vm1:8080",
        "--backend",
        "10.0.2.50:8080:0",
        "--check",
        "http",
        "--check-path",
        "/healthz",
    ]);
    let l = row(&out, "lbl-1");
    assert_eq!(
        l[..5],
        ["lbl-1", "tcp", "80", "maglev", "fail_open"],
        "{out}"
    );
    let out = api.ok(&[
        "lb",
        "backend",
        "add",
        "web",
        "lbl-1",
        "--ip",
        "10.0.2.51",
        "--port",
        "8080",
    ]);
    assert_eq!(
        row(&out, "lbb-3"),
        ["lbb-3", "-", "10.0.2.51:8080", "100", "2"]
    );
    let out = api.ok(&["lb", "backend", "weight", "web", "lbl-1", "lbb-3", "25"]);
    assert_eq!(row(&out, "lbb-3")[3], "25");

    // Status: every backend, unknown until the agents report.
    let out = api.ok(&["lb", "status", "web"]);
    assert!(out.starts_with("lb-1 web VIP 10.0.1.100\n"), "{out}");
    let lines: Vec<Vec<&str>> = out.lines().skip(2).map(words).collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(
        lines[0],
        [
            "lbl-1",
            "tcp/80",
            "lbb-1",
            "10.0.1.10:8080",
            "100",
            "unknown",
            "0",
            "-"
        ]
    );
    let status = api.json(&["lb", "status", "lb-1"]);
    assert_eq!(status["listeners"][0]["backends"][1]["weight"], 0);

    // The backend NIC shows its system rule; the API's errors name the field.
    let nic = api.json(&["get", "nic", "a-vm1"]);
    assert_eq!(nic["system_rules"][0]["cidr"], "100.64.0.0/10");
    let e = api.fails(
        1,
        &["lb", "backend", "weight", "web", "lbl-1", "lbb-3", "101"],
    );
    assert!(e.starts_with("sluicectl: error: weight: "), "{e}");
    let e = api.fails(
        1,
        &[
            "lb", "backend", "add", "web", "lbl-1", "--nic", "b-vm1", "--port", "1",
        ],
    );
    assert!(
        e.starts_with("sluicectl: error: nic: ") && e.contains("outside"),
        "{e}"
    );
    let e = api.fails(
        1,
        &[
            "lb",
            "listener",
            "add",
            "web",
            "--protocol",
            "tcp",
            "--port",
            "80",
        ],
    );
    assert!(
        e.starts_with("sluicectl: error: port: ") && e.contains("listener/lb-1:lbl-1"),
        "{e}"
    );
    let e = api.fails(1, &["delete", "nic", "a-vm1"]);
    assert!(e.contains("backend/lb-1:lbb-1"), "{e}");
    api.fails(
        2,
        &[
            "lb",
            "listener",
            "add",
            "web",
            "--protocol",
            "tcp",
            "--port",
            "81",
            "--backend",
            "x",
        ],
    );

    let lbs = api.ok(&["lb", "list", "--vpc", "tenant-a"]);
    assert_eq!(row(&lbs, "lb-1")[5], "tcp/80");
    assert_eq!(
        api.ok(&["lb", "backend", "remove", "web", "lbl-1", "lbb-1"]),
        "deleted backend/web:lbl-1:lbb-1\n"
    );
    assert_eq!(
        api.ok(&["lb", "listener", "remove", "web", "lbl-1"]),
        "deleted listener/web:lbl-1\n"
    );
    assert_eq!(
        api.ok(&["lb", "delete", "web"]),
        "deleted load-balancer/web\n"
    );
    api.fails(1, &["lb", "get", "web"]);
    api.ok(&["delete", "nic", "a-vm1"]);
}
