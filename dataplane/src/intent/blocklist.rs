//! The operator blocklist: IPv4 prefixes whose packets every host drops before anything
//! else (DDoS response). An entry applies to a packet's source, its destination, or both;
//! it is checked at the underlay (VXLAN: outer and inner addresses; the Internet's packets
//! to an elastic IP) and at VM ingress, in every VPC (see `common/src/sg.rs`). Entries are identified by their prefix, which is unique;
//! the list holds at most [`MAX_BLOCKLIST_ENTRIES`] (what the datapath's trie holds).

use serde::{Deserialize, Serialize};

use super::{
    model::*,
    validate::{check_description, parse_cidr, Change, ValidationError},
};

type Result<T, E = ValidationError> = std::result::Result<T, E>;

/// The datapath's blocklist capacity.
pub const MAX_BLOCKLIST_ENTRIES: usize = sluice_common::sg::MAX_BLOCKLIST as usize;

/// Which address of a packet an entry is matched against.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum BlockAppliesTo {
    Source,
    Destination,
    #[default]
    Both,
}

/// A blocked prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlocklistEntry {
    pub prefix: Cidr,
    pub applies_to: BlockAppliesTo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl BlocklistEntry {
    /// How dependents lists and apply summaries name it: `block/<prefix>`.
    pub fn reference(&self) -> String {
        format!("block/{}", self.prefix)
    }
}

/// Block a prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlocklistSpec {
    /// An IPv4 prefix, /1 to /32.
    pub prefix: String,
    /// Default: both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applies_to: Option<BlockAppliesTo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Intent {
    /// The blocklist, by prefix.
    pub fn blocklist(&self) -> impl Iterator<Item = &BlocklistEntry> {
        self.blocklist.values()
    }

    pub fn blocklist_entry(&self, prefix: &Cidr) -> Option<&BlocklistEntry> {
        self.blocklist.get(prefix)
    }

    /// Block a prefix; 409 if it is blocked already or the list is full.
    pub fn add_blocklist(&self, spec: BlocklistSpec) -> Result<(Intent, BlocklistEntry)> {
        self.mutate(|i| {
            let entry = i.resolve_blocklist(spec)?;
            if let Some(old) = i.blocklist.get(&entry.prefix) {
                return Err(ValidationError::conflict(
                    "prefix",
                    format!("{} is blocked already", old.prefix),
                    vec![old.reference()],
                ));
            }
            i.put_blocklist_mut(entry.clone())?;
            Ok(entry)
        })
    }

    /// Unblock a prefix (given as a CIDR string).
    pub fn delete_blocklist(&self, prefix: &str) -> Result<Intent> {
        self.mutate(|i| {
            let p = parse_cidr("prefix", prefix)?;
            i.blocklist.remove(&p).map(|_| ()).ok_or_else(|| {
                ValidationError::not_found("prefix", format!("{p} is not on the blocklist"))
            })
        })
        .map(|(i, ())| i)
    }

    fn resolve_blocklist(&self, spec: BlocklistSpec) -> Result<BlocklistEntry> {
        let prefix = parse_cidr("prefix", &spec.prefix)?;
        if prefix.prefix_len() == 0 {
            return Err(ValidationError::invalid(
                "prefix",
                "0.0.0.0/0 would drop every packet; block /1 to /32 prefixes",
            ));
        }
        check_description("description", &spec.description)?;
        Ok(BlocklistEntry {
            prefix,
            applies_to: spec.applies_to.unwrap_or_default(),
            description: spec.description,
        })
    }

    /// Insert or replace an entry, within the capacity.
    fn put_blocklist_mut(&mut self, entry: BlocklistEntry) -> Result<Change> {
        match self.blocklist.get(&entry.prefix) {
            Some(old) if *old == entry => return Ok(Change::Unchanged),
            Some(_) => {
                self.blocklist.insert(entry.prefix, entry);
                return Ok(Change::Updated);
            }
            None => {}
        }
        if self.blocklist.len() >= MAX_BLOCKLIST_ENTRIES {
            return Err(ValidationError::conflict(
                "prefix",
                format!(
                    "the blocklist holds {MAX_BLOCKLIST_ENTRIES} prefixes, the most the datapath can; remove some or block a shorter prefix"
                ),
                vec![],
            ));
        }
        self.blocklist.insert(entry.prefix, entry);
        Ok(Change::Created)
    }

    /// `apply -f`'s form: create or update.
    pub(super) fn apply_blocklist_mut(&mut self, spec: BlocklistSpec) -> Result<(Cidr, Change)> {
        let entry = self.resolve_blocklist(spec)?;
        let prefix = entry.prefix;
        Ok((prefix, self.put_blocklist_mut(entry)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intent::{validate::tests::lab, ErrorKind};

    fn spec(prefix: &str, applies_to: Option<BlockAppliesTo>) -> BlocklistSpec {
        BlocklistSpec {
            prefix: prefix.into(),
            applies_to,
            description: None,
        }
    }

    #[test]
    fn prefixes_are_checked_unique_and_default_to_both_addresses() {
        let i = lab();
        let (i, e) = i.add_blocklist(spec("203.0.113.0/24", None)).unwrap();
        assert_eq!(e.applies_to, BlockAppliesTo::Both);
        let (i, _) = i
            .add_blocklist(spec("198.51.100.7/32", Some(BlockAppliesTo::Source)))
            .unwrap();
        let listed: Vec<String> = i.blocklist().map(|e| e.prefix.to_string()).collect();
        assert_eq!(listed, ["198.51.100.7/32", "203.0.113.0/24"]);

        let dup = i
            .add_blocklist(spec("203.0.113.0/24", Some(BlockAppliesTo::Source)))
            .unwrap_err();
        assert_eq!(
            (dup.kind, dup.field.as_str()),
            (ErrorKind::Conflict, "prefix")
        );
        assert_eq!(dup.dependents, ["block/203.0.113.0/24"]);
        for (bad, why) in [
            ("203.0.113.1/24", "host bits"),
            ("0.0.0.0/0", "every packet"),
            ("nope", "not a CIDR"),
        ] {
            let e = i.add_blocklist(spec(bad, None)).unwrap_err();
            assert_eq!((e.kind, e.field.as_str()), (ErrorKind::Invalid, "prefix"));
            assert!(e.reason.contains(why), "{bad}: {e}");
        }
        let e = i
            .add_blocklist(BlocklistSpec {
                description: Some("\u{7}".into()),
                ..spec("192.0.2.0/24", None)
            })
            .unwrap_err();
        assert_eq!(e.field, "description");

        let i = i.delete_blocklist("203.0.113.0/24").unwrap();
        assert!(i
            .blocklist_entry(&"203.0.113.0/24".parse().unwrap())
            .is_none());
        let e = i.delete_blocklist("203.0.113.0/24").unwrap_err();
        assert_eq!((e.kind, e.field.as_str()), (ErrorKind::NotFound, "prefix"));
        // The records round trip keeps it.
        assert_eq!(Intent::from_records(i.to_records()), i);
    }

    #[test]
    fn a_full_blocklist_refuses_new_prefixes_but_updates_existing_ones() {
        let mut i = lab();
        for k in 0..MAX_BLOCKLIST_ENTRIES as u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + k);
            i.blocklist.insert(
                Cidr::new(ip, 32).unwrap(),
                BlocklistEntry {
                    prefix: Cidr::new(ip, 32).unwrap(),
                    applies_to: BlockAppliesTo::Both,
                    description: None,
                },
            );
        }
        let e = i.add_blocklist(spec("203.0.113.0/24", None)).unwrap_err();
        assert_eq!((e.kind, e.field.as_str()), (ErrorKind::Conflict, "prefix"));
        assert!(e.reason.contains("the most the datapath can"), "{e}");
        let (j, (_, put)) = i
            .mutate(|i| i.apply_blocklist_mut(spec("10.0.0.1/32", Some(BlockAppliesTo::Source))))
            .unwrap();
        assert_eq!(put, Change::Updated);
        assert_eq!(j.blocklist.len(), MAX_BLOCKLIST_ENTRIES);
    }
}
