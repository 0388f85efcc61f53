//! What the target serves: subsystems, namespaces, ports and protocol limits.

use std::net::SocketAddr;
use std::ops::RangeInclusive;

/// The target's configuration.
#[derive(Clone, Debug)]
pub struct TargetConfig {
    /// NVM subsystems.
    pub subsystems: Vec<SubsystemConfig>,
    /// Ports: one per Baton controller thread; every subsystem is reachable on every port.
    pub ports: Vec<PortConfig>,
    /// Address of the discovery controller, if one runs.
    pub discovery: Option<SocketAddr>,
    /// Other discovery services the discovery log refers hosts to (referral entries).
    pub referrals: Vec<SocketAddr>,
    /// Largest H2CData payload accepted (MAXH2CDATA).
    pub max_h2c_data: u32,
    /// Largest transfer of one command in bytes (MDTS); a power of two times 4 KiB.
    pub max_transfer: u32,
    /// Largest in-capsule data on I/O queues (IOCCSZ*16 - 64).
    pub in_capsule_data: u32,
    /// Queue entries (MQES + 1, MAXCMD).
    pub max_queue_entries: u16,
    /// I/O queues granted per controller.
    pub max_io_queues: u16,
    /// Writes (or other commands with host data) fetched by R2T at once per queue.
    pub max_r2t_in_flight: u16,
    /// Bytes of host data one connection may have requested by R2T and not yet received
    /// (the buffers of its R2T slots together). Commands past it wait for earlier ones; at
    /// least one command of [`TargetConfig::max_transfer`] always fits (see
    /// [`TargetConfig::r2t_buffer_limit`]).
    pub max_r2t_buffer: usize,
    /// Connection limit and timeouts of every port and the discovery controller: ICReq and
    /// Connect within the handshake timeout, the idle timeout for connections without
    /// keep-alive (or owing R2T data), the send timeout for hosts that stop reading (also the
    /// deadline of the drain at shutdown).
    pub limits: listener::Limits,
    /// Hosts that authenticate with DH-HMAC-CHAP (to every NVM subsystem; the discovery
    /// controller does not ask).
    pub hosts: Vec<HostAuthConfig>,
    /// ANA group states at start that are not optimized (every other group is optimized on
    /// every port).
    pub ana: Vec<crate::ana::AnaSetting>,
}

/// A host's DH-HMAC-CHAP secrets and the parameters the controller selects for it.
#[derive(Clone, Debug)]
pub struct HostAuthConfig {
    /// Host NQN.
    pub nqn: String,
    /// The host's secret: the host proves it knows it.
    pub key: crate::auth::Secret,
    /// The controller's secret, for hosts that ask the controller to authenticate too.
    pub ctrl_key: Option<crate::auth::Secret>,
    /// The hash the controller selects; a host that does not offer it is refused.
    pub hash: crate::auth::HashFn,
    /// The DH group the controller selects (`None`: no DH exchange); a host that does not
    /// offer it is refused.
    pub dh_group: Option<crate::auth::Group>,
}

impl TargetConfig {
    /// A configuration with the usual limits and nothing to serve yet.
    pub fn new(subsystems: Vec<SubsystemConfig>, ports: Vec<PortConfig>) -> Self {
        Self {
            subsystems,
            ports,
            discovery: None,
            referrals: Vec::new(),
            max_h2c_data: 128 * 1024,
            max_transfer: 1024 * 1024,
            in_capsule_data: 8192,
            max_queue_entries: 128,
            max_io_queues: 8,
            max_r2t_in_flight: 16,
            max_r2t_buffer: 4 << 20,
            limits: listener::Limits::default(),
            hosts: Vec::new(),
            ana: Vec::new(),
        }
    }

    /// Bytes of R2T data one connection may have outstanding: [`TargetConfig::max_r2t_buffer`],
    /// raised to one maximum transfer so every valid write can be served.
    pub fn r2t_buffer_limit(&self) -> usize {
        self.max_r2t_buffer.max(self.max_transfer as usize)
    }

    /// MDTS as reported in Identify Controller (units of 4 KiB, log2).
    pub fn mdts(&self) -> u8 {
        let pages = (self.max_transfer / 4096).max(1);
        u8::try_from(pages.ilog2()).unwrap_or(0)
    }
}

/// A port the target listens on.
#[derive(Clone, Debug)]
pub struct PortConfig {
    /// Port ID (PORTID in the discovery log), unique.
    pub id: u16,
    /// Address the port listens on and advertises.
    pub addr: SocketAddr,
}

/// An NVM subsystem.
#[derive(Clone, Debug)]
pub struct SubsystemConfig {
    /// Subsystem NQN.
    pub nqn: String,
    /// Serial number (up to 20 ASCII characters).
    pub serial: String,
    /// Model number (up to 40 ASCII characters).
    pub model: String,
    /// Accept any host NQN.
    pub allow_any_host: bool,
    /// Host NQNs accepted when `allow_any_host` is false.
    pub allowed_hosts: Vec<String>,
    /// Namespaces.
    pub namespaces: Vec<NamespaceConfig>,
}

/// A namespace of a subsystem.
#[derive(Clone, Debug)]
pub struct NamespaceConfig {
    /// Namespace ID (1-based).
    pub nsid: u32,
    /// NGUID, unique across subsystems and stable across restarts.
    pub nguid: [u8; 16],
    /// UUID, unique and stable.
    pub uuid: [u8; 16],
    /// Logical block size (512 or 4096).
    pub block_size: u32,
    /// Size in logical blocks.
    pub num_blocks: u64,
    /// Optimal I/O boundary in bytes (the stripe size; 0 for none).
    pub optimal_io_boundary: u32,
    /// The device has a volatile write cache (Flush does something).
    pub volatile_write_cache: bool,
    /// ANA group (1 ..= [`crate::ana::MAX_ANA_GROUPS`]).
    pub ana_group: u32,
}

/// A configuration the target cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Two subsystems share an NQN.
    #[error("duplicate subsystem NQN {0}")]
    DuplicateNqn(String),
    /// A subsystem uses the discovery NQN or an empty NQN.
    #[error("invalid subsystem NQN {0:?}")]
    InvalidNqn(String),
    /// A namespace ID is 0, 0xFFFFFFFF or duplicated.
    #[error("subsystem {nqn}: invalid or duplicate namespace ID {nsid}")]
    InvalidNsid {
        /// Subsystem.
        nqn: String,
        /// Namespace ID.
        nsid: u32,
    },
    /// A block size that is not a power of two between 512 and 64 KiB.
    #[error("namespace {nsid}: block size {block_size} is not a power of two in 512..=65536")]
    BlockSize {
        /// Namespace ID.
        nsid: u32,
        /// Block size.
        block_size: u32,
    },
    /// An NGUID used twice.
    #[error("NGUID of namespace {nsid} in {nqn} is not unique")]
    DuplicateNguid {
        /// Subsystem.
        nqn: String,
        /// Namespace ID.
        nsid: u32,
    },
    /// Two ports with the same ID.
    #[error("duplicate port ID {0}")]
    DuplicatePort(u16),
    /// A host with authentication secrets listed twice, or without an NQN.
    #[error("host {0:?} has DH-HMAC-CHAP secrets twice, or no NQN")]
    DuplicateHost(String),
    /// A limit out of range.
    #[error("{0}")]
    Limit(String),
    /// A namespace in an ANA group outside 1 ..= MAX_ANA_GROUPS.
    #[error("namespace {nsid} in {nqn}: ANA group {group} is not in 1..={max}", max = crate::ana::MAX_ANA_GROUPS)]
    AnaGroup {
        /// Subsystem.
        nqn: String,
        /// Namespace ID.
        nsid: u32,
        /// The group.
        group: u32,
    },
    /// An initial ANA state for a port or group that does not exist.
    #[error("ANA state: {0}")]
    Ana(#[from] crate::ana::AnaError),
}

impl TargetConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut nqns = std::collections::HashSet::new();
        let mut nguids = std::collections::HashSet::new();
        for s in &self.subsystems {
            if s.nqn.is_empty() || s.nqn.len() > 223 || s.nqn == nvme_spec::fabrics::DISCOVERY_NQN {
                return Err(ConfigError::InvalidNqn(s.nqn.clone()));
            }
            if !nqns.insert(s.nqn.as_str()) {
                return Err(ConfigError::DuplicateNqn(s.nqn.clone()));
            }
            if s.namespaces.len() > crate::ana::MAX_NAMESPACES as usize {
                return Err(ConfigError::Limit(format!(
                    "subsystem {}: more than {} namespaces",
                    s.nqn,
                    crate::ana::MAX_NAMESPACES
                )));
            }
            let mut ids = std::collections::HashSet::new();
            for ns in &s.namespaces {
                if !(1..=crate::ana::MAX_ANA_GROUPS).contains(&ns.ana_group) {
                    return Err(ConfigError::AnaGroup {
                        nqn: s.nqn.clone(),
                        nsid: ns.nsid,
                        group: ns.ana_group,
                    });
                }
                if ns.nsid == 0 || ns.nsid == u32::MAX || !ids.insert(ns.nsid) {
                    return Err(ConfigError::InvalidNsid {
                        nqn: s.nqn.clone(),
                        nsid: ns.nsid,
                    });
                }
                if !ns.block_size.is_power_of_two() || !(512..=65536).contains(&ns.block_size) {
                    return Err(ConfigError::BlockSize {
                        nsid: ns.nsid,
                        block_size: ns.block_size,
                    });
                }
                if !nguids.insert(ns.nguid) {
                    return Err(ConfigError::DuplicateNguid {
                        nqn: s.nqn.clone(),
                        nsid: ns.nsid,
                    });
                }
            }
        }
        let mut ports = std::collections::HashSet::new();
        for p in &self.ports {
            if !ports.insert(p.id) {
                return Err(ConfigError::DuplicatePort(p.id));
            }
        }
        let mut hosts = std::collections::HashSet::new();
        for h in &self.hosts {
            if h.nqn.is_empty() || !hosts.insert(h.nqn.as_str()) {
                return Err(ConfigError::DuplicateHost(h.nqn.clone()));
            }
        }
        Limits::check(self).map_err(|e| ConfigError::Limit(e.to_string()))?;
        if self.max_r2t_in_flight == 0 {
            return Err(ConfigError::Limit(
                "R2Ts in flight must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The protocol limits an operator sets, and their allowed ranges: the one source both the
/// appliance's `check-config` and the target's own validation use.
pub struct Limits;

/// A protocol limit out of its range; `key` is the setting's name (`max_transfer`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} must be {rule}")]
pub struct LimitError {
    /// The setting.
    pub key: &'static str,
    /// What it must be.
    pub rule: &'static str,
}

impl Limits {
    /// MAXH2CDATA: a multiple of 4 in this range.
    pub const MAX_H2C_DATA: RangeInclusive<u32> = 4096..=16 << 20;
    /// MDTS in bytes: a power of two in this range.
    pub const MAX_TRANSFER: RangeInclusive<u32> = 4096..=16 << 20;
    /// In-capsule data: a multiple of 16 in this range.
    pub const IN_CAPSULE_DATA: RangeInclusive<u32> = 4096..=64 << 10;
    /// Queue entries (MQES + 1).
    pub const QUEUE_ENTRIES: RangeInclusive<u16> = 2..=1024;
    /// I/O queues per controller.
    pub const IO_QUEUES: RangeInclusive<u16> = 1..=128;

    /// Checks the operator-set limits of `cfg`.
    pub fn check(cfg: &TargetConfig) -> Result<(), LimitError> {
        let err = |key, rule| Err(LimitError { key, rule });
        if !Self::MAX_H2C_DATA.contains(&cfg.max_h2c_data) || cfg.max_h2c_data % 4 != 0 {
            return err("max_h2c_data", "a multiple of 4 in 4KiB..=16MiB");
        }
        if !Self::MAX_TRANSFER.contains(&cfg.max_transfer) || !cfg.max_transfer.is_power_of_two() {
            return err("max_transfer", "a power of two in 4KiB..=16MiB");
        }
        if !Self::IN_CAPSULE_DATA.contains(&cfg.in_capsule_data) || cfg.in_capsule_data % 16 != 0 {
            return err("in_capsule_data", "a multiple of 16 in 4KiB..=64KiB");
        }
        if !Self::QUEUE_ENTRIES.contains(&cfg.max_queue_entries) {
            return err("queue_entries", "in 2..=1024");
        }
        if !Self::IO_QUEUES.contains(&cfg.max_io_queues) {
            return err("io_queues", "in 1..=128");
        }
        Ok(())
    }
}
