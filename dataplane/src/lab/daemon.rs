//! A `sluiced` running inside a lab namespace: start, wait until ready, stop with SIGTERM,
//! restart, and read its stats through the API or straight from the pinned map.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use sluice_common::maps;

use super::{
    api::{self, Status},
    cmd,
    process::{signal_pid, wait_timeout},
    Lab,
};
use crate::{loader, stats::StatsSnapshot};

/// The line the daemon logs once attached and serving.
pub use crate::daemon::READY_LINE;

/// How long a start may take (loading through the verifier on a busy 2-core machine).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the daemon may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Daemon<'lab> {
    lab: &'lab Lab,
    host: String,
    netns: String,
    binary: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    pin_dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
}

impl<'lab> Daemon<'lab> {
    pub(super) fn new(
        lab: &'lab Lab,
        host: &str,
        binary: &Path,
        config: PathBuf,
        socket: PathBuf,
        pin_dir: PathBuf,
    ) -> Self {
        Self {
            lab,
            host: host.to_string(),
            netns: lab.netns(host),
            binary: binary.to_path_buf(),
            log: lab.run_dir().join(format!("{host}.sluiced.log")),
            config,
            socket,
            pin_dir,
            child: None,
            starts: 0,
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The `--api` value for `sluicectl`.
    pub fn api(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the daemon logged, over all its starts.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the daemon and waits until it is ready.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("sluiced on {} is already running", self.host);
        }
        self.starts += 1;
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let log_start = log.metadata()?.len();
        use std::io::Write;
        writeln!(log, "---- lab: start #{} ----", self.starts)?;
        let binary = self.binary.to_str().context("sluiced path is not UTF-8")?;
        let config = self.config.to_str().context("config path is not UTF-8")?;
        let mut command = cmd::in_netns(&self.netns, &[binary, "--config", config])?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let line = cmd::describe(&command);
        let child = command
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        self.child = Some(child);
        self.wait_ready(log_start, &line)
    }

    fn wait_ready(&mut self, log_start: u64, line: &str) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("started");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "`{line}` exited ({status}) before logging {READY_LINE:?}\n--- sluiced log ---\n{}",
                    self.log_since(log_start)
                );
            }
            if self.log_since(log_start).contains(READY_LINE)
                && api::http_get(&self.socket, "/healthz").is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let health = api::http_get(&self.socket, "/healthz")
                    .err()
                    .map(|e| format!("\n/healthz: {e:#}"))
                    .unwrap_or_default();
                bail!(
                    "`{line}` not ready within {READY_TIMEOUT:?} (no {READY_LINE:?} line or /healthz not answering){health}\n--- sluiced log ---\n{}",
                    self.log_since(log_start)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_since(&self, offset: u64) -> String {
        let all = fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(all.get(offset as usize..).unwrap_or_default()).into_owned()
    }

    /// SIGTERM, then waits; a daemon that does not exit, or exits with failure, is an error.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .with_context(|| format!("sluiced on {} is not running", self.host))?;
        signal_pid(child.id(), libc::SIGTERM)?;
        let Some(status) = wait_timeout(&mut child, STOP_TIMEOUT)? else {
            child.kill().ok();
            child.wait().ok();
            bail!(
                "sluiced on {} ignored SIGTERM for {STOP_TIMEOUT:?}; killed\n--- sluiced log ---\n{}",
                self.host,
                self.log()
            );
        };
        if !status.success() {
            bail!(
                "sluiced on {} exited with {status} after SIGTERM\n--- sluiced log ---\n{}",
                self.host,
                self.log()
            );
        }
        Ok(status)
    }

    /// Stops (SIGTERM) and starts again, waiting until the new daemon is ready.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start()
    }

    /// `GET path` from this daemon's API.
    pub fn get(&self, path: &str) -> Result<String> {
        api::http_get(&self.socket, path)
            .with_context(|| format!("asking sluiced on {} for {path}", self.host))
    }

    /// Counters as the daemon reports them on `/v1/stats`.
    pub fn stats(&self) -> Result<StatsSnapshot> {
        api::parse_stats(&self.get("/v1/stats")?)
    }

    pub fn status(&self) -> Result<Status> {
        api::parse_status(&self.get("/v1/status")?)
    }

    /// Counters read straight from the pinned map: works while no daemon runs.
    pub fn pinned_stats(&self) -> Result<StatsSnapshot> {
        let map = loader::open_pinned_map(&self.pin_dir, maps::STATS)?;
        StatsSnapshot::read_pinned(map)
    }

    /// The lab this daemon runs in.
    pub fn lab(&self) -> &'lab Lab {
        self.lab
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_pid(child.id(), libc::SIGTERM).ok();
            if !matches!(
                wait_timeout(&mut child, Duration::from_secs(5)),
                Ok(Some(_))
            ) {
                child.kill().ok();
                child.wait().ok();
            }
        }
    }
}
