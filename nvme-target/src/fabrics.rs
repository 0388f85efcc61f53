//! Fabrics commands: Connect (dynamic controller model) and Property Get/Set.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nvme_spec::command::Sqe;
use nvme_spec::fabrics::{
    ConnectCmd, ConnectData, DISCOVERY_NQN, PropertyCmd, connect_status, fctype,
};
use nvme_spec::regs::{Cap, Cc, Csts, VERSION_1_3, offset};
use nvme_spec::{FromBytes, IntoBytes, get_str, status};
use tracing::{info, warn};

use crate::conn::{Conn, Data, Queue};
use crate::ctrl::{Ctrl, keep_alive_timer};

/// Offsets reported with Connect Invalid Parameters (Fabrics figure 21).
const DATA_CNTLID: u16 = 16;
const DATA_SUBNQN: u16 = 256;
const DATA_HOSTNQN: u16 = 512;
const CMD_QID: u16 = 42;
const CMD_SQSIZE: u16 = 44;

impl Conn {
    pub(crate) fn fabrics(&mut self, sqe: &Sqe, data: Data<'_>) {
        let cid = sqe.cid.get();
        let fct = (sqe.nsid.get() & 0xff) as u8;
        match fct {
            fctype::CONNECT => {
                if self.q.is_some() {
                    return self.respond(cid, status::COMMAND_SEQUENCE_ERROR | status::DNR, 0);
                }
                let Data::Host(d) = data else {
                    return self.respond(cid, status::SGL_LENGTH_INVALID | status::DNR, 0);
                };
                self.connect(sqe, d);
            }
            fctype::PROPERTY_GET | fctype::PROPERTY_SET => {
                let Some(q) = self.q.as_ref().filter(|q| q.qid == 0) else {
                    return self.respond(cid, status::COMMAND_SEQUENCE_ERROR | status::DNR, 0);
                };
                let ctrl = Rc::clone(&q.ctrl);
                let Ok(cmd) = PropertyCmd::read_from_bytes(sqe.as_bytes()) else {
                    return self.respond(cid, status::INTERNAL_ERROR, 0);
                };
                if fct == fctype::PROPERTY_GET {
                    match self.property_get(&ctrl, &cmd) {
                        Ok(v) => self.respond(cid, status::SUCCESS, v),
                        Err(st) => self.respond(cid, st, 0),
                    }
                } else {
                    let st = self.property_set(&ctrl, &cmd);
                    self.respond(cid, st, 0);
                    if Csts(ctrl.csts.get()).shst() == Csts::SHST_OCCURRING {
                        self.flush_all(crate::io::Barrier::Shutdown);
                    }
                }
            }
            fctype::DISCONNECT => {
                self.respond(cid, status::SUCCESS, 0);
                self.closing = true;
            }
            _ => self.respond(cid, status::INVALID_OPCODE | status::DNR, 0),
        }
    }

    fn connect(&mut self, sqe: &Sqe, d: &[u8]) {
        let cid = sqe.cid.get();
        let target = std::sync::Arc::clone(&self.port.target);
        let cfg = target.config();
        let Ok(cmd) = ConnectCmd::read_from_bytes(sqe.as_bytes()) else {
            return self.respond(cid, status::INTERNAL_ERROR, 0);
        };
        let Ok((cd, _)) = ConnectData::read_from_prefix(d) else {
            return self.respond(cid, status::SGL_LENGTH_INVALID | status::DNR, 0);
        };
        if cmd.recfmt.get() != 0 {
            return self.respond(cid, status::CONNECT_INCOMPATIBLE_FORMAT | status::DNR, 0);
        }
        let invalid = |in_data, off| u64::from(connect_status::invalid_param_result(in_data, off));
        let subnqn = get_str(&cd.subnqn);
        let hostnqn = get_str(&cd.hostnqn);
        let subsys = if subnqn == DISCOVERY_NQN {
            target.discovery_index()
        } else {
            match cfg.subsystems.iter().position(|s| s.nqn == subnqn) {
                Some(i) if !self.port.discovery_only => i,
                _ => {
                    warn!(subnqn, hostnqn, "connect to an unknown subsystem");
                    return self.respond(
                        cid,
                        status::CONNECT_INVALID_PARAM | status::DNR,
                        invalid(true, DATA_SUBNQN),
                    );
                }
            }
        };
        if hostnqn.is_empty() {
            return self.respond(
                cid,
                status::CONNECT_INVALID_PARAM | status::DNR,
                invalid(true, DATA_HOSTNQN),
            );
        }
        if let Some(s) = cfg.subsystems.get(subsys) {
            if !s.allow_any_host && !s.allowed_hosts.iter().any(|h| h == hostnqn) {
                warn!(subnqn, hostnqn, "host not allowed");
                target.metrics().subsystems[subsys]
                    .refused_hosts
                    .fetch_add(1, Ordering::Relaxed);
                self.respond(
                    cid,
                    status::CONNECT_INVALID_HOST | status::DNR,
                    invalid(true, DATA_HOSTNQN),
                );
                self.closing = true;
                return;
            }
        }
        let sqsize = cmd.sqsize.get();
        if sqsize == 0 || sqsize >= cfg.max_queue_entries {
            return self.respond(
                cid,
                status::CONNECT_INVALID_PARAM | status::DNR,
                invalid(false, CMD_SQSIZE),
            );
        }
        let qid = cmd.qid.get();
        if qid == 0 {
            if cd.cntlid.get() != 0xffff {
                return self.respond(
                    cid,
                    status::CONNECT_INVALID_PARAM | status::DNR,
                    invalid(true, DATA_CNTLID),
                );
            }
            let Some(cntlid) = target.register(subsys, hostnqn, self.port.port_id) else {
                return self.respond(cid, status::CONNECT_CTRL_BUSY, 0);
            };
            let kato = Duration::from_millis(u64::from(cmd.kato.get()));
            let ctrl = Ctrl::new(cntlid, subsys, hostnqn.to_owned(), kato, cfg.max_io_queues);
            self.port
                .controllers
                .borrow_mut()
                .insert((subsys, cntlid), Rc::downgrade(&ctrl));
            let (port, timer) = (
                Rc::clone(&self.port),
                keep_alive_timer(Rc::downgrade(&ctrl)),
            );
            tokio::task::spawn_local(async move {
                if timer.await {
                    let m = port.metrics();
                    m.keep_alive_expiries.fetch_add(1, Ordering::Relaxed);
                }
            });
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
            });
            self.port
                .metrics()
                .queue_pairs
                .fetch_add(1, Ordering::Relaxed);
            return self.respond(cid, status::SUCCESS, u64::from(cntlid));
        }
        if subsys == target.discovery_index() {
            return self.respond(
                cid,
                status::CONNECT_INVALID_PARAM | status::DNR,
                invalid(false, CMD_QID),
            );
        }
        let cntlid = cd.cntlid.get();
        let found = self
            .port
            .controllers
            .borrow()
            .get(&(subsys, cntlid))
            .and_then(std::rc::Weak::upgrade);
        let Some(ctrl) = found.filter(|c| !c.is_dead() && c.hostnqn == hostnqn) else {
            return self.respond(
                cid,
                status::CONNECT_INVALID_PARAM | status::DNR,
                invalid(true, DATA_CNTLID),
            );
        };
        if !Csts(ctrl.csts.get()).rdy() {
            return self.respond(
                cid,
                status::CONNECT_INVALID_PARAM | status::DNR,
                invalid(true, DATA_CNTLID),
            );
        }
        let bit = 1u128.checked_shl(u32::from(qid - 1)).unwrap_or(0);
        if qid > ctrl.io_queues_granted.get() || bit == 0 || ctrl.io_queues.get() & bit != 0 {
            return self.respond(
                cid,
                status::CONNECT_INVALID_PARAM | status::DNR,
                invalid(false, CMD_QID),
            );
        }
        ctrl.io_queues.set(ctrl.io_queues.get() | bit);
        target.set_io_queues(subsys, cntlid, ctrl.io_queue_count());
        self.q = Some(Queue { ctrl, qid, sqsize });
        self.port
            .metrics()
            .queue_pairs
            .fetch_add(1, Ordering::Relaxed);
        self.respond(cid, status::SUCCESS, u64::from(cntlid));
    }

    fn property_get(&self, ctrl: &Ctrl, cmd: &PropertyCmd) -> Result<u64, u16> {
        let cfg = self.port.target.config();
        let off = cmd.offset.get();
        let v = match off {
            offset::CAP => {
                // MQES, CQR, TO = 7.5 s, CSS = NVM, MPSMIN = MPSMAX = 4 KiB.
                Cap::build(cfg.max_queue_entries - 1, true, 15, 0, 1, 0, 0).0
            }
            offset::VS => u64::from(VERSION_1_3),
            offset::CC => u64::from(ctrl.cc.get()),
            offset::CSTS => u64::from(ctrl.csts.get()),
            _ => return Err(status::INVALID_FIELD | status::DNR),
        };
        if off == offset::CAP && cmd.size() != 8 {
            return Err(status::INVALID_FIELD | status::DNR);
        }
        Ok(v)
    }

    fn property_set(&self, ctrl: &Ctrl, cmd: &PropertyCmd) -> u16 {
        if cmd.offset.get() != offset::CC {
            return status::INVALID_FIELD | status::DNR;
        }
        let old = Cc(ctrl.cc.get());
        let new = Cc((cmd.value.get() & 0xffff_ffff) as u32);
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
        status::SUCCESS
    }
}
