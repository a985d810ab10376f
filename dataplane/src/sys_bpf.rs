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
