//! Tier 3: the real `sluiced` binary in a network namespace, driven through its Unix-socket
//! API: counting real traffic, metrics, hitless restart, detach on exit, offline teardown.
mod support;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use sluice_common::{maps, stats::Reason};
use sluice_dataplane::{
    api::{AttachJson, StatsJson, StatusJson},
    client::{self, ApiAddr},
    daemon::READY_LINE,
    loader::{self, Role},
    stats::StatsSnapshot,
};

const SLUICED: &str = env!("CARGO_BIN_EXE_sluiced");
const PINGS: u64 = 5;

/// Runs a command, panicking with its output if it fails.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces joined by a veth pair: `if_a` (10.99.0.1, where sluiced attaches) in
/// `ns_a`, `if_b` (10.99.0.2, the traffic source) in `ns_b`. Also owns the pin dir and the
/// socket dir. Dropping it removes all of it, also after a panic.
struct Lab {
    ns_a: String,
    ns_b: String,
    if_a: String,
    pin_dir: PathBuf,
    run_dir: PathBuf,
}

const ADDR_A: &str = "10.99.0.1";

impl Lab {
    fn new() -> Lab {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            ns_a: format!("sluice-dt{tag}-a"),
            ns_b: format!("sluice-dt{tag}-b"),
            if_a: format!("sdt{tag}a"),
            pin_dir: PathBuf::from(format!("/run/sluice/bpffs/daemon-test-{tag}")),
            run_dir: PathBuf::from(format!("/run/sluice/daemon-test-{tag}")),
        };
        ensure_bpffs();
        let if_b = format!("sdt{tag}b");
        run(&["ip", "netns", "add", &lab.ns_a]);
        run(&["ip", "netns", "add", &lab.ns_b]);
        run(&[
            "ip", "link", "add", &lab.if_a, "netns", &lab.ns_a, "type", "veth", "peer", "name",
            &if_b, "netns", &lab.ns_b,
        ]);
        for (ns, ifname, addr) in [
            (&lab.ns_a, &lab.if_a, "10.99.0.1/24"),
            (&lab.ns_b, &if_b, "10.99.0.2/24"),
        ] {
            run(&["ip", "-n", ns, "addr", "add", addr, "dev", ifname]);
            run(&["ip", "-n", ns, "link", "set", ifname, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    fn socket(&self) -> PathBuf {
        self.run_dir.join("api.sock")
    }

    fn api(&self) -> ApiAddr {
        ApiAddr::Unix(self.socket())
    }

    fn write_config(&self, on_exit: &str) -> PathBuf {
        std::fs::create_dir_all(&self.run_dir).unwrap();
        let path = self.run_dir.join("sluiced.yaml");
        let yaml = format!(
            "pin_dir: {}\napi: unix:{}\nxdp_mode: auto\non_exit: {on_exit}\ninterfaces:\n  - {{ name: {}, role: vm }}\n",
            self.pin_dir.display(),
            self.socket().display(),
            self.if_a
        );
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// `count` pings from ns_b to if_a; each echo request enters if_a's XDP program.
    fn ping(&self, count: u64) {
        run(&[
            "ip",
            "netns",
            "exec",
            &self.ns_b,
            "ping",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            ADDR_A,
        ]);
    }

    fn link_details(&self) -> String {
        run(&[
            "ip", "-n", &self.ns_a, "-d", "link", "show", "dev", &self.if_a,
        ])
    }

    fn xdp_attached(&self) -> bool {
        self.link_details().contains("prog/xdp")
    }

    /// Waits for the kernel to release the XDP link (freeing a link may be deferred).
    fn assert_xdp_detached(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.xdp_attached() {
            assert!(
                Instant::now() < deadline,
                "XDP still attached to {}:\n{}",
                self.if_a,
                self.link_details()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            !self.link_details().contains("xdp"),
            "{}",
            self.link_details()
        );
    }

    fn ifindex(&self) -> u32 {
        let path = format!("/sys/class/net/{}/ifindex", self.if_a);
        run(&["ip", "netns", "exec", &self.ns_a, "cat", &path])
            .trim()
            .parse()
            .unwrap()
    }

    fn pinned_stats(&self) -> StatsSnapshot {
        StatsSnapshot::read_pinned(loader::open_pinned_map(&self.pin_dir, maps::STATS).unwrap())
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if self.pin_dir.exists() {
            let _ = loader::teardown(&self.pin_dir);
            let _ = std::fs::remove_dir(&self.pin_dir);
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

fn ensure_bpffs() {
    let dir = Path::new("/run/sluice/bpffs");
    std::fs::create_dir_all(dir).unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    if !mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/run/sluice/bpffs") && l.contains(" bpf "))
    {
        run(&["mount", "-t", "bpf", "bpf", "/run/sluice/bpffs"]);
    }
}

/// A running `sluiced` under `ip netns exec`; killed on drop if a test left it running.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn start(ns: &str, config: &Path) -> Daemon {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, SLUICED, "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning sluiced");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[sluiced] {line}");
                sink.lock().unwrap().push_str(&format!("{line}\n"));
                if line == READY_LINE {
                    let _ = ready_tx.send(());
                }
            }
        });
        let mut daemon = Daemon { child, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ready_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                return daemon;
            }
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("sluiced exited before ready ({status}):\n{}", daemon.log());
            }
            assert!(
                Instant::now() < deadline,
                "sluiced not ready:\n{}",
                daemon.log()
            );
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, then wait for the exit.
    fn stop(mut self) -> ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on the pid of our own child (ip netns exec execs sluiced).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sluiced ignored SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn status(api: &ApiAddr) -> StatusJson {
    block_on(client::get_json(api, "/v1/status")).unwrap()
}

fn pass_ipv4_packets(api: &ApiAddr) -> u64 {
    let stats: StatsJson = block_on(client::get_json(api, "/v1/stats")).unwrap();
    assert_eq!(
        stats.reasons.len(),
        Reason::COUNT as usize,
        "every reason listed"
    );
    stats.reasons[Reason::PassIpv4.name()].packets
}

fn metric(api: &ApiAddr, series: &str) -> u64 {
    let text = block_on(client::get_ok(api, "/metrics")).unwrap().body;
    let prefix = format!("{series} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"));
    line[prefix.len()..].parse::<f64>().unwrap() as u64
}

#[test]
fn daemon_counts_traffic_survives_restart_and_detaches_on_exit() {
    if !support::privileged("daemon_counts_traffic_survives_restart_and_detaches_on_exit") {
        return;
    }
    let lab = Lab::new();
    let api = lab.api();

    // First run, on_exit: keep.
    let daemon = Daemon::start(&lab.ns_a, &lab.write_config("keep"));
    assert_eq!(
        block_on(client::get_ok(&api, "/healthz")).unwrap().body,
        "ok"
    );
    let st = status(&api);
    assert_eq!(st.pin_dir, lab.pin_dir.display().to_string());
    assert_eq!(st.interfaces.len(), 1);
    let iface = &st.interfaces[0];
    assert_eq!(
        (iface.name.as_str(), iface.role, iface.attach),
        (lab.if_a.as_str(), Role::Vm, AttachJson::New)
    );
    assert_eq!(iface.ifindex, lab.ifindex());
    assert!(lab.xdp_attached(), "{}", lab.link_details());

    let before = pass_ipv4_packets(&api);
    lab.ping(PINGS);
    let after = pass_ipv4_packets(&api);
    assert!(
        after >= before + PINGS,
        "pass_ipv4 went {before} -> {after} over {PINGS} pings"
    );
    let scraped = metric(&api, "sluice_packets_total{reason=\"pass_ipv4\"}");
    let after_scrape = pass_ipv4_packets(&api);
    assert!(
        (after..=after_scrape).contains(&scraped),
        "/metrics says {scraped}, /v1/stats said {after} then {after_scrape}"
    );
    assert!(metric(&api, "sluice_bytes_total{reason=\"pass_ipv4\"}") >= scraped * 34);
    assert_eq!(metric(&api, "sluice_interfaces_attached"), 1);
    // The connection table is exported; this NIC has no security groups, so it holds nothing.
    assert_eq!(metric(&api, "sluice_conntrack_entries"), 0);

    // SIGTERM with keep: the socket goes, XDP and the pinned counters stay and keep counting.
    assert!(daemon.stop().success());
    assert!(!lab.socket().exists(), "API socket left behind");
    assert!(loader::link_pin_path(&lab.pin_dir, &lab.if_a).exists());
    assert!(lab.xdp_attached(), "{}", lab.link_details());
    let kept = lab.pinned_stats().get(Reason::PassIpv4).packets;
    assert!(kept >= after_scrape);
    lab.ping(3);
    let unattended = lab.pinned_stats().get(Reason::PassIpv4).packets;
    assert!(
        unattended >= kept + 3,
        "XDP must keep counting with no daemon: {kept} -> {unattended}"
    );

    // Restart with on_exit: detach: the pinned link gets the new program, counters carry over.
    let daemon = Daemon::start(&lab.ns_a, &lab.write_config("detach"));
    assert_eq!(status(&api).interfaces[0].attach, AttachJson::Replaced);
    let restarted = pass_ipv4_packets(&api);
    assert!(
        restarted >= unattended,
        "counters lost across restart: {unattended} -> {restarted}"
    );
    lab.ping(PINGS);
    assert!(pass_ipv4_packets(&api) >= restarted + PINGS);

    // SIGTERM with detach: no pins, no XDP, and traffic still flows through the stack.
    assert!(daemon.stop().success());
    assert!(!lab.socket().exists(), "API socket left behind");
    assert!(!lab.pin_dir.join("links").exists(), "link pins left behind");
    assert!(!lab.pin_dir.join("maps").exists(), "map pins left behind");
    lab.assert_xdp_detached();
    lab.ping(1);
}

#[test]
fn teardown_subcommand_cleans_a_kept_pin_dir() {
    if !support::privileged("teardown_subcommand_cleans_a_kept_pin_dir") {
        return;
    }
    let lab = Lab::new();
    let daemon = Daemon::start(&lab.ns_a, &lab.write_config("keep"));
    lab.ping(1);
    assert!(daemon.stop().success());
    assert!(lab.xdp_attached(), "keep must leave XDP attached");

    let pin_dir = lab.pin_dir.to_str().unwrap();
    run(&[SLUICED, "teardown", "--pin-dir", pin_dir]);
    assert!(!lab.pin_dir.exists(), "pin dir left behind");
    lab.assert_xdp_detached();

    // A second teardown has nothing to remove and says which directory it looked for.
    let out = Command::new(SLUICED)
        .args(["teardown", "--pin-dir", pin_dir])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(pin_dir));
}

#[test]
fn second_daemon_on_the_same_pin_dir_is_refused_before_touching_xdp() {
    if !support::privileged("second_daemon_on_the_same_pin_dir_is_refused_before_touching_xdp") {
        return;
    }
    let lab = Lab::new();
    let config = lab.write_config("detach");
    let first = Daemon::start(&lab.ns_a, &config);
    let other_socket = lab.run_dir.join("other.sock");
    let other = lab.run_dir.join("other.yaml");
    let yaml = std::fs::read_to_string(&config).unwrap().replace(
        &lab.socket().display().to_string(),
        &other_socket.display().to_string(),
    );
    std::fs::write(&other, yaml).unwrap();

    for config in [&config, &other] {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.ns_a, SLUICED, "--config"])
            .arg(config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("in use"), "{stderr}");
        assert!(
            !stderr.contains("attached"),
            "must fail before attaching: {stderr}"
        );
    }
    assert!(!other_socket.exists());
    // The first daemon is untouched: still serving, still on its own new link.
    assert_eq!(status(&lab.api()).interfaces[0].attach, AttachJson::New);
    assert!(first.stop().success());
    lab.assert_xdp_detached();
}

#[test]
fn bad_config_fails_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("sluiced-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bad.yaml");
    std::fs::write(
        &config,
        "pin_dir: /run/sluice/bpffs/x\ninterfaces:\n  - { name: eth9, role: router }\n",
    )
    .unwrap();
    let out = Command::new(SLUICED)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interfaces[0].role"), "{stderr}");
    assert!(stderr.contains("router"), "{stderr}");
}
