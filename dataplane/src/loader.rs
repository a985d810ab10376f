//! Loading the eBPF object, pinning its maps and links, and attaching the XDP entry points.
//!
//! Hitless restarts and upgrades: maps are pinned by name under `<pin_dir>/maps`, so a new
//! daemon (or a new program version) opens the same maps instead of creating empty ones;
//! each interface's XDP link is pinned under `<pin_dir>/links/<ifname>`, so the program stays
//! attached while no daemon runs. On start the daemon swaps its freshly loaded program into
//! the existing link with `BPF_LINK_UPDATE`, which is atomic: every packet sees either the
//! old program or the new one, never none.

use std::{
    fs,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Map, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use serde::{Deserialize, Serialize};
use sluice_common::{maps, programs};

/// Which XDP entry point an interface gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The host side of a VM's interface.
    Vm,
    /// The host's interface toward the fabric.
    Underlay,
}

impl Role {
    pub fn program(self) -> &'static str {
        match self {
            Role::Vm => programs::XDP_VM,
            Role::Underlay => programs::XDP_UNDERLAY,
        }
    }
}

/// How an attach went: a new link, or an existing pinned link whose program was replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    New,
    Replaced,
}

/// The loaded programs and maps of one Sluice instance.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
}

impl Dataplane {
    /// Loads every program through the verifier. With `pin_dir`, maps are pinned there
    /// (reused when already pinned); without, they live as long as this value (tests).
    pub fn load(pin_dir: Option<&Path>) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        if let Some(dir) = pin_dir {
            let map_dir = dir.join("maps");
            fs::create_dir_all(&map_dir)
                .with_context(|| format!("creating pin directory {}", map_dir.display()))?;
            for name in maps::ALL {
                loader.map_pin_path(name, map_dir.join(name));
            }
        }
        let mut ebpf = loader
            .load(crate::EBPF_OBJECT)
            .context("loading the eBPF object")?;
        for name in programs::ALL {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading program {name} through the verifier"))?;
        }
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.map(Path::to_path_buf),
        })
    }

    /// Names of the maps in the loaded object (to check each is pinned).
    pub fn map_names(&self) -> Vec<String> {
        self.ebpf.maps().map(|(name, _)| name.to_string()).collect()
    }

    pub fn program(&self, name: &str) -> Result<&Xdp> {
        self.ebpf
            .program(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()
            .map_err(Into::into)
    }

    pub fn program_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()
            .map_err(Into::into)
    }

    pub fn map(&self, name: &str) -> Result<&Map> {
        self.ebpf.map(name).ok_or_else(|| anyhow!("no map {name}"))
    }

    pub fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("no map {name}"))
    }

    /// Tells the benchmark wrappers (`xdp_bench_vm`, `xdp_bench_underlay`) how to put the
    /// frame back after each repetition of the next test run.
    pub fn set_bench_config(&self, config: &sluice_common::bench::BenchConfig) -> Result<()> {
        let name = sluice_common::bench::maps::CONFIG;
        let Map::Array(data) = self.map(name)? else {
            bail!("{name} is not an array");
        };
        crate::sys_bpf::update_elem(data.fd().as_fd().as_raw_fd(), &0u32, config)
            .with_context(|| format!("writing {name}"))
    }

    pub fn stats(&self) -> Result<crate::stats::StatsSnapshot> {
        crate::stats::StatsSnapshot::read(self.map(maps::STATS)?)
    }

    /// Attaches `role`'s program to `iface`. With a pin directory the link is pinned, and an
    /// already pinned link for `iface` gets the new program atomically instead.
    pub fn attach(&mut self, iface: &str, role: Role, mode: XdpMode) -> Result<Attached> {
        let link_path = self.pin_dir.as_ref().map(|d| link_pin_path(d, iface));
        let prog = self.program_mut(role.program())?;
        if let Some(path) = link_path.as_ref().filter(|p| p.exists()) {
            if !pinned_link_is_on(path, iface)? {
                // Its device is gone (re-created while no daemon ran): the link went
                // with it, and its pin is only a name now.
                log::info!("{iface}: its pinned link is on a device that is gone; attaching anew");
                fs::remove_file(path)
                    .with_context(|| format!("removing stale link pin {}", path.display()))?;
                return self.attach(iface, role, mode);
            }
            let pinned = PinnedLink::from_pin(path)
                .with_context(|| format!("opening pinned link {}", path.display()))?;
            let link = FdLink::from(pinned).try_into()?;
            prog.attach_to_link(link)
                .with_context(|| format!("replacing the program on {iface}"))?;
            return Ok(Attached::Replaced);
        }
        let id = prog
            .attach(iface, mode)
            .with_context(|| format!("attaching {} to {iface}", role.program()))?;
        if let Some(path) = link_path {
            let link: FdLink = prog.take_link(id)?.try_into().map_err(|_| {
                anyhow!("{iface}: kernel gave a netlink XDP attachment, which cannot be pinned")
            })?;
            fs::create_dir_all(path.parent().expect("link path has a parent"))?;
            link.pin(&path)
                .with_context(|| format!("pinning link {}", path.display()))?;
        }
        Ok(Attached::New)
    }
}

/// Whether the XDP link pinned at `path` is attached to the interface now named `iface`
/// (a link outlives the device it was attached to only as a pin: the kernel reports
/// ifindex 0 for it then).
fn pinned_link_is_on(path: &Path, iface: &str) -> Result<bool> {
    use crate::sys_bpf::{call, put_u32, put_u64};
    use std::os::fd::{FromRawFd, OwnedFd};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let name = std::ffi::CString::new(iface)?;
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    let pin = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u8; 16];
    put_u64(&mut attr, 0, pin.as_ptr() as u64);
    let fd = call(BPF_OBJ_GET, &mut attr).with_context(|| format!("opening {}", path.display()))?;
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // `struct bpf_link_info`: type, id, prog_id, then (8-aligned) the XDP ifindex.
    let mut info = [0u8; 64];
    let mut attr = [0u8; 16];
    put_u32(&mut attr, 0, fd.as_raw_fd() as u32);
    put_u32(&mut attr, 4, info.len() as u32);
    put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
    call(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("reading the pinned link's info")?;
    let linked = u32::from_ne_bytes(info[16..20].try_into().expect("4 bytes"));
    Ok(ifindex != 0 && linked == ifindex)
}

/// Where the link for `iface` is pinned.
pub fn link_pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join("links").join(iface)
}

/// Detaches `iface` by removing its pinned link (the kernel detaches once no fd holds it).
pub fn detach_pinned(pin_dir: &Path, iface: &str) -> Result<bool> {
    let path = link_pin_path(pin_dir, iface);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Removes every pin (links first, so traffic stops being processed before maps vanish).
pub fn teardown(pin_dir: &Path) -> Result<()> {
    for sub in ["links", "maps"] {
        let dir = pin_dir.join(sub);
        if !dir.exists() {
            continue;
        }
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::remove_dir(&dir).ok();
    }
    Ok(())
}

/// Opens a map pinned by a running (or stopped) daemon, for tools that do not load programs.
pub fn open_pinned_map(pin_dir: &Path, name: &str) -> Result<MapData> {
    let path = pin_dir.join("maps").join(name);
    MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))
}
