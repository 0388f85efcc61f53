//! The block service's part of the status and of the Prometheus exposition.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use nvme_target::CommandKind;
use nvme_target::metrics::{Histogram, LATENCY_BUCKETS, bucket_bound};

use super::exporter::{Families, HistogramSample, labels};
use super::status::{ControllerStatus, HostStatus, SubsystemStatus};
use crate::block::BlockService;

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn gauge(c: &AtomicI64) -> i64 {
    c.load(Ordering::Relaxed)
}

/// Controller threads with their NVMe/TCP port.
pub(super) fn controllers(block: &BlockService) -> Vec<ControllerStatus> {
    let m = block.target().metrics();
    block
        .ports()
        .iter()
        .enumerate()
        .map(|(i, addr)| ControllerStatus {
            index: i,
            nvme_tcp: addr.to_string(),
            queue_pairs: u64::try_from(gauge(&m.ports[i].queue_pairs)).unwrap_or(0),
            in_flight: u64::try_from(gauge(&m.ports[i].in_flight)).unwrap_or(0),
            ..ControllerStatus::default()
        })
        .collect()
}

/// Subsystems with their namespaces (as changed at run time) and connected hosts.
pub(super) fn subsystems(block: &BlockService) -> Vec<SubsystemStatus> {
    let st = block.target().status();
    let ports = block.ports();
    let volumes = block.namespaces();
    st.subsystems
        .into_iter()
        .map(|s| SubsystemStatus {
            namespaces: volumes
                .iter()
                .find(|(nqn, _)| *nqn == s.nqn)
                .map(|(_, list)| list.iter().map(|n| (n.nsid, n.volume.clone())).collect())
                .unwrap_or_default(),
            nqn: s.nqn,
            hosts: s
                .controllers
                .into_iter()
                .map(|c| {
                    let controller = usize::from(c.port_id.saturating_sub(1));
                    HostStatus {
                        hostnqn: c.hostnqn,
                        cntlid: c.cntlid,
                        controller,
                        queues: 1 + usize::from(c.io_queues),
                        path: ports
                            .get(controller)
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                        host_address: c.host_address.map(|a| a.to_string()).unwrap_or_default(),
                    }
                })
                .collect(),
        })
        .collect()
}

fn histogram(h: &Histogram) -> HistogramSample {
    let counts = h.counts();
    let buckets = (0..LATENCY_BUCKETS)
        .map(|i| (bucket_bound(i).as_secs_f64(), counts[i]))
        .collect();
    HistogramSample {
        sum: h.sum_seconds(),
        count: counts.iter().sum(),
        buckets,
    }
}

/// Every block-service metric family.
pub(super) fn encode(block: &BlockService, f: &mut Families<'_>) -> Result<(), std::fmt::Error> {
    let target = block.target();
    let m = target.metrics();
    let n = block.ports().len();
    let ports = || m.ports.iter().take(n).enumerate();
    let ctl = |i: usize| labels([("controller", i.to_string())]);
    f.counter(
        "nvme_commands",
        "NVMe commands received, by controller and kind.",
        ports().flat_map(|(i, p)| {
            CommandKind::ALL.iter().map(move |k| {
                (
                    labels([("controller", i.to_string()), ("kind", k.name().to_owned())]),
                    get(&p.commands[*k as usize]),
                )
            })
        }),
    )?;
    f.counter(
        "nvme_command_errors",
        "NVMe commands completed with an error status.",
        ports().map(|(i, p)| (ctl(i), get(&p.command_errors))),
    )?;
    f.counter(
        "nvme_bytes",
        "Bytes moved by NVMe/TCP hosts, by controller and direction.",
        ports().flat_map(|(i, p)| {
            [("read", &p.bytes_read), ("write", &p.bytes_written)]
                .into_iter()
                .map(move |(d, c)| {
                    (
                        labels([("controller", i.to_string()), ("direction", d.to_owned())]),
                        get(c),
                    )
                })
        }),
    )?;
    f.histogram(
        "nvme_latency_seconds",
        "Read and write command latency inside the controller.",
        ports().flat_map(|(i, p)| {
            [("read", &p.read_latency), ("write", &p.write_latency)]
                .into_iter()
                .map(move |(op, h)| {
                    (
                        labels([("controller", i.to_string()), ("op", op.to_owned())]),
                        histogram(h),
                    )
                })
        }),
    )?;
    f.gauge(
        "nvme_in_flight",
        "I/O commands of every kind received and not yet completed (queue depth).",
        ports().map(|(i, p)| (ctl(i), gauge(&p.in_flight))),
    )?;
    f.gauge(
        "nvme_awaiting_data",
        "In-flight write commands waiting for host data (R2T).",
        ports().map(|(i, p)| (ctl(i), gauge(&p.awaiting_data))),
    )?;
    f.gauge(
        "nvme_queue_pairs",
        "Connected NVMe/TCP queues (admin and I/O).",
        ports().map(|(i, p)| (ctl(i), gauge(&p.queue_pairs))),
    )?;
    type Pick = fn(&nvme_target::metrics::PortMetrics) -> &AtomicU64;
    let per_port: [(&str, &str, Pick); 6] = [
        (
            "nvme_keep_alive_expiries",
            "Host controllers torn down because their keep-alive timer expired.",
            |p| &p.keep_alive_expiries,
        ),
        ("nvme_connections", "NVMe/TCP connections accepted.", |p| {
            &p.connections
        }),
        ("nvme_pdus_received", "NVMe/TCP PDUs received.", |p| {
            &p.pdus_rx
        }),
        ("nvme_pdus_sent", "NVMe/TCP PDUs sent.", |p| &p.pdus_tx),
        (
            "nvme_protocol_errors",
            "Fatal NVMe/TCP protocol errors (connection terminated).",
            |p| &p.protocol_errors,
        ),
        (
            "nvme_digest_errors",
            "Header or data digest mismatches.",
            |p| &p.digest_errors,
        ),
    ];
    for (name, help, pick) in per_port {
        f.counter(name, help, ports().map(|(i, p)| (ctl(i), get(pick(p)))))?;
    }
    f.counter(
        "nvme_auth_successes",
        "DH-HMAC-CHAP exchanges that authenticated a host (re-authentications too).",
        ports().map(|(i, p)| (ctl(i), get(&p.auth_successes))),
    )?;
    f.counter(
        "nvme_auth_failures",
        "DH-HMAC-CHAP exchanges that failed, by controller and reason.",
        ports().flat_map(|(i, p)| {
            nvme_target::metrics::AuthFailure::ALL.iter().map(move |r| {
                (
                    labels([
                        ("controller", i.to_string()),
                        ("reason", r.name().to_owned()),
                    ]),
                    get(&p.auth_failures[*r as usize]),
                )
            })
        }),
    )?;
    // The subsystems there are now (added and removed at run time too).
    let status = target.status();
    let nqns: Vec<String> = status.subsystems.iter().map(|s| s.nqn.clone()).collect();
    let subs = || {
        nqns.iter()
            .filter_map(|nqn| Some((nqn, target.subsystem_metrics(nqn)?)))
    };
    f.gauge(
        "subsystem_connected_hosts",
        "Host controllers connected to a subsystem.",
        subs().map(|(nqn, sm)| (labels([("subsystem", nqn.clone())]), gauge(&sm.controllers))),
    )?;
    // Host paths: host controllers of a subsystem, by the Baton controller (port) they
    // connected through.
    f.gauge(
        "subsystem_host_paths",
        "Host controllers (paths) connected to a subsystem through a Baton controller.",
        status.subsystems.iter().flat_map(|st| {
            (0..n).map(move |i| {
                let paths = st
                    .controllers
                    .iter()
                    .filter(|c| usize::from(c.port_id.saturating_sub(1)) == i)
                    .count();
                (
                    labels([("subsystem", st.nqn.clone()), ("controller", i.to_string())]),
                    i64::try_from(paths).unwrap_or(i64::MAX),
                )
            })
        }),
    )?;
    f.counter(
        "subsystem_refused_hosts",
        "Connects refused because the host is not allowed.",
        subs().map(|(nqn, sm)| (labels([("subsystem", nqn.clone())]), get(&sm.refused_hosts))),
    )?;
    // The namespaces there are now (added and removed at run time too).
    let live: Vec<(String, Vec<std::sync::Arc<nvme_target::NsState>>)> = nqns
        .iter()
        .map(|nqn| (nqn.clone(), target.namespaces_of(nqn).unwrap_or_default()))
        .collect();
    let namespaces = || {
        live.iter().flat_map(|(nqn, list)| {
            list.iter()
                .map(move |ns| (nqn.clone(), ns.cfg.nsid.to_string(), &ns.metrics))
        })
    };
    type NsPick = fn(&nvme_target::metrics::NamespaceMetrics) -> [&AtomicU64; 2];
    let families: [(&str, &str, NsPick); 2] = [
        (
            "namespace_bytes",
            "Bytes read and written through a namespace.",
            |n| [&n.bytes_read, &n.bytes_written],
        ),
        (
            "namespace_ops",
            "Read and write commands through a namespace.",
            |n| [&n.reads, &n.writes],
        ),
    ];
    for (name, help, pick) in families {
        f.counter(
            name,
            help,
            namespaces().flat_map(|(nqn, nsid, nm)| {
                ["read", "write"]
                    .into_iter()
                    .zip(pick(nm))
                    .map(move |(op, c)| {
                        (
                            labels([
                                ("subsystem", nqn.clone()),
                                ("nsid", nsid.clone()),
                                ("op", op.to_owned()),
                            ]),
                            get(c),
                        )
                    })
            }),
        )?;
    }
    Ok(())
}
