//! Pinning the measuring thread: BPF_PROG_TEST_RUN runs the program on the calling thread's
//! CPU, so a migration mid-run would mix two CPUs' caches into one figure.

use anyhow::{bail, Result};

/// Pins the calling thread to `cpu` and checks it now runs there.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    let max = libc::CPU_SETSIZE as usize;
    if cpu >= max {
        bail!("--cpu {cpu}: CPU numbers go up to {}", max - 1);
    }
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        bail!(
            "--cpu {cpu}: cannot pin the measuring thread there ({}); this machine has {online} online CPUs (0..{})",
            std::io::Error::last_os_error(),
            online - 1
        );
    }
    let now = current_cpu();
    if now != Some(cpu) {
        bail!("pinned to CPU {cpu} but the thread runs on {now:?}");
    }
    Ok(())
}

/// The CPU the calling thread runs on right now.
pub fn current_cpu() -> Option<usize> {
    usize::try_from(unsafe { libc::sched_getcpu() }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_to_cpu_zero_sticks_and_absurd_cpus_are_refused() {
        // CPU 0 is always online; run in a scratch thread so the test thread stays unpinned.
        std::thread::spawn(|| {
            pin_current_thread(0).unwrap();
            assert_eq!(current_cpu(), Some(0));
        })
        .join()
        .unwrap();
        let err = pin_current_thread(100_000).unwrap_err().to_string();
        assert!(err.contains("--cpu 100000"), "{err}");
        // In range for a cpu_set_t but not online: the kernel refuses, we say which CPUs exist.
        let err = pin_current_thread(1000).unwrap_err().to_string();
        assert!(
            err.contains("cannot pin") && err.contains("online CPUs"),
            "{err}"
        );
    }
}
