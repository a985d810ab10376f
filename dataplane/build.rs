//! Builds the eBPF object (`ebpf/`, target bpfel-unknown-none, nightly + bpf-linker) so a
//! plain `cargo build` at the root yields a daemon with its kernel programs embedded.
fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "sluice-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)
}
