#!/bin/sh
# The kernel programs' linker (dataplane/build.rs points cargo here): bpf-linker with the
# code generation this kernel allows. aya-build fixes the rustflags, so `-C target-feature`
# cannot reach rustc; the choice is made here instead.
# - `+allows-misaligned-mem-access` (LLVM 22): packet headers are read and written in
#   words, not byte by byte. x86-64 has efficient unaligned access, so the verifier
#   accepts misaligned packet and map-value accesses; stack accesses must stay aligned
#   (`ebpf/src/lpm.rs` writes the LPM keys in aligned words for that).
# - `--disable-expand-memcpy-in-order`: bpf-linker's default keeps LLVM from expanding
#   memset and memmove inline, so every small struct initialisation or copy became a
#   call to a byte-by-byte subprogram.
# (`--cpu v3` was tried: the verifier refused the result, a register read before set.)
# SLUICE_BPF_LINKER_DEFAULTS=1: bpf-linker's own defaults, to measure what these choices
# gain (touch ebpf/src/main.rs so the object is linked again).
if [ -n "${SLUICE_BPF_LINKER_DEFAULTS:-}" ]; then
    exec bpf-linker "$@"
fi
exec bpf-linker "$@" --cpu-features=+allows-misaligned-mem-access --disable-expand-memcpy-in-order
