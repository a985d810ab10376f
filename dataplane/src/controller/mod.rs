//! The controller: the cloud's intent (VPCs, subnets, hosts, NICs, routes, peerings), kept
//! in the embedded store and served over the REST API ([`api`]). Agents long-poll it for
//! their host's compiled tables.
//!
//! One writer at a time: a change is validated against the current intent, committed in
//! one store transaction, and only then becomes the intent readers see; the generation
//! it got is broadcast so waiting agents wake up.

pub mod api;
pub mod lb_status;
pub mod openapi;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, RwLock},
};

use tokio::sync::watch;

use crate::{
    intent::{Intent, Store, StoreError, TransactError, ValidationError},
    lb::compile as lb,
    nat::compile as nat,
    sg::compile as sg,
    sg::SgTables,
    vpc::{
        compile::{compile_host, compile_host_cached, CompileCache},
        delta::TablesDelta,
        tables::HostTables,
    },
};

use api::AgentTables;

pub struct Controller {
    store: Mutex<Store>,
    /// Shared with the compile caches, which compare it with the next one.
    intent: RwLock<Arc<Intent>>,
    generation: watch::Sender<u64>,
    /// Per host: the tables last served to its agent, the base of the next delta it asks
    /// for.
    served: Mutex<HashMap<String, Served>>,
    /// Backends' health and connections as the agents report them (`GET
    /// /v1/load-balancers/{id}/status`).
    pub lb_status: lb_status::LbStatusBoard,
}

struct Served {
    generation: u64,
    tables: Arc<HostTables>,
    /// Taken while a compile for this host runs.
    cache: Option<TablesCache>,
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
            intent: RwLock::new(Arc::new(intent)),
            generation,
            served: Mutex::default(),
            lb_status: Default::default(),
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
        let current = self.current();
        let (mut next, out) = mutation(&current)?;
        store.commit(&current, &mut next)?;
        let generation = next.generation();
        let old = std::mem::replace(&mut *self.intent.write().expect("intent lock"), next.into());
        drop(old);
        self.generation.send_if_modified(|g| {
            let changed = *g != generation;
            *g = generation;
            changed
        });
        Ok((out, generation))
    }

    /// The current intent.
    pub fn current(&self) -> Arc<Intent> {
        self.intent.read().expect("intent lock").clone()
    }

    /// Notified whenever the generation changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// What `host`'s maps should hold now: as the change from the tables of generation
    /// `have` when those were the last served to this host, otherwise whole.
    pub fn host_update(&self, host: &str, have: Option<u64>) -> AgentTables {
        let (base, cache) = {
            let mut served = self.served.lock().expect("served");
            match served.get_mut(host) {
                Some(s) => (Some((s.generation, s.tables.clone())), s.cache.take()),
                None => (None, None),
            }
        };
        let intent = self.current();
        let generation = intent.generation();
        let mut cache = cache.unwrap_or_default();
        let tables = match &base {
            // Nothing changed since: no need to compile again.
            Some((g, t)) if *g == generation => t.clone(),
            _ => Arc::new(compile_tables_cached(&intent, host, &mut cache)),
        };
        let registered = intent.host(host).is_some();
        drop(intent);
        let delta = match (&base, have) {
            (Some((g, base)), Some(have)) if *g == have => {
                Some(TablesDelta::between(base, &tables))
            }
            _ => None,
        };
        {
            let mut served = self.served.lock().expect("served");
            let newer = served.get(host).is_none_or(|s| s.generation <= generation);
            if newer {
                let s = Served {
                    generation,
                    tables: tables.clone(),
                    cache: Some(cache),
                };
                served.insert(host.to_string(), s);
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

/// A host's VPC tables with its security-group and NAT tables and the blocklist.
pub fn compile_tables(intent: &Intent, host: &str) -> HostTables {
    with_the_rest(intent, host, compile_host(intent, host), || {
        sg::compile_host(intent, host)
    })
}

/// What [`compile_tables_cached`] keeps between compiles of one host.
#[derive(Debug, Default)]
pub struct TablesCache {
    vpc: CompileCache,
    /// The security-group tables of the intent in `vpc`.
    sg: Option<SgTables>,
}

/// [`compile_tables`], reusing what the intent compiled last left unchanged: the VPCs
/// whose inputs did not change (`compile_host_cached`), and the security-group tables
/// when no NIC, group or name changed. Equal to `compile_tables` (tested).
pub fn compile_tables_cached(
    intent: &Arc<Intent>,
    host: &str,
    cache: &mut TablesCache,
) -> HostTables {
    let prev = cache.vpc.intent().cloned();
    let sg_cached = cache.sg.take();
    let t = compile_host_cached(intent, host, &mut cache.vpc);
    // Hosts, NICs and names were compared by the VPC compile.
    let context = cache.vpc.only_routes_changed();
    let t = with_the_rest(intent, host, t, || match (prev, sg_cached) {
        (Some(p), Some(sg))
            if Arc::ptr_eq(&p, intent)
                || (context && p.security_groups == intent.security_groups) =>
        {
            sg
        }
        _ => sg::compile_host(intent, host),
    });
    cache.sg = Some(t.security_groups.clone());
    t
}

/// `t` (the host's VPC tables) with its security-group tables (from `sg`), the blocklist,
/// the NAT tables (whose VTEPs join the ones to resolve) and the load balancer tables.
fn with_the_rest(
    intent: &Intent,
    host: &str,
    mut t: HostTables,
    sg: impl FnOnce() -> SgTables,
) -> HostTables {
    if let Some(h) = intent.host(host) {
        t.security_groups = sg();
        t.blocklist = sg::compile_blocklist(intent);
        t.nat = nat::compile_host(intent, host);
        t.lb = lb::compile_host(intent, host);
        // The agent resolves the NAT tables' hosts and border router with the VTEPs.
        let extra = t.nat.vteps(h.underlay_ip.octets());
        if !extra.is_empty() {
            t.remote_vteps.extend(extra);
            t.remote_vteps.sort_unstable();
            t.remote_vteps.dedup();
        }
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

    fn register_h1(c: &Controller) {
        c.transact(|i| {
            i.create_host(HostSpec {
                name: "h1".into(),
                underlay_ip: "192.0.2.1".into(),
                underlay_ifname: "ul0".into(),
                ..Default::default()
            })
        })
        .unwrap();
    }

    #[test]
    fn host_tables_say_whether_the_host_is_registered() {
        let t = TempController::new("tables");
        let c = &t.controller;
        assert!(!c.host_tables("h1").1);
        register_h1(c);
        let (g, registered, tables) = c.host_tables("h1");
        assert!(registered);
        assert_eq!(g, c.generation());
        assert_eq!(tables.underlay.unwrap().ifname, "ul0");
    }

    #[test]
    fn served_changes_add_up_to_a_full_compile() {
        use crate::intent::{NextHop, NicSpec, RouteSpec, SubnetSpec};
        let t = TempController::new("incremental");
        let c = &t.controller;
        register_h1(c);
        for v in ["a", "b", "c"] {
            c.transact(|i| {
                i.create_vpc(VpcSpec {
                    name: Some(v.into()),
                    cidr: "10.0.0.0/16".into(),
                })
            })
            .unwrap();
            c.transact(|i| {
                i.create_subnet(SubnetSpec {
                    vpc: v.into(),
                    name: Some("s".into()),
                    cidr: "10.0.1.0/24".into(),
                })
            })
            .unwrap();
            c.transact(|i| {
                i.create_nic(NicSpec {
                    name: Some(format!("{v}-n")),
                    vpc: v.into(),
                    subnet: "s".into(),
                    host: "h1".into(),
                    ifname: format!("{v}0"),
                    ..Default::default()
                })
            })
            .unwrap();
        }
        let first = c.host_update("h1", None);
        let (mut generation, mut held) = (first.generation, first.tables.unwrap());
        let route = |vpc: &str, dst: &str, next_hop| RouteSpec {
            vpc: vpc.into(),
            destination: dst.into(),
            next_hop,
        };
        let nic = |n: &str| NextHop::Nic { nic: n.into() };
        type Change<'a> = Box<dyn Fn(&Intent) -> Result<Intent, ValidationError> + 'a>;
        let changes: Vec<Change<'_>> = vec![
            Box::new(|i| {
                i.put_route(route("a", "172.16.0.0/24", nic("a-n")))
                    .map(|r| r.0)
            }),
            Box::new(|i| {
                i.put_route(route("a", "172.16.0.0/24", NextHop::Blackhole))
                    .map(|r| r.0)
            }),
            Box::new(|i| {
                i.put_route(route("b", "10.0.1.0/25", nic("b-n")))
                    .map(|r| r.0)
            }),
            Box::new(|i| i.delete_route("b", "10.0.1.0/25")),
            Box::new(|i| {
                i.create_nic(NicSpec {
                    name: Some("c-m".into()),
                    vpc: "c".into(),
                    subnet: "s".into(),
                    host: "h1".into(),
                    ifname: "c1".into(),
                    ..Default::default()
                })
                .map(|r| r.0)
            }),
            Box::new(|i| {
                i.put_route(route("c", "172.16.0.0/24", nic("c-m")))
                    .map(|r| r.0)
            }),
        ];
        for change in changes {
            c.transact(|i| change(i).map(|n| (n, ()))).unwrap();
            let update = c.host_update("h1", Some(generation));
            assert_eq!(update.base, Some(generation), "sent as a change");
            held = update.into_tables(Some((generation, held))).unwrap();
            generation = c.generation();
            assert_eq!(held, c.host_tables("h1").2);
        }
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
