// Rebuild when bpf-linker changes, since it is not tracked by cargo.
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
