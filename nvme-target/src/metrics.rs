//! Lock-free counters of the target, read by the appliance's Prometheus exporter.
//!
//! Labels are bounded: counters are indexed by port, subsystem and namespace position,
//! never by host or command.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Command kinds counted per port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    /// Read.
    Read = 0,
    /// Write.
    Write,
    /// Flush.
    Flush,
    /// Write Zeroes.
    WriteZeroes,
    /// Dataset Management.
    Dsm,
    /// Compare (alone or as the first half of a fused Compare and Write).
    Compare,
    /// Verify.
    Verify,
    /// Reservation Register, Acquire, Release and Report.
    Reservation,
    /// Admin commands.
    Admin,
    /// Fabrics commands.
    Fabrics,
    /// Anything else (rejected opcodes).
    Other,
}

impl CommandKind {
    /// Every kind, in index order.
    pub const ALL: [CommandKind; 11] = [
        Self::Read,
        Self::Write,
        Self::Flush,
        Self::WriteZeroes,
        Self::Dsm,
        Self::Compare,
        Self::Verify,
        Self::Reservation,
        Self::Admin,
        Self::Fabrics,
        Self::Other,
    ];

    /// Label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Flush => "flush",
            Self::WriteZeroes => "write_zeroes",
            Self::Dsm => "dsm",
            Self::Compare => "compare",
            Self::Verify => "verify",
            Self::Reservation => "reservation",
            Self::Admin => "admin",
            Self::Fabrics => "fabrics",
            Self::Other => "other",
        }
    }
}

/// Upper bounds of the latency buckets: 1 µs .. ~8.4 s, doubling.
pub const LATENCY_BUCKETS: usize = 24;

/// Bucket `i` holds latencies up to `bucket_bound(i)`.
pub fn bucket_bound(i: usize) -> Duration {
    Duration::from_micros(1u64 << i.min(63))
}

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = if us <= 1 {
            0
        } else {
            (64 - (us - 1).leading_zeros()) as usize
        };
        self.buckets[i.min(LATENCY_BUCKETS)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Per-bucket counts (the last bucket is +Inf), not cumulative.
    pub fn counts(&self) -> [u64; LATENCY_BUCKETS + 1] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }

    /// Sum of observations in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// Counters of one port (one Baton controller).
#[derive(Debug, Default)]
pub struct PortMetrics {
    /// Commands by [`CommandKind`].
    pub commands: [AtomicU64; CommandKind::ALL.len()],
    /// Commands completed with an error status.
    pub command_errors: AtomicU64,
    /// Bytes read by hosts.
    pub bytes_read: AtomicU64,
    /// Bytes written by hosts.
    pub bytes_written: AtomicU64,
    /// Read latency: command received to completion, when its last data byte is handed to
    /// the socket (from a device buffer or, zero-copy, from a file).
    pub read_latency: Histogram,
    /// Write latency: command received (before its R2T) to response queued.
    pub write_latency: Histogram,
    /// I/O-queue commands of every kind received and not yet completed (a read completes
    /// when its last data byte is handed to the socket): the queue depth.
    pub in_flight: AtomicI64,
    /// Of those, commands waiting for host data after (or before) their R2T.
    pub awaiting_data: AtomicI64,
    /// Host controllers torn down because their keep-alive timer expired.
    pub keep_alive_expiries: AtomicU64,
    /// Connected queues (admin and I/O).
    pub queue_pairs: AtomicI64,
    /// PDUs received.
    pub pdus_rx: AtomicU64,
    /// PDUs sent.
    pub pdus_tx: AtomicU64,
    /// Fatal protocol errors (TermReq sent).
    pub protocol_errors: AtomicU64,
    /// Header or data digest mismatches.
    pub digest_errors: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// DH-HMAC-CHAP exchanges that authenticated the host (and re-authentications).
    pub auth_successes: AtomicU64,
    /// DH-HMAC-CHAP exchanges that failed, by [`AuthFailure`].
    pub auth_failures: [AtomicU64; AuthFailure::ALL.len()],
}

/// Why a DH-HMAC-CHAP exchange failed: the reason code of the AUTH_Failure1 Baton sent
/// (Base 2.0 figure 447), or the host refusing the controller (AUTH_Failure2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// Authentication failed: a wrong response, or a controller key the host asked for
    /// and Baton does not have.
    Failed = 0,
    /// Secure channel concatenation asked for (not offered).
    ConcatMismatch,
    /// None of the host's hash functions is the configured one.
    HashUnusable,
    /// None of the host's DH groups is the configured one, or a bad DH value.
    DhGroupUnusable,
    /// A malformed message.
    IncorrectPayload,
    /// A message out of step.
    IncorrectProtocol,
    /// The host did not accept the controller's response.
    HostRefused,
}

impl AuthFailure {
    /// Every reason, in index order.
    pub const ALL: [AuthFailure; 7] = [
        Self::Failed,
        Self::ConcatMismatch,
        Self::HashUnusable,
        Self::DhGroupUnusable,
        Self::IncorrectPayload,
        Self::IncorrectProtocol,
        Self::HostRefused,
    ];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::ConcatMismatch => "concat_mismatch",
            Self::HashUnusable => "hash_unusable",
            Self::DhGroupUnusable => "dhgroup_unusable",
            Self::IncorrectPayload => "incorrect_payload",
            Self::IncorrectProtocol => "incorrect_protocol",
            Self::HostRefused => "host_refused",
        }
    }

    /// The reason for an AUTH_Failure1 reason code explanation.
    pub fn from_code(code: u8) -> Self {
        use nvme_spec::auth::failure;
        match code {
            failure::CONCAT_MISMATCH => Self::ConcatMismatch,
            failure::HASH_UNUSABLE => Self::HashUnusable,
            failure::DHGROUP_UNUSABLE => Self::DhGroupUnusable,
            failure::INCORRECT_PAYLOAD => Self::IncorrectPayload,
            failure::INCORRECT_PROTOCOL => Self::IncorrectProtocol,
            _ => Self::Failed,
        }
    }
}

impl PortMetrics {
    /// Counts a failed authentication.
    pub fn auth_failed(&self, why: AuthFailure) {
        self.auth_failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

impl PortMetrics {
    /// Counts a command.
    pub fn command(&self, kind: CommandKind) {
        self.commands[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of one namespace.
#[derive(Debug, Default)]
pub struct NamespaceMetrics {
    /// Read commands.
    pub reads: AtomicU64,
    /// Write commands.
    pub writes: AtomicU64,
    /// Bytes read.
    pub bytes_read: AtomicU64,
    /// Bytes written.
    pub bytes_written: AtomicU64,
}

/// Counters of one subsystem.
#[derive(Debug, Default)]
pub struct SubsystemMetrics {
    /// Controllers (host associations) connected now.
    pub controllers: AtomicI64,
    /// Controllers refused (unknown host).
    pub refused_hosts: AtomicU64,
}

/// All counters of a target.
#[derive(Debug)]
pub struct TargetMetrics {
    /// Per port, in configuration order; the discovery controller's counters are last.
    pub ports: Vec<PortMetrics>,
    /// Per subsystem, in configuration order.
    pub subsystems: Vec<SubsystemMetrics>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_powers_of_two() {
        let h = Histogram::default();
        h.observe(Duration::from_nanos(500));
        h.observe(Duration::from_micros(3));
        h.observe(Duration::from_micros(4));
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_secs(100));
        let c = h.counts();
        assert_eq!(c[0], 1);
        assert_eq!(c[2], 2, "3 and 4 us fall in the <=4us bucket");
        assert_eq!(c[3], 1, "5 us falls in the <=8us bucket");
        assert_eq!(c[LATENCY_BUCKETS], 1);
        assert!(h.sum_seconds() > 100.0);
        assert_eq!(bucket_bound(3), Duration::from_micros(8));
    }

    #[test]
    fn auth_failure_reasons_index_their_counters() {
        use nvme_spec::auth::failure;
        for (i, r) in AuthFailure::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        assert_eq!(
            AuthFailure::from_code(failure::HASH_UNUSABLE),
            AuthFailure::HashUnusable
        );
        assert_eq!(AuthFailure::from_code(failure::FAILED), AuthFailure::Failed);
        let m = PortMetrics::default();
        m.auth_failed(AuthFailure::HostRefused);
        assert_eq!(m.auth_failures[6].load(Ordering::Relaxed), 1);
    }
}
