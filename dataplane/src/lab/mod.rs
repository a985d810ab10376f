//! Network-namespace labs for integration tests and demos.
//!
//! A [`Lab`] creates namespaces, veth pairs and bridges under a unique name (`sl` + four hex
//! digits), starts processes and `sluiced` daemons inside them, and removes everything it
//! created when dropped, also while a test unwinds from a panic: processes are killed by
//! PID, pinned links and maps are removed, namespaces (and with them every interface in
//! them) are deleted. Labs whose owning process died without cleaning up (SIGKILL) are
//! swept by the next `Lab::new`.
//!
//! Nothing here touches the root namespace's interfaces or routes: every interface is
//! created directly inside a lab namespace (`ip -n`).

pub mod api;
pub mod capture;
pub mod cmd;
pub mod config;
pub mod daemon;
pub mod internet;
pub mod names;
pub mod overlay;
pub mod process;
pub mod topology;
pub mod traffic;
pub mod xdp;

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

pub use capture::Capture;
pub use config::{
    AgentSetting, ControllerSetting, DaemonConfig, DaemonSpec, InterfaceConfig, OnExit,
    XdpModeSetting,
};
pub use daemon::Daemon;
pub use overlay::{OverlayVm, UnderlayPort};
pub use process::{Finished, LabProcess};
pub use topology::{LabHost, LabVm, TopologyLab};
pub use traffic::{PingReport, ReceiverReport, SenderReport, TcpReport};

/// Where labs keep sockets, configs and logs: `<RUN_ROOT>/<lab>/`.
pub const RUN_ROOT: &str = "/run/sluice";

/// The bpffs mount that survives `ip netns exec` (which remounts /sys).
pub const BPFFS: &str = "/run/sluice/bpffs";

/// How long a command run with [`Lab::exec`] may take.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(120);

/// A VM namespace wired to a host namespace by a veth pair.
#[derive(Clone, Debug)]
pub struct VmPort {
    /// The VM's label (its namespace is `<lab>-<vm>`).
    pub vm: String,
    /// The VM-side interface, inside the VM namespace.
    pub vm_if: String,
    /// The host-side interface, inside the host namespace: where `xdp_vm` attaches.
    pub host_if: String,
    /// The VM's address without prefix length.
    pub ip: String,
    pub mac: String,
}

#[derive(Default)]
struct State {
    namespaces: Vec<String>,
    pin_dirs: Vec<PathBuf>,
    next_process: u32,
    closed: bool,
}

pub struct Lab {
    name: String,
    run_dir: PathBuf,
    state: Mutex<State>,
}

impl Lab {
    /// Claims a fresh lab name (its run dir is the lock), mounting the bpffs if needed.
    pub fn new() -> Result<Self> {
        ensure_bpffs()?;
        sweep_stale();
        fs::create_dir_all(RUN_ROOT).with_context(|| format!("creating {RUN_ROOT}"))?;
        for _ in 0..32 {
            let name = names::lab_name(names::random_seed());
            let run_dir = Path::new(RUN_ROOT).join(&name);
            match fs::create_dir(&run_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", run_dir.display())),
            }
            let lab = Self {
                name,
                run_dir,
                state: Mutex::new(State::default()),
            };
            fs::write(lab.run_dir.join("owner"), std::process::id().to_string())
                .context("writing the lab's owner file")?;
            // A namespace of this name without a run dir was left by something else.
            let prefix = format!("{}-", lab.name);
            if cmd::list_netns()?.iter().any(|n| n.starts_with(&prefix)) {
                continue; // dropping `lab` releases the name again
            }
            return Ok(lab);
        }
        bail!("no free lab name under {RUN_ROOT} after 32 tries")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/sluice/<lab>`: sockets, configs, logs.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The namespace name of `host` (whether or not it exists yet).
    pub fn netns(&self, host: &str) -> String {
        names::netns_name(&self.name, host)
    }

    /// An interface name carrying the lab's prefix: `<lab>-<label>`.
    pub fn ifname(&self, label: &str) -> Result<String> {
        names::ifname(&self.name, label)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the namespace for `host` with its loopback up.
    pub fn add_host(&self, host: &str) -> Result<String> {
        names::check_label(host)?;
        let ns = self.netns(host);
        cmd::ip(&["netns", "add", &ns])?;
        self.state().namespaces.push(ns.clone());
        cmd::ip_in(&ns, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Whether `host`'s namespace was created by this lab.
    pub fn has_host(&self, host: &str) -> bool {
        let ns = self.netns(host);
        self.state().namespaces.contains(&ns)
    }

    /// A veth pair: `a_if` in `a_host`, `b_if` in `b_host`, both created in place (never in
    /// the root namespace) and left down.
    pub fn veth(&self, a_host: &str, a_if: &str, b_host: &str, b_if: &str) -> Result<()> {
        names::check_ifname(a_if)?;
        names::check_ifname(b_if)?;
        let (a_ns, b_ns) = (self.known_netns(a_host)?, self.known_netns(b_host)?);
        cmd::ip_in(
            &a_ns,
            &[
                "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b_ns,
            ],
        )?;
        Ok(())
    }

    /// A Linux bridge in `host`, up.
    pub fn bridge(&self, host: &str, name: &str) -> Result<()> {
        names::check_ifname(name)?;
        let ns = self.known_netns(host)?;
        cmd::ip_in(&ns, &["link", "add", name, "type", "bridge"])?;
        cmd::ip_in(&ns, &["link", "set", name, "up"])?;
        Ok(())
    }

    pub fn enslave(&self, host: &str, iface: &str, bridge: &str) -> Result<()> {
        cmd::ip_in(
            &self.known_netns(host)?,
            &["link", "set", iface, "master", bridge],
        )?;
        Ok(())
    }

    /// Adds `cidr` (e.g. `10.0.0.1/24`) to `iface`.
    pub fn addr(&self, host: &str, iface: &str, cidr: &str) -> Result<()> {
        if !cidr.contains('/') {
            bail!("address {cidr:?} for {iface} needs a prefix length (e.g. 10.0.0.1/24)");
        }
        cmd::ip_in(
            &self.known_netns(host)?,
            &["addr", "add", cidr, "dev", iface],
        )?;
        Ok(())
    }

    pub fn set_mac(&self, host: &str, iface: &str, mac: &str) -> Result<()> {
        cmd::ip_in(
            &self.known_netns(host)?,
            &["link", "set", iface, "address", mac],
        )?;
        Ok(())
    }

    pub fn up(&self, host: &str, iface: &str) -> Result<()> {
        cmd::ip_in(&self.known_netns(host)?, &["link", "set", iface, "up"])?;
        Ok(())
    }

    /// GRO gives a veth NAPI, without which XDP_REDIRECT into its peer delivers nothing.
    pub fn enable_gro(&self, host: &str, iface: &str) -> Result<()> {
        self.exec(host, &["ethtool", "-K", iface, "gro", "on"])?;
        Ok(())
    }

    /// A VM: namespace `vm` (created if new) wired to `host` by a veth pair. The VM side
    /// (`<lab>-<vm>n`) gets `ip_cidr`, `mac` and GRO; the host side (`<lab>-<vm>`) is put on
    /// `bridge` if given. Both ends are up.
    pub fn attach_vm(
        &self,
        host: &str,
        vm: &str,
        ip_cidr: &str,
        mac: &str,
        bridge: Option<&str>,
    ) -> Result<VmPort> {
        names::check_label(vm)?;
        if !self.has_host(vm) {
            self.add_host(vm)?;
        }
        let host_if = self.ifname(vm)?;
        let vm_if = names::ifname(&self.name, &format!("{vm}n"))
            .with_context(|| format!("VM label {vm:?} is one character too long"))?;
        self.veth(host, &host_if, vm, &vm_if)?;
        self.set_mac(vm, &vm_if, mac)?;
        self.addr(vm, &vm_if, ip_cidr)?;
        self.up(vm, &vm_if)?;
        self.enable_gro(vm, &vm_if)?;
        if let Some(br) = bridge {
            self.enslave(host, &host_if, br)?;
        }
        self.up(host, &host_if)?;
        let ip = ip_cidr.split('/').next().unwrap_or(ip_cidr).to_string();
        Ok(VmPort {
            vm: vm.to_string(),
            vm_if,
            host_if,
            ip,
            mac: mac.to_string(),
        })
    }

    /// The basic topology: namespace `host` with a bridge `<lab>-br`, and one VM namespace
    /// per label on it; VM `i` (from 0) gets 10.0.0.(i+1)/24 and MAC `names::mac(i+1)`.
    pub fn bridged_vms(&self, host: &str, vms: &[&str]) -> Result<Vec<VmPort>> {
        if vms.len() > 250 {
            bail!(
                "bridged_vms: at most 250 VMs fit 10.0.0.0/24, asked for {}",
                vms.len()
            );
        }
        if !self.has_host(host) {
            self.add_host(host)?;
        }
        let bridge = self.ifname("br")?;
        self.bridge(host, &bridge)?;
        vms.iter()
            .enumerate()
            .map(|(i, vm)| {
                let n = i as u16 + 1;
                self.attach_vm(
                    host,
                    vm,
                    &format!("10.0.0.{n}/24"),
                    &names::mac(n),
                    Some(&bridge),
                )
            })
            .collect()
    }

    fn known_netns(&self, host: &str) -> Result<String> {
        let ns = self.netns(host);
        if !self.state().namespaces.contains(&ns) {
            bail!("lab {}: no host {host:?} (add_host it first)", self.name);
        }
        Ok(ns)
    }

    /// Starts `argv` inside `host`; stdout and stderr go to files in the run dir.
    pub fn spawn(&self, host: &str, argv: &[&str]) -> Result<LabProcess<'_>> {
        let ns = self.known_netns(host)?;
        let n = {
            let mut st = self.state();
            st.next_process += 1;
            st.next_process
        };
        let out = self.run_dir.join(format!("p{n}.out"));
        let err = self.run_dir.join(format!("p{n}.err"));
        let mut command = cmd::in_netns(&ns, argv)?;
        command
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?)
            .stderr(fs::File::create(&err).with_context(|| format!("creating {}", err.display()))?);
        let line = cmd::describe(&command);
        let child = command
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        Ok(LabProcess::new(child, line, out, err))
    }

    /// Runs `argv` inside `host` to completion; a failure names the command and its stderr.
    pub fn exec(&self, host: &str, argv: &[&str]) -> Result<Finished> {
        self.spawn(host, argv)?.wait_success(EXEC_TIMEOUT)
    }

    /// Starts `sluiced` (`binary`) in `host` with the lab's pin dir and API socket for that
    /// host, and waits until it is ready.
    pub fn daemon(&self, host: &str, binary: &Path, spec: &DaemonSpec) -> Result<Daemon<'_>> {
        self.known_netns(host)?;
        if !binary.exists() {
            bail!(
                "sluiced binary {} does not exist (build it first)",
                binary.display()
            );
        }
        let pin_dir = Path::new(BPFFS).join(self.netns(host));
        let socket = self.run_dir.join(format!("{host}.sock"));
        let config = DaemonConfig {
            pin_dir: pin_dir.clone(),
            api: format!("unix:{}", socket.display()),
            xdp_mode: spec.xdp_mode,
            on_exit: spec.on_exit,
            interfaces: spec.interfaces.clone(),
            controller: spec.controller.clone(),
            agent: spec.agent.clone(),
        };
        let config_path = self.run_dir.join(format!("{host}.yaml"));
        fs::write(&config_path, config.render()?)
            .with_context(|| format!("writing {}", config_path.display()))?;
        self.track_pin_dir(pin_dir.clone());
        let mut daemon = Daemon::new(self, host, binary, config_path, socket, pin_dir);
        daemon.start()?;
        Ok(daemon)
    }

    /// Unpins and removes `dir` when the lab goes.
    fn track_pin_dir(&self, dir: PathBuf) {
        let mut st = self.state();
        if !st.pin_dirs.contains(&dir) {
            st.pin_dirs.push(dir);
        }
    }

    /// A UDP receiver on `port` in `host`, bound before this returns (see
    /// [`traffic::UDP_RECEIVER`]); it exits after `idle` without datagrams.
    pub fn udp_receiver(&self, host: &str, port: u16, idle: Duration) -> Result<LabProcess<'_>> {
        let (port, idle) = (port.to_string(), idle.as_secs_f64().to_string());
        let mut p = self.spawn(
            host,
            &["python3", "-c", traffic::UDP_RECEIVER, &port, &idle, "60"],
        )?;
        p.wait_for_stdout(Duration::from_secs(20), |s| s.contains("listening"))?;
        Ok(p)
    }

    /// A UDP sender from `host` to `dst:port` at `rate` datagrams/s; `count` 0 sends until
    /// SIGTERM (see [`traffic::UDP_SENDER`]).
    pub fn udp_sender(
        &self,
        host: &str,
        dst: &str,
        port: u16,
        count: u64,
        rate: u32,
    ) -> Result<LabProcess<'_>> {
        if rate == 0 {
            bail!("udp_sender rate must be positive");
        }
        let args = [port.to_string(), count.to_string(), rate.to_string()];
        let mut p = self.spawn(
            host,
            &[
                "python3",
                "-c",
                traffic::UDP_SENDER,
                dst,
                &args[0],
                &args[1],
                &args[2],
            ],
        )?;
        p.wait_for_stdout(Duration::from_secs(20), |s| s.contains("sending"))?;
        Ok(p)
    }

    /// Removes everything now, reporting what could not be removed (drop does the same
    /// silently but for a message on stderr).
    pub fn close(self) -> Result<()> {
        let problems = self.cleanup();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "lab {}: cleanup left: {}",
                self.name,
                problems.join("; ")
            ))
        }
    }

    fn cleanup(&self) -> Vec<String> {
        let (namespaces, pin_dirs) = {
            let mut st = self.state();
            if st.closed {
                return Vec::new();
            }
            st.closed = true;
            (st.namespaces.clone(), st.pin_dirs.clone())
        };
        let mut problems = Vec::new();
        for ns in &namespaces {
            if let Err(e) = kill_netns_processes(ns) {
                problems.push(format!("{e:#}"));
            }
        }
        for dir in &pin_dirs {
            if let Err(e) = remove_pin_dir(dir) {
                problems.push(format!("{e:#}"));
            }
        }
        for ns in namespaces.iter().rev() {
            if let Err(e) = cmd::ip(&["netns", "del", ns]) {
                problems.push(format!("{e:#}"));
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.run_dir) {
            problems.push(format!("removing {}: {e}", self.run_dir.display()));
        }
        problems
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let problems = self.cleanup();
        if !problems.is_empty() {
            eprintln!(
                "lab {}: cleanup problems: {}",
                self.name,
                problems.join("; ")
            );
        }
    }
}

/// Mounts the bpffs at [`BPFFS`] unless one is there.
pub fn ensure_bpffs() -> Result<()> {
    let dir = Path::new(BPFFS);
    if cmd::is_bpffs_mounted(dir)? {
        return Ok(());
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {BPFFS}"))?;
    cmd::run(std::process::Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    Ok(())
}

/// Unpins links (detaching XDP) and maps, then removes the directory.
fn remove_pin_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    crate::loader::teardown(dir).with_context(|| format!("tearing down {}", dir.display()))?;
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Kills (by PID) every process still inside `ns`, and waits until none is left.
fn kill_netns_processes(ns: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = cmd::ip(&["netns", "pids", ns])?;
        let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("processes {pids:?} in namespace {ns} survived SIGKILL");
        }
        for pid in pids {
            process::signal_pid(pid, libc::SIGKILL).ok();
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Removes labs whose owner process is gone (it was killed before its drop could run).
fn sweep_stale() {
    let Ok(entries) = fs::read_dir(RUN_ROOT) else {
        return;
    };
    let namespaces = cmd::list_netns().unwrap_or_default();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !names::is_lab_name(&name) {
            continue;
        }
        let Some(owner) = fs::read_to_string(entry.path().join("owner"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let alive = unsafe { libc::kill(owner, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if alive {
            continue;
        }
        eprintln!("lab: removing leftovers of lab {name} (owner pid {owner} is gone)");
        let prefix = format!("{name}-");
        for ns in namespaces.iter().filter(|n| n.starts_with(&prefix)) {
            kill_netns_processes(ns).ok();
            cmd::ip(&["netns", "del", ns]).ok();
        }
        if let Ok(pins) = fs::read_dir(BPFFS) {
            for pin in pins.flatten() {
                if pin.file_name().to_string_lossy().starts_with(&prefix) {
                    remove_pin_dir(&pin.path()).ok();
                }
            }
        }
        fs::remove_dir_all(entry.path()).ok();
    }
}
