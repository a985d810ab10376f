//! Processes a lab starts inside its namespaces. Each handle kills its process (by PID,
//! before it is reaped, so the PID cannot have been reused) when dropped.

use std::{
    fs,
    marker::PhantomData,
    path::PathBuf,
    process::{Child, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// A finished command's status and output.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A process running in a lab namespace; output goes to files in the lab's run dir.
pub struct LabProcess<'lab> {
    child: Option<Child>,
    line: String,
    stdout: PathBuf,
    stderr: PathBuf,
    _lab: PhantomData<&'lab super::Lab>,
}

impl<'lab> LabProcess<'lab> {
    pub(super) fn new(child: Child, line: String, stdout: PathBuf, stderr: PathBuf) -> Self {
        Self {
            child: Some(child),
            line,
            stdout,
            stderr,
            _lab: PhantomData,
        }
    }

    /// The command line it runs.
    pub fn line(&self) -> &str {
        &self.line
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends `signal` to it, if it has not been reaped yet.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        let child = self.child.as_mut().context("process already reaped")?;
        if child.try_wait()?.is_some() {
            bail!("`{}` already exited", self.line);
        }
        signal_pid(child.id(), signal).with_context(|| format!("signalling `{}`", self.line))
    }

    /// Polls `stdout` until `pred` holds; fails if the process exits first or time runs out.
    pub fn wait_for_stdout(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<()> {
        self.wait_for(timeout, Self::stdout, pred)
    }

    /// Like [`Self::wait_for_stdout`], on `stderr` (where tcpdump says it is listening).
    pub fn wait_for_stderr(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<()> {
        self.wait_for(timeout, Self::stderr, pred)
    }

    fn wait_for(
        &mut self,
        timeout: Duration,
        output: fn(&Self) -> String,
        pred: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&output(self)) {
                return Ok(());
            }
            let child = self.child.as_mut().context("process already reaped")?;
            if let Some(status) = child.try_wait()? {
                bail!(
                    "`{}` exited ({status}) before printing what was awaited\nstdout: {}\nstderr: {}",
                    self.line,
                    self.stdout(),
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "`{}` did not print what was awaited within {timeout:?}\nstdout: {}\nstderr: {}",
                    self.line,
                    self.stdout(),
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for it to exit; kills it and fails after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Result<Finished> {
        let mut child = self.child.take().context("process already reaped")?;
        let status = match wait_timeout(&mut child, timeout)? {
            Some(status) => status,
            None => {
                child.kill().ok();
                child.wait().ok();
                bail!(
                    "`{}` still running after {timeout:?}; killed\nstdout: {}\nstderr: {}",
                    self.line,
                    self.stdout(),
                    self.stderr()
                );
            }
        };
        Ok(Finished {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        })
    }

    /// Like [`Self::wait`], and a non-zero exit is an error with the command and its stderr.
    pub fn wait_success(self, timeout: Duration) -> Result<Finished> {
        let line = self.line.clone();
        let done = self.wait(timeout)?;
        if !done.status.success() {
            bail!(
                "`{line}` failed ({}): {}\nstdout: {}",
                done.status,
                done.stderr.trim(),
                done.stdout.trim()
            );
        }
        Ok(done)
    }
}

impl Drop for LabProcess<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// `kill(pid, signal)`.
pub fn signal_pid(pid: u32, signal: i32) -> Result<()> {
    let pid = i32::try_from(pid).context("pid out of range")?;
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("kill({pid}, {signal})"));
    }
    Ok(())
}

/// Polls `child` until it exits or `timeout` passes (`None`).
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}
