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
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, RwLock},
};

use tokio::sync::watch;

use crate::{
    intent::{Intent, Store, StoreError, TransactError, ValidationError},
    sg::compile as sg,
    vpc::{compile::compile_host, delta::TablesDelta, tables::HostTables},
};

use api::AgentTables;

pub struct Controller {
    store: Mutex<Store>,
    intent: RwLock<Intent>,
    generation: watch::Sender<u64>,
    /// The tables last served to each host's agent, and their generation: the base of the
    /// next delta it asks for.
    served: Mutex<HashMap<String, (u64, Arc<HostTables>)>>,
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
            served: Mutex::default(),
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

    /// What `host`'s maps should hold now: as the change from the tables of generation
    /// `have` when those were the last served to this host, otherwise whole.
    pub fn host_update(&self, host: &str, have: Option<u64>) -> AgentTables {
        let cached = self.served.lock().expect("served").get(host).cloned();
        let (generation, registered, tables) = self.read(|i| {
            let tables = match &cached {
                // Nothing changed since: no need to compile again.
                Some((g, t)) if *g == i.generation() => t.clone(),
                _ => Arc::new(compile_tables(i, host)),
            };
            (i.generation(), i.host(host).is_some(), tables)
        });
        let delta = match (&cached, have) {
            (Some((g, base)), Some(have)) if *g == have => {
                Some(TablesDelta::between(base, &tables))
            }
            _ => None,
        };
        {
            let mut served = self.served.lock().expect("served");
            let newer = served.get(host).is_none_or(|(g, _)| *g <= generation);
            if newer {
                served.insert(host.to_string(), (generation, tables.clone()));
            }
        }
        AgentTables {
            generation,
            registered,
            base: delta.as_ref().and(have),
            tables: match delta {
                Some(_) => None,
                None => Some(Arc::unwrap_or_clone(tables)),
            },
            delta,
        }
    }

    /// What `host`'s maps should hold now, and the generation it was compiled from.
    pub fn host_tables(&self, host: &str) -> (u64, bool, HostTables) {
        self.read(|i| {
            (
                i.generation(),
                i.host(host).is_some(),
                compile_tables(i, host),
            )
        })
    }
}

/// A host's VPC tables with its security-group tables and the blocklist.
pub fn compile_tables(intent: &Intent, host: &str) -> HostTables {
    let mut t = compile_host(intent, host);
    if intent.host(host).is_some() {
        t.security_groups = sg::compile_host(intent, host);
        t.blocklist = sg::compile_blocklist(intent);
    }
    t
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
