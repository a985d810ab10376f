//! Builds the eBPF object (`ebpf/`, target bpfel-unknown-none, nightly + bpf-linker) so a
//! plain `cargo build` at the root yields a daemon with its kernel programs embedded.
fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf");
    // The linker with this project's code generation choices (see the script).
    let linker = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/bpf-linker.sh");
    println!("cargo:rerun-if-changed={linker}");
    println!("cargo:rerun-if-env-changed=SLUICE_BPF_LINKER_DEFAULTS");
    // The child cargo that aya-build starts inherits it.
    std::env::set_var("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", linker);
    let ebpf = aya_build::Package {
        name: "sluice-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)
}
