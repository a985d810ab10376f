//! Facts about the machine a result was taken on, recorded beside every figure.

use std::{collections::BTreeMap, ffi::CStr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `uname -r`.
    pub kernel_release: String,
    /// `uname -v`.
    pub kernel_version: String,
    /// `uname -m`.
    pub arch: String,
    /// First `model name` in /proc/cpuinfo.
    pub cpu_model: String,
    /// Online CPUs (`nproc`).
    pub nproc: usize,
    /// /proc/loadavg when the run started: a busy machine makes noisy figures.
    pub loadavg_at_start: String,
    /// /proc/sys/net/core/bpf_jit_enable: 1 (or 2) means programs run JIT-compiled.
    pub bpf_jit_enable: String,
    /// /sys/devices/system/cpu/vulnerabilities/<name> for the speculative-execution
    /// mitigations that make calls and returns dearer (retpolines, return thunks): every
    /// helper call and map lookup pays them.
    #[serde(default)]
    pub cpu_mitigations: BTreeMap<String, String>,
}

/// The mitigations that change the cost of a call or return.
const CALL_MITIGATIONS: [&str; 3] = ["spectre_v2", "retbleed", "spec_rstack_overflow"];

impl Machine {
    pub fn collect() -> Machine {
        let (release, version, arch) = uname();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let nproc = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        Machine {
            kernel_release: release,
            kernel_version: version,
            arch,
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            nproc: usize::try_from(nproc).unwrap_or(0),
            loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            bpf_jit_enable: std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            cpu_mitigations: CALL_MITIGATIONS
                .iter()
                .filter_map(|name| {
                    let path = format!("/sys/devices/system/cpu/vulnerabilities/{name}");
                    let state = std::fs::read_to_string(path).ok()?;
                    Some((name.to_string(), state.trim().to_string()))
                })
                .collect(),
        }
    }
}

fn uname() -> (String, String, String) {
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        let unknown = || "unknown".to_string();
        return (unknown(), unknown(), unknown());
    }
    let field = |f: &[libc::c_char]| {
        unsafe { CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    (field(&u.release), field(&u.version), field(&u.machine))
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

/// The source tree's commit (`-dirty` with uncommitted changes), when built from a git
/// checkout that is still there: results are only comparable for the same programs.
pub fn git_commit() -> Option<String> {
    let tree = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(tree)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty();
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

fn format_utc(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(format_utc(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn cpu_model_takes_the_first_model_name() {
        let info = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t: x\nmodel name\t: other\n";
        assert_eq!(cpu_model(info).as_deref(), Some("AMD EPYC"));
        assert_eq!(cpu_model("processor : 0\n"), None);
    }

    #[test]
    fn collect_reads_this_machine() {
        let m = Machine::collect();
        assert!(m.nproc >= 1);
        assert!(!m.kernel_release.is_empty());
    }
}
