//! DH-HMAC-CHAP, host side (Base 2.0 8.13.5): what the Linux host does after a Connect
//! whose response sets AUTHREQ.ATR. [`HostExchange`] builds and checks the messages of one
//! transaction, so tests can also drive the exchange message by message.

use nvme_spec::auth::{
    AUTH_ID_DHCHAP, ChallengeHeader, Failure, NegotiateHeader, ProtocolDescriptor, ReplyHeader,
    SECP_NVME, SPSP_DHCHAP, Success1Header, Success2, auth_id, auth_type, dh_group, failure,
    hash_id,
};
use nvme_spec::command::{Sqe, admin_opcode};
use nvme_spec::fabrics::fctype;
use nvme_spec::{FromBytes, FromZeros, IntoBytes};

use super::{HostError, Queue, check};
use crate::auth::{
    Group, HashFn, KeyPair, Secret, Transcript, augmented, ctrl_response, host_response, same,
};

/// A host's DH-HMAC-CHAP secrets and what it offers.
#[derive(Clone, Debug)]
pub struct Dhchap {
    /// The host's secret (`--dhchap-secret`).
    pub key: Secret,
    /// The controller's secret (`--dhchap-ctrl-secret`): the host then authenticates the
    /// controller too.
    pub ctrl_key: Option<Secret>,
    /// Hash identifiers offered, in order of preference.
    pub hashes: Vec<u8>,
    /// DH group identifiers offered.
    pub dh_groups: Vec<u8>,
}

impl Dhchap {
    /// Offers every hash and group, as the Linux host does.
    pub fn new(key: Secret) -> Self {
        Self {
            key,
            ctrl_key: None,
            hashes: vec![hash_id::SHA256, hash_id::SHA384, hash_id::SHA512],
            dh_groups: vec![
                dh_group::NULL,
                dh_group::FFDHE2048,
                dh_group::FFDHE3072,
                dh_group::FFDHE4096,
                dh_group::FFDHE6144,
                dh_group::FFDHE8192,
            ],
        }
    }
}

/// The host side of one transaction.
#[derive(Debug)]
pub struct HostExchange<'a> {
    d: &'a Dhchap,
    hostnqn: &'a str,
    subnqn: &'a str,
    t_id: u16,
    hash: Option<HashFn>,
    /// Our challenge to the controller and its sequence number (bidirectional only).
    c2: Option<(u32, Vec<u8>)>,
    session: Option<Vec<u8>>,
}

fn failed(msg: &[u8]) -> Option<HostError> {
    let (f, _) = Failure::ref_from_prefix(msg).ok()?;
    (f.auth_type == auth_type::COMMON && f.auth_id == auth_id::FAILURE1).then_some(
        HostError::AuthFailed {
            explanation: f.rescode_exp,
        },
    )
}

fn random(buf: &mut [u8]) -> Result<(), HostError> {
    getrandom::fill(buf).map_err(|_| HostError::Protocol("no random numbers".into()))
}

impl<'a> HostExchange<'a> {
    /// A transaction `t_id` of `hostnqn` with `subnqn`.
    pub fn new(d: &'a Dhchap, hostnqn: &'a str, subnqn: &'a str, t_id: u16) -> Self {
        Self {
            d,
            hostnqn,
            subnqn,
            t_id,
            hash: None,
            c2: None,
            session: None,
        }
    }

    /// AUTH_Negotiate: one DH-HMAC-CHAP descriptor with the offered hashes and groups.
    pub fn negotiate(&self) -> Vec<u8> {
        let mut h = NegotiateHeader {
            auth_type: auth_type::COMMON,
            auth_id: auth_id::NEGOTIATE,
            napd: 1,
            ..NegotiateHeader::default()
        };
        h.t_id.set(self.t_id);
        let mut p = ProtocolDescriptor {
            authid: AUTH_ID_DHCHAP,
            halen: u8::try_from(self.d.hashes.len().min(30)).unwrap_or(30),
            dhlen: u8::try_from(self.d.dh_groups.len().min(30)).unwrap_or(30),
            ..ProtocolDescriptor::default()
        };
        for (i, &id) in self.d.hashes.iter().take(30).enumerate() {
            p.idlist[i] = id;
        }
        for (i, &id) in self.d.dh_groups.iter().take(30).enumerate() {
            p.idlist[30 + i] = id;
        }
        let mut v = h.as_bytes().to_vec();
        v.extend_from_slice(p.as_bytes());
        v
    }

    /// The Reply to a Challenge (or the controller's Failure1 as an error).
    pub fn reply(&mut self, msg: &[u8]) -> Result<Vec<u8>, HostError> {
        if let Some(e) = failed(msg) {
            return Err(e);
        }
        let bad = || HostError::Protocol("malformed DH-HMAC-CHAP challenge".into());
        let (h, rest) = ChallengeHeader::ref_from_prefix(msg).map_err(|_| bad())?;
        if h.auth_type != auth_type::DHCHAP || h.auth_id != auth_id::CHALLENGE {
            return Err(bad());
        }
        let hash = HashFn::from_id(h.hashid).ok_or_else(bad)?;
        let hl = hash.size();
        let dhvlen = usize::from(h.dhvlen.get());
        if usize::from(h.hl) != hl || rest.len() < hl + dhvlen || h.t_id.get() != self.t_id {
            return Err(bad());
        }
        let (c1, rest) = rest.split_at(hl);
        let ctrl_dhv = &rest[..dhvlen];
        let mut dhv = Vec::new();
        self.session = match (h.dhgid, Group::from_id(h.dhgid)) {
            (dh_group::NULL, _) if dhvlen == 0 => None,
            (_, Some(g)) => {
                let kp: KeyPair = g.keypair().map_err(|_| bad())?;
                let s = kp.shared(ctrl_dhv).map_err(|_| bad())?;
                dhv = kp.public.clone();
                Some(s)
            }
            _ => return Err(bad()),
        };
        self.hash = Some(hash);
        let t = Transcript {
            seqnum: h.seqnum.get(),
            t_id: self.t_id,
            sc_c: 0,
            hostnqn: self.hostnqn,
            subnqn: self.subnqn,
        };
        let key = self.d.key.transformed(self.hostnqn);
        let rval = host_response(
            hash,
            &key,
            &augmented(hash, self.session.as_deref(), c1),
            &t,
        );
        let mut cval = vec![0u8; hl];
        let mut s2 = 0;
        if self.d.ctrl_key.is_some() {
            random(&mut cval)?;
            let mut b = [0u8; 4];
            random(&mut b)?;
            s2 = u32::from_le_bytes(b).max(1);
            self.c2 = Some((s2, cval.clone()));
        }
        let mut r = ReplyHeader {
            auth_type: auth_type::DHCHAP,
            auth_id: auth_id::REPLY,
            hl: h.hl,
            cvalid: u8::from(self.c2.is_some()),
            ..ReplyHeader::default()
        };
        r.t_id.set(self.t_id);
        r.dhvlen.set(u16::try_from(dhv.len()).unwrap_or(0));
        r.seqnum.set(s2);
        let mut v = r.as_bytes().to_vec();
        v.extend_from_slice(&rval);
        v.extend_from_slice(&cval);
        v.extend_from_slice(&dhv);
        Ok(v)
    }

    /// Checks Success1; returns the Success2 to send (bidirectional) or `None` (done).
    /// A controller whose response does not verify is an error (send [`Self::failure2`]).
    pub fn success1(&self, msg: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        if let Some(e) = failed(msg) {
            return Err(e);
        }
        let bad = || HostError::Protocol("malformed DH-HMAC-CHAP success1".into());
        let (h, rest) = Success1Header::ref_from_prefix(msg).map_err(|_| bad())?;
        if h.auth_type != auth_type::DHCHAP || h.auth_id != auth_id::SUCCESS1 {
            return Err(bad());
        }
        let Some(((s2, c2), k)) = self.c2.as_ref().zip(self.d.ctrl_key.as_ref()) else {
            return Ok(None);
        };
        let hash = self.hash.ok_or_else(bad)?;
        let hl = hash.size();
        if h.rvalid == 0 || rest.len() < hl {
            return Err(HostError::CtrlAuthFailed);
        }
        let t = Transcript {
            seqnum: *s2,
            t_id: self.t_id,
            sc_c: 0,
            hostnqn: self.hostnqn,
            subnqn: self.subnqn,
        };
        let challenge = augmented(hash, self.session.as_deref(), c2);
        let want = ctrl_response(hash, &k.transformed(self.subnqn), &challenge, &t);
        if !same(&want, &rest[..hl]) {
            return Err(HostError::CtrlAuthFailed);
        }
        let mut s = Success2 {
            auth_type: auth_type::DHCHAP,
            auth_id: auth_id::SUCCESS2,
            ..Success2::default()
        };
        s.t_id.set(self.t_id);
        Ok(Some(s.as_bytes().to_vec()))
    }

    /// AUTH_Failure2: the host refuses the controller.
    pub fn failure2(&self) -> Vec<u8> {
        let mut f = Failure {
            auth_type: auth_type::COMMON,
            auth_id: auth_id::FAILURE2,
            rescode: failure::REASON_FAILED,
            rescode_exp: failure::FAILED,
            ..Failure::default()
        };
        f.t_id.set(self.t_id);
        f.as_bytes().to_vec()
    }
}

fn auth_sqe(fct: u8, len: usize) -> Result<Sqe, HostError> {
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = admin_opcode::FABRICS;
    sqe.nsid.set(u32::from(fct));
    sqe.cdw10.set(
        (u32::from(SECP_NVME) << 24)
            | (u32::from(SPSP_DHCHAP) << 16)
            | (u32::from(SPSP_DHCHAP) << 8),
    );
    sqe.cdw11
        .set(u32::try_from(len).map_err(|_| HostError::Protocol("message too long".into()))?);
    Ok(sqe)
}

impl Queue {
    /// Authentication Send of one message.
    pub async fn auth_send(&mut self, msg: &[u8]) -> Result<(), HostError> {
        let (cqe, _) = self
            .execute(auth_sqe(fctype::AUTH_SEND, msg.len())?, Some(msg), 0)
            .await?;
        check(&cqe)
    }

    /// Authentication Receive with allocation length `len`.
    pub async fn auth_receive(&mut self, len: usize) -> Result<Vec<u8>, HostError> {
        let (cqe, data) = self
            .execute(auth_sqe(fctype::AUTH_RECEIVE, len)?, None, len)
            .await?;
        check(&cqe)?;
        Ok(data)
    }

    /// Runs one whole DH-HMAC-CHAP transaction on this queue.
    pub async fn authenticate(
        &mut self,
        d: &Dhchap,
        hostnqn: &str,
        subnqn: &str,
        t_id: u16,
    ) -> Result<(), HostError> {
        let mut x = HostExchange::new(d, hostnqn, subnqn, t_id);
        self.auth_send(&x.negotiate()).await?;
        let challenge = self.auth_receive(4096).await?;
        let reply = x.reply(&challenge)?;
        self.auth_send(&reply).await?;
        let s1 = self.auth_receive(4096).await?;
        match x.success1(&s1) {
            Ok(Some(s2)) => self.auth_send(&s2).await,
            Ok(None) => Ok(()),
            Err(HostError::CtrlAuthFailed) => {
                self.auth_send(&x.failure2()).await?;
                Err(HostError::CtrlAuthFailed)
            }
            Err(e) => Err(e),
        }
    }
}
