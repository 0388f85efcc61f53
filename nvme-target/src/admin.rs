//! Admin commands: Identify, Get Log Page, Set/Get Features, Keep Alive, Asynchronous Event
//! Request and Abort, for I/O and discovery controllers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nvme_spec::cmds::{AdminCmd, FeatureSelect, GetFeatures, Identify, SetFeatures};
use nvme_spec::command::{Sqe, admin_opcode, cns, feature, io_opcode};
use nvme_spec::identify::{
    IdentifyController, IdentifyNamespace, anacap, cmic, cntrltype, oaes, write_ns_descriptors,
};
use nvme_spec::log::ana as ana_log;
use nvme_spec::log::{
    CommandEffectsLog, DiscoveryLogEntry, DiscoveryLogHeader, FirmwareSlotLog, GetLogPage,
    SmartLog, disc, effects, lid,
};
use nvme_spec::regs::VERSION_1_3;
use nvme_spec::{FromZeros, IntoBytes, put_ascii, put_str};

use crate::aen::ChangedList;
use crate::ana;
use crate::cell::lock;
use crate::completion::{Completion, Error};
use crate::conn::{Conn, Data};
use crate::ctrl::{AER_LIMIT, Ctrl, ERROR_LOG_ENTRIES};

/// Firmware revision reported in Identify Controller.
const FIRMWARE: &str = concat!(
    "baton",
    env!("CARGO_PKG_VERSION_MAJOR"),
    ".",
    env!("CARGO_PKG_VERSION_MINOR")
);

/// What an admin handler leaves to send.
pub(crate) enum Reply {
    /// A completion without data.
    Done(Completion),
    /// The first bytes of the scratch buffer, then success.
    Scratch(usize),
    /// No completion yet: an Asynchronous Event Request waits for its event, a write cache
    /// switch for its flushes.
    Held,
}

impl Conn {
    pub(crate) fn admin(&mut self, sqe: &Sqe, cmd: AdminCmd, data: Data<'_>) {
        let cid = sqe.cid.get();
        let Some(ctrl) = self.q.as_ref().map(|q| Arc::clone(&q.ctrl)) else {
            return;
        };
        let to_host = match data {
            Data::ToHost(n) => n,
            _ => 0,
        };
        let r = match cmd {
            AdminCmd::Identify(id) => self.identify(&ctrl, &id, to_host),
            AdminCmd::GetLogPage(g) => self.get_log_page(&ctrl, &g, to_host),
            AdminCmd::SetFeatures(f) => {
                // Turning the volatile write cache off makes what it holds durable first:
                // the completion comes when the flushes have.
                let disabling_cache =
                    f.fid == feature::VOLATILE_WC && f.cdw11 & 1 == 0 && ctrl.vwc_enabled.get();
                match self.set_features(&ctrl, &f) {
                    Ok(_) if disabling_cache => {
                        self.flush_all(crate::io::Barrier::Respond { cid });
                        Ok(Reply::Held)
                    }
                    r => r.map(Reply::Done),
                }
            }
            AdminCmd::GetFeatures(f) if f.fid == feature::HOST_ID => {
                // Fabrics hosts have the 128-bit identifier (EXHID) they gave in Connect.
                if f.cdw11 & 1 == 0 {
                    Err(Error::InvalidField)
                } else {
                    self.scratch(16).copy_from_slice(&ctrl.hostid.get());
                    Ok(Reply::Scratch(to_host))
                }
            }
            AdminCmd::GetFeatures(f) => self.get_features(&ctrl, &f).map(Reply::Done),
            AdminCmd::KeepAlive => Ok(Reply::Done(Completion::success())),
            AdminCmd::AsyncEventRequest => {
                let mut aers = lock(&ctrl.aers);
                if aers.len() >= AER_LIMIT {
                    Err(Error::AerLimit)
                } else {
                    // Held until an event (an ANA or reservation notice).
                    aers.push(cid);
                    Ok(Reply::Held)
                }
            }
            AdminCmd::Abort(a) => Ok(Reply::Done(self.abort(&ctrl, &a))),
        };
        match r {
            Ok(Reply::Done(c)) => self.complete(cid, c),
            Ok(Reply::Scratch(n)) => self.reply_scratch(cid, n),
            Ok(Reply::Held) => {
                self.deliver_events();
                self.deliver_async_events();
            }
            Err(e) => self.complete(cid, e),
        }
        if cmd == AdminCmd::AsyncEventRequest {
            // An event may have been waiting for a request to complete.
            self.deliver_events();
        }
    }

    fn identify(&mut self, ctrl: &Ctrl, cmd: &Identify, len: usize) -> Result<Reply, Error> {
        let nsid = cmd.nsid;
        let discovery = ctrl.subsys == self.port.target.discovery_index();
        match cmd.cns {
            cns::CONTROLLER => {
                let id = self.identify_controller(ctrl);
                self.scratch(4096).copy_from_slice(id.as_bytes());
            }
            cns::NAMESPACE | cns::NS_DESC_LIST if !discovery => {
                let Some(ns) = self.port.namespace(ctrl.subsys, nsid) else {
                    // An inactive ID (none there now, or one removed) identifies as zeroes
                    // (Base 5.17.2.1, as nvmet answers); past NN it is invalid.
                    let nn = self.port.target.namespaces().max_nsid();
                    if cmd.cns == cns::NAMESPACE && (1..=nn).contains(&nsid) {
                        self.scratch(4096);
                        return Ok(Reply::Scratch(len));
                    }
                    return Err(Error::InvalidNamespace);
                };
                let cfg = ns.cfg.clone();
                if cmd.cns == cns::NAMESPACE {
                    let id = identify_namespace(&cfg);
                    self.scratch(4096).copy_from_slice(id.as_bytes());
                } else {
                    write_ns_descriptors(self.scratch(4096), &cfg.nguid, &cfg.uuid);
                }
            }
            // Every controller of the subsystem attaches every namespace.
            cns::CTRL_LIST | cns::NS_CTRL_LIST if !discovery => {
                if cmd.cns == cns::NS_CTRL_LIST && self.port.namespace(ctrl.subsys, nsid).is_none()
                {
                    return Err(Error::InvalidNamespace);
                }
                let ids: Vec<u16> = self
                    .port
                    .target
                    .cntlids(ctrl.subsys)
                    .into_iter()
                    .filter(|&id| id >= cmd.cntid)
                    .take(2047)
                    .collect();
                let out = self.scratch(4096);
                let n = u16::try_from(ids.len()).unwrap_or(2047);
                out[0..2].copy_from_slice(&n.to_le_bytes());
                for (i, id) in ids.iter().enumerate() {
                    out[2 + i * 2..4 + i * 2].copy_from_slice(&id.to_le_bytes());
                }
            }
            cns::ACTIVE_NS_LIST if !discovery => {
                let mut ids: Vec<u32> = self
                    .port
                    .nsids(ctrl.subsys)
                    .into_iter()
                    .filter(|&id| id > nsid)
                    .collect();
                ids.sort_unstable();
                let out = self.scratch(4096);
                for (i, id) in ids.iter().take(1024).enumerate() {
                    out[i * 4..i * 4 + 4].copy_from_slice(&id.to_le_bytes());
                }
            }
            _ => return Err(Error::InvalidField),
        }
        Ok(Reply::Scratch(len))
    }

    fn identify_controller(&self, ctrl: &Ctrl) -> IdentifyController {
        let target = &self.port.target;
        let cfg = target.config();
        let mut id = IdentifyController::new_zeroed();
        put_ascii(&mut id.fr, FIRMWARE);
        id.mdts = cfg.mdts();
        id.cntlid.set(ctrl.cntlid);
        id.ver.set(VERSION_1_3);
        id.aerl = u8::try_from(AER_LIMIT - 1).unwrap_or(0);
        id.elpe = u8::try_from(ERROR_LOG_ENTRIES - 1).unwrap_or(0);
        // Commands Supported and Effects log (bit 1), extended Get Log Page data (bit 2).
        id.lpa = (1 << 1) | (1 << 2);
        // One firmware slot, read-only: the firmware is the Baton binary.
        id.frmw = 1 | (1 << 1);
        // Keep alive granularity 100 ms.
        id.kas.set(1);
        id.sgls.set(0x0010_0001);
        id.maxcmd.set(cfg.max_queue_entries);
        id.ioccsz.set((64 + cfg.in_capsule_data) / 16);
        id.iorcsz.set(1);
        id.msdbd = 1;
        // Power state 0: 25.00 W, as a plain data-center device reports.
        id.psd[0][0..2].copy_from_slice(&2500u16.to_le_bytes());
        id.wctemp.set(343);
        id.cctemp.set(373);
        match target.subsystems().get(ctrl.subsys) {
            Some(s) => {
                put_ascii(&mut id.sn, &s.serial);
                put_ascii(&mut id.mn, &s.model);
                put_str(&mut id.subnqn, &s.nqn);
                id.cntrltype = cntrltype::IO;
                // Several controllers (one per port) may attach the same namespaces (bit 1),
                // through more than one port when the target has several (bit 0).
                id.cmic = cmic::MULTI_CTRL | cmic::ANA;
                if cfg.ports.len() > 1 {
                    id.cmic |= cmic::MULTI_PORT;
                }
                id.oaes.set(oaes::NS_ATTR | oaes::ANA_CHANGE);
                id.anatt = ana::TRANSITION_TIME_SECS;
                // Every state. Not GRPID_STATIC (bit 6), though group IDs never change: with
                // it, nvme-cli and older kernels size their ANA log buffer without room for
                // namespace IDs and get a truncated log (nvmet leaves it clear too).
                id.anacap = anacap::OPTIMIZED
                    | anacap::NON_OPTIMIZED
                    | anacap::INACCESSIBLE
                    | anacap::PERSISTENT_LOSS
                    | anacap::CHANGE;
                id.anagrpmax.set(ana::MAX_ANA_GROUPS);
                id.nanagrpid.set(ana::MAX_ANA_GROUPS);
                // The host sizes its ANA log buffer by MNAN, which must not pass NN.
                id.mnan.set(ana::MAX_NAMESPACES);
                id.sqes = 0x66;
                id.cqes = 0x44;
                id.nn.set(target.namespaces().max_nsid());
                // Compare, Dataset Management, Write Zeroes, Reservations, Verify.
                id.oncs.set(1 | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 7));
                // Compare and Write fused; atomic for the whole transfer (range locks).
                id.fuses.set(1);
                let namespaces: Vec<_> = target
                    .namespaces()
                    .list(ctrl.subsys)
                    .iter()
                    .map(|n| n.cfg.clone())
                    .collect();
                id.acwu.set(acwu(cfg.max_transfer, &namespaces));
                // The cache is reported by the namespaces there are now; Baton's are all
                // written back (files, drives), and so are those added later.
                if namespaces.is_empty() || namespaces.iter().any(|n| n.volatile_write_cache) {
                    id.vwc = 1;
                }
            }
            None => {
                put_ascii(&mut id.sn, "baton-discovery");
                put_ascii(&mut id.mn, "Baton discovery controller");
                put_str(&mut id.subnqn, nvme_spec::fabrics::DISCOVERY_NQN);
                id.cntrltype = cntrltype::DISCOVERY;
                // Hosts that keep the discovery controller hear when their log changes.
                id.oaes.set(oaes::DISCOVERY_CHANGE);
            }
        }
        id
    }

    fn get_log_page(&mut self, ctrl: &Ctrl, g: &GetLogPage, len: usize) -> Result<Reply, Error> {
        let discovery = ctrl.subsys == self.port.target.discovery_index();
        if u64::try_from(len).is_ok_and(|l| l != g.len) && len != 0 {
            return Err(Error::SglLength);
        }
        let page_len = match (g.lid, discovery) {
            (lid::DISCOVERY, true) => self.discovery_log(ctrl),
            (lid::ERROR, _) => {
                let errs = lock(&ctrl.errors);
                let out = {
                    self.scratch.clear();
                    self.scratch.resize(ERROR_LOG_ENTRIES * 64, 0);
                    &mut self.scratch
                };
                for (i, e) in errs.entries.iter().rev().enumerate() {
                    out[i * 64..i * 64 + 64].copy_from_slice(e.as_bytes());
                }
                out.len()
            }
            (lid::SMART, false) => {
                let smart = self.smart_log(ctrl);
                self.scratch(512).copy_from_slice(smart.as_bytes());
                512
            }
            (lid::ANA, false) => self.ana_log(ctrl, g.lsp & ana_log::LSP_RGO != 0),
            (lid::CHANGED_NS, false) => {
                let changed = ctrl.events.take_changed();
                let out = self.scratch(4096);
                match changed {
                    ChangedList::Overflow => out[..4].copy_from_slice(&u32::MAX.to_le_bytes()),
                    ChangedList::Ids(ids) => {
                        for (slot, id) in out.chunks_exact_mut(4).zip(ids) {
                            slot.copy_from_slice(&id.to_le_bytes());
                        }
                    }
                }
                4096
            }
            (lid::FW_SLOT, false) => {
                let mut fw = FirmwareSlotLog::new_zeroed();
                // Slot 1 is active and stays active at the next reset.
                fw.afi = 1;
                put_ascii(&mut fw.frs[0], FIRMWARE);
                self.scratch(512).copy_from_slice(fw.as_bytes());
                512
            }
            (lid::RESV_NOTIFICATION, false) => self.resv_log(ctrl, g.rae),
            (lid::CMD_EFFECTS, _) => {
                let log = command_effects(discovery);
                self.scratch(4096).copy_from_slice(log.as_bytes());
                4096
            }
            _ => return Err(Error::InvalidLogPage),
        };
        let Ok(off) = usize::try_from(g.offset) else {
            return Err(Error::InvalidField);
        };
        if off > page_len || off % 4 != 0 {
            return Err(Error::InvalidField);
        }
        // Reads may run past the page's end into zeroes, but no further than the page's
        // last 4 KiB: the reply is bounded by the page, not by the host's NUMD.
        if off
            .checked_add(len)
            .is_none_or(|end| end > page_len.next_multiple_of(4096))
        {
            return Err(Error::InvalidField);
        }
        // The reply starts at the offset; bytes past the end of the page read as zeroes.
        self.scratch.truncate(page_len);
        self.scratch.drain(..off);
        self.scratch.resize(len, 0);
        ctrl.events.log_read(g.lid, g.rae);
        Ok(Reply::Scratch(len))
    }

    /// Builds the ANA log (Base 5.16.1.13) of this controller's port in the scratch
    /// buffer: every group with its state here and, unless `groups_only` (RGO), the IDs of
    /// its namespaces this controller attaches. Returns the length a host sizes its buffer
    /// by (the rest reads as zeroes).
    fn ana_log(&mut self, ctrl: &Ctrl, groups_only: bool) -> usize {
        let target = Arc::clone(&self.port.target);
        let port = std::rc::Rc::clone(&self.port);
        let a = target.ana();
        let namespaces = port.namespaces_of(ctrl.subsys);
        let out = self.scratch(ana::LOG_MAX_LEN);
        let mut h = ana_log::Header::new_zeroed();
        h.chgcnt.set(a.chgcnt());
        h.ngrps
            .set(u16::try_from(a.groups().len()).unwrap_or(u16::MAX));
        out[..16].copy_from_slice(h.as_bytes());
        let mut at = 16;
        for (g, &grpid) in a.groups().iter().enumerate() {
            let mut nsids: Vec<u32> = if groups_only {
                Vec::new()
            } else {
                namespaces
                    .iter()
                    .filter(|n| n.ana_group == g)
                    .map(|n| n.cfg.nsid)
                    .collect()
            };
            nsids.sort_unstable();
            let mut d = ana_log::GroupDescriptor::new_zeroed();
            d.grpid.set(grpid);
            d.nnsids.set(u32::try_from(nsids.len()).unwrap_or(0));
            d.chgcnt.set(a.group_chgcnt(port.index, g));
            d.state = a
                .state(port.index, g)
                .map_or(ana_log::state::INACCESSIBLE, ana::AnaState::code);
            // Groups and namespaces are bounded by configuration (MAX_ANA_GROUPS,
            // MAX_NAMESPACES), so the page always holds them.
            out[at..at + 32].copy_from_slice(d.as_bytes());
            at += 32;
            for id in nsids {
                out[at..at + 4].copy_from_slice(&id.to_le_bytes());
                at += 4;
            }
        }
        ana::LOG_MAX_LEN
    }

    fn smart_log(&self, ctrl: &Ctrl) -> SmartLog {
        let mut s = SmartLog::new_zeroed();
        s.temperature = 300u16.to_le_bytes();
        s.avail_spare = 100;
        s.spare_thresh = 10;
        let mut read = 0u64;
        let mut written = 0u64;
        let mut reads = 0u64;
        let mut writes = 0u64;
        for ns in self.port.target.namespaces().list(ctrl.subsys) {
            let n = &ns.metrics;
            read += n.bytes_read.load(Ordering::Relaxed);
            written += n.bytes_written.load(Ordering::Relaxed);
            reads += n.reads.load(Ordering::Relaxed);
            writes += n.writes.load(Ordering::Relaxed);
        }
        // Data units are thousands of 512-byte units, rounded up.
        s.data_units_read.set(u128::from(read.div_ceil(512_000)));
        s.data_units_written
            .set(u128::from(written.div_ceil(512_000)));
        s.host_reads.set(u128::from(reads));
        s.host_writes.set(u128::from(writes));
        s.power_cycles.set(1);
        s.num_err_log_entries
            .set(u128::from(lock(&ctrl.errors).count));
        s
    }

    /// Builds the discovery log for the host of `ctrl` in the scratch buffer; returns its
    /// length. It lists every port of each subsystem the host may connect to (as nvmet and
    /// SPDK filter by the allowed hosts), the current discovery subsystem (the discovery
    /// controller's own address), and the configured referrals.
    fn discovery_log(&mut self, ctrl: &Ctrl) -> usize {
        let target = Arc::clone(&self.port.target);
        let cfg = target.config();
        let mut entries = Vec::new();
        for (i, s) in target.subsystems().live() {
            if !target.access().allows(i, &ctrl.hostnqn) {
                continue;
            }
            for p in &cfg.ports {
                entries.push(discovery_entry(&s.nqn, p.id, p.addr, cfg.max_queue_entries));
            }
        }
        let current = cfg.discovery.map(|a| (a, disc::SUBTYPE_CURRENT_DISCOVERY));
        let referrals = cfg.referrals.iter().map(|&a| (a, disc::SUBTYPE_REFERRAL));
        for (addr, subtype) in current.into_iter().chain(referrals) {
            let nqn = nvme_spec::fabrics::DISCOVERY_NQN;
            let mut e = discovery_entry(nqn, 0, addr, cfg.max_queue_entries);
            e.subtype = subtype;
            entries.push(e);
        }
        let out = self.scratch(1024 * (entries.len() + 1));
        let mut h = DiscoveryLogHeader::new_zeroed();
        h.genctr.set(target.genctr());
        h.numrec.set(entries.len() as u64);
        out[..1024].copy_from_slice(h.as_bytes());
        for (i, e) in entries.iter().enumerate() {
            out[1024 * (i + 1)..1024 * (i + 2)].copy_from_slice(e.as_bytes());
        }
        1024 * (entries.len() + 1)
    }

    fn set_features(&mut self, ctrl: &Ctrl, f: &SetFeatures) -> Result<Completion, Error> {
        let cdw11 = f.cdw11;
        if f.save {
            return Err(Error::NotSaveable);
        }
        let discovery = ctrl.subsys == self.port.target.discovery_index();
        let v = match (f.fid, discovery) {
            (feature::NUM_QUEUES, false) => {
                if ctrl.io_queue_count() != 0 {
                    return Err(Error::Sequence);
                }
                let nsq = (cdw11 & 0xffff) + 1;
                let ncq = (cdw11 >> 16) + 1;
                if nsq == 0x10000 || ncq == 0x10000 {
                    return Err(Error::InvalidField);
                }
                let max = u32::from(self.port.target.config().max_io_queues);
                let granted = nsq.min(ncq).min(max);
                ctrl.io_queues_granted
                    .set(u16::try_from(granted).unwrap_or(1));
                (granted - 1) | ((granted - 1) << 16)
            }
            (feature::ASYNC_EVENT, _) => {
                ctrl.aec.set(cdw11);
                0
            }
            (feature::KATO, _) => {
                ctrl.kato.set(Duration::from_millis(u64::from(cdw11)));
                0
            }
            // Connect gave the host identifier; it does not change (as nvmet answers).
            (feature::HOST_ID, _) => return Err(Error::Sequence),
            (feature::RESV_MASK | feature::RESV_PERSIST, false) => {
                return self.set_resv_feature(ctrl, f.fid, f.nsid, cdw11);
            }
            (feature::ERROR_RECOVERY, false) => {
                // Deallocated or unwritten blocks read as zeroes, never as an error: DULBE
                // (bit 16) cannot be enabled. Baton retries nothing, so any TLER holds.
                if cdw11 & (1 << 16) != 0 {
                    return Err(Error::InvalidField);
                }
                ctrl.error_recovery.set(cdw11 & 0xffff);
                0
            }
            (feature::VOLATILE_WC, false) => {
                // From here on each write is flushed before it completes (see `io`); what
                // the cache held is flushed before this command completes (see `admin`).
                let enable = cdw11 & 1 != 0;
                ctrl.vwc_enabled.set(enable);
                0
            }
            _ => return Err(Error::InvalidField),
        };
        Ok(Completion::ok(u64::from(v)))
    }

    fn get_features(&mut self, ctrl: &Ctrl, f: &GetFeatures) -> Result<Completion, Error> {
        if f.sel == FeatureSelect::Supported {
            // Supported capabilities: changeable, not saveable.
            return Ok(Completion::ok(1 << 2));
        }
        let discovery = ctrl.subsys == self.port.target.discovery_index();
        let v = match (f.fid, discovery) {
            (feature::NUM_QUEUES, false) => {
                let n = u32::from(ctrl.io_queues_granted.get()) - 1;
                n | (n << 16)
            }
            (feature::ASYNC_EVENT, _) => ctrl.aec.get(),
            (feature::KATO, _) => u32::try_from(ctrl.kato.get().as_millis()).unwrap_or(u32::MAX),
            (feature::VOLATILE_WC, false) => u32::from(ctrl.vwc_enabled.get()),
            (feature::ERROR_RECOVERY, false) => ctrl.error_recovery.get(),
            (
                feature::ARBITRATION
                | feature::POWER_MGMT
                | feature::WRITE_ATOMICITY
                | feature::IRQ_COALESCE,
                false,
            ) => 0,
            (feature::TEMP_THRESHOLD, false) => 343,
            (feature::RESV_MASK | feature::RESV_PERSIST, false) => {
                return self.get_resv_feature(ctrl, f.fid, f.nsid);
            }
            _ => return Err(Error::InvalidField),
        };
        Ok(Completion::ok(u64::from(v)))
    }
}

/// The Commands Supported and Effects log: what this controller runs, and which commands
/// change logical block content.
fn command_effects(discovery: bool) -> CommandEffectsLog {
    let mut log = CommandEffectsLog::new_zeroed();
    for op in [
        admin_opcode::GET_LOG_PAGE,
        admin_opcode::IDENTIFY,
        admin_opcode::ABORT,
        admin_opcode::SET_FEATURES,
        admin_opcode::GET_FEATURES,
        admin_opcode::ASYNC_EVENT,
        admin_opcode::KEEP_ALIVE,
    ] {
        log.acs[usize::from(op)].set(effects::CSUPP);
    }
    if !discovery {
        for (op, e) in [
            (io_opcode::FLUSH, 0),
            (io_opcode::WRITE, effects::LBCC),
            (io_opcode::READ, 0),
            (io_opcode::WRITE_ZEROES, effects::LBCC),
            (io_opcode::DSM, effects::LBCC),
            (io_opcode::COMPARE, 0),
            (io_opcode::VERIFY, 0),
            (io_opcode::RESV_REGISTER, 0),
            (io_opcode::RESV_REPORT, 0),
            (io_opcode::RESV_ACQUIRE, 0),
            (io_opcode::RESV_RELEASE, 0),
        ] {
            log.iocs[usize::from(op)].set(effects::CSUPP | e);
        }
    }
    log
}

/// Identify Namespace for a namespace configuration.
pub(crate) fn identify_namespace(cfg: &crate::config::NamespaceConfig) -> IdentifyNamespace {
    let mut id = IdentifyNamespace::new_zeroed();
    id.nsze.set(cfg.num_blocks);
    id.ncap.set(cfg.num_blocks);
    id.nuse.set(cfg.num_blocks);
    // Thin provisioning (deallocate) and the optimal performance fields.
    id.nsfeat = 1 | (1 << 4);
    id.nmic = 1;
    // Deallocated blocks read as zeroes.
    id.dlfeat = 1;
    let noiob = cfg.optimal_io_boundary / cfg.block_size;
    id.noiob.set(u16::try_from(noiob).unwrap_or(0));
    let bytes = u128::from(cfg.num_blocks) * u128::from(cfg.block_size);
    id.nvmcap = bytes.to_le_bytes();
    id.nguid = cfg.nguid;
    id.anagrpid.set(cfg.ana_group);
    id.lbaf[0].lbads = u8::try_from(cfg.block_size.ilog2()).unwrap_or(9);
    id.rescap = nvme_spec::resv::RESCAP_ALL_TYPES_IEKEY;
    id
}

/// Atomic Compare & Write Unit (0's based blocks): a fused operation is atomic over any
/// transfer up to MDTS, in the smallest count the subsystem's namespaces allow.
fn acwu(max_transfer: u32, namespaces: &[crate::config::NamespaceConfig]) -> u16 {
    namespaces
        .iter()
        .map(|n| (max_transfer / n.block_size).saturating_sub(1))
        .min()
        .map_or(0, |b| u16::try_from(b).unwrap_or(u16::MAX))
}

/// One discovery log entry.
pub(crate) fn discovery_entry(
    nqn: &str,
    port_id: u16,
    addr: SocketAddr,
    queue_entries: u16,
) -> DiscoveryLogEntry {
    let mut e = DiscoveryLogEntry::new_zeroed();
    e.trtype = disc::TRTYPE_TCP;
    e.adrfam = if addr.is_ipv4() {
        disc::ADRFAM_IPV4
    } else {
        disc::ADRFAM_IPV6
    };
    e.subtype = disc::SUBTYPE_NVME;
    e.treq = 0;
    e.portid.set(port_id);
    e.cntlid.set(0xffff);
    e.asqsz.set(queue_entries);
    put_ascii(&mut e.trsvcid, &addr.port().to_string());
    put_str(&mut e.subnqn, nqn);
    put_ascii(&mut e.traddr, &addr.ip().to_string());
    e
}
