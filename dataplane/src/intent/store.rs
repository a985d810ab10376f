//! The intent in redb: one table per resource kind (key: ID, or `<vpc id> <destination>`
//! for routes; value: the resource as JSON) and a `meta` table holding the schema version,
//! the allocation counters and the generation, which every committed change increments.
//! A change is written in one write transaction, and only the records that differ.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Arc,
};

use axum::http::StatusCode;
use redb::{
    Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, WriteTransaction,
};
use serde::{de::DeserializeOwned, Serialize};

use super::{
    model::{Counters, Intent, Records},
    validate::ValidationError,
};

const HOSTS: TableDefinition<&str, &str> = TableDefinition::new("hosts");
const VPCS: TableDefinition<&str, &str> = TableDefinition::new("vpcs");
const SUBNETS: TableDefinition<&str, &str> = TableDefinition::new("subnets");
const NICS: TableDefinition<&str, &str> = TableDefinition::new("nics");
const ROUTES: TableDefinition<&str, &str> = TableDefinition::new("routes");
const PEERINGS: TableDefinition<&str, &str> = TableDefinition::new("peerings");
const SECURITY_GROUPS: TableDefinition<&str, &str> = TableDefinition::new("security_groups");
const BLOCKLIST: TableDefinition<&str, &str> = TableDefinition::new("blocklist");
const EIP_POOLS: TableDefinition<&str, &str> = TableDefinition::new("eip_pools");
const EIPS: TableDefinition<&str, &str> = TableDefinition::new("eips");
const NAT_GATEWAYS: TableDefinition<&str, &str> = TableDefinition::new("nat_gateways");
const LOAD_BALANCERS: TableDefinition<&str, &str> = TableDefinition::new("load_balancers");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// Layout version of the records; bumped (with a migration) when it changes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("intent store: {0}")]
    Db(#[from] redb::Error),
    #[error("intent store: record {table}/{key} is unreadable: {reason}")]
    Corrupt {
        table: String,
        key: String,
        reason: String,
    },
    #[error("intent store: schema version {found} is not {SCHEMA_VERSION}")]
    Schema { found: String },
}

fn dberr<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

/// A refused or failed change.
#[derive(Debug, thiserror::Error)]
pub enum TransactError {
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl TransactError {
    /// The validation error's 4xx, or 500 when the store failed.
    pub fn status(&self) -> StatusCode {
        match self {
            TransactError::Invalid(e) => e.status(),
            TransactError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Open (or create) the store at `path` and load the intent it holds.
    pub fn open(path: &Path) -> Result<(Store, Intent), StoreError> {
        let db = Database::create(path).map_err(dberr)?;
        let txn = db.begin_write().map_err(dberr)?;
        {
            // Opening in a write transaction creates missing tables, so reads never fail
            // on a fresh file.
            for t in [
                HOSTS,
                VPCS,
                SUBNETS,
                NICS,
                ROUTES,
                PEERINGS,
                SECURITY_GROUPS,
                BLOCKLIST,
                EIP_POOLS,
                EIPS,
                NAT_GATEWAYS,
                LOAD_BALANCERS,
            ] {
                txn.open_table(t).map_err(dberr)?;
            }
            let mut meta = txn.open_table(META).map_err(dberr)?;
            let schema = meta
                .get("schema")
                .map_err(dberr)?
                .map(|v| v.value().to_string());
            match schema {
                None => {
                    meta.insert("schema", SCHEMA_VERSION.to_string().as_str())
                        .map_err(dberr)?;
                }
                Some(s) if s == SCHEMA_VERSION.to_string() => {}
                Some(found) => return Err(StoreError::Schema { found }),
            }
        }
        txn.commit().map_err(dberr)?;
        let store = Store { db };
        let intent = store.load()?;
        // Stores from before default security groups: one commit gives every VPC its
        // default group and every NIC without groups that group; from before load
        // balancers, every host its health-check address.
        let mut migrated = intent
            .with_default_security_groups()
            .with_health_check_ips();
        if migrated != intent {
            store.commit(&intent, &mut migrated)?;
            return Ok((store, migrated));
        }
        Ok((store, intent))
    }

    /// Read the whole intent.
    pub fn load(&self) -> Result<Intent, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let meta = txn.open_table(META).map_err(dberr)?;
        let generation = match meta.get("generation").map_err(dberr)? {
            Some(v) => parse_value("meta", "generation", v.value())?,
            None => 0,
        };
        let counters: Counters = match meta.get("counters").map_err(dberr)? {
            Some(v) => parse_value("meta", "counters", v.value())?,
            None => Counters::default(),
        };
        fn all<T: DeserializeOwned>(
            txn: &redb::ReadTransaction,
            def: TableDefinition<&str, &str>,
        ) -> Result<Vec<T>, StoreError> {
            let table = txn.open_table(def).map_err(dberr)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(dberr)? {
                let (k, v) = row.map_err(dberr)?;
                out.push(parse_value(def.name(), k.value(), v.value())?);
            }
            Ok(out)
        }
        Ok(Intent::from_records(Records {
            generation,
            counters,
            hosts: all(&txn, HOSTS)?,
            vpcs: all(&txn, VPCS)?,
            subnets: all(&txn, SUBNETS)?,
            nics: all(&txn, NICS)?,
            routes: all(&txn, ROUTES)?,
            peerings: all(&txn, PEERINGS)?,
            security_groups: all(&txn, SECURITY_GROUPS)?,
            blocklist: all(&txn, BLOCKLIST)?,
            eip_pools: all(&txn, EIP_POOLS)?,
            eips: all(&txn, EIPS)?,
            nat_gateways: all(&txn, NAT_GATEWAYS)?,
            load_balancers: all(&txn, LOAD_BALANCERS)?,
        }))
    }

    /// Persist `new` (derived from `old`, the intent this store holds) in one transaction,
    /// writing only what differs. Returns the new generation and stores it in `new`; an
    /// unchanged intent writes nothing and keeps its generation.
    pub fn commit(&self, old: &Intent, new: &mut Intent) -> Result<u64, StoreError> {
        new.generation = old.generation;
        let txn = self.db.begin_write().map_err(dberr)?;
        let mut written = 0;
        written += write_diff(&txn, HOSTS, &old.hosts, &new.hosts, |k| k.clone())?;
        written += write_diff(&txn, VPCS, &old.vpcs, &new.vpcs, |k| k.clone())?;
        written += write_diff(&txn, SUBNETS, &old.subnets, &new.subnets, |k| k.clone())?;
        written += write_diff(&txn, NICS, &old.nics, &new.nics, |k| k.clone())?;
        written += write_diff(&txn, PEERINGS, &old.peerings, &new.peerings, |k| k.clone())?;
        written += write_diff(
            &txn,
            SECURITY_GROUPS,
            &old.security_groups,
            &new.security_groups,
            |k| k.clone(),
        )?;
        written += write_diff(&txn, BLOCKLIST, &old.blocklist, &new.blocklist, |k| {
            k.to_string()
        })?;
        written += write_diff(&txn, EIP_POOLS, &old.eip_pools, &new.eip_pools, |k| {
            k.clone()
        })?;
        written += write_diff(&txn, EIPS, &old.eips, &new.eips, |k| k.clone())?;
        written += write_diff(
            &txn,
            NAT_GATEWAYS,
            &old.nat_gateways,
            &new.nat_gateways,
            |k| k.clone(),
        )?;
        written += write_diff(
            &txn,
            LOAD_BALANCERS,
            &old.load_balancers,
            &new.load_balancers,
            |k| k.clone(),
        )?;
        let empty = Arc::default();
        let vpcs: BTreeSet<&String> = old.routes.keys().chain(new.routes.keys()).collect();
        for vpc in vpcs {
            let o = old.routes.get(vpc).unwrap_or(&empty);
            let n = new.routes.get(vpc).unwrap_or(&empty);
            // Tables a change did not touch are still shared: skip them unread.
            if !Arc::ptr_eq(o, n) {
                written += write_diff(&txn, ROUTES, o, n, |dst| format!("{vpc} {dst}"))?;
            }
        }
        if written == 0 && old.counters == new.counters {
            // Dropping the transaction rolls it back: nothing changed.
            return Ok(old.generation);
        }
        let generation = old.generation + 1;
        {
            let mut meta = txn.open_table(META).map_err(dberr)?;
            meta.insert("generation", generation.to_string().as_str())
                .map_err(dberr)?;
            meta.insert("counters", to_json(&new.counters).as_str())
                .map_err(dberr)?;
        }
        txn.commit().map_err(dberr)?;
        new.generation = generation;
        Ok(generation)
    }

    /// Run a validated mutation of `current` and persist it; `current` becomes the new
    /// intent only once it is committed. The API's one-transaction-per-request path.
    pub fn transact<T>(
        &self,
        current: &mut Intent,
        mutation: impl FnOnce(&Intent) -> Result<(Intent, T), ValidationError>,
    ) -> Result<T, TransactError> {
        let (mut next, out) = mutation(current)?;
        self.commit(current, &mut next)?;
        *current = next;
        Ok(out)
    }
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("intent records serialize")
}

fn parse_value<T: DeserializeOwned>(table: &str, key: &str, v: &str) -> Result<T, StoreError> {
    serde_json::from_str(v).map_err(|e| StoreError::Corrupt {
        table: table.to_string(),
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Write the records of `new` that differ from `old`, delete those gone; returns how many.
fn write_diff<K: Ord, T: Serialize + PartialEq>(
    txn: &WriteTransaction,
    def: TableDefinition<&str, &str>,
    old: &BTreeMap<K, T>,
    new: &BTreeMap<K, T>,
    key: impl Fn(&K) -> String,
) -> Result<usize, StoreError> {
    if old == new {
        return Ok(0);
    }
    let mut written = 0;
    let mut table = txn.open_table(def).map_err(dberr)?;
    for (k, v) in new {
        if old.get(k) != Some(v) {
            table
                .insert(key(k).as_str(), to_json(v).as_str())
                .map_err(dberr)?;
            written += 1;
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            table.remove(key(k).as_str()).map_err(dberr)?;
            written += 1;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::intent::{
        validate::tests::{lab, lab_topology, nic, vpc},
        ErrorKind,
    };

    /// A store file in a fresh directory, removed on drop.
    struct TempStore(PathBuf);

    impl TempStore {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("sluice-store-test-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn path(&self) -> PathBuf {
            self.0.join("intent.redb")
        }
    }

    impl Drop for TempStore {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_new_store_holds_an_empty_intent() {
        let tmp = TempStore::new("empty");
        let (_, intent) = Store::open(&tmp.path()).unwrap();
        assert_eq!(intent, Intent::default());
        assert_eq!(intent.generation(), 0);
    }

    #[test]
    fn committed_intent_survives_reopening() {
        let tmp = TempStore::new("reopen");
        let written = {
            let (store, mut current) = Store::open(&tmp.path()).unwrap();
            let summary = store
                .transact(&mut current, |i| i.apply(lab_topology()))
                .unwrap();
            assert!(summary.changes() > 0);
            assert_eq!(current.generation(), 1);
            current
        };
        let (_, read) = Store::open(&tmp.path()).unwrap();
        assert_eq!(read, written);
        assert_eq!(read.generation(), 1);
        // The name index and the counters came back: names resolve, IDs keep counting.
        assert_eq!(read.subnet(Some("tenant-b"), "db").unwrap().id, "subnet-4");
        let (_, v) = read.create_vpc(vpc("later", "10.1.0.0/16")).unwrap();
        assert_eq!((v.id.as_str(), v.vni), ("vpc-4", 4));
    }

    #[test]
    fn each_change_bumps_the_generation_and_deletes_reach_the_file() {
        let tmp = TempStore::new("generations");
        let (store, mut current) = Store::open(&tmp.path()).unwrap();
        store
            .transact(&mut current, |i| i.apply(lab_topology()))
            .unwrap();
        store
            .transact(&mut current, |i| {
                i.delete_route("tenant-a", "10.9.0.0/16").map(|i| (i, ()))
            })
            .unwrap();
        store
            .transact(&mut current, |i| i.delete_nic("b-vm2").map(|i| (i, ())))
            .unwrap();
        assert_eq!(current.generation(), 3);
        let reread = store.load().unwrap();
        assert_eq!(reread, current);
        assert!(reread.nic("b-vm2").is_none());
        assert!(reread
            .routes_of("vpc-1")
            .all(|r| r.destination.to_string() != "10.9.0.0/16"));
    }

    #[test]
    fn a_refused_change_writes_nothing() {
        let tmp = TempStore::new("refused");
        let (store, mut current) = Store::open(&tmp.path()).unwrap();
        store
            .transact(&mut current, |i| i.apply(lab_topology()))
            .unwrap();
        let before = current.clone();
        let err = store
            .transact(&mut current, |i| i.delete_vpc("tenant-a").map(|i| (i, ())))
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::CONFLICT);
        let mut bad = lab_topology();
        bad.nics[0].ip = Some("10.0.1.255".into());
        bad.vpcs[0].name = "renamed".into();
        let err = store.transact(&mut current, |i| i.apply(bad)).unwrap_err();
        match &err {
            TransactError::Invalid(e) => assert_eq!(e.kind, ErrorKind::Conflict, "{e}"),
            other => panic!("{other}"),
        }
        assert_eq!(current, before);
        drop(store);
        let (_, read) = Store::open(&tmp.path()).unwrap();
        assert_eq!(read, before);
        assert_eq!(read.generation(), 1);
    }

    #[test]
    fn applying_the_same_topology_again_writes_nothing() {
        let tmp = TempStore::new("idempotent");
        let (store, mut current) = Store::open(&tmp.path()).unwrap();
        store
            .transact(&mut current, |i| i.apply(lab_topology()))
            .unwrap();
        let again = store
            .transact(&mut current, |i| i.apply(lab_topology()))
            .unwrap();
        assert_eq!(again.changes(), 0);
        assert_eq!(current.generation(), 1);
        assert_eq!(store.load().unwrap().generation(), 1);
    }

    #[test]
    fn security_groups_and_nic_attachments_survive_reopening() {
        use crate::intent::sg::tests::{cidr, group, rule};
        use crate::intent::{Action, Direction, Protocol};
        let tmp = TempStore::new("security-groups");
        let written = {
            let (store, mut current) = Store::open(&tmp.path()).unwrap();
            store
                .transact(&mut current, |i| i.apply(lab_topology()))
                .unwrap();
            let ssh = rule(
                Direction::Ingress,
                Protocol::Tcp,
                Some("22"),
                cidr("10.0.0.0/8"),
                Action::Allow,
                10,
            );
            store
                .transact(&mut current, |i| {
                    i.create_security_group(group("admin", "tenant-a", vec![ssh]))
                })
                .unwrap();
            store
                .transact(&mut current, |i| {
                    i.set_nic_security_groups("a-vm1", vec!["admin".into()])
                })
                .unwrap();
            store
                .transact(&mut current, |i| {
                    i.create_security_group(group("gone", "tenant-a", vec![]))
                })
                .unwrap();
            store
                .transact(&mut current, |i| {
                    i.delete_security_group(Some("tenant-a"), "gone")
                        .map(|i| (i, ()))
                })
                .unwrap();
            assert_eq!(current.generation(), 5);
            current
        };
        let (_, read) = Store::open(&tmp.path()).unwrap();
        assert_eq!(read, written);
        let admin = read.security_group(Some("tenant-a"), "admin").unwrap();
        assert_eq!(
            (admin.id.as_str(), admin.rules[0].id.as_str()),
            ("sg-4", "sgr-7"),
            "after the lab VPCs' default groups and their rules"
        );
        assert_eq!(read.nic("a-vm1").unwrap().security_groups, ["sg-4"]);
        assert!(read.security_group(None, "gone").is_none());
        // IDs keep counting after the reopen.
        let (_, g) = read
            .create_security_group(group("later", "tenant-a", vec![]))
            .unwrap();
        assert_eq!(g.id, "sg-6");
    }

    #[test]
    fn a_store_from_before_default_groups_gets_them_on_open() {
        let tmp = TempStore::new("migrate");
        let mut r = lab().to_records();
        r.security_groups.clear();
        for n in &mut r.nics {
            n.security_groups.clear();
        }
        let old = Intent::from_records(r);
        {
            let (store, empty) = Store::open(&tmp.path()).unwrap();
            let mut written = old.clone();
            store.commit(&empty, &mut written).unwrap();
            assert_eq!(written.generation(), 1);
        }
        let (_, read) = Store::open(&tmp.path()).unwrap();
        assert_eq!(read.generation(), 2, "the migration is one commit");
        assert_eq!(read.security_groups().count(), 3);
        assert!(read.nics().all(|n| n.security_groups.len() == 1));
        // Written: the next open finds nothing to do.
        let (_, again) = Store::open(&tmp.path()).unwrap();
        assert_eq!(again, read);
    }

    #[test]
    fn eips_and_nat_gateways_survive_reopening() {
        let tmp = TempStore::new("nat");
        let written = {
            let (store, mut current) = Store::open(&tmp.path()).unwrap();
            let yaml = r#"
eip_pools: [{name: pub, cidrs: [203.0.113.0/28]}]
eips: [{name: e1}, {name: e2}, {name: e3}]
nat_gateways:
  - name: gw
    vpc: tenant-a
    subnet: web
    eips: [e1, e2]
    snat: [{subnet: web, eips: [e1]}]
    dnat: [{eip: e2, protocol: udp, public_port: 53, private_ip: 10.0.1.10}]
"#;
            let mut t = lab_topology();
            let nat: crate::intent::Topology = serde_yaml::from_str(yaml).unwrap();
            t.eip_pools = nat.eip_pools;
            t.eips = nat.eips;
            t.nat_gateways = nat.nat_gateways;
            store.transact(&mut current, |i| i.apply(t)).unwrap();
            store
                .transact(&mut current, |i| {
                    i.bind_eip(
                        "e3",
                        crate::intent::EipBind {
                            nic: "a-vm1".into(),
                        },
                    )
                })
                .unwrap();
            store
                .transact(&mut current, |i| {
                    i.remove_nat_entry("gw", "dnat-1").map(|i| (i, ()))
                })
                .unwrap();
            current
        };
        let (_, read) = Store::open(&tmp.path()).unwrap();
        assert_eq!(read, written);
        assert_eq!(read.nat_gateway("gw").unwrap().snat.len(), 1);
        assert!(read.nat_gateway("gw").unwrap().dnat.is_empty());
        assert!(matches!(
            read.eip("e3").unwrap().state,
            crate::intent::EipState::Bound { .. }
        ));
        // Names are indexed again and the counters go on.
        assert_eq!(read.counters().next_dnat, 2);
        assert_eq!(read.eip("e1").unwrap().id, "eip-1");
    }

    #[test]
    fn the_blocklist_survives_reopening() {
        let tmp = TempStore::new("blocklist");
        let written = {
            let (store, mut current) = Store::open(&tmp.path()).unwrap();
            for p in ["203.0.113.0/24", "198.51.100.0/24"] {
                store
                    .transact(&mut current, |i| {
                        i.add_blocklist(crate::intent::BlocklistSpec {
                            prefix: p.into(),
                            ..Default::default()
                        })
                    })
                    .unwrap();
            }
            store
                .transact(&mut current, |i| {
                    i.delete_blocklist("198.51.100.0/24").map(|i| (i, ()))
                })
                .unwrap();
            current
        };
        let (_, read) = Store::open(&tmp.path()).unwrap();
        assert_eq!(read, written);
        let prefixes: Vec<String> = read.blocklist().map(|b| b.prefix.to_string()).collect();
        assert_eq!(prefixes, ["203.0.113.0/24"]);
    }

    #[test]
    fn an_unreadable_record_is_reported_with_its_table_and_key() {
        let tmp = TempStore::new("corrupt");
        {
            let (store, current) = Store::open(&tmp.path()).unwrap();
            let (mut next, _) = lab()
                .create_nic(nic("extra", "tenant-a", "web", "h1"))
                .unwrap();
            store.commit(&current, &mut next).unwrap();
            let txn = store.db.begin_write().unwrap();
            txn.open_table(NICS)
                .unwrap()
                .insert("nic-1", "{not json")
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(&tmp.path())
            .err()
            .expect("corrupt record accepted");
        let msg = err.to_string();
        assert!(msg.contains("nics/nic-1"), "{msg}");
    }
}
