//! The reservation commands on I/O queues (Register, Acquire, Release, Report), the
//! Reservation Notification log page and features, and the event that announces it.

use std::sync::Arc;

use nvme_spec::cmds::IoCmd;
use nvme_spec::command::{Sqe, io_opcode};
use nvme_spec::resv::{
    AcquireAction, AcquireData, EXT_HEADER_LEN, RegisterData, RegisteredCtrlExt, ReleaseData,
    ResvStatusHeader,
};
use nvme_spec::{FromBytes, FromZeros, IntoBytes};

use super::notices::CtrlNotices;
use super::state::{ResvError, preempted};
use crate::completion::{Completion, Error};
use crate::config::TargetConfig;
use crate::conn::{Conn, Data};
use crate::ctrl::Ctrl;
use crate::port::PortNamespace;

impl From<ResvError> for Error {
    fn from(e: ResvError) -> Self {
        match e {
            ResvError::Conflict => Self::ResvConflict,
            ResvError::InvalidField => Self::InvalidField,
            ResvError::Full => Self::Internal("reservation registrant table full"),
        }
    }
}

/// The data length a reservation command must carry: 16 bytes for Register and Acquire, 8
/// for Release; a Report's reply is bounded by MDTS.
pub(crate) fn check_length(sqe: &Sqe, cfg: &TargetConfig) -> Result<(), Error> {
    let len = sqe.dptr.length.get();
    let ok = match sqe.opcode {
        io_opcode::RESV_REGISTER | io_opcode::RESV_ACQUIRE => len == 16,
        io_opcode::RESV_RELEASE => len == 8,
        _ => {
            if len > cfg.max_transfer {
                return Err(Error::TooLarge);
            }
            len > 0
        }
    };
    if ok { Ok(()) } else { Err(Error::SglLength) }
}

impl Conn {
    /// The notices of this connection's controller, if it is its admin queue.
    pub(crate) fn admin_notices(&self) -> Option<Arc<CtrlNotices>> {
        self.q
            .as_ref()
            .filter(|q| q.qid == 0)
            .map(|q| Arc::clone(&q.ctrl.notices))
    }

    /// Completes a held Asynchronous Event Request if a reservation event is due.
    pub(crate) fn deliver_events(&mut self) {
        let Some(q) = self.q.as_ref().filter(|q| q.qid == 0) else {
            return;
        };
        let ctrl = Arc::clone(&q.ctrl.notices);
        let cid = {
            let mut aers = crate::cell::lock(&q.ctrl.aers);
            if aers.is_empty() {
                return;
            }
            match ctrl.take_event() {
                Some(ev) => (aers.remove(0), ev),
                None => return,
            }
        };
        self.complete(cid.0, Completion::ok(u64::from(cid.1)));
    }

    /// Runs a reservation command of namespace `ns` (its data checked by `check_io`).
    pub(crate) fn resv_cmd(&mut self, sqe: &Sqe, cmd: IoCmd, data: Data<'_>, ns: &PortNamespace) {
        let Some(q) = &self.q else { return };
        let (subsys, hostid) = (q.ctrl.subsys, q.ctrl.hostid.get());
        let target = Arc::clone(&self.port.target);
        let state = Arc::clone(&ns.state);
        let bytes: &[u8] = match &data {
            Data::Host(d) => d,
            Data::Buf(b) => b.as_slice(),
            _ => &[],
        };
        let nsid = sqe.nsid.get();
        let r = match cmd {
            IoCmd::ResvRegister(r) => RegisterData::read_from_prefix(bytes)
                .map_err(|_| Error::SglLength)
                .and_then(|(d, _)| {
                    Ok(state
                        .resv
                        .register(&hostid, &r, d.crkey.get(), d.nrkey.get())?)
                }),
            IoCmd::ResvAcquire(a) => AcquireData::read_from_prefix(bytes)
                .map_err(|_| Error::SglLength)
                .and_then(|(d, _)| {
                    let notices = state
                        .resv
                        .acquire(&hostid, &a, d.crkey.get(), d.prkey.get())?;
                    if a.action == AcquireAction::PreemptAbort {
                        // Marked before the Acquire completes: none of them can run after
                        // it (each completes on its own queue as soon as that wakes).
                        let hosts = preempted(&notices);
                        let n = target.notices().preempt_abort(subsys, nsid, &hosts);
                        tracing::debug!(
                            nsid,
                            hosts = hosts.len(),
                            commands = n,
                            "preempt and abort"
                        );
                    }
                    Ok(notices)
                }),
            IoCmd::ResvRelease(rl) => ReleaseData::read_from_prefix(bytes)
                .map_err(|_| Error::SglLength)
                .and_then(|(d, _)| Ok(state.resv.release(&hostid, &rl, d.crkey.get())?)),
            IoCmd::ResvReport(rep) => {
                let Data::ToHost(n) = data else {
                    return self.fail(sqe, Error::SglType);
                };
                // Fabrics hosts have 128-bit identifiers: only the extended structure can
                // carry them (as nvmet and SPDK answer).
                if !rep.eds {
                    return self.fail(sqe, Error::HostIdFormat);
                }
                let report = state.resv.report();
                let out = self.scratch(n);
                let mut h = ResvStatusHeader::new_zeroed();
                h.generation.set(report.generation);
                h.rtype = report.held.map_or(0, |held| held.rtype.rtype());
                h.regctl
                    .set(u16::try_from(report.registrants.len()).unwrap_or(u16::MAX));
                let hb = h.as_bytes();
                let k = hb.len().min(out.len());
                out[..k].copy_from_slice(&hb[..k]);
                for (i, (reg, holds)) in report.registrants.iter().enumerate() {
                    let at = EXT_HEADER_LEN + i * size_of::<RegisteredCtrlExt>();
                    let Some(slot) = out.get_mut(at..at + size_of::<RegisteredCtrlExt>()) else {
                        break;
                    };
                    let mut e = RegisteredCtrlExt::new_zeroed();
                    // Registrants are hosts (dynamic controller model).
                    e.cntlid.set(0xffff);
                    e.rcsts = u8::from(*holds);
                    e.rkey.set(reg.key);
                    e.hostid = reg.hostid;
                    slot.copy_from_slice(e.as_bytes());
                }
                return self.reply_scratch(sqe.cid.get(), n);
            }
            _ => Err(Error::Internal("not a reservation command")),
        };
        match r {
            Ok(notices) => {
                target.notices().post(subsys, nsid, &notices);
                self.complete(sqe.cid.get(), Completion::success());
            }
            Err(e) => self.fail(sqe, e),
        }
    }

    /// Builds the Reservation Notification log page (one entry, taken) in the scratch
    /// buffer; returns its length.
    pub(crate) fn resv_log(&mut self, ctrl: &Ctrl, rae: bool) -> usize {
        let (e, due) = ctrl.notices.take(rae);
        self.scratch(64).copy_from_slice(e.as_bytes());
        if due {
            // More entries: the next event goes out once this page is answered.
            ctrl.notices.wake.notify_one();
        }
        64
    }

    /// Set Features Reservation Notification Mask (82h) or Persistence (83h).
    pub(crate) fn set_resv_feature(
        &self,
        ctrl: &Ctrl,
        fid: u8,
        nsid: u32,
        cdw11: u32,
    ) -> Result<Completion, Error> {
        let all = self.port.nsids(ctrl.subsys);
        if nsid != u32::MAX && !all.contains(&nsid) {
            return Err(Error::InvalidNamespace);
        }
        if fid == nvme_spec::command::feature::RESV_MASK {
            ctrl.notices.set_mask(&all, nsid, cdw11);
            return Ok(Completion::success());
        }
        // Persist Through Power Loss is not offered.
        if cdw11 & 1 != 0 {
            return Err(Error::InvalidField);
        }
        Ok(Completion::success())
    }

    /// Get Features Reservation Notification Mask (82h) or Persistence (83h).
    pub(crate) fn get_resv_feature(
        &self,
        ctrl: &Ctrl,
        fid: u8,
        nsid: u32,
    ) -> Result<Completion, Error> {
        if self.port.namespace(ctrl.subsys, nsid).is_none() {
            return Err(Error::InvalidNamespace);
        }
        if fid == nvme_spec::command::feature::RESV_MASK {
            return Ok(Completion::ok(u64::from(ctrl.notices.mask(nsid))));
        }
        Ok(Completion::success())
    }
}
