//! The reservation state of one namespace, shared by every controller, path and thread
//! (Base 8.19), keyed by the 128-bit host identifier from the Connect data.
//!
//! The I/O path looks at one atomic while a namespace has no registrant
//! ([`Reservations::check`]); the state itself is behind a mutex that only reservation
//! commands and the I/O of namespaces with registrants take.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use nvme_spec::cmds::IoCmd;
use nvme_spec::resv::{
    AcquireAction, Cptpl, RegisterAction, ReleaseAction, ResvAcquire, ResvRegister, ResvRelease,
    ResvType, notice,
};

/// Registrants one namespace keeps (SPDK keeps 16): a host past it gets Internal Error.
pub(crate) const MAX_REGISTRANTS: usize = 64;

/// A host identifier (128 bits).
pub(crate) type HostId = [u8; 16];

/// Why a reservation command failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResvError {
    /// Reservation Conflict: a key that does not match, a host that is not registered, or a
    /// reservation someone else holds.
    Conflict,
    /// Invalid Field: a type that is none, or a release of another type.
    InvalidField,
    /// The registrant table is full.
    Full,
}

/// A registered host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Registrant {
    /// Its host identifier.
    pub hostid: HostId,
    /// Its reservation key.
    pub key: u64,
}

/// The reservation held, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    /// Its type.
    pub rtype: ResvType,
    /// The host that holds it (for the All Registrants types every registrant does).
    pub holder: HostId,
}

/// A snapshot for Reservation Report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Report {
    /// Generation.
    pub generation: u32,
    /// The reservation.
    pub held: Option<Held>,
    /// Registrants, in registration order, with whether each holds the reservation.
    pub registrants: Vec<(Registrant, bool)>,
}

/// A notification to the controllers of one host (Reservation Notification log page type).
pub(crate) type Notice = (HostId, u8);

/// The hosts whose registrations a Preempt removed: exactly those its notices tell
/// Registration Preempted (every path of [`Reservations::acquire`] that removes a
/// registrant tells it so, and nothing else does).
pub(crate) fn preempted(notices: &[Notice]) -> Vec<HostId> {
    notices
        .iter()
        .filter(|(_, kind)| *kind == notice::REGISTRATION_PREEMPTED)
        .map(|(h, _)| *h)
        .collect()
}

#[derive(Debug, Default)]
struct State {
    generation: u32,
    registrants: Vec<Registrant>,
    held: Option<Held>,
}

impl State {
    fn key_of(&self, h: &HostId) -> Option<u64> {
        self.registrants
            .iter()
            .find(|r| r.hostid == *h)
            .map(|r| r.key)
    }

    fn holds(&self, h: &HostId) -> bool {
        match self.held {
            Some(held) if held.rtype.all_registrants() => self.key_of(h).is_some(),
            Some(held) => held.holder == *h,
            None => false,
        }
    }

    /// The issuer's key, checked against CRKEY unless IEKEY.
    fn authorize(&self, h: &HostId, crkey: u64, iekey: bool) -> Result<u64, ResvError> {
        match self.key_of(h) {
            Some(k) if iekey || k == crkey => Ok(k),
            _ => Err(ResvError::Conflict),
        }
    }

    /// Notices of `kind` to every registrant but `except`.
    fn tell_others(&self, except: &HostId, kind: u8, out: &mut Vec<Notice>) {
        out.extend(
            self.registrants
                .iter()
                .filter(|r| r.hostid != *except)
                .map(|r| (r.hostid, kind)),
        );
    }

    /// Removes the registration of `h`, releasing what it held.
    fn unregister(&mut self, h: &HostId, out: &mut Vec<Notice>) {
        self.registrants.retain(|r| r.hostid != *h);
        let Some(held) = self.held else { return };
        if held.rtype.all_registrants() {
            // Held as long as anyone is registered.
            if self.registrants.is_empty() {
                self.held = None;
            }
        } else if held.holder == *h {
            self.held = None;
            if held.rtype.registrants_have_access() {
                self.tell_others(h, notice::RESERVATION_RELEASED, out);
            }
        }
    }

    /// Removes every registrant with key `prkey` but the issuer; whether any was.
    fn preempt_key(&mut self, issuer: &HostId, prkey: u64, out: &mut Vec<Notice>) -> bool {
        let gone: Vec<HostId> = self
            .registrants
            .iter()
            .filter(|r| r.key == prkey && r.hostid != *issuer)
            .map(|r| r.hostid)
            .collect();
        self.registrants
            .retain(|r| r.key != prkey || r.hostid == *issuer);
        out.extend(gone.iter().map(|h| (*h, notice::REGISTRATION_PREEMPTED)));
        !gone.is_empty()
    }
}

/// The reservations of one namespace.
#[derive(Debug, Default)]
pub(crate) struct Reservations {
    /// Whether anyone is registered: while false the I/O path looks no further.
    active: AtomicBool,
    state: Mutex<State>,
}

impl Reservations {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is made in full before the guard drops; a panic in between is a bug
        // that poisoning would only turn into a second one.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, st: &State) {
        self.active
            .store(!st.registrants.is_empty(), Ordering::Release);
    }

    /// Whether anyone is registered (one atomic load: the I/O path's whole cost while
    /// nobody is).
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Whether host `h` may run `cmd` on the namespace (Base 8.19.7, figure 418).
    pub fn check(&self, h: &HostId, cmd: &IoCmd) -> Result<(), ResvError> {
        if !self.active.load(Ordering::Acquire) {
            return Ok(());
        }
        let st = self.lock();
        let Some(held) = st.held else { return Ok(()) };
        if st.holds(h) || (held.rtype.registrants_have_access() && st.key_of(h).is_some()) {
            return Ok(());
        }
        if cmd.writes() || (cmd.reads() && held.rtype.exclusive_access()) {
            return Err(ResvError::Conflict);
        }
        Ok(())
    }

    /// Reservation Register.
    pub fn register(
        &self,
        h: &HostId,
        cmd: &ResvRegister,
        crkey: u64,
        nrkey: u64,
    ) -> Result<Vec<Notice>, ResvError> {
        // Persist Through Power Loss is not kept: asking for it is refused.
        if cmd.cptpl == Cptpl::Persist {
            return Err(ResvError::InvalidField);
        }
        let mut st = self.lock();
        let mut out = Vec::new();
        match cmd.action {
            RegisterAction::Register => match st.key_of(h) {
                // Registering again with the same key changes nothing and succeeds.
                Some(k) if k == nrkey => return Ok(out),
                Some(_) => return Err(ResvError::Conflict),
                None if st.registrants.len() >= MAX_REGISTRANTS => return Err(ResvError::Full),
                None => st.registrants.push(Registrant {
                    hostid: *h,
                    key: nrkey,
                }),
            },
            RegisterAction::Unregister => {
                st.authorize(h, crkey, cmd.iekey)?;
                st.unregister(h, &mut out);
            }
            RegisterAction::Replace => {
                st.authorize(h, crkey, cmd.iekey)?;
                if let Some(r) = st.registrants.iter_mut().find(|r| r.hostid == *h) {
                    r.key = nrkey;
                }
            }
        }
        st.generation = st.generation.wrapping_add(1);
        self.publish(&st);
        Ok(out)
    }

    /// Reservation Acquire. Preempt and Abort changes the state as Preempt does; the caller
    /// then aborts the commands of the preempted hosts (those told Registration Preempted,
    /// see [`preempted`]) that wait for data or a buffer. Commands already at the device
    /// complete normally.
    pub fn acquire(
        &self,
        h: &HostId,
        cmd: &ResvAcquire,
        crkey: u64,
        prkey: u64,
    ) -> Result<Vec<Notice>, ResvError> {
        let rtype = cmd.rtype.ok_or(ResvError::InvalidField)?;
        let mut st = self.lock();
        st.authorize(h, crkey, cmd.iekey)?;
        let mut out = Vec::new();
        match cmd.action {
            AcquireAction::Acquire => match st.held {
                None => {
                    st.held = Some(Held { rtype, holder: *h });
                }
                Some(held) if held.rtype == rtype && st.holds(h) => {}
                Some(_) => return Err(ResvError::Conflict),
            },
            AcquireAction::Preempt | AcquireAction::PreemptAbort => {
                match st.held {
                    None => {
                        if !st.preempt_key(h, prkey, &mut out) {
                            return Err(ResvError::Conflict);
                        }
                    }
                    Some(held) if held.rtype.all_registrants() => {
                        if prkey == 0 {
                            // Everyone else goes; the issuer holds the new reservation.
                            let others: Vec<HostId> = st
                                .registrants
                                .iter()
                                .filter(|r| r.hostid != *h)
                                .map(|r| r.hostid)
                                .collect();
                            st.registrants.retain(|r| r.hostid == *h);
                            out.extend(others.iter().map(|o| (*o, notice::REGISTRATION_PREEMPTED)));
                            st.held = Some(Held { rtype, holder: *h });
                        } else if !st.preempt_key(h, prkey, &mut out) {
                            return Err(ResvError::Conflict);
                        }
                    }
                    Some(held) => {
                        let holder_key = st.key_of(&held.holder);
                        if holder_key == Some(prkey) {
                            // The holder is preempted (or the issuer changes its own type).
                            st.preempt_key(h, prkey, &mut out);
                            st.held = Some(Held { rtype, holder: *h });
                        } else if prkey == 0 {
                            return Err(ResvError::InvalidField);
                        } else if !st.preempt_key(h, prkey, &mut out) {
                            return Err(ResvError::Conflict);
                        }
                    }
                }
                st.generation = st.generation.wrapping_add(1);
            }
        }
        self.publish(&st);
        Ok(out)
    }

    /// Reservation Release.
    pub fn release(
        &self,
        h: &HostId,
        cmd: &ResvRelease,
        crkey: u64,
    ) -> Result<Vec<Notice>, ResvError> {
        let mut st = self.lock();
        st.authorize(h, crkey, cmd.iekey)?;
        let mut out = Vec::new();
        match cmd.action {
            ReleaseAction::Release => {
                let Some(held) = st.held else { return Ok(out) };
                // Releasing what one does not hold succeeds and does nothing.
                if !st.holds(h) {
                    return Ok(out);
                }
                if held.rtype.rtype() != cmd.rtype {
                    return Err(ResvError::InvalidField);
                }
                st.held = None;
                if held.rtype.registrants_have_access() {
                    st.tell_others(h, notice::RESERVATION_RELEASED, &mut out);
                }
            }
            ReleaseAction::Clear => {
                st.tell_others(h, notice::RESERVATION_PREEMPTED, &mut out);
                st.registrants.clear();
                st.held = None;
                st.generation = st.generation.wrapping_add(1);
            }
        }
        self.publish(&st);
        Ok(out)
    }

    /// The state, for Reservation Report.
    pub fn report(&self) -> Report {
        let st = self.lock();
        Report {
            generation: st.generation,
            held: st.held,
            registrants: st
                .registrants
                .iter()
                .map(|r| (*r, st.holds(&r.hostid)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_spec::cmds::LbaRange;

    const A: HostId = [0xa; 16];
    const B: HostId = [0xb; 16];
    const C: HostId = [0xc; 16];
    const R: LbaRange = LbaRange { slba: 0, nlb: 1 };

    fn reg(action: RegisterAction) -> ResvRegister {
        ResvRegister {
            action,
            iekey: false,
            cptpl: Cptpl::NoChange,
        }
    }

    fn acq(action: AcquireAction, t: ResvType) -> ResvAcquire {
        ResvAcquire {
            action,
            iekey: false,
            rtype: Some(t),
        }
    }

    fn rel(action: ReleaseAction, t: ResvType) -> ResvRelease {
        ResvRelease {
            action,
            iekey: false,
            rtype: t.rtype(),
        }
    }

    fn access(r: &Reservations, h: &HostId) -> (bool, bool) {
        (
            r.check(h, &IoCmd::Read(R)).is_ok(),
            r.check(h, &IoCmd::Write(R)).is_ok(),
        )
    }

    #[test]
    fn register_replace_unregister_and_keys() {
        let r = Reservations::default();
        assert!(!r.active.load(Ordering::Relaxed));
        r.register(&A, &reg(RegisterAction::Register), 0, 1)
            .unwrap();
        assert!(r.active.load(Ordering::Relaxed));
        // Same key again: success; another key: conflict.
        r.register(&A, &reg(RegisterAction::Register), 0, 1)
            .unwrap();
        assert_eq!(
            r.register(&A, &reg(RegisterAction::Register), 0, 2),
            Err(ResvError::Conflict)
        );
        assert_eq!(
            r.register(&A, &reg(RegisterAction::Replace), 9, 2),
            Err(ResvError::Conflict)
        );
        r.register(&A, &reg(RegisterAction::Replace), 1, 2).unwrap();
        let ie = ResvRegister {
            iekey: true,
            ..reg(RegisterAction::Replace)
        };
        r.register(&A, &ie, 77, 3).unwrap();
        assert_eq!(r.report().registrants[0].0.key, 3);
        assert_eq!(
            r.register(&B, &reg(RegisterAction::Unregister), 0, 0),
            Err(ResvError::Conflict)
        );
        r.register(&A, &reg(RegisterAction::Unregister), 3, 0)
            .unwrap();
        assert!(!r.active.load(Ordering::Relaxed));
        assert_eq!(r.report().generation, 4);
        let persist = ResvRegister {
            cptpl: Cptpl::Persist,
            ..reg(RegisterAction::Register)
        };
        assert_eq!(r.register(&A, &persist, 0, 1), Err(ResvError::InvalidField));
    }

    #[test]
    fn access_rules_per_type() {
        use ResvType::*;
        // (type, non-registrant read/write, registrant read/write)
        let table = [
            (WriteExclusive, (true, false), (true, false)),
            (ExclusiveAccess, (false, false), (false, false)),
            (WriteExclusiveRegistrantsOnly, (true, false), (true, true)),
            (ExclusiveAccessRegistrantsOnly, (false, false), (true, true)),
            (WriteExclusiveAllRegistrants, (true, false), (true, true)),
            (ExclusiveAccessAllRegistrants, (false, false), (true, true)),
        ];
        for (t, other, registrant) in table {
            let r = Reservations::default();
            r.register(&A, &reg(RegisterAction::Register), 0, 1)
                .unwrap();
            r.register(&B, &reg(RegisterAction::Register), 0, 2)
                .unwrap();
            r.acquire(&A, &acq(AcquireAction::Acquire, t), 1, 0)
                .unwrap();
            assert_eq!(access(&r, &A), (true, true), "{t:?} holder");
            assert_eq!(access(&r, &C), other, "{t:?} non-registrant");
            assert_eq!(access(&r, &B), registrant, "{t:?} registrant");
            // The reservation commands themselves are never refused by the check.
            let report = IoCmd::ResvReport(nvme_spec::resv::ResvReport { len: 64, eds: true });
            assert!(r.check(&C, &report).is_ok());
        }
    }

    #[test]
    fn acquire_conflicts_and_release() {
        use ResvType::*;
        let r = Reservations::default();
        // Not registered: conflict.
        assert_eq!(
            r.acquire(&A, &acq(AcquireAction::Acquire, WriteExclusive), 0, 0),
            Err(ResvError::Conflict)
        );
        r.register(&A, &reg(RegisterAction::Register), 0, 1)
            .unwrap();
        r.register(&B, &reg(RegisterAction::Register), 0, 2)
            .unwrap();
        assert_eq!(
            r.acquire(&A, &acq(AcquireAction::Acquire, WriteExclusive), 2, 0),
            Err(ResvError::Conflict)
        );
        r.acquire(&A, &acq(AcquireAction::Acquire, WriteExclusive), 1, 0)
            .unwrap();
        // Again, same type: fine; another type, or another host: conflict.
        r.acquire(&A, &acq(AcquireAction::Acquire, WriteExclusive), 1, 0)
            .unwrap();
        assert!(
            r.acquire(&A, &acq(AcquireAction::Acquire, ExclusiveAccess), 1, 0)
                .is_err()
        );
        assert!(
            r.acquire(&B, &acq(AcquireAction::Acquire, WriteExclusive), 2, 0)
                .is_err()
        );
        // B releasing what it does not hold: success, nothing changes.
        r.release(&B, &rel(ReleaseAction::Release, WriteExclusive), 2)
            .unwrap();
        assert!(r.report().held.is_some());
        assert_eq!(
            r.release(&A, &rel(ReleaseAction::Release, ExclusiveAccess), 1),
            Err(ResvError::InvalidField)
        );
        let n = r
            .release(&A, &rel(ReleaseAction::Release, WriteExclusive), 1)
            .unwrap();
        // Write Exclusive: no Reservation Released notices.
        assert!(n.is_empty());
        assert!(r.report().held.is_none());
        r.acquire(
            &A,
            &acq(AcquireAction::Acquire, WriteExclusiveRegistrantsOnly),
            1,
            0,
        )
        .unwrap();
        let n = r
            .release(
                &A,
                &rel(ReleaseAction::Release, WriteExclusiveRegistrantsOnly),
                1,
            )
            .unwrap();
        assert_eq!(n, vec![(B, notice::RESERVATION_RELEASED)]);
    }

    #[test]
    fn preempt_takes_the_reservation_and_removes_registrants() {
        use ResvType::*;
        let r = Reservations::default();
        r.register(&A, &reg(RegisterAction::Register), 0, 1)
            .unwrap();
        r.register(&B, &reg(RegisterAction::Register), 0, 2)
            .unwrap();
        r.register(&C, &reg(RegisterAction::Register), 0, 3)
            .unwrap();
        r.acquire(&A, &acq(AcquireAction::Acquire, ExclusiveAccess), 1, 0)
            .unwrap();
        let g = r.report().generation;
        // B preempts the holder A: A is unregistered, B holds a reservation of its type.
        let n = r
            .acquire(&B, &acq(AcquireAction::Preempt, WriteExclusive), 2, 1)
            .unwrap();
        assert_eq!(n, vec![(A, notice::REGISTRATION_PREEMPTED)]);
        let rep = r.report();
        assert_eq!(rep.generation, g + 1);
        assert_eq!(
            rep.held,
            Some(Held {
                rtype: WriteExclusive,
                holder: B
            })
        );
        assert_eq!(rep.registrants.len(), 2);
        assert_eq!(access(&r, &A), (true, false));
        // Preempting a key nobody has: conflict; PRKEY 0 with one holder: invalid field.
        assert_eq!(
            r.acquire(&C, &acq(AcquireAction::Preempt, WriteExclusive), 3, 99),
            Err(ResvError::Conflict)
        );
        assert_eq!(
            r.acquire(&C, &acq(AcquireAction::PreemptAbort, WriteExclusive), 3, 0),
            Err(ResvError::InvalidField)
        );
        // C preempts the holder B with another type; its own registration stays.
        let n = r
            .acquire(&C, &acq(AcquireAction::PreemptAbort, ExclusiveAccess), 3, 2)
            .unwrap();
        assert_eq!(n, vec![(B, notice::REGISTRATION_PREEMPTED)]);
        assert_eq!(preempted(&n), vec![B]);
        assert_eq!(r.report().held.map(|h| h.holder), Some(C));
        // A clear tells the others of it, but preempts nobody.
        r.register(&A, &reg(RegisterAction::Register), 0, 1)
            .unwrap();
        let n = r
            .release(&C, &rel(ReleaseAction::Clear, ExclusiveAccess), 3)
            .unwrap();
        assert_eq!(n, vec![(A, notice::RESERVATION_PREEMPTED)]);
        assert!(preempted(&n).is_empty());
    }

    #[test]
    fn all_registrants_types_and_clear() {
        use ResvType::*;
        let r = Reservations::default();
        r.register(&A, &reg(RegisterAction::Register), 0, 1)
            .unwrap();
        r.register(&B, &reg(RegisterAction::Register), 0, 2)
            .unwrap();
        r.acquire(
            &A,
            &acq(AcquireAction::Acquire, ExclusiveAccessAllRegistrants),
            1,
            0,
        )
        .unwrap();
        assert!(r.report().registrants.iter().all(|(_, holds)| *holds));
        // The holder leaving keeps the reservation for the others.
        r.register(&A, &reg(RegisterAction::Unregister), 1, 0)
            .unwrap();
        assert!(r.report().held.is_some());
        assert_eq!(access(&r, &A), (false, false));
        r.register(&A, &reg(RegisterAction::Register), 0, 1)
            .unwrap();
        // PRKEY 0 preempts everyone else.
        let n = r
            .acquire(&A, &acq(AcquireAction::Preempt, WriteExclusive), 1, 0)
            .unwrap();
        assert_eq!(n, vec![(B, notice::REGISTRATION_PREEMPTED)]);
        r.register(&B, &reg(RegisterAction::Register), 0, 2)
            .unwrap();
        let n = r
            .release(&A, &rel(ReleaseAction::Clear, WriteExclusive), 1)
            .unwrap();
        assert_eq!(n, vec![(B, notice::RESERVATION_PREEMPTED)]);
        let rep = r.report();
        assert!(rep.held.is_none() && rep.registrants.is_empty());
        assert!(!r.active.load(Ordering::Relaxed));
    }

    #[test]
    fn the_registrant_table_is_bounded() {
        let r = Reservations::default();
        for i in 0..MAX_REGISTRANTS {
            let mut h = [0u8; 16];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            r.register(&h, &reg(RegisterAction::Register), 0, 1)
                .unwrap();
        }
        assert_eq!(
            r.register(&[0xff; 16], &reg(RegisterAction::Register), 0, 1),
            Err(ResvError::Full)
        );
    }
}
