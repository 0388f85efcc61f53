//! The appliance's status, as served at `/api/v1/status` and printed by `baton status`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Everything `baton status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Appliance version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Controller threads.
    pub controllers: Vec<ControllerStatus>,
    /// NVMe subsystems with their connected hosts.
    pub subsystems: Vec<SubsystemStatus>,
    /// ANA groups: each one's state on each controller.
    #[serde(default)]
    pub ana: Vec<super::ana::AnaStatus>,
    /// Volumes.
    pub volumes: Vec<VolumeStatus>,
    /// Backplane devices.
    pub devices: Vec<DeviceStatus>,
    /// Active stream sessions.
    pub sessions: Vec<SessionStatus>,
    /// The stream service, when configured.
    #[serde(default)]
    pub stream: Option<StreamStatus>,
}

/// A controller reactor's liveness.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Running and turning.
    #[default]
    Up,
    /// Running but its reactor has not turned for [`STUCK_AFTER_MS`].
    Stuck,
    /// Its thread has stopped.
    Stopped,
}

/// A reactor whose heartbeat is older than this is reported stuck (eight missed beats).
pub const STUCK_AFTER_MS: u64 = 2000;

/// A stream worker's state.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// No stream service is configured.
    #[default]
    None,
    /// Running and taking sessions.
    Up,
    /// Stopped (failure injection, or it could not open the content volume).
    Stopped,
}

/// The stream service: its ports and its content store.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StreamStatus {
    /// Control port address.
    pub control: String,
    /// HTTP face address, if enabled.
    pub http: Option<String>,
    /// Data port of each controller, by controller index.
    pub data_ports: Vec<u16>,
    /// Content store bytes in use.
    pub store_used: u64,
    /// Content store data capacity.
    pub store_capacity: u64,
    /// Content store bytes free.
    pub store_free: u64,
}

/// One controller thread.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ControllerStatus {
    /// Index.
    pub index: usize,
    /// NVMe/TCP listen address.
    pub nvme_tcp: String,
    /// Connected NVMe/TCP queue pairs.
    pub queue_pairs: u64,
    /// Commands in flight.
    pub in_flight: u64,
    /// Milliseconds since its reactor last turned.
    #[serde(default)]
    pub heartbeat_age_ms: u64,
    /// Reactor liveness.
    #[serde(default)]
    pub reactor: Liveness,
    /// Its stream worker.
    #[serde(default)]
    pub stream_worker: WorkerState,
}

/// One NVMe subsystem.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SubsystemStatus {
    /// NQN.
    pub nqn: String,
    /// Namespaces: `(nsid, volume)`.
    pub namespaces: Vec<(u32, String)>,
    /// Connected host controllers.
    pub hosts: Vec<HostStatus>,
}

/// One connected host controller (a CNTLID).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HostStatus {
    /// Host NQN.
    pub hostnqn: String,
    /// Controller ID.
    pub cntlid: u16,
    /// Baton controller (port) it is connected through.
    pub controller: usize,
    /// Queues (admin + I/O).
    pub queues: usize,
    /// The Baton controller's NVMe/TCP address this path reaches.
    #[serde(default)]
    pub path: String,
    /// The host's address (its admin queue's TCP peer).
    #[serde(default)]
    pub host_address: String,
}

/// One volume.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VolumeStatus {
    /// Name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Logical block size.
    pub block_size: u32,
    /// Stripe unit.
    pub stripe_size: u64,
    /// Member devices.
    pub devices: Vec<String>,
    /// What uses it: `nqn/nsid`, `content store`, or empty.
    pub role: String,
}

/// One device.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DeviceStatus {
    /// Name.
    pub name: String,
    /// Backend kind.
    pub kind: String,
    /// Bytes.
    pub size: u64,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Failed operations.
    pub errors: u64,
}

/// One stream session.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SessionStatus {
    /// Session ID.
    pub id: u64,
    /// Content name.
    pub content: String,
    /// Controllers in the plan.
    pub controllers: Vec<usize>,
    /// Blocks sent so far.
    pub blocks_sent: u64,
    /// Blocks in total.
    pub blocks: u64,
}

impl Status {
    /// Human-readable tables.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_table(&mut out);
        out
    }

    fn write_table(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "Baton {}  up {}s", self.version, self.uptime_secs)?;
        writeln!(
            out,
            "\nCONTROLLER  NVME/TCP               QPAIRS  IN-FLIGHT  REACTOR          STREAM   DATA PORT"
        )?;
        for c in &self.controllers {
            let reactor = format!("{} ({}ms)", liveness(c.reactor), c.heartbeat_age_ms);
            let port = self
                .stream
                .as_ref()
                .and_then(|s| s.data_ports.get(c.index))
                .map_or_else(|| "-".to_owned(), ToString::to_string);
            writeln!(
                out,
                "{:<10}  {:<21}  {:>6}  {:>9}  {:<15}  {:<7}  {}",
                c.index,
                c.nvme_tcp,
                c.queue_pairs,
                c.in_flight,
                reactor,
                worker(c.stream_worker),
                port
            )?;
        }
        writeln!(
            out,
            "\nSUBSYSTEM / HOST                                      CNTLID  CTRL  QUEUES  PATH <- HOST ADDRESS"
        )?;
        for s in &self.subsystems {
            let ns: Vec<String> = s
                .namespaces
                .iter()
                .map(|(id, v)| format!("{id}:{v}"))
                .collect();
            writeln!(out, "{}  [ns {}]", s.nqn, ns.join(", "))?;
            if s.hosts.is_empty() {
                writeln!(out, "  (no hosts connected)")?;
            }
            for h in &s.hosts {
                writeln!(
                    out,
                    "  {:<50}  {:>6}  {:>4}  {:>6}  {} <- {}",
                    h.hostnqn, h.cntlid, h.controller, h.queues, h.path, h.host_address
                )?;
            }
        }
        if !self.ana.is_empty() {
            writeln!(
                out,
                "\nANA GROUP  CTRL  PORT  STATE            CHGCNT  NAMESPACES"
            )?;
            for a in &self.ana {
                writeln!(
                    out,
                    "{:<9}  {:>4}  {:>4}  {:<15}  {:>6}  {}",
                    a.group,
                    a.controller,
                    a.port,
                    a.state,
                    a.chgcnt,
                    a.namespaces.join(", ")
                )?;
            }
        }
        writeln!(
            out,
            "\nVOLUME          SIZE        BLOCK  STRIPE      DEVICES          ROLE"
        )?;
        for v in &self.volumes {
            writeln!(
                out,
                "{:<14}  {:<10}  {:>5}  {:<10}  {:<15}  {}",
                v.name,
                crate::config::ByteSize(v.size).to_string(),
                v.block_size,
                crate::config::ByteSize(v.stripe_size).to_string(),
                v.devices.join(","),
                v.role
            )?;
        }
        writeln!(
            out,
            "\nDEVICE          KIND       SIZE        READS       WRITES      ERRORS"
        )?;
        for d in &self.devices {
            writeln!(
                out,
                "{:<14}  {:<9}  {:<10}  {:>10}  {:>10}  {:>10}",
                d.name,
                d.kind,
                crate::config::ByteSize(d.size).to_string(),
                d.reads,
                d.writes,
                d.errors
            )?;
        }
        match &self.stream {
            None => writeln!(out, "\nSTREAM SERVICE  (not configured)")?,
            Some(s) => {
                let size = |b: u64| crate::config::ByteSize(b).to_string();
                writeln!(
                    out,
                    "\nSTREAM SERVICE  control {}  http {}  data ports {}",
                    s.control,
                    s.http.as_deref().unwrap_or("-"),
                    s.data_ports
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                )?;
                writeln!(
                    out,
                    "CONTENT STORE   used {}  free {}  of {}",
                    size(s.store_used),
                    size(s.store_free),
                    size(s.store_capacity)
                )?;
            }
        }
        writeln!(
            out,
            "\nSESSION     CONTENT                 CONTROLLERS   PROGRESS"
        )?;
        if self.sessions.is_empty() {
            writeln!(out, "(no active sessions)")?;
        }
        for s in &self.sessions {
            let ctrls: Vec<String> = s.controllers.iter().map(ToString::to_string).collect();
            writeln!(
                out,
                "{:<10}  {:<22}  {:<12}  {}/{}",
                s.id,
                s.content,
                ctrls.join(","),
                s.blocks_sent,
                s.blocks
            )?;
        }
        Ok(())
    }
}

fn liveness(l: Liveness) -> &'static str {
    match l {
        Liveness::Up => "up",
        Liveness::Stuck => "STUCK",
        Liveness::Stopped => "STOPPED",
    }
}

fn worker(w: WorkerState) -> &'static str {
    match w {
        WorkerState::None => "-",
        WorkerState::Up => "up",
        WorkerState::Stopped => "STOPPED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_every_section() {
        let status = Status {
            version: "0.1.0".into(),
            uptime_secs: 5,
            controllers: vec![ControllerStatus {
                index: 0,
                nvme_tcp: "127.0.0.1:4420".into(),
                queue_pairs: 3,
                in_flight: 1,
                heartbeat_age_ms: 2500,
                reactor: Liveness::Stuck,
                stream_worker: WorkerState::Stopped,
            }],
            subsystems: vec![SubsystemStatus {
                nqn: "nqn.x:y".into(),
                namespaces: vec![(1, "vol0".into())],
                hosts: vec![HostStatus {
                    hostnqn: "nqn.host".into(),
                    cntlid: 7,
                    controller: 0,
                    queues: 3,
                    path: "127.0.0.1:4420".into(),
                    host_address: "127.0.0.1:50123".into(),
                }],
            }],
            ana: vec![super::super::ana::AnaStatus {
                controller: 1,
                port: 2,
                group: 1,
                state: "inaccessible".into(),
                chgcnt: 4,
                namespaces: vec!["nqn.x:y/1".into()],
            }],
            volumes: vec![VolumeStatus {
                name: "vol0".into(),
                size: 1 << 30,
                block_size: 512,
                stripe_size: 128 << 10,
                devices: vec!["d0".into()],
                role: "nqn.x:y/1".into(),
            }],
            devices: vec![DeviceStatus {
                name: "d0".into(),
                kind: "ram".into(),
                size: 1 << 30,
                ..Default::default()
            }],
            sessions: vec![],
            stream: Some(StreamStatus {
                control: "127.0.0.1:9000".into(),
                http: None,
                data_ports: vec![9100],
                store_used: 1 << 20,
                store_capacity: 4 << 20,
                store_free: 3 << 20,
            }),
        };
        let table = status.to_table();
        for needle in [
            "127.0.0.1:4420",
            "nqn.host",
            "1GiB",
            "128KiB",
            "d0",
            "no active",
            "STUCK (2500ms)",
            "STOPPED",
            "9100",
            "127.0.0.1:9000",
            "free 3MiB",
            "inaccessible",
            "ANA GROUP",
        ] {
            assert!(table.contains(needle), "{needle} missing in\n{table}");
        }
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
    }
}
