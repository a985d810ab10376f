//! Security groups ABI: per-NIC policies compiled into lookup maps, and the operator
//! blocklist. Connection tracking, which makes the policies stateful, is [`crate::conntrack`].
//!
//! # Design
//!
//! A NIC's *policy* in one direction is the list of its groups' rules of that direction,
//! sorted by priority with deny before allow on equal priority (then by a canonical order
//! so the compilation is deterministic). Rule `k` of that list owns bit `k` of a
//! [`RuleSet`] ([`MAX_RULES`] = 1024 bits): the lowest set bit is the rule that decides.
//! A rule matches a packet when its remote matches *and* its protocol/port (or ICMP
//! type/code) matches; the two halves are looked up independently (bit-vector packet
//! classification, as in bpf-iptables' linear bit vector search):
//!
//! - [`maps::REMOTES`], an LPM trie keyed by (policy, remote address): the value at each
//!   compiled prefix is the set of rules whose remote contains that prefix. The longest
//!   match for an address is therefore exactly the set of rules whose remote contains the
//!   address (prefixes containing one address form a chain). Remote-group rules are
//!   expanded by the compiler into /32s of the members' current addresses.
//! - [`maps::SERVICES`], an LPM trie keyed by (policy, protocol, port): prefix length 64
//!   holds the "all protocols" rules, 72 a protocol with any port, 72 + k a port range
//!   split into aligned prefixes (at most 30 per range). ICMP puts (type, code) where the
//!   port goes. A protocol with no entry of its own (GRE, ...) falls back to length 64.
//!   Same containment rule: each value is the set of rules covering that prefix.
//! - `remote & service`: the lowest set bit decides, its action is bit `k` of
//!   [`PolicyInfo::allow`] ([`maps::POLICIES`], by policy id). No bit: the default,
//!   ingress denied, egress allowed. A lookup miss counts as the empty set.
//!
//! The port is always the destination port of the flow's first packet (the NIC's own
//! port on ingress, the remote's on egress); for ICMP the first packet's type and code.
//!
//! ## Per packet
//!
//! 1. Blocklist ([`maps::BLOCKLIST`], skipped while [`SgConfig::blocklist_entries`] is 0):
//!    source and destination of every VM packet at `xdp_vm`, of VXLAN packets (outer
//!    source, inner source and destination) and of the Internet's packets to an elastic IP
//!    at `xdp_underlay`, before anything else.
//! 2. Connection table lookup (one hash lookup, [`crate::conntrack`]). A live entry is the
//!    fast path: the policy ids it was admitted under are compared with the NICs' current
//!    ones ([`maps::NICS`], an array indexed by ifindex: no hashing) and the packet passes.
//! 3. A new flow, or an entry whose policy id changed: for the sending NIC if it is local
//!    (egress) and the receiving NIC if it is local (ingress): [`maps::NICS`] (array),
//!    then, unless the policy is [`POLICY_NONE`], [`maps::REMOTES`] and [`maps::SERVICES`]
//!    (LPM) and [`maps::POLICIES`] (hash), and at most [`RULE_WORDS`] ANDs. That cost is
//!    the same for 1 or 1024 rules (only the tries' depth grows, bounded by the key
//!    length). An allowed new flow is inserted into the connection table.
//!
//! ## Policy ids, versions and revocation
//!
//! A policy id is a 64-bit hash of the compiled content (tries and allow set), computed
//! by the (pure) compiler; NICs with identical content share one policy, and two
//! different contents on one host never share an id (the compiler resolves collisions).
//! The id *is* the policy version: any change of a NIC's effective rules, including a
//! member joining or leaving a group its rules reference, gives a new id. Policies are
//! copy-on-write: the agent writes a new policy's entries, then switches the NIC's
//! [`NicSg`] to it, then deletes the old entries once no NIC uses them, so a lookup never
//! sees a half-written policy.
//!
//! Each connection entry records, per local side, the ifindex and the policy id it was
//! admitted under. A packet of an established flow whose recorded id differs from the
//! NIC's current one re-evaluates the flow's first-packet tuple against the current
//! policy: still allowed, the entry takes the new id and the flow goes on; denied, the
//! packet is dropped and the entry marked revoked (short timeout), so a revoked flow
//! stops at its next packet while unrelated flows are only re-checked, never flushed.
//! Revocation therefore takes the control plane's propagation time plus nothing. The
//! re-check rebuilds the first packet from the key (the responder's port; ICMP echo: type
//! 8, code 0). A revoked entry is kept, not deleted, so a policy that flips back (or a
//! torn read of a [`NicSg`] being rewritten) costs at most the packets in between.
//!
//! Remote-group membership is resolved in the compiler (members' addresses expanded into
//! each referencing policy), so the datapath never needs an identity lookup; the price is
//! that a membership change rewrites the policies that reference the group.
//!
//! A NIC whose [`NicSg`] slot lacks [`NIC_SG_ENFORCED`] is not filtered (hosts without
//! security-group state behave as before); the agent writes the slot before the NIC's
//! port goes live.

use crate::vpc::Ipv4;

/// Words in a [`RuleSet`].
pub const RULE_WORDS: usize = 16;
/// Rules one NIC can have per direction, over all its groups.
pub const MAX_RULES: usize = RULE_WORDS * 64;

/// A set of rule slots of one policy; slot `k` is bit `k % 64` of word `k / 64`. Lower
/// slots have higher priority.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleSet {
    pub words: [u64; RULE_WORDS],
}

impl RuleSet {
    pub const EMPTY: RuleSet = RuleSet {
        words: [0; RULE_WORDS],
    };

    /// Add slot `k` (ignored beyond [`MAX_RULES`]).
    #[inline(always)]
    pub fn insert(&mut self, k: usize) {
        if let Some(w) = self.words.get_mut(k / 64) {
            *w |= 1 << (k % 64);
        }
    }

    #[inline(always)]
    pub fn contains(&self, k: usize) -> bool {
        match self.words.get(k / 64) {
            Some(w) => w & (1 << (k % 64)) != 0,
            None => false,
        }
    }

    #[inline(always)]
    pub fn union(&mut self, other: &RuleSet) {
        let mut i = 0;
        while i < RULE_WORDS {
            self.words[i] |= other.words[i];
            i += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The word holding the lowest slot in both sets, and that slot as a one-bit mask of
    /// the word: the deciding rule, found with no bit counting (the datapath needs only
    /// its action; each branch of a bit count would multiply the verifier's paths).
    #[inline(always)]
    pub fn first_common_bit(&self, other: &RuleSet) -> Option<(usize, u64)> {
        let mut i = 0;
        while i < RULE_WORDS {
            let m = self.words[i] & other.words[i];
            if m != 0 {
                return Some((i, m & m.wrapping_neg()));
            }
            i += 1;
        }
        None
    }

    /// The lowest slot in both sets: the deciding rule. A fixed, bounded loop.
    #[inline(always)]
    pub fn first_common(&self, other: &RuleSet) -> Option<u32> {
        let mut i = 0;
        while i < RULE_WORDS {
            let m = self.words[i] & other.words[i];
            if m != 0 {
                return Some(i as u32 * 64 + ctz(m));
            }
            i += 1;
        }
        None
    }
}

/// Trailing zeros of a non-zero word in six steps: BPF has no count-trailing-zeros
/// instruction, and LLVM's expansion of one may need a lookup table.
#[inline(always)]
fn ctz(mut x: u64) -> u32 {
    let mut n = 0;
    if x & 0xffff_ffff == 0 {
        n += 32;
        x >>= 32;
    }
    if x & 0xffff == 0 {
        n += 16;
        x >>= 16;
    }
    if x & 0xff == 0 {
        n += 8;
        x >>= 8;
    }
    if x & 0xf == 0 {
        n += 4;
        x >>= 4;
    }
    if x & 0x3 == 0 {
        n += 2;
        x >>= 2;
    }
    if x & 0x1 == 0 {
        n += 1;
    }
    n
}

/// The verdict of one policy for a first packet: `Some(allow)` from the deciding rule, or
/// `None` when no rule matches (the caller applies the direction's default). A missing
/// trie entry is passed as `None` (the empty set).
#[inline(always)]
pub fn decide(
    remote: Option<&RuleSet>,
    service: Option<&RuleSet>,
    info: Option<&PolicyInfo>,
) -> Option<bool> {
    let (Some(r), Some(s), Some(info)) = (remote, service, info) else {
        return None;
    };
    r.first_common_bit(s)
        .map(|(word, bit)| info.allow.words[word] & bit != 0)
}

/// Whether a first packet no rule matches is allowed: ingress denied, egress allowed.
pub const DEFAULT_INGRESS_ALLOW: bool = false;
pub const DEFAULT_EGRESS_ALLOW: bool = true;

/// A policy id: a NIC with no rules in a direction. Nothing is looked up; the default
/// applies.
pub const POLICY_NONE: u64 = 0;

/// Value of [`maps::NICS`], an array indexed by the host-side ifindex of a VM interface
/// (the same index as [`crate::maps::PORTS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicSg {
    /// Policy ids (see the module doc); [`POLICY_NONE`] for a direction without rules.
    pub ingress: u64,
    pub egress: u64,
    /// `NIC_SG_*` flags.
    pub flags: u32,
    pub _pad: u32,
}

/// The NIC is filtered. Zeroed slots (interfaces the agent never configured) are not.
pub const NIC_SG_ENFORCED: u32 = 1;

impl NicSg {
    /// What a connection entry records for the NIC's `egress` or ingress side, and
    /// compares on every established packet: the policy id, or [`POLICY_UNENFORCED`].
    #[inline(always)]
    pub fn version(&self, egress: bool) -> u64 {
        if self.flags & NIC_SG_ENFORCED == 0 {
            POLICY_UNENFORCED
        } else if egress {
            self.egress
        } else {
            self.ingress
        }
    }
}

/// What [`NicSg::version`] says of an unfiltered slot; never a compiled id. (Connection
/// entries record an unfiltered end as ifindex 0 instead, which differs just the same once
/// filtering starts, so the flow is re-checked.)
pub const POLICY_UNENFORCED: u64 = u64::MAX;

/// Data of a [`maps::REMOTES`] key: the policy id (big-endian, so the first 64 prefix
/// bits select the policy) followed by the remote address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemoteKey {
    pub policy: [u8; 8],
    pub addr: Ipv4,
}

impl RemoteKey {
    pub const fn new(policy: u64, addr: Ipv4) -> Self {
        Self {
            policy: policy.to_be_bytes(),
            addr,
        }
    }

    /// Trie prefix length for a remote prefix of `len` bits.
    pub const fn trie_prefix_len(len: u8) -> u32 {
        64 + len as u32
    }
}

/// Data of a [`maps::SERVICES`] key: policy id (big-endian), IP protocol, port (network
/// order; ICMP: type then code). The pad byte is zero and never inside a prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub policy: [u8; 8],
    pub proto: u8,
    pub port: [u8; 2],
    pub _pad: u8,
}

impl ServiceKey {
    pub const fn new(policy: u64, proto: u8, port: u16) -> Self {
        Self {
            policy: policy.to_be_bytes(),
            proto,
            port: port.to_be_bytes(),
            _pad: 0,
        }
    }

    /// The "port" of an ICMP message: type in the high byte, code in the low one.
    pub const fn icmp_port(icmp_type: u8, code: u8) -> u16 {
        ((icmp_type as u16) << 8) | code as u16
    }

    /// Trie prefix length of the entry holding the rules for every protocol.
    pub const ANY_PROTOCOL_PREFIX_LEN: u32 = 64;

    /// Trie prefix length for one protocol and a port prefix of `port_len` bits (0: any
    /// port; ICMP: 8 for one type, 16 for one type and code).
    pub const fn trie_prefix_len(port_len: u8) -> u32 {
        72 + port_len as u32
    }
}

/// Value of [`maps::POLICIES`], keyed by policy id (`u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyInfo {
    /// Slots whose rule allows; the others deny.
    pub allow: RuleSet,
    /// Rules in the policy (slots `0..rules` are used).
    pub rules: u32,
    pub flags: u32,
}

/// Data of a [`maps::BLOCKLIST`] key: an address; the trie prefix length is the prefix's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    pub addr: Ipv4,
}

/// Value of [`maps::BLOCKLIST`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEntry {
    /// `BLOCK_SRC` and/or `BLOCK_DST`: which address of a packet the prefix applies to.
    pub flags: u32,
    /// Slot in [`maps::BLOCK_STATS`] (packets and bytes dropped by this prefix).
    pub counter: u32,
}

pub const BLOCK_SRC: u32 = 1;
pub const BLOCK_DST: u32 = 2;

/// Value of [`maps::CONFIG`] (a one-slot array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SgConfig {
    /// Entries in the blocklist: 0 skips its lookups.
    pub blocklist_entries: u32,
    pub flags: u32,
}

/// Default capacities (entries).
pub const MAX_POLICIES: u32 = 1 << 14;
pub const MAX_REMOTES: u32 = 1 << 20;
pub const MAX_SERVICES: u32 = 1 << 18;
pub const MAX_BLOCKLIST: u32 = 1 << 14;

/// Map names, as the eBPF object declares them (all listed in [`crate::maps::ALL`], which
/// the daemon pins).
pub mod maps {
    /// Array of [`super::NicSg`] indexed by host-side ifindex ([`crate::vpc::MAX_PORTS`]).
    pub const NICS: &str = "SLUICE_SG_NICS";
    /// Hash of [`super::PolicyInfo`] by policy id.
    pub const POLICIES: &str = "SLUICE_SG_POLICIES";
    /// LPM trie of [`super::RuleSet`] by [`super::RemoteKey`].
    pub const REMOTES: &str = "SLUICE_SG_REMOTES";
    /// LPM trie of [`super::RuleSet`] by [`super::ServiceKey`].
    pub const SERVICES: &str = "SLUICE_SG_SERVICES";
    /// LPM trie of [`super::BlockEntry`] by [`super::BlockKey`].
    pub const BLOCKLIST: &str = "SLUICE_BLOCKLIST";
    /// Per-CPU array of [`crate::stats::Counter`], indexed by [`super::BlockEntry::counter`].
    pub const BLOCK_STATS: &str = "SLUICE_BLOCK_STATS";
    /// One-slot array of [`super::SgConfig`].
    pub const CONFIG: &str = "SLUICE_SG_CONFIG";
    pub const ALL: [&str; 7] = [
        NICS,
        POLICIES,
        REMOTES,
        SERVICES,
        BLOCKLIST,
        BLOCK_STATS,
        CONFIG,
    ];
}

const _: () = assert!(core::mem::size_of::<RuleSet>() == 128);
const _: () = assert!(core::mem::align_of::<RuleSet>() == 8);
const _: () = assert!(core::mem::size_of::<NicSg>() == 24);
const _: () = assert!(core::mem::align_of::<NicSg>() == 8);
const _: () = assert!(core::mem::size_of::<RemoteKey>() == 12);
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 12);
const _: () = assert!(core::mem::size_of::<PolicyInfo>() == 136);
const _: () = assert!(core::mem::size_of::<BlockKey>() == 4);
const _: () = assert!(core::mem::size_of::<BlockEntry>() == 8);
const _: () = assert!(core::mem::size_of::<SgConfig>() == 8);
// The longest prefix a service entry uses fits the key data.
const _: () = assert!(ServiceKey::trie_prefix_len(16) <= 8 * 11);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for RuleSet {}
    unsafe impl aya::Pod for NicSg {}
    unsafe impl aya::Pod for RemoteKey {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for PolicyInfo {}
    unsafe impl aya::Pod for BlockKey {}
    unsafe impl aya::Pod for BlockEntry {}
    unsafe impl aya::Pod for SgConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_sets_find_the_lowest_common_slot() {
        let mut a = RuleSet::EMPTY;
        let mut b = RuleSet::EMPTY;
        assert_eq!(a.first_common(&b), None);
        for k in [3, 70, 1023] {
            a.insert(k);
        }
        for k in [70, 1023, 5] {
            b.insert(k);
        }
        assert_eq!(a.first_common(&b), Some(70));
        a.insert(5);
        assert_eq!(a.first_common(&b), Some(5));
        assert_eq!(a.first_common_bit(&b), Some((0, 1 << 5)));
        assert_eq!(RuleSet::EMPTY.first_common_bit(&b), None);
        a.insert(MAX_RULES); // out of range: ignored
        assert!(!a.contains(MAX_RULES));
        assert!(a.contains(1023) && !a.contains(1022));
    }

    #[test]
    fn ctz_agrees_with_the_builtin() {
        for k in 0..64 {
            assert_eq!(ctz(1u64 << k), k);
            assert_eq!(ctz(u64::MAX << k), k);
            let x = 0x9e37_79b9_7f4a_7c15u64 << k;
            assert_eq!(ctz(x), x.trailing_zeros());
        }
    }

    #[test]
    fn decide_uses_the_deciding_rules_action_and_misses_are_empty() {
        let mut r = RuleSet::EMPTY;
        let mut s = RuleSet::EMPTY;
        let mut info = PolicyInfo::default();
        r.insert(1);
        r.insert(2);
        s.insert(2);
        info.allow.insert(2);
        assert_eq!(decide(Some(&r), Some(&s), Some(&info)), Some(true));
        s.insert(1); // slot 1 (deny) now matches first
        assert_eq!(decide(Some(&r), Some(&s), Some(&info)), Some(false));
        assert_eq!(decide(None, Some(&s), Some(&info)), None);
        assert_eq!(decide(Some(&r), Some(&s), None), None);
    }

    #[test]
    fn keys_put_the_policy_first_big_endian() {
        let k = RemoteKey::new(0x0102_0304_0506_0708, [10, 0, 0, 1]);
        assert_eq!(k.policy, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(RemoteKey::trie_prefix_len(24), 88);
        let s = ServiceKey::new(1, 6, 443);
        assert_eq!((s.proto, s.port), (6, [1, 187]));
        assert_eq!(ServiceKey::icmp_port(8, 0), 0x0800);
        assert_eq!(ServiceKey::trie_prefix_len(0), 72);
    }

    #[test]
    fn an_unenforced_slot_reports_no_policy() {
        let mut n = NicSg {
            ingress: 7,
            egress: 9,
            ..Default::default()
        };
        assert_eq!(n.version(true), POLICY_UNENFORCED);
        n.flags = NIC_SG_ENFORCED;
        assert_eq!((n.version(true), n.version(false)), (9, 7));
    }
}
