//! Longest-prefix-match lookups with keys written in aligned 32-bit words.
//!
//! The programs are built with misaligned access allowed (`ebpf/bpf-linker.sh`), so LLVM
//! reads and writes packet headers in words. The verifier still requires aligned stack
//! access, and an LPM key (a `u32` prefix length, then the data) would otherwise be
//! copied with an 8-byte store at offset 4. Volatile word stores are never merged.

use core::{
    mem::size_of,
    ptr::{read_unaligned, write_volatile},
};

use aya_ebpf::maps::{lpm_trie::Key, LpmTrie};

/// Key words: the prefix length, then up to 12 bytes of data.
const WORDS: usize = 4;

#[repr(C, align(8))]
struct Words([u32; WORDS]);

/// `trie`'s entry for `data` under the longest prefix of `prefix_len` bits.
#[inline(always)]
pub fn get<K, V>(trie: &LpmTrie<K, V>, prefix_len: u32, data: K) -> Option<&V> {
    const {
        assert!(size_of::<K>() % 4 == 0 && size_of::<K>() <= (WORDS - 1) * 4);
    }
    let mut key = Words([0; WORDS]);
    let src = &data as *const K as *const u32;
    unsafe {
        write_volatile(&mut key.0[0], prefix_len);
        let mut i = 0;
        while i < size_of::<K>() / 4 {
            write_volatile(&mut key.0[i + 1], read_unaligned(src.add(i)));
            i += 1;
        }
        trie.get(&*(key.0.as_ptr() as *const Key<K>))
    }
}
