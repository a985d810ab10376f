//! The controller: the cloud's intent (VPCs, subnets, hosts, NICs, routes, peerings), kept
//! in the embedded store and served over the REST API ([`api`]). Agents long-poll it for
//! their host's compiled tables.
//!
//! One writer at a time: a change is validated against the current intent, committed in
//! one store transaction, and only then becomes the intent readers see; the generation
//! it got is broadcast so waiting agents wake up.

pub mod api;
pub mod openapi;

use std::{
    path::Path,
    sync::{Mutex, RwLock},
};

use tokio::sync::watch;

use crate::{
    intent::{Intent, Store, StoreError, TransactError, ValidationError},
    vpc::{compile::compile_host, tables::HostTables},
};

pub struct Controller {
    store: Mutex<Store>,
    intent: RwLock<Intent>,
    generation: watch::Sender<u64>,
}

impl Controller {
    /// Opens (or creates) the store at `path` and loads the intent it holds.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            // A missing directory would otherwise surface as an opaque database error.
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Db(redb::Error::Io(e)))?;
        }
        let (store, intent) = Store::open(path)?;
        let (generation, _) = watch::channel(intent.generation());
        Ok(Self {
            store: Mutex::new(store),
            intent: RwLock::new(intent),
            generation,
        })
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Runs `f` on the current intent.
    pub fn read<T>(&self, f: impl FnOnce(&Intent) -> T) -> T {
        f(&self.intent.read().expect("intent lock"))
    }

    /// Validates and commits one change; returns its result and the generation after it.
    pub fn transact<T>(
        &self,
        mutation: impl FnOnce(&Intent) -> Result<(Intent, T), ValidationError>,
    ) -> Result<(T, u64), TransactError> {
        // The store lock serializes writers; readers keep the old intent until the commit.
        let store = self.store.lock().expect("store lock");
        let mut next = self.intent.read().expect("intent lock").clone();
        let out = store.transact(&mut next, mutation)?;
        let generation = next.generation();
        *self.intent.write().expect("intent lock") = next;
        self.generation.send_if_modified(|g| {
            let changed = *g != generation;
            *g = generation;
            changed
        });
        Ok((out, generation))
    }

    /// Notified whenever the generation changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// What `host`'s maps should hold now, and the generation it was compiled from.
    pub fn host_tables(&self, host: &str) -> (u64, bool, HostTables) {
        self.read(|i| {
            (
                i.generation(),
                i.host(host).is_some(),
                compile_host(i, host),
            )
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::intent::{HostSpec, VpcSpec};

    /// A controller on a fresh store under the system temp dir, removed on drop.
    pub struct TempController {
        pub controller: std::sync::Arc<Controller>,
        dir: std::path::PathBuf,
    }

    impl TempController {
        pub fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("sluice-controller-{name}-{}", std::process::id()));
            std::fs::remove_dir_all(&dir).ok();
            let controller =
                std::sync::Arc::new(Controller::open(&dir.join("db/intent.redb")).unwrap());
            Self { controller, dir }
        }
    }

    impl Drop for TempController {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }

    #[test]
    fn a_change_bumps_the_generation_and_a_refused_one_does_not() {
        let t = TempController::new("gen");
        let c = &t.controller;
        let rx = c.subscribe();
        let g0 = c.generation();
        let (vpc, g1) = c
            .transact(|i| {
                i.create_vpc(VpcSpec {
                    name: Some("a".into()),
                    cidr: "10.0.0.0/16".into(),
                })
            })
            .unwrap();
        assert!(g1 > g0);
        assert_eq!(c.generation(), g1);
        assert!(rx.has_changed().unwrap());
        assert_eq!(c.read(|i| i.vpc("a").cloned()), Some(vpc));

        let e = c
            .transact(|i| {
                i.create_vpc(VpcSpec {
                    name: Some("b".into()),
                    cidr: "10.0.0.0/33".into(),
                })
            })
            .unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(c.generation(), g1);
        assert!(c.read(|i| i.vpc("b").is_none()));
    }

    #[test]
    fn host_tables_say_whether_the_host_is_registered() {
        let t = TempController::new("tables");
        let c = &t.controller;
        assert!(!c.host_tables("h1").1);
        c.transact(|i| {
            i.create_host(HostSpec {
                name: "h1".into(),
                underlay_ip: "192.0.2.1".into(),
                underlay_ifname: "ul0".into(),
                ..Default::default()
            })
        })
        .unwrap();
        let (g, registered, tables) = c.host_tables("h1");
        assert!(registered);
        assert_eq!(g, c.generation());
        assert_eq!(tables.underlay.unwrap().ifname, "ul0");
    }

    #[test]
    fn intent_survives_reopening_the_store() {
        let dir =
            std::env::temp_dir().join(format!("sluice-controller-reopen-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let path = dir.join("intent.redb");
        let generation = {
            let c = Controller::open(&path).unwrap();
            c.transact(|i| {
                i.create_vpc(VpcSpec {
                    name: Some("keep".into()),
                    cidr: "10.9.0.0/16".into(),
                })
            })
            .unwrap()
            .1
        };
        let c = Controller::open(&path).unwrap();
        assert_eq!(c.generation(), generation);
        assert!(c.read(|i| i.vpc("keep").is_some()));
        std::fs::remove_dir_all(&dir).ok();
    }
}
