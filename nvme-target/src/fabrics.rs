//! Fabrics commands: Connect (dynamic controller model) and Property Get/Set.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nvme_spec::auth::CONNECT_AUTHREQ_ATR;
use nvme_spec::cmds::{Connect, FabricsCmd, Property};
use nvme_spec::command::Sqe;
use nvme_spec::fabrics::{ConnectData, DISCOVERY_NQN};
use nvme_spec::regs::{Cap, Cc, Csts, VERSION_1_3, offset};
use nvme_spec::{FromBytes, get_str};
use tracing::{info, warn};

use crate::auth::QueueAuth;
use crate::cell::lock;
use crate::completion::{Completion, Error};
use crate::conn::{Conn, Data, Queue};
use crate::ctrl::{Ctrl, keep_alive_timer};

/// Offsets reported with Connect Invalid Parameters (Fabrics figure 21).
const DATA_CNTLID: u16 = 16;
const DATA_SUBNQN: u16 = 256;
const DATA_HOSTNQN: u16 = 512;
const CMD_QID: u16 = 42;
const CMD_SQSIZE: u16 = 44;

impl Conn {
    pub(crate) fn fabrics(&mut self, sqe: &Sqe, cmd: FabricsCmd, data: Data<'_>) {
        let cid = sqe.cid.get();
        let r = match cmd {
            FabricsCmd::Connect(c) => {
                if self.q.is_some() {
                    Err(Error::Sequence)
                } else if let Data::Host(d) = data {
                    self.connect(&c, d)
                } else {
                    Err(Error::SglLength)
                }
            }
            FabricsCmd::PropertyGet(p) => self
                .admin_ctrl()
                .and_then(|ctrl| self.property_get(&ctrl, &p))
                .map(Completion::ok),
            FabricsCmd::PropertySet(p, value) => {
                let set = self
                    .admin_ctrl()
                    .and_then(|ctrl| self.property_set(&ctrl, &p, value).map(|()| ctrl));
                match set {
                    Ok(ctrl) => {
                        self.complete(cid, Completion::success());
                        // A shutdown completes (CSTS.SHST) once every namespace is flushed.
                        if Csts(ctrl.csts.get()).shst() == Csts::SHST_OCCURRING {
                            self.flush_all(crate::io::Barrier::Shutdown);
                        }
                        return;
                    }
                    Err(e) => Err(e),
                }
            }
            FabricsCmd::Disconnect => {
                self.closing = true;
                Ok(Completion::success())
            }
            FabricsCmd::AuthSend(t) => self.auth_send(&t, data).map(|()| Completion::success()),
            FabricsCmd::AuthReceive(t) => match self.auth_receive(&t, data) {
                Ok(n) => return self.reply_scratch(cid, n),
                Err(e) => Err(e),
            },
        };
        match r {
            Ok(c) => self.complete(cid, c),
            Err(e) => self.complete(cid, e),
        }
    }

    /// Starts the admin queue's keep-alive timer (once the connection is on its controller's
    /// home thread).
    pub(crate) fn start_keep_alive(&mut self) {
        self.keep_alive_pending = false;
        let Some(q) = self.q.as_ref().filter(|q| q.qid == 0) else {
            return;
        };
        let (port, timer) = (
            Rc::clone(&self.port),
            keep_alive_timer(Arc::downgrade(&q.ctrl)),
        );
        tokio::task::spawn_local(async move {
            if timer.await {
                let m = port.metrics();
                m.keep_alive_expiries.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// The controller of this connection, if it is an admin queue (properties live there).
    fn admin_ctrl(&self) -> Result<Arc<Ctrl>, Error> {
        self.q
            .as_ref()
            .filter(|q| q.qid == 0)
            .map(|q| Arc::clone(&q.ctrl))
            .ok_or(Error::Sequence)
    }

    fn connect(&mut self, cmd: &Connect, d: &[u8]) -> Result<Completion, Error> {
        let target = Arc::clone(&self.port.target);
        let cfg = target.config();
        let Ok((cd, _)) = ConnectData::read_from_prefix(d) else {
            return Err(Error::SglLength);
        };
        if cmd.recfmt != 0 {
            return Err(Error::ConnectFormat);
        }
        let invalid = |in_data, offset| Error::ConnectParam { in_data, offset };
        let subnqn = get_str(&cd.subnqn);
        let hostnqn = get_str(&cd.hostnqn);
        let subsys = if subnqn == DISCOVERY_NQN {
            target.discovery_index()
        } else {
            match target.subsystems().position(subnqn) {
                Some(i) if !self.port.discovery_only => i,
                _ => {
                    warn!(subnqn, hostnqn, "connect to an unknown subsystem");
                    return Err(invalid(true, DATA_SUBNQN));
                }
            }
        };
        // NQNs are NUL-terminated within their 256 bytes (Fabrics figure 20).
        if !cd.hostnqn.contains(&0) {
            return Err(invalid(true, DATA_HOSTNQN));
        }
        // An empty host NQN (SPDK's tools send one unless given a name) is an anonymous
        // host: admitted where any host is, never by an allow-list, which names hosts.
        // The lists may change at run time (see `access`).
        if subsys != target.discovery_index() && !target.access().allows(subsys, hostnqn) {
            warn!(subnqn, hostnqn, "host not allowed");
            target.metrics().subsystems[subsys]
                .refused_hosts
                .fetch_add(1, Ordering::Relaxed);
            self.closing = true;
            return Err(Error::ConnectHost);
        }
        let sqsize = cmd.sqsize;
        if sqsize == 0 || sqsize >= cfg.max_queue_entries {
            return Err(invalid(false, CMD_SQSIZE));
        }
        let qid = cmd.qid;
        if qid == 0 {
            if cd.cntlid.get() != 0xffff {
                return Err(invalid(true, DATA_CNTLID));
            }
            let Some(cntlid) = target.register(subsys, hostnqn, self.port.port_id, self.peer)
            else {
                return Err(Error::ControllerBusy);
            };
            let kato = Duration::from_millis(u64::from(cmd.kato_ms));
            let home = self.port.group.place_admin(self.port.member);
            let ctrl = Ctrl::new(
                cntlid,
                subsys,
                hostnqn.to_owned(),
                kato,
                cfg.max_io_queues,
                home,
            );
            ctrl.hostid.set(cd.hostid);
            ctrl.events.start(
                target.ana().port_chgcnt(self.port.index),
                target.namespaces().generation(subsys),
                target.genctr(),
            );
            target.notices().attach(&ctrl);
            lock(&self.port.group.controllers).insert((subsys, cntlid), Arc::downgrade(&ctrl));
            // The timer runs on the controller's home thread, where the admin queue is served.
            self.keep_alive_pending = true;
            if home != self.port.member {
                self.place = Some(home);
            }
            info!(
                cntlid,
                subnqn,
                hostnqn,
                port = self.port.port_id,
                "controller connected"
            );
            self.q = Some(Queue {
                ctrl,
                qid: 0,
                sqsize,
                load: None,
            });
            self.port
                .metrics()
                .queue_pairs
                .fetch_add(1, Ordering::Relaxed);
            return Ok(Completion::ok(
                self.start_auth(subsys, hostnqn, subnqn, cntlid),
            ));
        }
        if subsys == target.discovery_index() {
            return Err(invalid(false, CMD_QID));
        }
        let cntlid = cd.cntlid.get();
        let found = lock(&self.port.group.controllers)
            .get(&(subsys, cntlid))
            .and_then(std::sync::Weak::upgrade);
        let Some(ctrl) = found.filter(|c| !c.is_dead() && c.hostnqn == hostnqn) else {
            return Err(invalid(true, DATA_CNTLID));
        };
        if !Csts(ctrl.csts.get()).rdy() {
            return Err(invalid(true, DATA_CNTLID));
        }
        if !ctrl.claim_io_queue(qid) {
            return Err(invalid(false, CMD_QID));
        }
        let (to, load) = self
            .port
            .group
            .place_io(target.queue_load(), ctrl.home, qid);
        if to != self.port.member {
            self.place = Some(to);
        }
        self.publish_aborts(&ctrl, qid);
        target.set_io_queues(subsys, cntlid, ctrl.io_queue_count());
        self.q = Some(Queue {
            ctrl,
            qid,
            sqsize,
            load: Some(load),
        });
        self.port
            .metrics()
            .queue_pairs
            .fetch_add(1, Ordering::Relaxed);
        Ok(Completion::ok(
            self.start_auth(subsys, hostnqn, subnqn, cntlid),
        ))
    }

    /// Sets the new queue's authentication up; returns the Connect result (the CNTLID, and
    /// AUTHREQ.ATR if the host has secrets: every queue of an NVM subsystem authenticates).
    fn start_auth(&mut self, subsys: usize, hostnqn: &str, subnqn: &str, cntlid: u16) -> u64 {
        let target = Arc::clone(&self.port.target);
        let host = (subsys != target.discovery_index())
            .then(|| target.config().hosts.iter().find(|h| h.nqn == hostnqn))
            .flatten()
            .map(|h| Arc::new(h.clone()));
        let atr = if host.is_some() {
            CONNECT_AUTHREQ_ATR
        } else {
            0
        };
        self.auth = QueueAuth::new(host, hostnqn, subnqn);
        u64::from(u32::from(cntlid) | atr)
    }

    fn property_get(&self, ctrl: &Ctrl, cmd: &Property) -> Result<u64, Error> {
        let cfg = self.port.target.config();
        let off = cmd.offset;
        let v = match off {
            offset::CAP => {
                // MQES, CQR, TO = 7.5 s, CSS = NVM, MPSMIN = MPSMAX = 4 KiB.
                Cap::build(cfg.max_queue_entries - 1, true, 15, 0, 1, 0, 0).0
            }
            offset::VS => u64::from(VERSION_1_3),
            offset::CC => u64::from(ctrl.cc.get()),
            offset::CSTS => u64::from(ctrl.csts.get()),
            _ => return Err(Error::InvalidField),
        };
        if off == offset::CAP && cmd.size != 8 {
            return Err(Error::InvalidField);
        }
        Ok(v)
    }

    fn property_set(&self, ctrl: &Ctrl, cmd: &Property, value: u64) -> Result<(), Error> {
        if cmd.offset != offset::CC {
            return Err(Error::InvalidField);
        }
        let old = Cc(ctrl.cc.get());
        let new = Cc((value & 0xffff_ffff) as u32);
        ctrl.cc.set(new.0);
        let mut csts = Csts(ctrl.csts.get());
        let discovery = ctrl.subsys == self.port.target.discovery_index();
        if new.en() && !old.en() {
            let bad = new.mps() != 0 || (!discovery && (new.iosqes() != 6 || new.iocqes() != 4));
            csts = Csts::build(!bad, bad, 0);
        } else if !new.en() && old.en() {
            csts = Csts::build(false, false, 0);
        }
        if new.shn() != 0 && old.shn() == 0 {
            // Shutdown: every namespace is flushed (see `fabrics`); the shutdown is reported
            // complete when the flushes are.
            csts = Csts::build(csts.rdy(), csts.cfs(), Csts::SHST_OCCURRING);
        } else if new.shn() == 0 && new.en() && !old.en() {
            csts = Csts::build(csts.rdy(), csts.cfs(), 0);
        }
        ctrl.csts.set(csts.0);
        Ok(())
    }
}
