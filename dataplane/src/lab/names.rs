//! Names for lab objects: short, unique per lab, and valid for the kernel.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hash, Hasher},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Result};

/// Every lab name starts with this, so leftovers are easy to recognise.
pub const PREFIX: &str = "sl";

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Longest host (namespace) label; keeps `<lab>-<host>` and `<lab>-<iface>` short.
pub const LABEL_MAX: usize = 8;

/// A lab name: [`PREFIX`] and four hex digits derived from `seed`.
pub fn lab_name(seed: u64) -> String {
    format!("{PREFIX}{:04x}", seed & 0xffff)
}

/// A seed that differs between processes, calls and runs (pid, clock, counter and
/// std's per-process random hasher keys).
pub fn random_seed() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    std::process::id().hash(&mut h);
    CALLS.fetch_add(1, Ordering::Relaxed).hash(&mut h);
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .hash(&mut h);
    h.finish()
}

/// True for names [`lab_name`] produces.
pub fn is_lab_name(name: &str) -> bool {
    name.len() == PREFIX.len() + 4
        && name.starts_with(PREFIX)
        && name[PREFIX.len()..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// A host or VM label: lowercase letters and digits, 1..=[`LABEL_MAX`] characters.
pub fn check_label(label: &str) -> Result<()> {
    if label.is_empty() || label.len() > LABEL_MAX {
        bail!(
            "lab label {label:?} must be 1 to {LABEL_MAX} characters, got {}",
            label.len()
        );
    }
    if !label
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        bail!("lab label {label:?} may only hold lowercase letters and digits");
    }
    Ok(())
}

/// The kernel's rules for an interface name, checked before `ip` gives a vaguer error.
pub fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > IFNAME_MAX {
        bail!(
            "interface name {name:?} must be 1 to {IFNAME_MAX} bytes, got {}",
            name.len()
        );
    }
    if name == "." || name == ".." {
        bail!("interface name {name:?} is reserved");
    }
    if let Some(bad) = name
        .chars()
        .find(|c| c.is_whitespace() || *c == '/' || *c == ':' || !c.is_ascii())
    {
        bail!("interface name {name:?} contains {bad:?}");
    }
    Ok(())
}

/// The namespace for `host` in lab `lab`.
pub fn netns_name(lab: &str, host: &str) -> String {
    format!("{lab}-{host}")
}

/// An interface name scoped to `lab`, checked against the kernel's limit.
pub fn ifname(lab: &str, label: &str) -> Result<String> {
    check_label(label)?;
    let name = format!("{lab}-{label}");
    check_ifname(&name)?;
    Ok(name)
}

/// A locally administered unicast MAC, distinct per `index`.
pub fn mac(index: u16) -> String {
    format!("02:00:00:00:{:02x}:{:02x}", index >> 8, index & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names_have_the_prefix_and_four_hex_digits() {
        assert_eq!(lab_name(0x1234_abcd), "slabcd");
        assert_eq!(lab_name(7), "sl0007");
        assert!(is_lab_name(&lab_name(random_seed())));
        assert!(!is_lab_name("slABCD"));
        assert!(!is_lab_name("sl12345"));
        assert!(!is_lab_name("xx1234"));
    }

    #[test]
    fn seeds_differ_between_calls() {
        let seeds: std::collections::HashSet<u64> = (0..64).map(|_| random_seed()).collect();
        assert_eq!(seeds.len(), 64);
    }

    #[test]
    fn longest_scoped_interface_name_fits_the_kernel() {
        let name = ifname("slffff", "abcdefgh").unwrap();
        assert_eq!(name, "slffff-abcdefgh");
        assert_eq!(name.len(), IFNAME_MAX);
    }

    #[test]
    fn bad_labels_and_interface_names_are_rejected_by_name() {
        let err = check_label("toolonglabel").unwrap_err().to_string();
        assert!(err.contains("toolonglabel"), "{err}");
        assert!(check_label("Vm1").is_err());
        assert!(check_label("").is_err());
        assert!(check_label("vm-1").is_err());
        assert!(check_ifname("sixteen-chars-xx").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("a b").is_err());
        assert!(check_ifname("..").is_err());
        assert!(check_ifname("veth0").is_ok());
    }

    #[test]
    fn macs_are_local_unicast_and_distinct() {
        assert_eq!(mac(1), "02:00:00:00:00:01");
        assert_eq!(mac(0x102), "02:00:00:00:01:02");
        assert_ne!(mac(1), mac(2));
    }

    #[test]
    fn namespace_names_join_lab_and_host() {
        assert_eq!(netns_name("sl00aa", "h"), "sl00aa-h");
    }
}
