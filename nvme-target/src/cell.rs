//! `Cell`'s `get`/`set` for state that the queues of one controller share across controller
//! threads (poll groups): [`Word`] is a lock-free atomic for values that fit 64 bits (the
//! ones the I/O path reads or writes per command); [`Locked`] takes a lock and is for the
//! rest, which only admin commands and queue setup touch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A `Copy` value that converts to and from 64 bits without loss.
pub trait AsWord: Copy {
    /// The value as 64 bits.
    fn to_word(self) -> u64;
    /// The value back from [`AsWord::to_word`]'s bits.
    fn from_word(w: u64) -> Self;
}

impl AsWord for u64 {
    fn to_word(self) -> u64 {
        self
    }
    fn from_word(w: u64) -> Self {
        w
    }
}

impl AsWord for u32 {
    fn to_word(self) -> u64 {
        u64::from(self)
    }
    fn from_word(w: u64) -> Self {
        // Only ever stored from a u32.
        u32::try_from(w).unwrap_or(u32::MAX)
    }
}

impl AsWord for u16 {
    fn to_word(self) -> u64 {
        u64::from(self)
    }
    fn from_word(w: u64) -> Self {
        u16::try_from(w).unwrap_or(u16::MAX)
    }
}

impl AsWord for bool {
    fn to_word(self) -> u64 {
        u64::from(self)
    }
    fn from_word(w: u64) -> Self {
        w != 0
    }
}

impl AsWord for Duration {
    /// Nanoseconds, saturating at about 584 years.
    fn to_word(self) -> u64 {
        u64::try_from(self.as_nanos()).unwrap_or(u64::MAX)
    }
    fn from_word(w: u64) -> Self {
        Duration::from_nanos(w)
    }
}

/// The process-wide origin `Instant`s are stored relative to: an hour before its first use
/// (where the clock allows), so instants taken shortly before it keep their value.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    })
}

impl AsWord for Instant {
    /// Nanoseconds since the origin (an instant before it reads as the origin).
    fn to_word(self) -> u64 {
        self.saturating_duration_since(origin()).to_word()
    }
    fn from_word(w: u64) -> Self {
        origin() + Duration::from_word(w)
    }
}

/// A lock-free shared cell (relaxed: each value stands alone, nothing is published through
/// it).
#[derive(Debug)]
pub struct Word<T> {
    bits: AtomicU64,
    _t: std::marker::PhantomData<T>,
}

impl<T: AsWord> Word<T> {
    /// A cell holding `v`.
    pub fn new(v: T) -> Self {
        Self {
            bits: AtomicU64::new(v.to_word()),
            _t: std::marker::PhantomData,
        }
    }

    /// The value.
    pub fn get(&self) -> T {
        T::from_word(self.bits.load(Ordering::Relaxed))
    }

    /// Replaces the value.
    pub fn set(&self, v: T) {
        self.bits.store(v.to_word(), Ordering::Relaxed);
    }
}

/// A shared cell behind a lock, for values read and written off the I/O path.
#[derive(Debug, Default)]
pub struct Locked<T>(Mutex<T>);

impl<T: Copy> Locked<T> {
    /// A cell holding `v`.
    pub fn new(v: T) -> Self {
        Self(Mutex::new(v))
    }

    /// The value.
    pub fn get(&self) -> T {
        *lock(&self.0)
    }

    /// Replaces the value.
    pub fn set(&self, v: T) {
        *lock(&self.0) = v;
    }
}

/// Locks `m`; a poisoned lock's data is still whole, since every holder here only
/// assigns or pushes.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        let w = Word::new(Duration::from_millis(1500));
        assert_eq!(w.get(), Duration::from_millis(1500));
        let now = Instant::now();
        let t = Word::new(now);
        assert_eq!(t.get(), now);
        let b = Word::new(true);
        b.set(false);
        assert!(!b.get());
        let c = Word::new(0xdead_beef_u32);
        assert_eq!(c.get(), 0xdead_beef);
        let l = Locked::new([7u8; 16]);
        l.set([9; 16]);
        assert_eq!(l.get(), [9; 16]);
    }
}
