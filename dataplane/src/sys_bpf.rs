//! Raw `bpf(2)` calls, for what aya 0.14 does not offer: batch map reads and writes, inner
//! maps created with flags and their descriptor at hand, a pinned link's info, and the
//! lab's two-instruction pass program.

/// `bpf(cmd, attr)`, `attr` being the command's part of `union bpf_attr` (a struct or a
/// byte buffer): the call's non-negative result (for some commands a new descriptor,
/// owned by the caller), or the errno.
pub fn call<T: ?Sized>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    let size = std::mem::size_of_val(attr);
    // SAFETY: `attr` is valid for `size` bytes for the duration of the call; the kernel
    // reads (and for some commands writes) at most that.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T as *mut u8, size) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// Writes `v` at `off` of a `bpf_attr` buffer.
pub fn put_u32(attr: &mut [u8], off: usize, v: u32) {
    attr[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

/// Writes `v` at `off` of a `bpf_attr` buffer.
pub fn put_u64(attr: &mut [u8], off: usize, v: u64) {
    attr[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// `union bpf_attr` for the element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

fn elem_call<K, V>(cmd: libc::c_long, fd: i32, key: &K, value: Option<&V>) -> std::io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value.map_or(0, |v| v as *const V as u64),
        flags: 0,
    };
    call(cmd, &mut attr).map(drop)
}

/// Sets `key` to `value` in the map behind `fd` (`K` and `V` being the map's `#[repr(C)]`
/// key and value types). A shared descriptor is enough, unlike aya's `&mut` maps.
pub fn update_elem<K, V>(fd: i32, key: &K, value: &V) -> std::io::Result<()> {
    elem_call(BPF_MAP_UPDATE_ELEM, fd, key, Some(value))
}

/// Deletes `key` from the map behind `fd`.
pub fn delete_elem<K>(fd: i32, key: &K) -> std::io::Result<()> {
    elem_call::<K, u8>(BPF_MAP_DELETE_ELEM, fd, key, None)
}
