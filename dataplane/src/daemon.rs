//! The `sluiced` daemon: load, attach, serve the API until SIGTERM/SIGINT, then either leave
//! everything pinned (hitless restart) or tear it down, as the config says.

use std::{
    ffi::CString,
    future::{Future, IntoFuture},
    io,
    os::unix::{fs::FileTypeExt, io::AsRawFd},
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{signal, SignalKind},
    sync::watch,
};

use crate::{
    agent::{Agent, AgentStatus},
    api::{self, ApiState, AttachJson, InterfaceJson},
    config::{ApiAddr, Config, OnExit},
    controller::Controller,
    loader::{self, Dataplane},
};

/// The line tests and scripts wait for.
pub const READY_LINE: &str = "sluiced: ready";

/// How long open connections get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Runs the daemon to completion on its own tokio runtime.
pub fn run(config: Config) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(serve(config))
}

/// Removes every pin under `pin_dir` (links, then maps), detaching XDP; the offline
/// counterpart of `on_exit: detach`.
pub fn teardown(pin_dir: &Path) -> Result<()> {
    if !pin_dir.exists() {
        bail!("pin dir {} does not exist", pin_dir.display());
    }
    loader::teardown(pin_dir)
        .with_context(|| format!("tearing down pins under {}", pin_dir.display()))?;
    // The instance directory itself is empty now; leave no trace. Ignore "not empty".
    std::fs::remove_dir(pin_dir).ok();
    Ok(())
}

async fn serve(config: Config) -> Result<()> {
    // Registered first, so a signal during loading is not fatal: it ends the run cleanly
    // right after startup instead.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    // Claim the pin dir and the API address before touching the dataplane, so a second
    // instance fails without swapping programs under the first one.
    check_bpffs(&config.pin_dir)?;
    let _pin_lock = lock_pin_dir(&config.pin_dir)?;
    let (listener, socket_file) = match &config.api {
        ApiAddr::Unix(path) => (
            ApiListener::Unix(bind_unix(path).await?),
            Some(SocketFile(path.clone())),
        ),
        ApiAddr::Tcp(addr) => (
            ApiListener::Tcp(
                TcpListener::bind(addr.as_str())
                    .await
                    .with_context(|| format!("api: binding {addr}"))?,
            ),
            None,
        ),
    };

    // A controller whose store cannot be opened must not start half a daemon.
    let controller = match &config.controller {
        Some(c) => Some(Arc::new(Controller::open(&c.store).with_context(|| {
            format!("controller: opening the intent store {}", c.store.display())
        })?)),
        None => None,
    };

    let mut dataplane = Dataplane::load(Some(&config.pin_dir)).with_context(|| {
        format!(
            "loading the dataplane pinned at {}",
            config.pin_dir.display()
        )
    })?;
    // Before any program is attached: the timeouts and limit apply from the first packet.
    crate::conntrack::write_config(&mut dataplane, &config.conntrack.ct_config())
        .context("writing the connection-table configuration")?;
    let interfaces = attach_all(&mut dataplane, &config)?;
    for i in &interfaces {
        let how = match i.attach {
            AttachJson::New => "new pinned link",
            AttachJson::Replaced => "replaced the program in the pinned link",
        };
        log::info!(
            "{} (ifindex {}): {} attached, {how}",
            i.name,
            i.ifindex,
            i.role.program()
        );
    }
    let configured = interfaces.iter().map(|i| i.name.clone()).collect();
    let dataplane = Arc::new(Mutex::new(dataplane));
    let mut state = ApiState::new(dataplane.clone(), config.pin_dir.clone(), interfaces)
        .with_conntrack(dataplane.clone());
    if let Some(c) = &controller {
        log::info!(
            "controller: intent store {} at generation {}",
            config
                .controller
                .as_ref()
                .expect("controller config")
                .store
                .display(),
            c.generation()
        );
        state = state.with_controller(c.clone());
    }
    let agent = config.agent.as_ref().map(|a| {
        let controller = a.controller.clone().unwrap_or_else(|| config.api.clone());
        let status = Arc::new(Mutex::new(AgentStatus {
            host: a.host.clone(),
            controller: controller.to_string(),
            ..Default::default()
        }));
        Agent {
            host: a.host.clone(),
            controller,
            resync: Duration::from_secs(a.resync_secs),
            pin_dir: config.pin_dir.clone(),
            xdp_mode: config.xdp_mode.into(),
            configured,
            dataplane: dataplane.clone(),
            status,
            metrics: Default::default(),
            lb: Default::default(),
            checks: Default::default(),
        }
    });
    if let Some(a) = &agent {
        state = state.with_agent(a.status.clone(), &a.metrics);
    }
    let app = api::router(Arc::new(state));

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let shutdown = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    let mut server: Pin<Box<dyn Future<Output = io::Result<()>> + Send>> = match listener {
        ApiListener::Unix(l) => Box::pin(
            axum::serve(l, app)
                .with_graceful_shutdown(shutdown)
                .into_future(),
        ),
        ApiListener::Tcp(l) => Box::pin(
            axum::serve(l, app)
                .with_graceful_shutdown(shutdown)
                .into_future(),
        ),
    };
    log::info!("serving the API on {}", config.api);
    let agent_task = agent.map(|agent| {
        log::info!(
            "agent: programming host {} from the controller at {}",
            agent.host,
            agent.controller
        );
        tokio::spawn(agent.run(stop_tx.subscribe()))
    });
    eprintln!("{READY_LINE}");

    let served = tokio::select! {
        r = &mut server => r.context("the API server stopped"),
        name = async {
            tokio::select! {
                _ = sigterm.recv() => "SIGTERM",
                _ = sigint.recv() => "SIGINT",
            }
        } => {
            log::info!("{name}: shutting down (on_exit: {:?})", config.on_exit);
            let _ = stop_tx.send(true);
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(r) => r.context("the API server stopped"),
                Err(_) => {
                    log::warn!("open API connections did not finish in {SHUTDOWN_GRACE:?}; closing them");
                    Ok(())
                }
            }
        }
    };
    let _ = stop_tx.send(true);
    if let Some(task) = agent_task {
        // An apply in progress finishes: the maps are never left half-written by us.
        if let Err(e) = task.await {
            log::warn!("agent task: {e}");
        }
    }
    drop(server);
    drop(socket_file);

    // Our own program and link fds go with the process; the pins decide what survives.
    drop(dataplane);
    let cleaned = match config.on_exit {
        OnExit::Keep => {
            log::info!(
                "leaving XDP attached; links and maps stay pinned under {}",
                config.pin_dir.display()
            );
            Ok(())
        }
        OnExit::Detach => teardown(&config.pin_dir),
    };
    served.and(cleaned)
}

enum ApiListener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// Removes the API socket file when the daemon stops, on success or error.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            log::warn!("removing the API socket {}: {e}", self.0.display());
        }
    }
}

/// Holds an exclusive flock on the pin directory for the daemon's lifetime: one daemon per
/// instance. (bpffs holds no regular files, but directories can be locked.)
fn lock_pin_dir(pin_dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(pin_dir)
        .with_context(|| format!("pin_dir: creating {}", pin_dir.display()))?;
    let dir = std::fs::File::open(pin_dir)
        .with_context(|| format!("pin_dir: opening {}", pin_dir.display()))?;
    // SAFETY: flock(2) on an fd we own.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!(
                "pin_dir: {} is in use by another running sluiced",
                pin_dir.display()
            );
        }
        return Err(err).with_context(|| format!("pin_dir: locking {}", pin_dir.display()));
    }
    Ok(dir)
}

/// Attaches every configured interface. If one fails, links created by this run are removed
/// again so a failed start does not leave a half-configured host.
fn attach_all(dataplane: &mut Dataplane, config: &Config) -> Result<Vec<InterfaceJson>> {
    let mut done: Vec<InterfaceJson> = Vec::new();
    for iface in &config.interfaces {
        let attached = ifindex(&iface.name).and_then(|ifindex| {
            let how = dataplane.attach(&iface.name, iface.role, config.xdp_mode.into())?;
            Ok((ifindex, how))
        });
        match attached {
            Ok((ifindex, how)) => done.push(InterfaceJson {
                name: iface.name.clone(),
                role: iface.role,
                ifindex,
                attach: AttachJson::from(how),
            }),
            Err(e) => {
                for d in done.iter().filter(|d| d.attach == AttachJson::New) {
                    if let Err(e) = loader::detach_pinned(&config.pin_dir, &d.name) {
                        log::warn!("rolling back {}: {e:#}", d.name);
                    }
                }
                return Err(e.context(format!("interface {}", iface.name)));
            }
        }
    }
    Ok(done)
}

fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name).map_err(|_| anyhow!("interface name {name:?} contains NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("no interface named {name} in this network namespace"));
    }
    Ok(index)
}

/// Pins only work on a bpffs; say so plainly instead of failing deep inside the loader.
fn check_bpffs(pin_dir: &Path) -> Result<()> {
    let mut dir: PathBuf = pin_dir.to_path_buf();
    while !dir.exists() {
        if !dir.pop() {
            break;
        }
    }
    let c = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| anyhow!("pin_dir {} contains NUL", pin_dir.display()))?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path pointer and a zeroed statfs out-parameter.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("pin_dir: statfs {}", dir.display()));
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs.
    if st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "pin_dir: {} is not on a bpffs (mount one with `mount -t bpf bpf {}`)",
            pin_dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Binds the API socket: creates its directory, replaces a stale socket file, and refuses
/// to touch a non-socket file or a socket another daemon is still serving on.
async fn bind_unix(path: &Path) -> Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("api: creating {}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                bail!(
                    "api: {} is in use by a running process (another sluiced?)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("api: removing stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "api: {} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("api: checking {}", path.display())),
    }
    UnixListener::bind(path).with_context(|| format!("api: binding {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-daemon-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn bind_unix_replaces_a_stale_socket_and_creates_the_directory() {
        let dir = scratch("stale");
        let sock = dir.join("sub/api.sock");
        drop(bind_unix(&sock).await.unwrap()); // leaves the file behind, like a crash
        assert!(sock.exists());
        let _l = bind_unix(&sock).await.expect("stale socket replaced");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn bind_unix_refuses_a_live_socket_and_a_regular_file() {
        let dir = scratch("live");
        let sock = dir.join("api.sock");
        let _live = bind_unix(&sock).await.unwrap();
        let e = bind_unix(&sock).await.unwrap_err().to_string();
        assert!(e.contains("in use"), "{e}");
        let file = dir.join("plain");
        std::fs::write(&file, "x").unwrap();
        let e = bind_unix(&file).await.unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
        assert!(file.exists(), "a regular file must not be removed");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn pin_dir_off_bpffs_is_rejected_with_a_hint() {
        let dir = scratch("notbpf");
        let e = check_bpffs(&dir.join("x/y")).unwrap_err().to_string();
        assert!(
            e.starts_with("pin_dir:") && e.contains("not on a bpffs"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unknown_interface_is_named() {
        let e = format!("{:#}", ifindex("sluice-nope0").unwrap_err());
        assert!(e.contains("no interface named sluice-nope0"), "{e}");
    }
}
