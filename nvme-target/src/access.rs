//! Which hosts may connect to each subsystem: `allow_any_host` and the allowed host NQNs,
//! changeable at run time (admin API, configuration reload). Consulted by Fabrics Connect
//! only, never on the I/O path. A host removed from the list is refused on its next
//! Connect; associations it already has stay up (as with nvmet and SPDK, which check the
//! host at Connect only).

use std::sync::Mutex;

use tokio::sync::watch;

/// Most hosts one subsystem's allow-list holds.
pub const MAX_ALLOWED_HOSTS: usize = 1024;

/// Why a change of the allowed hosts was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// No subsystem with this NQN.
    #[error("no subsystem {0}")]
    NoSubsystem(String),
    /// Not a host NQN (empty, longer than 223 bytes, or with control characters).
    #[error("invalid host NQN {0:?}")]
    InvalidHost(String),
    /// The allow-list is full.
    #[error("subsystem {0} already allows {MAX_ALLOWED_HOSTS} hosts")]
    Full(String),
}

#[derive(Debug)]
struct Access {
    nqn: String,
    allow_any: bool,
    hosts: Vec<String>,
}

/// The allowed hosts of every subsystem, by subsystem index (see [`crate::subsystems`]).
#[derive(Debug)]
pub struct HostAccess {
    subsystems: Vec<Mutex<Option<Access>>>,
    /// Changes so far: each may change some host's discovery log.
    changes: watch::Sender<u64>,
}

fn valid_host(nqn: &str) -> bool {
    !nqn.is_empty() && nqn.len() <= 223 && !nqn.chars().any(char::is_control)
}

fn check_hosts(nqn: &str, hosts: &[String]) -> Result<(), AccessError> {
    if let Some(bad) = hosts.iter().find(|h| !valid_host(h)) {
        return Err(AccessError::InvalidHost(bad.clone()));
    }
    if hosts.len() > MAX_ALLOWED_HOSTS {
        return Err(AccessError::Full(nqn.to_owned()));
    }
    Ok(())
}

impl HostAccess {
    /// The access lists of `subsystems` as configured, in the first slots.
    pub(crate) fn new(subsystems: &[crate::config::SubsystemConfig]) -> Self {
        let slots = (0..crate::subsystems::MAX_SUBSYSTEMS)
            .map(|i| {
                Mutex::new(subsystems.get(i).map(|s| Access {
                    nqn: s.nqn.clone(),
                    allow_any: s.allow_any_host,
                    hosts: s.allowed_hosts.clone(),
                }))
            })
            .collect();
        Self {
            subsystems: slots,
            changes: watch::channel(0).0,
        }
    }

    /// Changes made so far.
    pub(crate) fn changes(&self) -> u64 {
        *self.changes.borrow()
    }

    /// Watches for changes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Runs `f` on subsystem `nqn`'s settings.
    fn with<T>(&self, nqn: &str, f: impl FnOnce(&mut Access) -> T) -> Result<T, AccessError> {
        for m in &self.subsystems {
            // A poisoned list is still consistent: every change is one push, retain or store.
            let mut g = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(a) = g.as_mut().filter(|a| a.nqn == nqn) {
                return Ok(f(a));
            }
        }
        Err(AccessError::NoSubsystem(nqn.to_owned()))
    }

    /// Sets the settings of a new subsystem in slot `index`.
    pub(crate) fn open(
        &self,
        index: usize,
        s: &crate::config::SubsystemConfig,
    ) -> Result<(), AccessError> {
        check_hosts(&s.nqn, &s.allowed_hosts)?;
        if let Some(m) = self.subsystems.get(index) {
            *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Access {
                nqn: s.nqn.clone(),
                allow_any: s.allow_any_host,
                hosts: s.allowed_hosts.clone(),
            });
        }
        Ok(())
    }

    /// Forgets slot `index` (its subsystem is gone): nobody may connect.
    pub(crate) fn close(&self, index: usize) {
        if let Some(m) = self.subsystems.get(index) {
            m.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
        }
    }

    /// Whether host `hostnqn` may connect to subsystem `subsys` (its index). An empty host
    /// NQN (anonymous host) is admitted where any host is, never by the list.
    pub(crate) fn allows(&self, subsys: usize, hostnqn: &str) -> bool {
        let Some(m) = self.subsystems.get(subsys) else {
            return false;
        };
        let g = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        g.as_ref().is_some_and(|a| {
            a.allow_any || (!hostnqn.is_empty() && a.hosts.iter().any(|h| h == hostnqn))
        })
    }

    /// Adds `host` to subsystem `nqn`'s allowed hosts; false if it was listed already.
    pub fn add_host(&self, nqn: &str, host: &str) -> Result<bool, AccessError> {
        if !valid_host(host) {
            return Err(AccessError::InvalidHost(host.to_owned()));
        }
        let added = self.with(nqn, |a| {
            if a.hosts.iter().any(|h| h == host) {
                return Ok(false);
            }
            if a.hosts.len() >= MAX_ALLOWED_HOSTS {
                return Err(AccessError::Full(nqn.to_owned()));
            }
            a.hosts.push(host.to_owned());
            Ok(true)
        })??;
        if added {
            self.changed();
            tracing::info!(subsystem = nqn, host, "host allowed");
        }
        Ok(added)
    }

    /// Removes `host` from subsystem `nqn`'s allowed hosts; false if it was not listed.
    pub fn remove_host(&self, nqn: &str, host: &str) -> Result<bool, AccessError> {
        let removed = self.with(nqn, |a| {
            let before = a.hosts.len();
            a.hosts.retain(|h| h != host);
            a.hosts.len() != before
        })?;
        if removed {
            self.changed();
            tracing::info!(subsystem = nqn, host, "host no longer allowed");
        }
        Ok(removed)
    }

    /// Replaces subsystem `nqn`'s access settings (configuration reload).
    pub fn replace(&self, nqn: &str, allow_any: bool, hosts: &[String]) -> Result<(), AccessError> {
        check_hosts(nqn, hosts)?;
        let same = self.with(nqn, |a| {
            let same = a.allow_any == allow_any && a.hosts == hosts;
            a.allow_any = allow_any;
            a.hosts = hosts.to_vec();
            same
        })?;
        if !same {
            self.changed();
        }
        Ok(())
    }

    /// Subsystem `nqn`'s settings now: `allow_any_host` and the allowed hosts.
    pub fn get(&self, nqn: &str) -> Result<(bool, Vec<String>), AccessError> {
        self.with(nqn, |a| (a.allow_any, a.hosts.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> HostAccess {
        let mut s = crate::config::SubsystemConfig {
            nqn: "nqn.2026-11.io.baton:a".into(),
            serial: "s".into(),
            model: "m".into(),
            allow_any_host: false,
            allowed_hosts: vec!["nqn.host:1".into()],
            namespaces: vec![],
        };
        let open = crate::config::SubsystemConfig {
            nqn: "nqn.2026-11.io.baton:b".into(),
            allow_any_host: true,
            allowed_hosts: vec![],
            ..s.clone()
        };
        s.allowed_hosts.push("nqn.host:2".into());
        HostAccess::new(&[s, open])
    }

    #[test]
    fn lists_change_and_are_consulted() {
        let a = access();
        let nqn = "nqn.2026-11.io.baton:a";
        assert!(a.allows(0, "nqn.host:1"));
        assert!(!a.allows(0, "nqn.host:3"));
        assert!(!a.allows(0, ""), "anonymous hosts only where any host is");
        assert!(a.allows(1, ""));
        assert!(a.add_host(nqn, "nqn.host:3").unwrap());
        assert!(!a.add_host(nqn, "nqn.host:3").unwrap());
        assert!(a.allows(0, "nqn.host:3"));
        assert!(a.remove_host(nqn, "nqn.host:1").unwrap());
        assert!(!a.remove_host(nqn, "nqn.host:1").unwrap());
        assert!(!a.allows(0, "nqn.host:1"));
        a.replace(nqn, true, &[]).unwrap();
        assert!(a.allows(0, "nqn.host:9"));
        assert_eq!(a.get(nqn).unwrap(), (true, vec![]));
    }

    #[test]
    fn bad_requests_are_refused() {
        let a = access();
        assert_eq!(
            a.add_host("nqn.none", "nqn.host:1"),
            Err(AccessError::NoSubsystem("nqn.none".into()))
        );
        assert!(matches!(
            a.add_host("nqn.2026-11.io.baton:a", ""),
            Err(AccessError::InvalidHost(_))
        ));
        assert!(matches!(
            a.add_host("nqn.2026-11.io.baton:a", &"x".repeat(224)),
            Err(AccessError::InvalidHost(_))
        ));
        let nqn = "nqn.2026-11.io.baton:b";
        for i in 0..MAX_ALLOWED_HOSTS {
            a.add_host(nqn, &format!("nqn.h:{i}")).unwrap();
        }
        assert_eq!(
            a.add_host(nqn, "nqn.h:last"),
            Err(AccessError::Full(nqn.into()))
        );
    }
}
