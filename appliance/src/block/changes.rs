//! Run-time changes of the block service: namespaces and subsystems added and removed
//! while hosts are connected, each checked as the configuration would be, carried out on
//! every controller thread (devices opened there, or detached and flushed), then announced
//! to the hosts.

use std::rc::Rc;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bdev::BlockIo;
use tracing::info;

use crate::config::Config;

use super::{
    BlockService, ControllerFailed, Exported, LOCAL, Local, namespace_config, subsystem_config,
};

/// How long a run-time change waits for every controller thread to take it.
const CHANGE_DEADLINE: Duration = Duration::from_secs(10);

/// Why a run-time change (namespace, subsystem) was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// No subsystem or namespace of that name.
    #[error("{0}")]
    NotFound(String),
    /// The change would make the configuration invalid.
    #[error("{key}: {reason}")]
    Invalid {
        /// The configuration key it would break.
        key: String,
        /// Why.
        reason: String,
    },
    /// A controller thread could not carry it out.
    #[error(transparent)]
    Controller(#[from] ControllerFailed),
}

impl BlockService {
    /// The subsystems in force now (with the changes made at run time).
    pub fn subsystems(&self) -> Vec<crate::config::SubsystemConfig> {
        self.config_lock().subsystems.clone()
    }

    fn config_lock(&self) -> MutexGuard<'_, Config> {
        // Every change replaces the configuration whole, after it succeeded.
        self.config.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The subsystems now (configuration order, then those added at run time) with their
    /// namespaces, with the changes made at run time.
    pub fn namespaces(&self) -> Vec<(String, Vec<crate::config::NamespaceConfig>)> {
        self.config_lock()
            .subsystems
            .iter()
            .map(|s| (s.nqn.clone(), s.namespaces.clone()))
            .collect()
    }

    /// Adds namespace `ns` to subsystem `nqn` while hosts are connected: checked as the
    /// configuration would be (the volume exists and is not exported or the content store,
    /// the ID is free, the ANA group exists), opened on every controller thread, then
    /// announced to the subsystem's controllers (Namespace Attribute Changed, log 04h).
    /// Blocks until every controller thread has it (up to a deadline).
    pub fn add_namespace(
        &self,
        nqn: &str,
        ns: crate::config::NamespaceConfig,
    ) -> Result<(), ChangeError> {
        let mut config = self.config_lock();
        let mut next = config.clone();
        let Some(i) = next.subsystems.iter().position(|s| s.nqn == nqn) else {
            return Err(ChangeError::NotFound(format!("no subsystem {nqn}")));
        };
        let j = next.subsystems[i].namespaces.len();
        next.subsystems[i].namespaces.push(ns.clone());
        next.validate().map_err(|(key, reason)| {
            let key = key.replace(&format!("subsystems[{i}].namespaces[{j}]."), "");
            ChangeError::Invalid { key, reason }
        })?;
        let volume = self
            .backplane
            .volume(&ns.volume)
            .map(Arc::clone)
            .ok_or_else(|| ChangeError::Invalid {
                key: "volume".into(),
                reason: format!("unknown volume `{}`", ns.volume),
            })?;
        let cfg = namespace_config(nqn, ns.nsid, &volume, ns.ana_group);
        self.target
            .add_namespace(nqn, cfg)
            .map_err(|e| ChangeError::Invalid {
                key: "nsid".into(),
                reason: e.to_string(),
            })?;
        let (owned_nqn, nsid) = (nqn.to_owned(), ns.nsid);
        let attached = self.on_every_controller(move |local| {
            let dev = volume.open_io(local.index, &local.pool)?;
            for view in &local.views {
                view.attach_namespace(&owned_nqn, nsid, Rc::clone(&dev));
            }
            Ok(())
        });
        if let Err(e) = attached {
            // Nothing was announced: take it back from the threads that have it.
            let _ = self.target.remove_namespace(nqn, nsid);
            let owned_nqn = nqn.to_owned();
            let _ = self.on_every_controller(move |local| {
                for view in &local.views {
                    view.detach_namespace(&owned_nqn, nsid);
                }
                Ok(())
            });
            return Err(e);
        }
        // The subsystem exists: the target was built from this configuration.
        let _ = self.target.announce_namespace(nqn, nsid);
        info!(subsystem = nqn, nsid, volume = %ns.volume, "namespace added");
        *config = next;
        Ok(())
    }

    /// Removes namespace `nsid` from subsystem `nqn` while hosts are connected: new commands
    /// for it fail with Invalid Namespace at once, commands already at its devices finish,
    /// each controller thread flushes its device, then the subsystem's controllers are
    /// told (Namespace Attribute Changed, log 04h). Blocks until every controller thread
    /// is done (up to a deadline).
    pub fn remove_namespace(&self, nqn: &str, nsid: u32) -> Result<(), ChangeError> {
        let mut config = self.config_lock();
        let Some(s) = config.subsystems.iter_mut().find(|s| s.nqn == nqn) else {
            return Err(ChangeError::NotFound(format!("no subsystem {nqn}")));
        };
        let Some(at) = s.namespaces.iter().position(|n| n.nsid == nsid) else {
            return Err(ChangeError::NotFound(format!(
                "{nqn} has no namespace {nsid}"
            )));
        };
        self.target
            .remove_namespace(nqn, nsid)
            .map_err(|e| ChangeError::NotFound(e.to_string()))?;
        let removed = s.namespaces.remove(at);
        let owned_nqn = nqn.to_owned();
        let detached = self.on_every_controller(move |local| {
            let mut devs: Vec<Rc<dyn BlockIo>> = Vec::new();
            for view in &local.views {
                if let Some(d) = view.detach_namespace(&owned_nqn, nsid) {
                    if !devs.iter().any(|x| Rc::ptr_eq(x, &d)) {
                        devs.push(d);
                    }
                }
            }
            Ok(devs)
        });
        let _ = self.target.announce_namespace(nqn, nsid);
        info!(subsystem = nqn, nsid, volume = %removed.volume, "namespace removed");
        detached.map(drop)
    }

    /// Adds subsystem `sub` (with its allowed hosts and namespaces) while hosts are
    /// connected: checked as the configuration would be, its namespaces opened on every
    /// controller thread, then published (hosts may connect; discovery controllers that
    /// asked get a Discovery Log Page Change notice). Blocks until every controller thread
    /// has it (up to a deadline).
    pub fn add_subsystem(&self, sub: crate::config::SubsystemConfig) -> Result<(), ChangeError> {
        let mut config = self.config_lock();
        let mut next = config.clone();
        let i = next.subsystems.len();
        next.subsystems.push(sub.clone());
        next.validate()
            .map_err(|(key, reason)| ChangeError::Invalid {
                key: key.replace(&format!("subsystems[{i}]."), ""),
                reason,
            })?;
        let exported: Exported = sub
            .namespaces
            .iter()
            .filter_map(|n| {
                let v = self.backplane.volume(&n.volume)?;
                Some((sub.nqn.clone(), n.nsid, Arc::clone(v)))
            })
            .collect();
        self.target
            .add_subsystem(&subsystem_config(&sub, &exported))
            .map_err(|e| ChangeError::Invalid {
                key: "nqn".into(),
                reason: e.to_string(),
            })?;
        let nqn = sub.nqn.clone();
        let opened = {
            let exported = exported.clone();
            self.on_every_controller(move |local| {
                for (nqn, nsid, volume) in &exported {
                    let dev = volume.open_io(local.index, &local.pool)?;
                    for view in &local.views {
                        view.attach_namespace(nqn, *nsid, Rc::clone(&dev));
                    }
                }
                Ok(())
            })
        };
        if let Err(e) = opened {
            // Never published: no host saw it.
            if let Ok(index) = self.target.remove_subsystem(&nqn) {
                let _ = self.on_every_controller(move |local| {
                    Ok(local
                        .views
                        .iter()
                        .flat_map(|v| v.detach_subsystem(index))
                        .collect::<Vec<_>>())
                });
            }
            return Err(e);
        }
        // It was added just above, under the change lock.
        let _ = self.target.publish_subsystem(&nqn);
        info!(subsystem = %nqn, namespaces = exported.len(), "subsystem added");
        *config = next;
        Ok(())
    }

    /// Removes subsystem `nqn` while hosts are connected: its controllers are torn down
    /// (their connections close), new Connects are refused, discovery logs drop it (with a
    /// notice to discovery controllers that asked), and each controller thread flushes and
    /// closes its namespaces' devices. Blocks until every controller thread is done (up to a
    /// deadline).
    pub fn remove_subsystem(&self, nqn: &str) -> Result<(), ChangeError> {
        let mut config = self.config_lock();
        let Some(at) = config.subsystems.iter().position(|s| s.nqn == nqn) else {
            return Err(ChangeError::NotFound(format!("no subsystem {nqn}")));
        };
        let index = self
            .target
            .remove_subsystem(nqn)
            .map_err(|e| ChangeError::NotFound(e.to_string()))?;
        config.subsystems.remove(at);
        info!(subsystem = nqn, "subsystem removed");
        self.on_every_controller(move |local| {
            let mut devs: Vec<Rc<dyn BlockIo>> = Vec::new();
            for d in local.views.iter().flat_map(|v| v.detach_subsystem(index)) {
                if !devs.iter().any(|x| Rc::ptr_eq(x, &d)) {
                    devs.push(d);
                }
            }
            Ok(devs)
        })
    }

    /// Runs `job` on every controller thread with its part of the service (devices it
    /// returns are flushed there first) and waits for all of them, up to
    /// [`CHANGE_DEADLINE`].
    fn on_every_controller<T: FlushAfter + 'static>(
        &self,
        job: impl Fn(&Local) -> std::io::Result<T> + Send + Sync + 'static,
    ) -> Result<(), ChangeError> {
        let job = Arc::new(job);
        let (tx, rx) = std::sync::mpsc::channel();
        for h in &self.controllers {
            let (job, tx, index) = (Arc::clone(&job), tx.clone(), h.index());
            let sent = h.run(move || {
                let r = LOCAL.with(|l| match l.borrow().as_ref() {
                    Some(local) => job(local).map_err(|e| e.to_string()),
                    None => Err("serves no NVMe/TCP port".to_owned()),
                });
                match r {
                    Ok(t) => {
                        tokio::task::spawn_local(async move {
                            t.flush_after().await;
                            // The waiter may have given up: nothing to tell then.
                            let _ = tx.send((index, Ok(())));
                        });
                    }
                    Err(e) => {
                        let _ = tx.send((index, Err(e)));
                    }
                }
            });
            if let Err(e) = sent {
                return Err(ControllerFailed::from(e).into());
            }
        }
        drop(tx);
        let until = Instant::now() + CHANGE_DEADLINE;
        for _ in &self.controllers {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((_, Ok(()))) => {}
                Ok((index, Err(reason))) => return Err(ControllerFailed { index, reason }.into()),
                Err(_) => {
                    return Err(ControllerFailed {
                        index: 0,
                        reason: format!("a controller did not answer within {CHANGE_DEADLINE:?}"),
                    }
                    .into());
                }
            }
        }
        Ok(())
    }
}

/// What a controller thread does after its part of a change, before it reports back.
trait FlushAfter {
    /// Done when the thread's part is complete.
    async fn flush_after(self);
}

impl FlushAfter for () {
    async fn flush_after(self) {}
}

/// Devices a thread stopped using: flushed (each has its own command deadlines).
impl FlushAfter for Vec<Rc<dyn BlockIo>> {
    async fn flush_after(self) {
        for (_, e) in bdev::flush_all(&self).await {
            tracing::warn!(error = %e, "flush of a removed namespace failed");
        }
    }
}
