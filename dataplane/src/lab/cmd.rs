//! Running the `ip`/`ethtool`/... commands a lab is built from, with errors that say which
//! command failed and what it printed.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
};

use anyhow::{bail, Context, Result};

/// The command line as a shell would show it; inline scripts are abbreviated.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            match a.lines().count() {
                n if n > 1 => format!("<{n}-line script>"),
                _ => a.into_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion; a non-zero exit is an error carrying the command and its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    check(&line, out)
}

/// Turns a finished command's output into an error when it failed.
pub fn check(line: &str, out: Output) -> Result<Output> {
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout_hint(&out.stdout),
        );
    }
    Ok(out)
}

fn stdout_hint(stdout: &[u8]) -> String {
    let s = String::from_utf8_lossy(stdout);
    let s = s.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!("\nstdout: {s}")
    }
}

/// `ip <args>`.
pub fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// `ip -n <netns> <args>`: `ip` acting inside a namespace.
pub fn ip_in(netns: &str, args: &[&str]) -> Result<Output> {
    run(Command::new("ip").arg("-n").arg(netns).args(args))
}

/// A command that runs `argv` inside `netns`.
pub fn in_netns(netns: &str, argv: &[&str]) -> Result<Command> {
    let Some((program, _)) = argv.split_first() else {
        bail!("empty command for namespace {netns}");
    };
    if program.is_empty() {
        bail!("empty program name for namespace {netns}");
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]).args(argv);
    Ok(cmd)
}

/// Namespaces `ip netns list` shows.
pub fn list_netns() -> Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    Ok(parse_netns_list(&String::from_utf8_lossy(&out.stdout)))
}

/// `ip netns list` prints `name (id: N)` or just `name`, one per line.
pub fn parse_netns_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Interface names in the namespace (or the root namespace for `None`).
pub fn list_links(netns: Option<&str>) -> Result<Vec<String>> {
    let out = match netns {
        Some(ns) => ip_in(ns, &["-o", "link", "show"])?,
        None => ip(&["-o", "link", "show"])?,
    };
    Ok(parse_link_list(&String::from_utf8_lossy(&out.stdout)))
}

/// `ip -o link show` prints `N: name@peer: <FLAGS> ...` per line.
pub fn parse_link_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// Whether a bpffs is mounted exactly at `dir`.
pub fn is_bpffs_mounted(dir: &Path) -> Result<bool> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(mountinfo_has_bpffs(&info, dir))
}

/// mountinfo lines: `id parent dev root mountpoint opts [tags] - fstype source superopts`.
pub fn mountinfo_has_bpffs(info: &str, dir: &Path) -> bool {
    info.lines().any(|line| {
        let mut halves = line.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            return false;
        };
        left.split_whitespace().nth(4) == dir.to_str()
            && right.split_whitespace().next() == Some("bpf")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_commands_are_named_with_their_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`sh -c echo boom >&2; exit 3`"), "{err}");
        assert!(err.contains("boom"), "{err}");
        assert!(err.contains('3'), "{err}");
    }

    #[test]
    fn missing_programs_are_named() {
        let err = run(&mut Command::new("sluice-no-such-program"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sluice-no-such-program"), "{err}");
    }

    #[test]
    fn in_netns_wraps_with_ip_netns_exec() {
        let cmd = in_netns("sl0001-h", &["ping", "-c", "1", "10.0.0.2"]).unwrap();
        assert_eq!(describe(&cmd), "ip netns exec sl0001-h ping -c 1 10.0.0.2");
        assert!(in_netns("x", &[]).is_err());
        let script = in_netns("x", &["python3", "-c", "import os\nprint(1)\n"]).unwrap();
        assert_eq!(
            describe(&script),
            "ip netns exec x python3 -c <2-line script>"
        );
    }

    #[test]
    fn netns_and_link_listings_parse() {
        assert_eq!(
            parse_netns_list("sl0001-vm1 (id: 1)\nsl0001-h\n"),
            ["sl0001-vm1", "sl0001-h"]
        );
        let links = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536\n\
                     5: sl0001-vm1@if4: <BROADCAST> mtu 1500\n";
        assert_eq!(parse_link_list(links), ["lo", "sl0001-vm1"]);
    }

    #[test]
    fn bpffs_mount_is_found_by_mountpoint_and_type() {
        let info = "42 27 0:39 / /run/sluice/bpffs rw,relatime - bpf bpf rw\n\
                    43 27 0:40 / /run/other rw - tmpfs tmpfs rw\n";
        assert!(mountinfo_has_bpffs(info, Path::new("/run/sluice/bpffs")));
        assert!(!mountinfo_has_bpffs(info, Path::new("/run/other")));
        assert!(!mountinfo_has_bpffs(info, Path::new("/run/sluice")));
    }
}
