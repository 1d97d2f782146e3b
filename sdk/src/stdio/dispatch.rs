//! The plugin side of each protocol method: decode the params, call the
//! stage trait method of the same name, encode the result. The mirror of
//! the host's adapters (ktstr's `process::adapters`), with the same JSON.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::PROTOCOLS;
use crate::cache::{CacheKey, Staging};
use crate::context::StageContext;
use crate::error::{ErrorKind, Result, StageError};
use crate::export::{Plugin, wire};
use crate::registry::{AnyStage, PluginConfig, StageKind};
use crate::reserve::ReservationGuard;

pub struct Server {
    plugin: Plugin,
    instances: Vec<AnyStage>,
    guards: HashMap<String, Box<dyn ReservationGuard>>,
    next_guard: u64,
}

/// Decode `params[key]`.
fn arg<T: DeserializeOwned>(params: &Value, key: &str) -> Result<T> {
    serde_json::from_value(params.get(key).cloned().unwrap_or(Value::Null)).map_err(|e| {
        StageError::invalid_input(format!("params.{key}: not what this method takes"))
            .caused_by(e)
            .with_hint("the host and the plugin disagree on the protocol: see `ktstr docs plugin-protocol`")
    })
}

fn ok<T: Serialize>(value: T) -> Result<Value> {
    serde_json::to_value(value)
        .map_err(|e| StageError::internal("cannot encode a result as JSON").caused_by(e))
}

fn unsupported(method: &str) -> StageError {
    StageError::new(
        ErrorKind::Unsupported,
        format!("this plugin does not implement {method}"),
    )
}

impl Server {
    pub fn new(plugin: Plugin) -> Self {
        Self {
            plugin,
            instances: Vec::new(),
            guards: HashMap::new(),
            next_guard: 0,
        }
    }

    /// Answer one request; a panic in the stage is an `internal` error
    /// naming the method, as in a plugin library.
    pub fn call(&mut self, method: &str, params: Value, cx: &StageContext) -> Result<Value> {
        let name = self.plugin.name;
        catch_unwind(AssertUnwindSafe(|| self.dispatch(method, &params, cx))).unwrap_or_else(
            |panic| {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(StageError::internal(format!(
                    "plugin {name} panicked in {method}: {why}"
                )))
            },
        )
    }

    fn dispatch(&mut self, method: &str, params: &Value, cx: &StageContext) -> Result<Value> {
        match method {
            "hello" => self.hello(params),
            "stage.new" => self.new_stage(params),
            _ => {
                let index: usize = arg(params, "instance")?;
                let Some(stage) = self.instances.get(index) else {
                    return Err(StageError::invalid_input(format!(
                        "{method}: no stage instance {index}"
                    )));
                };
                let (kind, call) = method.split_once('.').unwrap_or((method, ""));
                if kind != stage.kind().as_str() {
                    return Err(unsupported(method));
                }
                match stage {
                    AnyStage::Source(s) => source(&**s, call, params, cx),
                    AnyStage::Reserver(r) => match call {
                        "reserve" => {
                            let r = r.reserve(&arg(params, "request")?, cx)?;
                            let guard = r.guard.map(|g| {
                                self.next_guard += 1;
                                let id = format!("g{}", self.next_guard);
                                self.guards.insert(id.clone(), g);
                                id
                            });
                            let grant = wire::Grant {
                                cpus: r.cpus,
                                mems: r.mems,
                                make_jobs: r.make_jobs,
                                sandbox_procs: r.sandbox_procs,
                            };
                            let mut v = ok(grant)?;
                            v["guard"] = json!(guard);
                            Ok(v)
                        }
                        "release" => {
                            self.guards.remove(&arg::<String>(params, "guard")?);
                            Ok(Value::Null)
                        }
                        "locks" => ok(r.locks()?),
                        _ => Err(unsupported(method)),
                    },
                    AnyStage::Configurer(c) => {
                        let tree = || arg::<PathBuf>(params, "tree");
                        let request = || arg(params, "request");
                        match call {
                            "profiles" => ok(c.profiles()),
                            "identity" => ok(c.identity(&request()?)?),
                            "is_configured" => ok(c.is_configured(&tree()?, &request()?)?),
                            "configure" => ok(c.configure(&tree()?, &request()?, cx)?),
                            "validate" => ok(c.validate(&tree()?, &request()?)?),
                            _ => Err(unsupported(method)),
                        }
                    }
                    AnyStage::Builder(b) => match call {
                        "identity" => ok(b.identity(cx)?),
                        "clean" => ok(b.clean(&arg::<PathBuf>(params, "tree")?, cx)?),
                        "build" => ok(b.build(&arg(params, "request")?, cx)?),
                        _ => Err(unsupported(method)),
                    },
                    AnyStage::Cache(c) => {
                        let key = || arg::<CacheKey>(params, "key");
                        match call {
                            "lookup" => {
                                let staging = Staging::lent(arg(params, "staging")?);
                                ok(c.lookup(&key()?, &staging, cx)?)
                            }
                            "store" => ok(c.store(
                                &key()?,
                                &arg(params, "artifacts")?,
                                &arg(params, "metadata")?,
                                cx,
                            )?),
                            "list" => {
                                let rows: Vec<wire::Listed> =
                                    c.list(cx)?.iter().map(wire::Listed::from).collect();
                                ok(rows)
                            }
                            "remove" => ok(c.remove(&key()?, cx)?),
                            "describe" => ok(c.describe()),
                            "capabilities" => ok(c.capabilities()),
                            "locks" => ok(c.locks()?),
                            _ => Err(unsupported(method)),
                        }
                    }
                    AnyStage::Verifier(v) => match call {
                        "verify" => ok(v.verify(&arg(params, "request")?, cx)?),
                        _ => Err(unsupported(method)),
                    },
                }
            }
        }
    }

    fn hello(&self, params: &Value) -> Result<Value> {
        let offered: Vec<u32> = arg(params, "protocols")?;
        let Some(protocol) = PROTOCOLS.iter().rev().find(|p| offered.contains(p)) else {
            return Err(StageError::new(
                ErrorKind::Unsupported,
                format!(
                    "plugin {} speaks protocol {PROTOCOLS:?}, the host offers {offered:?}",
                    self.plugin.name
                ),
            )
            .with_hint("rebuild the plugin against the ktstr-sdk of the ktstr that runs it"));
        };
        let manifest = self.plugin.manifest();
        Ok(json!({
            "protocol": protocol,
            "name": manifest.name,
            "version": manifest.version,
            "stages": manifest.stages,
        }))
    }

    fn new_stage(&mut self, params: &Value) -> Result<Value> {
        let kind: StageKind = arg(params, "kind")?;
        let name: String = arg(params, "name")?;
        let config: PluginConfig = params.get("config").cloned().unwrap_or(Value::Null);
        let def = (self.plugin.stages.iter())
            .find(|s| s.constructor.kind() == kind && s.name == name)
            .ok_or_else(|| {
                StageError::not_found(format!(
                    "plugin {} has no {kind} stage named {name:?}",
                    self.plugin.name
                ))
            })?;
        self.instances.push(def.constructor.construct(&config)?);
        Ok(json!({ "instance": self.instances.len() - 1 }))
    }
}

fn source(
    s: &dyn crate::source::SourceAcquirer,
    call: &str,
    params: &Value,
    cx: &StageContext,
) -> Result<Value> {
    match call {
        "claims" => ok(s.claims(&arg(params, "spec")?)),
        "accepted_forms" => ok(s.accepted_forms()),
        "resolve" => ok(s.resolve(&arg(params, "spec")?, cx)?),
        "acquire" => ok(s.acquire(&arg(params, "spec")?, cx)?),
        "probe" => ok(s.probe(&arg(params, "source")?, cx)?),
        "locks" => ok(s.locks()?),
        _ => Err(unsupported(&format!("source.{call}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::registry::Constructor;
    use crate::reserve::{Reservation, ReserveRequest, Reserver};

    static RELEASED: AtomicBool = AtomicBool::new(false);

    struct Released;
    impl Drop for Released {
        fn drop(&mut self) {
            RELEASED.store(true, Ordering::SeqCst);
        }
    }

    struct One;
    impl Reserver for One {
        fn reserve(&self, request: &ReserveRequest, _: &StageContext) -> Result<Reservation> {
            if request.cpu_cap == Some(0) {
                panic!("no CPUs at all");
            }
            Ok(Reservation {
                cpus: vec![0],
                mems: vec![],
                make_jobs: 1,
                sandbox_procs: None,
                guard: Some(Box::new(Released)),
            })
        }
    }

    fn server() -> Server {
        Server::new(Plugin::new("one", "1.2.3").stage(
            "one",
            "one CPU",
            &[],
            Constructor::Reserver(|_| Ok(Box::new(One))),
        ))
    }

    #[test]
    fn methods_reach_the_stage_and_a_release_drops_the_guard() {
        let mut s = server();
        let cx = StageContext::quiet();
        let hello = s.call("hello", json!({"protocols": [1, 2]}), &cx).unwrap();
        assert_eq!(hello["protocol"], 1);
        assert_eq!(hello["stages"][0]["kind"], "reserver");
        let e = s.call("hello", json!({"protocols": [9]}), &cx).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");

        let e = s
            .call("stage.new", json!({"kind": "cache", "name": "one"}), &cx)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        let new = s
            .call("stage.new", json!({"kind": "reserver", "name": "one"}), &cx)
            .unwrap();
        let i = new["instance"].clone();

        let grant = s
            .call(
                "reserver.reserve",
                json!({"instance": i, "request": {"cpu_cap": null}}),
                &cx,
            )
            .unwrap();
        assert_eq!(grant["cpus"], json!([0]));
        assert_eq!(grant["make_jobs"], 1);
        assert!(!RELEASED.load(Ordering::SeqCst));
        s.call(
            "reserver.release",
            json!({"instance": i, "guard": grant["guard"]}),
            &cx,
        )
        .unwrap();
        assert!(RELEASED.load(Ordering::SeqCst), "release drops the guard");

        let e = s
            .call("cache.lookup", json!({"instance": i}), &cx)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
        let e = s
            .call(
                "reserver.reserve",
                json!({"instance": i, "request": {"cpu_cap": 0}}),
                &cx,
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(
            e.message
                .starts_with("plugin one panicked in reserver.reserve: no CPUs at all"),
            "{e}"
        );
    }
}
