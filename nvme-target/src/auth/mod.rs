//! In-band authentication, DH-HMAC-CHAP (Base 2.0 8.13.5, TP 8006), controller side: the
//! per-queue state machine behind Authentication Send and Receive.
//!
//! A queue whose host has secrets in the configuration must authenticate: the Connect
//! response sets AUTHREQ.ATR, and until the exchange succeeds every command but
//! Authentication Send/Receive fails with Authentication Required (and the handshake
//! deadline keeps running). The exchange, one transaction:
//!
//! 1. host: AUTH_Negotiate (hashes and DH groups it offers); the controller selects the
//!    host's configured hash and group, or fails (Hash / DH Group Unusable);
//! 2. controller: Challenge (hash, S1, random C1, its DH value);
//! 3. host: Reply (its response to C1, its DH value, and, to authenticate the controller
//!    too, S2 and C2); the controller checks the response;
//! 4. controller: Success1 (with its response to C2 if asked) or Failure1;
//! 5. host, if it asked: Success2, or Failure2.
//!
//! A failure ends the connection once the Failure1 is sent. A new AUTH_Negotiate on an
//! authenticated queue re-authenticates it (the queue stays usable meanwhile).

mod dh;
mod secret;

pub use dh::{DhError, Group, KeyPair};
pub use secret::{
    HashFn, Secret, SecretError, Transcript, augmented, ctrl_response, host_response, same,
};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use nvme_spec::auth::{
    AUTH_ID_DHCHAP, ChallengeHeader, Failure, NegotiateHeader, ProtocolDescriptor, ReplyHeader,
    SC_C_NONE, SECP_NVME, SPSP_DHCHAP, Success1Header, Success2, auth_id, auth_type, dh_group,
    failure,
};
use nvme_spec::cmds::AuthTransfer;
use nvme_spec::{FromBytes, IntoBytes};
use tracing::{info, warn};

use crate::completion::Error;
use crate::config::HostAuthConfig;
use crate::conn::{Conn, Data};
use crate::metrics::AuthFailure;

/// Largest Authentication Receive allocation accepted (the Linux host asks for 4 KiB; the
/// longest message, a Challenge with an ffdhe8192 value, is 1,104 bytes).
const MAX_RECEIVE: usize = 64 * 1024;

/// Where a queue's exchange stands: the message the controller expects or sends next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Waiting for AUTH_Negotiate.
    Negotiate,
    /// The Challenge is to be received.
    Challenge,
    /// Waiting for the Reply.
    Reply,
    /// Success1 is to be received.
    Success1,
    /// Waiting for Success2 (bidirectional).
    Success2,
    /// Failure1 is to be received, with this explanation.
    Failure1(u8),
}

/// One queue's authentication.
#[derive(Debug)]
pub(crate) struct QueueAuth {
    /// The host's secrets; `None` when the queue need not authenticate.
    host: Option<Arc<HostAuthConfig>>,
    hostnqn: String,
    subnqn: String,
    authenticated: bool,
    /// The host sent AUTH_Failure2: it refused the controller.
    refused: bool,
    step: Step,
    t_id: u16,
    sc_c: u8,
    s1: u32,
    c1: Vec<u8>,
    /// The host's challenge and sequence number, when it authenticates the controller.
    c2: Option<(u32, Vec<u8>)>,
    dh: Option<KeyPair>,
    session: Option<Vec<u8>>,
}

impl Default for QueueAuth {
    fn default() -> Self {
        Self::new(None, "", "")
    }
}

impl QueueAuth {
    /// A queue of `hostnqn` to `subnqn`; `host` holds the secrets if it must authenticate.
    pub fn new(host: Option<Arc<HostAuthConfig>>, hostnqn: &str, subnqn: &str) -> Self {
        Self {
            host,
            hostnqn: hostnqn.to_owned(),
            subnqn: subnqn.to_owned(),
            authenticated: false,
            refused: false,
            step: Step::Negotiate,
            t_id: 0,
            sc_c: SC_C_NONE,
            s1: 0,
            c1: Vec::new(),
            c2: None,
            dh: None,
            session: None,
        }
    }

    /// Whether the queue must authenticate (the Connect response says so).
    pub fn required(&self) -> bool {
        self.host.is_some()
    }

    /// Whether the queue still owes its first successful authentication.
    pub fn pending(&self) -> bool {
        self.required() && !self.authenticated
    }

    fn fail(&mut self, why: u8) {
        self.step = Step::Failure1(why);
        self.c2 = None;
        self.dh = None;
        self.session = None;
    }

    /// Handles one message from the host (Authentication Send).
    fn on_send(&mut self, msg: &[u8]) {
        let Some(host) = self.host.clone() else {
            return self.fail(failure::INCORRECT_PROTOCOL);
        };
        let (Some(&ty), Some(&id)) = (msg.first(), msg.get(1)) else {
            return self.fail(failure::INCORRECT_PAYLOAD);
        };
        if ty == auth_type::COMMON && id == auth_id::NEGOTIATE {
            // Always allowed: it starts (or restarts) a transaction.
            return self.negotiate(&host, msg);
        }
        let t_id = msg.get(4..6).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if t_id != Some(self.t_id) {
            return self.fail(failure::INCORRECT_PAYLOAD);
        }
        match (ty, id, self.step) {
            (auth_type::DHCHAP, auth_id::REPLY, Step::Reply) => self.reply(&host, msg),
            (auth_type::DHCHAP, auth_id::SUCCESS2, Step::Success2)
                if Success2::ref_from_bytes(msg).is_ok() =>
            {
                self.authenticated = true;
                self.step = Step::Negotiate;
                info!(host = %self.hostnqn, "host and controller authenticated (DH-HMAC-CHAP)");
            }
            (auth_type::COMMON, auth_id::FAILURE2, _) => {
                // The host did not accept the controller's response.
                warn!(host = %self.hostnqn, "host refused the controller's authentication");
                self.authenticated = false;
                self.refused = true;
                self.fail(failure::FAILED);
            }
            _ => self.fail(failure::INCORRECT_PROTOCOL),
        }
    }

    fn negotiate(&mut self, host: &HostAuthConfig, msg: &[u8]) {
        let h = NegotiateHeader::ref_from_prefix(msg).ok();
        let d = msg
            .get(size_of::<NegotiateHeader>()..)
            .and_then(|r| ProtocolDescriptor::ref_from_prefix(r).ok());
        let (Some((h, _)), Some((d, _))) = (h, d) else {
            return self.fail(failure::INCORRECT_PAYLOAD);
        };
        self.t_id = h.t_id.get();
        self.c2 = None;
        self.dh = None;
        self.session = None;
        if h.sc_c != SC_C_NONE {
            // Secure channel concatenation needs TLS, which Baton does not offer.
            return self.fail(failure::CONCAT_MISMATCH);
        }
        self.sc_c = h.sc_c;
        if h.napd != 1 || d.authid != AUTH_ID_DHCHAP || d.halen > 30 || d.dhlen > 30 {
            return self.fail(failure::INCORRECT_PAYLOAD);
        }
        if !d.hashes().contains(&host.hash.id()) {
            return self.fail(failure::HASH_UNUSABLE);
        }
        let group = host.dh_group.map_or(dh_group::NULL, |g| g.id);
        if !d.dh_groups().contains(&group) {
            return self.fail(failure::DHGROUP_UNUSABLE);
        }
        self.step = Step::Challenge;
    }

    fn reply(&mut self, host: &HostAuthConfig, msg: &[u8]) {
        let Ok((h, rest)) = ReplyHeader::ref_from_prefix(msg) else {
            return self.fail(failure::INCORRECT_PAYLOAD);
        };
        let hl = host.hash.size();
        let dhvlen = usize::from(h.dhvlen.get());
        if usize::from(h.hl) != hl || rest.len() < 2 * hl + dhvlen {
            return self.fail(failure::INCORRECT_PAYLOAD);
        }
        let (rval, rest) = rest.split_at(hl);
        let (cval, rest) = rest.split_at(hl);
        let dhv = &rest[..dhvlen];
        self.session = match (&self.dh, dhvlen) {
            (None, 0) => None,
            (Some(kp), _) => match kp.shared(dhv) {
                Ok(s) => Some(s),
                Err(_) => return self.fail(failure::DHGROUP_UNUSABLE),
            },
            (None, _) => return self.fail(failure::INCORRECT_PAYLOAD),
        };
        let key = host.key.transformed(&self.hostnqn);
        let challenge = augmented(host.hash, self.session.as_deref(), &self.c1);
        let t = Transcript {
            seqnum: self.s1,
            t_id: self.t_id,
            sc_c: self.sc_c,
            hostnqn: &self.hostnqn,
            subnqn: &self.subnqn,
        };
        let expected = host_response(host.hash, &key, &challenge, &t);
        // The challenge is used once: a replayed reply cannot match the next one.
        self.c1.clear();
        if !same(&expected, rval) {
            warn!(host = %self.hostnqn, "DH-HMAC-CHAP: the host's response does not match");
            self.authenticated = false;
            return self.fail(failure::FAILED);
        }
        let s2 = h.seqnum.get();
        if h.cvalid != 0 && s2 != 0 {
            if host.ctrl_key.is_none() {
                // The host wants the controller to prove a secret it was never given.
                warn!(host = %self.hostnqn, "host asks for controller authentication; no controller key configured");
                self.authenticated = false;
                return self.fail(failure::FAILED);
            }
            self.c2 = Some((s2, cval.to_vec()));
        } else {
            self.authenticated = true;
            info!(host = %self.hostnqn, hash = ?host.hash, "host authenticated (DH-HMAC-CHAP)");
        }
        self.step = Step::Success1;
    }

    /// Length of the controller's next message.
    fn next_len(&self) -> usize {
        let Some(host) = &self.host else { return 0 };
        let hl = host.hash.size();
        match self.step {
            Step::Challenge => {
                size_of::<ChallengeHeader>() + hl + host.dh_group.map_or(0, |g| g.value_len())
            }
            Step::Success1 => size_of::<Success1Header>() + hl,
            Step::Failure1(_) => size_of::<Failure>(),
            _ => 0,
        }
    }

    /// Builds the controller's next message (Authentication Receive) into `out`.
    fn on_receive(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        out.clear();
        let host = self.host.clone();
        match (self.step, host) {
            (Step::Challenge, Some(host)) => self.challenge(&host, out),
            (Step::Success1, Some(host)) => {
                let mut h = Success1Header {
                    auth_type: auth_type::DHCHAP,
                    auth_id: auth_id::SUCCESS1,
                    hl: u8::try_from(host.hash.size()).unwrap_or(0),
                    ..Success1Header::default()
                };
                h.t_id.set(self.t_id);
                let rval = match (&self.c2, &host.ctrl_key) {
                    (Some((s2, c2)), Some(k)) => {
                        let t = Transcript {
                            seqnum: *s2,
                            t_id: self.t_id,
                            sc_c: 0,
                            hostnqn: &self.hostnqn,
                            subnqn: &self.subnqn,
                        };
                        let challenge = augmented(host.hash, self.session.as_deref(), c2);
                        Some(ctrl_response(
                            host.hash,
                            &k.transformed(&self.subnqn),
                            &challenge,
                            &t,
                        ))
                    }
                    _ => None,
                };
                h.rvalid = u8::from(rval.is_some());
                out.extend_from_slice(h.as_bytes());
                if let Some(r) = rval {
                    out.extend_from_slice(&r);
                    self.step = Step::Success2;
                } else {
                    self.step = Step::Negotiate;
                }
                self.dh = None;
                self.session = None;
                Ok(())
            }
            (Step::Failure1(why), _) => {
                let mut f = Failure {
                    auth_type: auth_type::COMMON,
                    auth_id: auth_id::FAILURE1,
                    rescode: failure::REASON_FAILED,
                    rescode_exp: why,
                    ..Failure::default()
                };
                f.t_id.set(self.t_id);
                out.extend_from_slice(f.as_bytes());
                Ok(())
            }
            // Nothing to receive now: the host is out of step.
            _ => Err(Error::Sequence),
        }
    }

    fn challenge(&mut self, host: &HostAuthConfig, out: &mut Vec<u8>) -> Result<(), Error> {
        let hl = host.hash.size();
        let mut rnd = [0u8; 4];
        let mut c1 = vec![0u8; hl];
        getrandom::fill(&mut rnd).map_err(|_| Error::Random)?;
        getrandom::fill(&mut c1).map_err(|_| Error::Random)?;
        // Sequence numbers are never 0 (it means "no controller authentication").
        self.s1 = u32::from_le_bytes(rnd).max(1);
        self.dh = match host.dh_group {
            Some(g) => Some(g.keypair().map_err(|_| Error::Random)?),
            None => None,
        };
        let dhv = self.dh.as_ref().map_or(&[][..], |k| &k.public[..]);
        let mut h = ChallengeHeader {
            auth_type: auth_type::DHCHAP,
            auth_id: auth_id::CHALLENGE,
            hl: u8::try_from(hl).unwrap_or(0),
            hashid: host.hash.id(),
            dhgid: host.dh_group.map_or(dh_group::NULL, |g| g.id),
            ..ChallengeHeader::default()
        };
        h.t_id.set(self.t_id);
        h.dhvlen.set(u16::try_from(dhv.len()).unwrap_or(0));
        h.seqnum.set(self.s1);
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&c1);
        out.extend_from_slice(dhv);
        self.c1 = c1;
        self.step = Step::Reply;
        Ok(())
    }
}

/// Checks SECP/SPSP0/SPSP1 and the length of an Authentication Send or Receive.
fn check_transfer(t: &AuthTransfer, len: usize) -> Result<(), Error> {
    if t.secp != SECP_NVME || t.spsp0 != SPSP_DHCHAP || t.spsp1 != SPSP_DHCHAP || t.len == 0 {
        return Err(Error::InvalidField);
    }
    if usize::try_from(t.len).ok() != Some(len) {
        return Err(Error::SglLength);
    }
    Ok(())
}

impl Conn {
    /// Authentication Send: one message of the exchange from the host.
    pub(crate) fn auth_send(&mut self, t: &AuthTransfer, data: Data<'_>) -> Result<(), Error> {
        if self.q.is_none() {
            return Err(Error::Sequence);
        }
        let msg = match data {
            Data::Host(d) => d,
            _ => &[],
        };
        check_transfer(t, msg.len())?;
        if !self.auth.required() {
            // Nothing to authenticate: the queue was never asked to.
            return Err(Error::Sequence);
        }
        let was = self.auth.authenticated;
        self.auth.on_send(msg);
        let m = self.port.metrics();
        if !was && self.auth.authenticated {
            m.auth_successes.fetch_add(1, Ordering::Relaxed);
        }
        if self.auth.refused {
            m.auth_failed(AuthFailure::HostRefused);
            // Nothing follows a Failure2: the exchange, and the queue, are over.
            self.closing = true;
        }
        Ok(())
    }

    /// Authentication Receive: the controller's next message, zero-padded to the
    /// allocation length, left in the scratch buffer; returns its length.
    pub(crate) fn auth_receive(
        &mut self,
        t: &AuthTransfer,
        data: Data<'_>,
    ) -> Result<usize, Error> {
        if self.q.is_none() || !self.auth.required() {
            return Err(Error::Sequence);
        }
        let n = match data {
            Data::ToHost(n) => n,
            _ => 0,
        };
        check_transfer(t, n)?;
        if n > MAX_RECEIVE {
            return Err(Error::InvalidField);
        }
        if n < self.auth.next_len() {
            // Too small for the message: nothing changes, the host may ask again.
            return Err(Error::InvalidField);
        }
        let mut out = std::mem::take(&mut self.scratch);
        let r = self.auth.on_receive(&mut out);
        out.resize(n, 0);
        self.scratch = out;
        r?;
        if let Step::Failure1(why) = self.auth.step {
            self.port.metrics().auth_failed(AuthFailure::from_code(why));
            // The failure is all the host gets: the connection ends once it is sent.
            warn!(host = %self.auth.hostnqn, port = self.port.port_id, "authentication failed: closing the queue");
            self.closing = true;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{Dhchap, HostExchange};
    use proptest::prelude::*;

    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:unit";
    const SUB: &str = "nqn.2026-11.io.baton:unit";

    fn key(fill: u8) -> Secret {
        Secret::parse(&Secret::encode(&[fill; 32], None)).unwrap()
    }

    fn config(group: Option<Group>) -> Arc<HostAuthConfig> {
        Arc::new(HostAuthConfig {
            nqn: HOST.into(),
            key: key(1),
            ctrl_key: None,
            hash: HashFn::Sha256,
            dh_group: group,
        })
    }

    fn receive(a: &mut QueueAuth) -> Vec<u8> {
        let mut out = Vec::new();
        a.on_receive(&mut out).unwrap();
        out
    }

    #[test]
    fn a_whole_exchange_without_sockets() {
        let mut a = QueueAuth::new(Some(config(Group::from_id(dh_group::FFDHE2048))), HOST, SUB);
        assert!(a.pending());
        let d = Dhchap::new(key(1));
        let mut x = HostExchange::new(&d, HOST, SUB, 9);
        a.on_send(&x.negotiate());
        let reply = x.reply(&receive(&mut a)).unwrap();
        a.on_send(&reply);
        assert_eq!(x.success1(&receive(&mut a)).unwrap(), None);
        assert!(!a.pending());
    }

    #[test]
    fn a_degenerate_dh_value_is_refused() {
        let mut a = QueueAuth::new(Some(config(Group::from_id(dh_group::FFDHE2048))), HOST, SUB);
        let d = Dhchap::new(key(1));
        let mut x = HostExchange::new(&d, HOST, SUB, 2);
        a.on_send(&x.negotiate());
        let mut reply = x.reply(&receive(&mut a)).unwrap();
        // The host's public value becomes 1: the shared secret would be known to anyone.
        let dhv = reply.len() - 256;
        reply[dhv..].fill(0);
        reply[dhv + 255] = 1;
        a.on_send(&reply);
        assert_eq!(a.step, Step::Failure1(failure::DHGROUP_UNUSABLE));
        let f = receive(&mut a);
        assert_eq!((f[1], f[7]), (auth_id::FAILURE1, failure::DHGROUP_UNUSABLE));
        assert!(a.pending());
    }

    #[test]
    fn messages_out_of_step_fail() {
        let mut a = QueueAuth::new(Some(config(None)), HOST, SUB);
        let d = Dhchap::new(key(1));
        let x = HostExchange::new(&d, HOST, SUB, 0);
        // Success2 before anything.
        let s2 = Success2 {
            auth_type: auth_type::DHCHAP,
            auth_id: auth_id::SUCCESS2,
            ..Success2::default()
        };
        a.on_send(s2.as_bytes());
        assert_eq!(a.step, Step::Failure1(failure::INCORRECT_PROTOCOL));
        // A new negotiation starts over.
        a.on_send(&x.negotiate());
        assert_eq!(a.step, Step::Challenge);
        assert!(a.pending());
    }

    /// A challenge for transaction 4 from a separate controller state.
    fn receive_challenge_for(x: &mut HostExchange<'_>) -> Vec<u8> {
        let mut b = QueueAuth::new(Some(config(None)), HOST, SUB);
        b.on_send(&x.negotiate());
        let c = receive(&mut b);
        x.reply(&c).unwrap()
    }

    #[test]
    fn a_reply_for_another_transaction_fails() {
        let mut a = QueueAuth::new(Some(config(None)), HOST, SUB);
        let d = Dhchap::new(key(1));
        let x = HostExchange::new(&d, HOST, SUB, 3);
        a.on_send(&x.negotiate());
        receive(&mut a);
        let mut other = HostExchange::new(&d, HOST, SUB, 4);
        let reply = receive_challenge_for(&mut other);
        a.on_send(&reply);
        assert_eq!(a.step, Step::Failure1(failure::INCORRECT_PAYLOAD));
        assert!(a.pending());
    }

    proptest! {
        // Each case may run a 2048-bit exchange: fewer cases than the default keep it quick.
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn hostile_messages_never_authenticate(
            msgs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..320), 0..8),
            negotiate_first in any::<bool>(),
        ) {
            let mut a = QueueAuth::new(Some(config(Group::from_id(dh_group::FFDHE2048))), HOST, SUB);
            let d = Dhchap::new(key(1));
            let x = HostExchange::new(&d, HOST, SUB, 0);
            let mut out = Vec::new();
            if negotiate_first {
                a.on_send(&x.negotiate());
                let _ = a.on_receive(&mut out);
            }
            for m in msgs {
                a.on_send(&m);
                let _ = a.on_receive(&mut out);
                prop_assert!(a.pending());
                prop_assert!(out.len() <= 16 + 64 + 1024);
            }
        }
    }
}
