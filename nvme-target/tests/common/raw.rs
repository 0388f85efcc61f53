//! Raw NVMe/TCP connections for byte-level tests: PDUs built by hand, responses read back
//! one PDU at a time.
#![allow(dead_code, clippy::cast_possible_truncation)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use nvme_spec::command::{SglDescriptor, admin_opcode};
use nvme_spec::fabrics::{ConnectCmd, ConnectData, fctype};
use nvme_spec::pdu::{CommonHeader, pdu_type};
use nvme_spec::{FromZeros, IntoBytes, put_str};
use nvme_target::codec::digest;
use nvme_target::host::HostOptions;

pub use baton_tests::nvme_tcp::{self, capsule, status_of};

use super::{Harness, OPEN_NQN, connect, pattern};

/// A raw connection.
pub struct Raw(pub TcpStream);

impl Raw {
    pub fn open(h: &Harness) -> Self {
        Self::to(h.ports[0])
    }

    /// A raw connection to `addr`.
    pub fn to(addr: SocketAddr) -> Self {
        Raw(nvme_tcp::connect(addr))
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }

    /// Reads one PDU (header and whatever its PLEN says).
    pub fn recv(&mut self) -> Vec<u8> {
        nvme_tcp::read_pdu(&mut self.0)
    }

    /// Waits for the target to close the connection, reading and discarding whatever it
    /// still sends; fails if the read timeout passes first (the connection stayed open).
    pub fn expect_eof(&mut self) {
        let mut b = vec![0u8; 1 << 16];
        loop {
            match self.0.read(&mut b) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("connection still open: {e}"),
            }
        }
    }

    /// Whether the target closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.0.read(&mut b), Ok(0) | Err(_))
    }

    pub fn ic(&mut self, dgst: u8) -> Vec<u8> {
        let mut req = [0u8; 128];
        req[0] = pdu_type::IC_REQ;
        req[2] = 128;
        req[4] = 128;
        req[11] = dgst;
        self.send(&req);
        self.recv()
    }

    /// ICReq then an admin queue Connect; returns the CNTLID.
    pub fn connect_admin(&mut self) -> u16 {
        self.ic(0);
        let mut cmd = ConnectCmd::new_zeroed();
        cmd.opcode = admin_opcode::FABRICS;
        cmd.fctype = fctype::CONNECT;
        cmd.sqsize.set(31);
        cmd.kato.set(0);
        cmd.dptr.kind = SglDescriptor::DATA_BLOCK_OFFSET;
        cmd.dptr.length.set(1024);
        let mut d = ConnectData::new_zeroed();
        d.cntlid.set(0xffff);
        put_str(&mut d.subnqn, OPEN_NQN);
        put_str(&mut d.hostnqn, "nqn.2014-08.org.nvmexpress:uuid:raw");
        let mut pdu = capsule(cmd.as_bytes(), 1024);
        pdu.extend_from_slice(d.as_bytes());
        self.send(&pdu);
        let r = self.recv();
        assert_eq!(r[0], pdu_type::CAPSULE_RESP);
        assert_eq!(status_of(&r), 0);
        u16::from_le_bytes([r[8], r[9]])
    }
}

/// Checks that the port still serves a well-behaved host.
pub fn others_unaffected(h: &Harness) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_c, mut q, ns) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        let d = pattern(8192, 3);
        q.write(&ns, 64, &d).await.unwrap();
        assert!(q.read(&ns, 64, 8192).await.unwrap() == d);
    });
}

pub fn assert_term_req(pdu: &[u8], fes: u16, fei: u32) {
    assert_eq!(pdu[0], pdu_type::C2H_TERM_REQ, "C2HTermReq");
    assert_eq!(pdu[2], 24, "TermReq HLEN");
    assert_eq!(u16::from_le_bytes([pdu[8], pdu[9]]), fes, "FES");
    assert_eq!(
        u32::from_le_bytes(pdu[10..14].try_into().unwrap()),
        fei,
        "FEI"
    );
}

/// An I/O queue on a raw connection: returns the connection after Connect on qid 1.
pub fn raw_io_queue(h: &Harness, dgst: u8) -> Raw {
    raw_io_queue_at(h, 0, dgst)
}

/// An I/O queue on a raw connection to port `port` (0 or 1: another controller thread).
pub fn raw_io_queue_at(h: &Harness, port: usize, dgst: u8) -> Raw {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The admin queue lives in a host-library controller kept alive by leaking it for the
    // test's duration; the raw connection joins it as I/O queue 1.
    // A long keep-alive: the leaked admin queue sends none, and the controller must outlive
    // the test.
    let opts = HostOptions {
        kato_ms: 120_000,
        ..HostOptions::new(OPEN_NQN)
    };
    let c = rt.block_on(async {
        let mut c = nvme_target::host::HostController::connect(h.ports[port], opts.clone())
            .await
            .unwrap();
        c.set_num_queues(1).await.unwrap();
        c
    });
    let cntlid = c.cntlid();
    std::mem::forget(c);
    std::mem::forget(rt);
    join_io_queue_at(h.ports[port], dgst, cntlid, &opts.hostnqn)
}

/// A raw connection that joins controller `cntlid` (of `hostnqn`) as I/O queue 1.
pub fn join_io_queue(h: &Harness, dgst: u8, cntlid: u16, hostnqn: &str) -> Raw {
    join_io_queue_at(h.ports[0], dgst, cntlid, hostnqn)
}

/// [`join_io_queue`] on the port at `addr`.
pub fn join_io_queue_at(addr: SocketAddr, dgst: u8, cntlid: u16, hostnqn: &str) -> Raw {
    let mut raw = Raw::to(addr);
    raw.ic(dgst);
    let mut cmd = ConnectCmd::new_zeroed();
    cmd.opcode = admin_opcode::FABRICS;
    cmd.fctype = fctype::CONNECT;
    cmd.qid.set(1);
    cmd.sqsize.set(31);
    cmd.dptr.kind = SglDescriptor::DATA_BLOCK_OFFSET;
    cmd.dptr.length.set(1024);
    let mut d = ConnectData::new_zeroed();
    d.cntlid.set(cntlid);
    put_str(&mut d.subnqn, OPEN_NQN);
    put_str(&mut d.hostnqn, hostnqn);
    let mut pdu = if dgst & 1 != 0 {
        let ch = CommonHeader::new(
            pdu_type::CAPSULE_CMD,
            1 | (dgst & 2),
            72,
            76,
            76 + 1024 + if dgst & 2 != 0 { 4 } else { 0 },
        );
        let mut v = ch.as_bytes().to_vec();
        v.extend_from_slice(cmd.as_bytes());
        let hd = digest(&v);
        v.extend_from_slice(&hd.to_le_bytes());
        v
    } else {
        capsule(cmd.as_bytes(), 1024)
    };
    pdu.extend_from_slice(d.as_bytes());
    if dgst & 2 != 0 {
        pdu.extend_from_slice(&digest(d.as_bytes()).to_le_bytes());
    }
    raw.send(&pdu);
    let r = raw.recv();
    assert_eq!(r[0], pdu_type::CAPSULE_RESP);
    assert_eq!(status_of(&r), 0, "I/O queue connect");
    raw
}
