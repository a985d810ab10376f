//! A pass-everything XDP program for the far ends of lab veths.
//!
//! A frame an XDP program sends into a veth (XDP_TX back out of the device it arrived on,
//! or XDP_REDIRECT to another veth) lands in the ring of that veth's *peer*. Redirects work
//! whenever the peer runs NAPI (GRO or an XDP program); XDP_TX only kicks the peer's NAPI
//! when the peer has an XDP program, so with GRO alone the ARP responder's answers sit in
//! the ring until a redirect happens to flush it. A VM end with this program receives both
//! (see [`super::overlay`]).
//!
//! The program is two instructions (`r0 = XDP_PASS; exit`), loaded with the raw `bpf(2)`
//! syscall so it needs no object file, attached in driver mode through a BPF link created
//! from a thread that entered the namespace, and pinned so it outlives this process.

use std::{
    ffi::CString,
    fs::{self, File},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    thread,
};

use anyhow::{anyhow, bail, Context, Result};

use super::{Lab, BPFFS};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_PASS: i32 = 2;

/// `r0 = XDP_PASS; exit`.
fn pass_program() -> [u8; 16] {
    let mut insns = [0u8; 16];
    insns[0] = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
    insns[4..8].copy_from_slice(&XDP_PASS.to_le_bytes());
    insns[8] = 0x95; // BPF_JMP | BPF_EXIT
    insns
}

pub use crate::sys_bpf::{put_u32, put_u64};

/// `bpf(cmd, attr)` ([`crate::sys_bpf::call`]) with `what` as the error's context; a
/// returned fd is owned.
pub fn bpf(cmd: libc::c_long, attr: &mut [u8], what: &str) -> Result<libc::c_long> {
    crate::sys_bpf::call(cmd, attr).with_context(|| what.to_string())
}

fn load_pass_program() -> Result<OwnedFd> {
    load_xdp_program(&pass_program(), "lab_xdp_pass").context("loading the lab's XDP pass program")
}

/// Loads raw eBPF instructions (`insns`, 8 bytes each) as an XDP program named `name`
/// (at most 15 bytes).
pub fn load_xdp_program(insns: &[u8], name: &str) -> Result<OwnedFd> {
    if insns.is_empty() || !insns.len().is_multiple_of(8) || name.len() > 15 {
        bail!("XDP program {name:?}: {} bytes of instructions (whole 8-byte instructions, name at most 15 bytes)", insns.len());
    }
    let license = c"GPL";
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_XDP);
    put_u32(&mut attr, 4, (insns.len() / 8) as u32);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    attr[48..48 + name.len()].copy_from_slice(name.as_bytes());
    put_u32(&mut attr, 68, BPF_XDP); // expected_attach_type
    let fd = bpf(
        BPF_PROG_LOAD,
        &mut attr,
        &format!("loading XDP program {name}"),
    )?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches the pass-everything program to `ifindex` in the calling thread's namespace
/// (driver mode); the link lasts as long as the returned fd (nothing is pinned).
pub fn attach_pass(ifindex: u32) -> Result<OwnedFd> {
    let prog = load_pass_program()?;
    link_create(&prog, ifindex)
}

fn link_create(prog: &OwnedFd, ifindex: u32) -> Result<OwnedFd> {
    let mut attr = [0u8; 64];
    put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 4, ifindex);
    put_u32(&mut attr, 8, BPF_XDP);
    put_u32(&mut attr, 12, XDP_FLAGS_DRV_MODE);
    let link = bpf(BPF_LINK_CREATE, &mut attr, "attaching it in driver mode")?;
    Ok(unsafe { OwnedFd::from_raw_fd(link as i32) })
}

fn attach_and_pin(prog: &OwnedFd, ifindex: u32, pin: &Path) -> Result<()> {
    let link = link_create(prog, ifindex)?;
    let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u8; 32];
    put_u64(&mut attr, 0, path.as_ptr() as u64);
    put_u32(&mut attr, 8, link.as_raw_fd() as u32);
    bpf(
        BPF_OBJ_PIN,
        &mut attr,
        &format!("pinning its link at {}", pin.display()),
    )?;
    Ok(())
}

/// Runs in a thread of its own: entering a network namespace changes only that thread.
fn attach_in_netns(netns: &str, iface: &str, pin: &Path) -> Result<()> {
    let ns = File::open(Path::new("/run/netns").join(netns))
        .with_context(|| format!("opening namespace {netns}"))?;
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("entering {netns}"));
    }
    let name = CString::new(iface)?;
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {iface} in namespace {netns}");
    }
    let prog = load_pass_program()?;
    attach_and_pin(&prog, ifindex, pin)
}

impl Lab {
    /// Attaches a pass-everything XDP program (driver mode) to `iface` in `host`, so that
    /// frames XDP sends into its peer are delivered (see the module docs). The link is
    /// pinned under the lab's pin dir for `host` and removed with the lab.
    pub fn attach_xdp_pass(&self, host: &str, iface: &str) -> Result<()> {
        let netns = self.known_netns(host)?;
        let pin_dir = Path::new(BPFFS).join(&netns);
        let links = crate::loader::link_pin_path(&pin_dir, iface);
        fs::create_dir_all(links.parent().expect("link path has a parent"))
            .with_context(|| format!("creating {}", pin_dir.display()))?;
        self.track_pin_dir(pin_dir);
        let pin: PathBuf = links;
        let iface_owned = iface.to_string();
        let netns_owned = netns.clone();
        thread::spawn(move || attach_in_netns(&netns_owned, &iface_owned, &pin))
            .join()
            .map_err(|_| anyhow!("the thread attaching XDP in {netns} panicked"))?
            .with_context(|| format!("XDP pass program on {iface} in {netns}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_mov_r0_pass_then_exit() {
        let p = pass_program();
        assert_eq!(p[0], 0xb7);
        assert_eq!(i32::from_le_bytes(p[4..8].try_into().unwrap()), XDP_PASS);
        assert_eq!(p[8], 0x95);
        assert_eq!(&p[9..], &[0; 7]);
    }
}
