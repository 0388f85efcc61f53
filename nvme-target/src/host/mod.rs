//! A small NVMe/TCP host (initiator) for tests, benchmarks and tools.
//!
//! [`HostController::connect`] runs the Linux host's bring-up sequence (ICReq, Fabrics
//! Connect, Property Get/Set to enable, Identify); [`HostController::connect_io_queue`]
//! opens one TCP connection per I/O queue. A [`Queue`] offers both one-call commands and a
//! pipelined interface (`submit_*` / [`Queue::next`] / [`Queue::release`]) that keeps many
//! commands in flight without allocating per command.

mod auth;
mod queue;

use std::net::SocketAddr;
use std::time::Duration;

use nvme_spec::command::{Cqe, DsmRange, Sqe, admin_opcode, cns, feature, io_opcode};
use nvme_spec::fabrics::{ConnectCmd, ConnectData, DISCOVERY_NQN, PropertyCmd, fctype};
use nvme_spec::identify::{IdentifyController, IdentifyNamespace};
use nvme_spec::log::{DiscoveryLogEntry, DiscoveryLogHeader, GetLogPage, lid};
use nvme_spec::regs::{Cap, Cc, Csts, offset};
use nvme_spec::{FromBytes, FromZeros, IntoBytes, put_str};

pub use self::auth::{Dhchap, HostExchange};
pub use self::queue::{Completion, Queue};
pub use crate::codec::Digests;

/// What can go wrong on the host side.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Socket error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The controller closed the connection.
    #[error("connection closed by the controller")]
    Closed,
    /// The controller broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The controller sent a TermReq.
    #[error("controller terminated the connection (FES {fes:#x}, FEI {fei})")]
    Terminated {
        /// Fatal error status.
        fes: u16,
        /// Fatal error information.
        fei: u32,
    },
    /// A command completed with an error status.
    #[error("command failed with status {status:#x} (result {result:#x})")]
    Status {
        /// Status field (SCT/SC/DNR).
        status: u16,
        /// Dword 0 of the completion.
        result: u32,
    },
    /// Every command slot is in use.
    #[error("queue full")]
    QueueFull,
    /// One command would move more than the controller's MDTS allows.
    #[error("{len} bytes in one command is more than the controller's limit of {max}")]
    TooLarge {
        /// Bytes asked for.
        len: usize,
        /// The controller's maximum data transfer size in bytes.
        max: usize,
    },
    /// The controller refused the host's authentication (AUTH_Failure1 and its reason
    /// code explanation).
    #[error("authentication failed (explanation {explanation:#x})")]
    AuthFailed {
        /// Reason code explanation.
        explanation: u8,
    },
    /// The controller asks for authentication and the host has no secret.
    #[error("the controller requires authentication and no DH-HMAC-CHAP secret is set")]
    AuthRequired,
    /// The controller's response did not verify with the controller secret.
    #[error("the controller failed to authenticate")]
    CtrlAuthFailed,
    /// The controller did not become ready.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// Connection options.
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// Host NQN.
    pub hostnqn: String,
    /// Host identifier.
    pub hostid: [u8; 16],
    /// Subsystem NQN to connect to.
    pub subnqn: String,
    /// Digests to ask for.
    pub digests: Digests,
    /// Keep-alive timeout in milliseconds (0: none).
    pub kato_ms: u32,
    /// Entries per I/O queue.
    pub queue_size: u16,
    /// DH-HMAC-CHAP secrets, used when the controller asks for authentication.
    pub dhchap: Option<Dhchap>,
}

impl HostOptions {
    /// Options for `subnqn` with a fixed test host identity, no digests, KATO 5 s.
    pub fn new(subnqn: &str) -> Self {
        Self {
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:8ae2b12c-3d28-4458-83e3-658e571ed4b8".into(),
            hostid: *b"\x8a\xe2\xb1\x2c\x3d\x28\x44\x58\x83\xe3\x65\x8e\x57\x1e\xd4\xb8",
            subnqn: subnqn.into(),
            digests: Digests::default(),
            kato_ms: 5000,
            queue_size: 128,
            dhchap: None,
        }
    }

    /// Options for the discovery subsystem.
    pub fn discovery() -> Self {
        Self {
            kato_ms: 0,
            queue_size: 32,
            ..Self::new(DISCOVERY_NQN)
        }
    }
}

/// A namespace as the host sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace ID.
    pub nsid: u32,
    /// Logical block size.
    pub block_size: u32,
    /// Size in blocks.
    pub blocks: u64,
    /// Most bytes one command may move: the controller's MDTS (`usize::MAX` if it sets
    /// none), rounded down to whole blocks.
    pub max_transfer: usize,
}

/// A connected controller (its admin queue).
#[derive(Debug)]
pub struct HostController {
    admin: Queue,
    addr: SocketAddr,
    opts: HostOptions,
    cntlid: u16,
    in_capsule: usize,
    /// MDTS in bytes (`usize::MAX`: no limit).
    max_transfer: usize,
}

/// Fails unless the completion succeeded.
pub fn check(cqe: &Cqe) -> Result<(), HostError> {
    match cqe.status_field() {
        0 => Ok(()),
        status => Err(HostError::Status {
            status,
            result: cqe.result.get(),
        }),
    }
}

/// Fabrics Connect; returns dword 0 of the response (CNTLID and AUTHREQ).
async fn connect_command(
    q: &mut Queue,
    opts: &HostOptions,
    qid: u16,
    sqsize: u16,
    cntlid: u16,
) -> Result<u32, HostError> {
    let mut cmd = ConnectCmd::new_zeroed();
    cmd.opcode = admin_opcode::FABRICS;
    cmd.fctype = fctype::CONNECT;
    cmd.qid.set(qid);
    cmd.sqsize.set(sqsize.saturating_sub(1).max(1));
    if qid == 0 {
        cmd.kato.set(opts.kato_ms);
    }
    let mut data = ConnectData::new_zeroed();
    data.hostid = opts.hostid;
    data.cntlid.set(cntlid);
    put_str(&mut data.subnqn, &opts.subnqn);
    put_str(&mut data.hostnqn, &opts.hostnqn);
    let sqe = Sqe::read_from_bytes(cmd.as_bytes())
        .map_err(|_| HostError::Protocol("SQE layout".into()))?;
    let (cqe, _) = q.execute(sqe, Some(data.as_bytes()), 0).await?;
    check(&cqe)?;
    Ok(cqe.result.get())
}

/// Fabrics Connect, then DH-HMAC-CHAP if the controller asks for it; returns the CNTLID.
async fn fabrics_connect(
    q: &mut Queue,
    opts: &HostOptions,
    qid: u16,
    sqsize: u16,
    cntlid: u16,
) -> Result<u16, HostError> {
    let result = connect_command(q, opts, qid, sqsize, cntlid).await?;
    if result & nvme_spec::auth::CONNECT_AUTHREQ_ATR != 0 {
        let d = opts.dhchap.as_ref().ok_or(HostError::AuthRequired)?;
        q.authenticate(d, &opts.hostnqn, &opts.subnqn, qid).await?;
    }
    Ok((result & 0xffff) as u16)
}

/// Opens an admin queue and sends Connect, nothing else (no authentication, no enable):
/// returns the queue and dword 0 of the Connect response. For tests that drive the
/// exchange that follows themselves.
pub async fn open_admin_queue(
    addr: SocketAddr,
    opts: &HostOptions,
) -> Result<(Queue, u32), HostError> {
    let mut q = Queue::open(addr, opts.digests, 32, 8192).await?;
    let r = connect_command(&mut q, opts, 0, 32, 0xffff).await?;
    Ok((q, r))
}

impl HostController {
    /// Connects the admin queue and enables the controller.
    pub async fn connect(addr: SocketAddr, opts: HostOptions) -> Result<Self, HostError> {
        let mut admin = Queue::open(addr, opts.digests, 32, 8192).await?;
        let cntlid = fabrics_connect(&mut admin, &opts, 0, 32, 0xffff).await?;
        let mut c = Self {
            admin,
            addr,
            opts,
            cntlid,
            in_capsule: 0,
            max_transfer: usize::MAX,
        };
        let cap = Cap(c.property_get(offset::CAP, true).await?);
        let cc = Cc::build(true, 0, 0, 0, 6, 4);
        c.property_set(offset::CC, u64::from(cc.0)).await?;
        let mut ready = false;
        for _ in 0..500 {
            let csts = Csts((c.property_get(offset::CSTS, false).await? & 0xffff_ffff) as u32);
            if csts.cfs() {
                return Err(HostError::Protocol(
                    "controller fatal status after enable".into(),
                ));
            }
            if csts.rdy() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !ready {
            return Err(HostError::Timeout("CSTS.RDY"));
        }
        if c.opts.subnqn != DISCOVERY_NQN {
            let id = c.identify_controller().await?;
            c.in_capsule = (id.ioccsz.get() as usize * 16).saturating_sub(64);
            // MDTS is a power of two in units of the minimum memory page size.
            if id.mdts != 0 {
                let page = 4096usize << cap.mpsmin().min(15);
                c.max_transfer = page
                    .checked_shl(u32::from(id.mdts))
                    .filter(|&m| m >= page)
                    .unwrap_or(usize::MAX);
            }
        }
        Ok(c)
    }

    /// Controller ID assigned by the target.
    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    /// The admin queue, for raw commands.
    pub fn admin(&mut self) -> &mut Queue {
        &mut self.admin
    }

    /// Runs one admin command and checks its status.
    pub async fn admin_command(
        &mut self,
        sqe: Sqe,
        write: Option<&[u8]>,
        read_len: usize,
    ) -> Result<(Cqe, Vec<u8>), HostError> {
        let (cqe, data) = self.admin.execute(sqe, write, read_len).await?;
        check(&cqe)?;
        Ok((cqe, data))
    }

    /// Property Get.
    pub async fn property_get(&mut self, off: u32, eight: bool) -> Result<u64, HostError> {
        let mut p = PropertyCmd::new_zeroed();
        p.opcode = admin_opcode::FABRICS;
        p.fctype = fctype::PROPERTY_GET;
        p.attrib = u8::from(eight);
        p.offset.set(off);
        let sqe = Sqe::read_from_bytes(p.as_bytes())
            .map_err(|_| HostError::Protocol("SQE layout".into()))?;
        let (cqe, _) = self.admin_command(sqe, None, 0).await?;
        Ok(cqe.result64())
    }

    /// Property Set (4 bytes).
    pub async fn property_set(&mut self, off: u32, value: u64) -> Result<(), HostError> {
        let mut p = PropertyCmd::new_zeroed();
        p.opcode = admin_opcode::FABRICS;
        p.fctype = fctype::PROPERTY_SET;
        p.offset.set(off);
        p.value.set(value);
        let sqe = Sqe::read_from_bytes(p.as_bytes())
            .map_err(|_| HostError::Protocol("SQE layout".into()))?;
        self.admin_command(sqe, None, 0).await.map(|_| ())
    }

    async fn identify(&mut self, c: u8, nsid: u32) -> Result<Vec<u8>, HostError> {
        let mut sqe = Sqe::new_zeroed();
        sqe.opcode = admin_opcode::IDENTIFY;
        sqe.nsid.set(nsid);
        sqe.cdw10.set(u32::from(c));
        Ok(self.admin_command(sqe, None, 4096).await?.1)
    }

    /// Identify Controller.
    pub async fn identify_controller(&mut self) -> Result<IdentifyController, HostError> {
        let d = self.identify(cns::CONTROLLER, 0).await?;
        IdentifyController::read_from_bytes(&d)
            .map_err(|_| HostError::Protocol("short identify".into()))
    }

    /// Identify Namespace.
    pub async fn identify_namespace(&mut self, nsid: u32) -> Result<IdentifyNamespace, HostError> {
        let d = self.identify(cns::NAMESPACE, nsid).await?;
        IdentifyNamespace::read_from_bytes(&d)
            .map_err(|_| HostError::Protocol("short identify".into()))
    }

    /// Namespace identification descriptor list (raw 4096 bytes).
    pub async fn ns_descriptors(&mut self, nsid: u32) -> Result<Vec<u8>, HostError> {
        self.identify(cns::NS_DESC_LIST, nsid).await
    }

    /// Active namespace IDs.
    pub async fn active_namespaces(&mut self) -> Result<Vec<u32>, HostError> {
        let d = self.identify(cns::ACTIVE_NS_LIST, 0).await?;
        Ok(d.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .take_while(|&id| id != 0)
            .collect())
    }

    /// A namespace's ID, block size and size.
    pub async fn namespace(&mut self, nsid: u32) -> Result<Namespace, HostError> {
        let id = self.identify_namespace(nsid).await?;
        let lbaf = id.lbaf[usize::from(id.flbas & 0xf)];
        let block_size = 1u32 << lbaf.lbads.min(31);
        let bs = block_size as usize;
        Ok(Namespace {
            nsid,
            block_size,
            blocks: id.nsze.get(),
            max_transfer: (self.max_transfer / bs * bs).max(bs),
        })
    }

    /// Get Log Page: `len` bytes from `offset`.
    pub async fn get_log_page(
        &mut self,
        log: u8,
        off: u64,
        len: usize,
    ) -> Result<Vec<u8>, HostError> {
        let mut sqe = Sqe::new_zeroed();
        sqe.opcode = admin_opcode::GET_LOG_PAGE;
        sqe.nsid.set(u32::MAX);
        GetLogPage {
            lid: log,
            lsp: 0,
            rae: false,
            len: len as u64,
            offset: off,
        }
        .encode(&mut sqe);
        Ok(self.admin_command(sqe, None, len).await?.1)
    }

    /// The discovery log, read as nvme-cli does: header, then entries in 4 KiB pieces,
    /// retried if the generation counter changed.
    pub async fn discovery_log(&mut self) -> Result<Vec<DiscoveryLogEntry>, HostError> {
        for _ in 0..10 {
            let h = self.get_log_page(lid::DISCOVERY, 0, 1024).await?;
            let h = DiscoveryLogHeader::read_from_bytes(&h)
                .map_err(|_| HostError::Protocol("short log".into()))?;
            let n = usize::try_from(h.numrec.get())
                .unwrap_or(usize::MAX)
                .min(1024);
            let mut bytes = Vec::with_capacity(n * 1024);
            while bytes.len() < n * 1024 {
                let chunk = (n * 1024 - bytes.len()).min(4096);
                let off = 1024 + bytes.len() as u64;
                bytes.extend(self.get_log_page(lid::DISCOVERY, off, chunk).await?);
            }
            let again = self.get_log_page(lid::DISCOVERY, 0, 1024).await?;
            let again = DiscoveryLogHeader::read_from_bytes(&again)
                .map_err(|_| HostError::Protocol("short log".into()))?;
            if again.genctr.get() == h.genctr.get() {
                return Ok(bytes
                    .chunks_exact(1024)
                    .filter_map(|c| DiscoveryLogEntry::read_from_bytes(c).ok())
                    .collect());
            }
        }
        Err(HostError::Protocol("discovery log kept changing".into()))
    }

    /// Set Features Number of Queues; returns the number granted.
    pub async fn set_num_queues(&mut self, n: u16) -> Result<u16, HostError> {
        let mut sqe = Sqe::new_zeroed();
        sqe.opcode = admin_opcode::SET_FEATURES;
        sqe.cdw10.set(u32::from(feature::NUM_QUEUES));
        let v = u32::from(n.max(1) - 1);
        sqe.cdw11.set(v | (v << 16));
        let (cqe, _) = self.admin_command(sqe, None, 0).await?;
        let r = cqe.result.get();
        Ok(u16::try_from((r & 0xffff).min(r >> 16) + 1).unwrap_or(u16::MAX))
    }

    /// Keep Alive.
    pub async fn keep_alive(&mut self) -> Result<(), HostError> {
        let mut sqe = Sqe::new_zeroed();
        sqe.opcode = admin_opcode::KEEP_ALIVE;
        self.admin_command(sqe, None, 0).await.map(|_| ())
    }

    /// Normal shutdown: CC.SHN = 01b, then wait for CSTS.SHST = complete.
    pub async fn shutdown(&mut self) -> Result<(), HostError> {
        let cc = Cc((self.property_get(offset::CC, false).await? & 0xffff_ffff) as u32);
        let shn = Cc(cc.0 | (1 << 14));
        self.property_set(offset::CC, u64::from(shn.0)).await?;
        for _ in 0..500 {
            let csts = Csts((self.property_get(offset::CSTS, false).await? & 0xffff_ffff) as u32);
            if csts.shst() == Csts::SHST_COMPLETE {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(HostError::Timeout("CSTS.SHST"))
    }

    /// Authenticates the admin queue again (a new DH-HMAC-CHAP transaction).
    pub async fn reauthenticate(&mut self, t_id: u16) -> Result<(), HostError> {
        let d = self.opts.dhchap.clone().ok_or(HostError::AuthRequired)?;
        let (host, sub) = (self.opts.hostnqn.clone(), self.opts.subnqn.clone());
        self.admin.authenticate(&d, &host, &sub, t_id).await
    }

    /// Opens I/O queue `qid` (a new TCP connection to the same port).
    pub async fn connect_io_queue(&self, qid: u16) -> Result<Queue, HostError> {
        let mut q = Queue::open(self.addr, self.opts.digests, self.opts.queue_size, 8192).await?;
        fabrics_connect(&mut q, &self.opts, qid, self.opts.queue_size, self.cntlid).await?;
        q.set_in_capsule(self.in_capsule);
        Ok(q)
    }
}

impl Queue {
    fn io_sqe(opcode: u8, ns: &Namespace, slba: u64, nlb: u32) -> Sqe {
        let mut sqe = Sqe::new_zeroed();
        sqe.opcode = opcode;
        sqe.nsid.set(ns.nsid);
        sqe.set_lba_range(slba, nlb);
        sqe
    }

    /// Refuses a length that is not a non-zero number of whole blocks.
    fn whole_blocks(ns: &Namespace, len: usize) -> Result<(), HostError> {
        let bs = ns.block_size as usize;
        if len == 0 || bs == 0 || len % bs != 0 {
            return Err(HostError::Protocol(format!(
                "length {len} is not a whole number of {bs}-byte blocks"
            )));
        }
        Ok(())
    }

    /// The block count of one command moving `len` bytes; refuses more than MDTS.
    fn blocks(ns: &Namespace, len: usize) -> Result<u32, HostError> {
        Self::whole_blocks(ns, len)?;
        let bs = ns.block_size as usize;
        if len / bs > 65536 {
            return Err(HostError::Protocol(format!(
                "length {len} is more than 65536 blocks of {bs}"
            )));
        }
        if len > ns.max_transfer {
            return Err(HostError::TooLarge {
                len,
                max: ns.max_transfer,
            });
        }
        Ok(u32::try_from(len / bs).unwrap_or(1))
    }

    /// The pieces (block offset, byte range) a transfer of `len` bytes splits into so that
    /// no command passes MDTS.
    fn pieces(ns: &Namespace, len: usize) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> {
        let bs = ns.block_size.max(1) as usize;
        // Whole blocks, and at most 65536 of them (the NLB field).
        let step = ns.max_transfer.min(65536 * bs).max(bs) / bs * bs;
        (0..len)
            .step_by(step)
            .map(move |at| ((at / bs) as u64, at..len.min(at + step)))
    }

    /// Queues a read of `len` bytes at block `slba` (one command: at most MDTS).
    pub fn submit_read(&mut self, ns: &Namespace, slba: u64, len: usize) -> Result<u16, HostError> {
        let nlb = Self::blocks(ns, len)?;
        self.submit(Self::io_sqe(io_opcode::READ, ns, slba, nlb), None, len)
    }

    /// Queues a write of `data` at block `slba` (one command: at most MDTS).
    pub fn submit_write(
        &mut self,
        ns: &Namespace,
        slba: u64,
        data: &[u8],
    ) -> Result<u16, HostError> {
        let nlb = Self::blocks(ns, data.len())?;
        self.submit(Self::io_sqe(io_opcode::WRITE, ns, slba, nlb), Some(data), 0)
    }

    /// Reads `len` bytes at block `slba`, in as many commands as MDTS needs.
    pub async fn read(
        &mut self,
        ns: &Namespace,
        slba: u64,
        len: usize,
    ) -> Result<Vec<u8>, HostError> {
        if len <= ns.max_transfer {
            let nlb = Self::blocks(ns, len)?;
            let (cqe, data) = self
                .execute(Self::io_sqe(io_opcode::READ, ns, slba, nlb), None, len)
                .await?;
            check(&cqe)?;
            return Ok(data);
        }
        Self::whole_blocks(ns, len)?;
        let mut out = Vec::with_capacity(len);
        for (lba, r) in Self::pieces(ns, len) {
            let nlb = Self::blocks(ns, r.len())?;
            let (cqe, data) = self
                .execute(
                    Self::io_sqe(io_opcode::READ, ns, slba + lba, nlb),
                    None,
                    r.len(),
                )
                .await?;
            check(&cqe)?;
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    /// Writes `data` at block `slba`, in as many commands as MDTS needs.
    pub async fn write(&mut self, ns: &Namespace, slba: u64, data: &[u8]) -> Result<(), HostError> {
        // The whole length is checked before the first piece goes out.
        Self::whole_blocks(ns, data.len())?;
        for (lba, r) in Self::pieces(ns, data.len()) {
            let piece = &data[r];
            let nlb = Self::blocks(ns, piece.len())?;
            let sqe = Self::io_sqe(io_opcode::WRITE, ns, slba + lba, nlb);
            let (cqe, _) = self.execute(sqe, Some(piece), 0).await?;
            check(&cqe)?;
        }
        Ok(())
    }

    /// Flush.
    pub async fn flush_ns(&mut self, ns: &Namespace) -> Result<(), HostError> {
        let mut sqe = Sqe::new_zeroed();
        sqe.opcode = io_opcode::FLUSH;
        sqe.nsid.set(ns.nsid);
        check(&self.execute(sqe, None, 0).await?.0)
    }

    /// Write Zeroes over `nlb` blocks.
    pub async fn write_zeroes(
        &mut self,
        ns: &Namespace,
        slba: u64,
        nlb: u32,
    ) -> Result<(), HostError> {
        let sqe = Self::io_sqe(io_opcode::WRITE_ZEROES, ns, slba, nlb);
        check(&self.execute(sqe, None, 0).await?.0)
    }

    /// Dataset Management deallocate of `(slba, nlb)` ranges (sent as a 4096-byte buffer,
    /// as Linux does).
    pub async fn deallocate(
        &mut self,
        ns: &Namespace,
        ranges: &[(u64, u32)],
    ) -> Result<(), HostError> {
        let mut buf = vec![0u8; 4096];
        for (i, &(slba, nlb)) in ranges.iter().take(256).enumerate() {
            let mut r = DsmRange::new_zeroed();
            r.slba.set(slba);
            r.nlb.set(nlb);
            buf[i * 16..i * 16 + 16].copy_from_slice(r.as_bytes());
        }
        let mut sqe = Sqe::new_zeroed();
        sqe.opcode = io_opcode::DSM;
        sqe.nsid.set(ns.nsid);
        sqe.cdw10
            .set(u32::try_from(ranges.len().clamp(1, 256) - 1).unwrap_or(0));
        sqe.cdw11.set(nvme_spec::command::DSM_ATTR_DEALLOCATE);
        check(&self.execute(sqe, Some(&buf), 0).await?.0)
    }
}
