#!/bin/sh
# The kernel programs' linker (dataplane/build.rs points cargo here): bpf-linker with the
# code generation this kernel allows. aya-build fixes the rustflags, so `-C target-cpu`
# cannot reach rustc; the choice is made here instead.
# - `--cpu v3`: 32-bit sub-registers and jumps (kernel 5.1+), fewer instructions.
# - `+allows-misaligned-mem-access` (LLVM 22): packet headers are written and read in
#   words, not byte by byte. x86-64 has efficient unaligned access, so the verifier
#   accepts misaligned packet and map-value accesses.
# - `--disable-expand-memcpy-in-order`: bpf-linker's default keeps LLVM from expanding
#   memset and memmove inline, so every small struct initialisation or copy became a
#   call to a byte-by-byte subprogram.
cpu_next=0
for arg in "$@"; do
    shift
    if [ "$cpu_next" = 1 ]; then
        arg=generic
        cpu_next=0
    elif [ "$arg" = "--cpu" ]; then
        cpu_next=1
    fi
    set -- "$@" "$arg"
done
exec bpf-linker "$@" --cpu-features=+allows-misaligned-mem-access --disable-expand-memcpy-in-order
