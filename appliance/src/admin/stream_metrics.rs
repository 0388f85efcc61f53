//! The stream service's part of the Prometheus exposition.

use std::sync::atomic::{AtomicU64, Ordering};

use super::exporter::{Families, gauge_value, labels};
use stream::{ControllerStreamMetrics, RefusalReason, StreamService};

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Every stream metric family.
pub(super) fn encode(svc: &StreamService, f: &mut Families<'_>) -> Result<(), std::fmt::Error> {
    let m = svc.metrics();
    f.gauge(
        "stream_sessions_active",
        "Stream sessions admitted and not ended (opened minus ended).",
        [(labels([]), m.sessions_active.load(Ordering::Relaxed))],
    )?;
    let summary = svc.session_summary();
    f.gauge(
        "stream_sessions",
        "Sessions in the session table, by phase.",
        [
            ("opened", summary.opened),
            ("attached", summary.attached),
            ("streaming", summary.streaming),
        ]
        .map(|(phase, n)| (labels([("phase", phase.to_owned())]), gauge_value(n))),
    )?;
    f.gauge(
        "stream_session_max_idle_seconds",
        "Longest time a session in the table has gone without delivering a block.",
        [(labels([]), summary.max_idle.as_secs_f64())],
    )?;
    f.counter(
        "stream_sessions_refused",
        "Stream sessions refused, by reason (capacity: every controller at its send budget).",
        RefusalReason::ALL.map(|r| {
            (
                labels([("reason", r.name().to_owned())]),
                get(&m.sessions_refused[r as usize]),
            )
        }),
    )?;
    f.gauge(
        "stream_worker_up",
        "1 while a controller's stream worker runs and takes sessions.",
        svc.workers_up()
            .into_iter()
            .enumerate()
            .map(|(i, up)| (labels([("controller", i.to_string())]), i64::from(up))),
    )?;
    for (name, help, c) in [
        (
            "stream_sessions_opened",
            "Stream sessions opened.",
            &m.sessions_opened,
        ),
        (
            "stream_sessions_failed",
            "Stream sessions that ended before delivering everything.",
            &m.sessions_failed,
        ),
        (
            "stream_sessions_completed",
            "Stream sessions that delivered everything.",
            &m.sessions_completed,
        ),
        (
            "stream_deadline_misses",
            "Blocks sent more than one block time after their pacing deadline.",
            &m.deadline_misses,
        ),
        (
            "stream_send_stalls",
            "Batons that found their block not read ahead.",
            &m.send_stalls,
        ),
        (
            "stream_replans",
            "Sessions re-planned after a controller failed or stalled.",
            &m.replans,
        ),
        (
            "stream_read_errors",
            "Sessions ended by a backplane read error (the client got an error frame or a short body).",
            &m.read_errors,
        ),
        (
            "stream_send_timeouts",
            "Sessions dropped because the client took no data for the send timeout.",
            &m.send_timeouts,
        ),
        (
            "stream_attach_timeouts",
            "Opened sessions freed because no data channel attached within the handshake timeout.",
            &m.attach_timeouts,
        ),
        (
            "stream_clients_gone",
            "Sessions ended because the client closed its connection early.",
            &m.clients_gone,
        ),
    ] {
        f.counter(name, help, [(labels([]), get(c))])?;
    }
    let per = |pick: fn(&ControllerStreamMetrics) -> &AtomicU64| {
        m.controllers
            .iter()
            .enumerate()
            .map(move |(i, c)| (labels([("controller", i.to_string())]), get(pick(c))))
    };
    f.counter(
        "stream_blocks_sent",
        "Blocks a controller sent straight to clients.",
        per(|c| &c.blocks_sent),
    )?;
    f.counter(
        "stream_bytes",
        "Payload bytes a controller sent to clients.",
        per(|c| &c.bytes),
    )?;
    f.counter(
        "stream_data_requests",
        "DataRequest messages a controller handled.",
        per(|c| &c.data_requests),
    )?;
    f.counter(
        "stream_syncs",
        "Sync messages (batons) a controller handled.",
        per(|c| &c.syncs),
    )?;
    f.gauge(
        "content_store_used_bytes",
        "Bytes of the content store's data area in use.",
        [(labels([]), gauge_value(get(&m.store_used)))],
    )?;
    f.gauge(
        "content_store_capacity_bytes",
        "Capacity of the content store's data area.",
        [(labels([]), gauge_value(get(&m.store_capacity)))],
    )?;
    Ok(())
}
