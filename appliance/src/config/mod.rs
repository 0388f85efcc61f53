//! The appliance's YAML configuration: types, parsing with key-path/line errors, validation.
//!
//! Parsing uses `serde_norway` (a maintained fork of `serde_yaml` with the same API) through
//! `serde_path_to_error`, so every error names the key path; unknown keys are errors.

mod ana;
mod hosts;
mod limits;
mod locate;
mod size;

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use ana::{AnaConfig, AnaStateName};
pub use hosts::HostConfig;
pub use limits::LimitsConfig;
use locate::LineIndex;
pub use size::ByteSize;

/// Largest configuration file read.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// The configuration `baton serve` uses when no file is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/default.yaml");

/// A configuration error, naming the key path and, when known, the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the text came from (a file name or "embedded default").
    pub origin: String,
    /// Key path, such as `volumes[0].stripe_size`; empty for the whole document.
    pub path: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.path.is_empty() && self.path != "." {
            write!(f, ": `{}`", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The whole appliance configuration.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base directory for relative file-device paths and the appliance's state.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Controller threads.
    #[serde(default)]
    pub controllers: ControllersConfig,
    /// NVMe/TCP block service.
    #[serde(default)]
    pub nvme_tcp: NvmeTcpConfig,
    /// Metrics and admin API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Backplane devices.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// Volumes striped over devices.
    #[serde(default)]
    pub volumes: Vec<VolumeConfig>,
    /// NVMe subsystems exported over NVMe/TCP.
    #[serde(default)]
    pub subsystems: Vec<SubsystemConfig>,
    /// Stream service (absent: off).
    #[serde(default)]
    pub stream: Option<StreamConfig>,
    /// Connection limits and timeouts of every listener.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Logging.
    #[serde(default)]
    pub logging: LoggingConfig,
}

/// The stream service: a content store on a volume, a coordinator and one data port per
/// controller.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Volume holding the content store (never exported as a namespace).
    pub volume: String,
    /// Address of the control, HTTP and data ports.
    #[serde(default = "loopback")]
    pub address: IpAddr,
    /// Coordinator control port (`baton put/ls/rm/fetch`); 0 picks a free port.
    #[serde(default = "default_control_port")]
    pub control_port: u16,
    /// HTTP face (`GET /content/{name}`); null for none, 0 picks a free port.
    #[serde(default = "default_http_port")]
    pub http_port: Option<u16>,
    /// Controller i's data port is `data_port_base + i`; 0 picks free ports.
    #[serde(default = "default_data_port_base")]
    pub data_port_base: u16,
    /// Content block size: the unit a controller reads and sends.
    #[serde(default = "default_stream_block")]
    pub block_size: ByteSize,
    /// Read-ahead window: blocks requested ahead of the baton.
    #[serde(default = "default_window")]
    pub window: u32,
    /// Sessions each controller serves at once (admission control).
    #[serde(default = "default_send_budget")]
    pub send_budget: u32,
    /// Catalog entries (content items the store can hold).
    #[serde(default = "default_catalog_entries")]
    pub catalog_entries: u32,
    /// A session whose baton has not moved for this long is re-planned over the live
    /// controllers (milliseconds).
    #[serde(default = "default_sync_timeout")]
    pub sync_timeout_ms: u64,
}

fn default_control_port() -> u16 {
    9450
}
fn default_http_port() -> Option<u16> {
    Some(8080)
}
fn default_data_port_base() -> u16 {
    9460
}
fn default_stream_block() -> ByteSize {
    ByteSize::parse("256KiB").unwrap_or_default()
}
fn default_window() -> u32 {
    4
}
fn default_send_budget() -> u32 {
    256
}
fn default_catalog_entries() -> u32 {
    1024
}
fn default_sync_timeout() -> u64 {
    2000
}

fn default_nsid() -> u32 {
    1
}
fn default_pcie_depth() -> u16 {
    64
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("baton-data")
}

/// How many controller threads run.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControllersConfig {
    /// Number of controllers; 0 means one per available core.
    #[serde(default)]
    pub count: usize,
    /// Pin controller i to core i (modulo the cores available).
    #[serde(default = "yes")]
    pub pin: bool,
}

fn yes() -> bool {
    true
}

/// The NVMe/TCP service.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NvmeTcpConfig {
    /// Address controllers listen on and that discovery advertises.
    #[serde(default = "loopback")]
    pub address: IpAddr,
    /// Controller i listens on `base_port + i`; 0 picks free ports (tests, benchmarks).
    #[serde(default = "default_base_port")]
    pub base_port: u16,
    /// Discovery controller port (0 picks a free port); null means no discovery service.
    #[serde(default = "default_discovery_port")]
    pub discovery_port: Option<u16>,
    /// Largest H2CData PDU the host may send.
    #[serde(default = "default_max_h2c")]
    pub max_h2c_data: ByteSize,
    /// Largest transfer of one command (MDTS), a power of two from 4 KiB.
    #[serde(default = "default_max_transfer")]
    pub max_transfer: ByteSize,
    /// Entries per queue (MQES + 1).
    #[serde(default = "default_queue_entries")]
    pub queue_entries: u16,
    /// I/O queues per host controller.
    #[serde(default = "default_io_queues")]
    pub io_queues: u16,
    /// Hosts that authenticate with DH-HMAC-CHAP.
    #[serde(default)]
    pub hosts: Vec<HostConfig>,
    /// ANA group states at start that are not optimized, per controller.
    #[serde(default)]
    pub ana: Vec<AnaConfig>,
    /// Deal every port's connections (its hosts' queues) over all controller threads, like
    /// SPDK's poll groups (new I/O queues to the least loaded), so one host association
    /// uses every core; false
    /// keeps a port's connections on its own controller thread.
    #[serde(default = "default_true")]
    pub spread_queues: bool,
    /// Other discovery services the discovery log refers hosts to.
    #[serde(default)]
    pub referrals: Vec<ReferralConfig>,
}

/// A discovery service elsewhere (another appliance's discovery controller).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReferralConfig {
    /// Its address.
    pub address: IpAddr,
    /// Its TCP port (8009 is the NVMe/TCP discovery port).
    #[serde(default = "default_referral_port")]
    pub port: u16,
}

fn default_referral_port() -> u16 {
    8009
}

impl Default for NvmeTcpConfig {
    fn default() -> Self {
        Self {
            address: loopback(),
            base_port: default_base_port(),
            discovery_port: default_discovery_port(),
            max_h2c_data: default_max_h2c(),
            max_transfer: default_max_transfer(),
            queue_entries: default_queue_entries(),
            io_queues: default_io_queues(),
            hosts: Vec::new(),
            ana: Vec::new(),
            spread_queues: true,
            referrals: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn loopback() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}
fn default_base_port() -> u16 {
    4420
}
#[expect(
    clippy::unnecessary_wraps,
    reason = "serde default for an optional key"
)]
fn default_discovery_port() -> Option<u16> {
    Some(8009)
}
fn default_max_h2c() -> ByteSize {
    ByteSize(128 << 10)
}
fn default_max_transfer() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_queue_entries() -> u16 {
    128
}
fn default_io_queues() -> u16 {
    8
}

/// The metrics and admin endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where `/metrics` and `/api/v1/...` are served; absent disables it.
    #[serde(default = "default_admin_address")]
    pub address: Option<SocketAddr>,
    /// Bearer token that destructive actions need (at least 16 characters). Without it and
    /// without `token_file`, the appliance generates one in `DATA_DIR/admin.token`.
    #[serde(default)]
    pub token: Option<String>,
    /// A file whose first line is the token (relative paths are under `data_dir`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            address: default_admin_address(),
            token: None,
            token_file: None,
        }
    }
}

#[expect(
    clippy::unnecessary_wraps,
    reason = "serde default for an optional key"
)]
fn default_admin_address() -> Option<SocketAddr> {
    Some(SocketAddr::new(loopback(), 9440))
}

/// One backplane device; `kind` selects the backend.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DeviceConfig {
    /// Memory (lost on exit).
    Ram {
        /// Unique name volumes refer to.
        name: String,
        /// Capacity.
        size: ByteSize,
        /// Caps each controller's reads from this device at this many bytes per second
        /// (models a slower device; used by the stream scaling benchmark).
        #[serde(default)]
        read_rate: Option<ByteSize>,
    },
    /// A file or block device, opened by every controller.
    File {
        /// Unique name volumes refer to.
        name: String,
        /// Path; relative paths are under `data_dir`.
        path: PathBuf,
        /// Caps each controller's reads from this device at this many bytes per second.
        #[serde(default)]
        read_rate: Option<ByteSize>,
        /// Size to create a missing file with (and the capacity used); absent means the
        /// existing file's size.
        #[serde(default)]
        size: Option<ByteSize>,
        /// Open with O_DIRECT.
        #[serde(default)]
        direct: bool,
    },
    /// A namespace of an NVMe subsystem reached through PCIe controllers with the
    /// user-space driver (VFIO): Baton controller i uses `controllers[i mod n]`, so each
    /// reaches the shared namespace through its own PCIe controller.
    NvmePcie {
        /// Unique name volumes refer to.
        name: String,
        /// PCI addresses of the subsystem's controllers (e.g. `0000:00:04.0`), bound to
        /// vfio-pci (`baton setup-pci`).
        controllers: Vec<String>,
        /// Namespace ID.
        #[serde(default = "default_nsid")]
        nsid: u32,
        /// I/O queue entries per Baton controller.
        #[serde(default = "default_pcie_depth")]
        queue_depth: u16,
    },
}

impl DeviceConfig {
    /// The device's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Ram { name, .. } | Self::File { name, .. } | Self::NvmePcie { name, .. } => name,
        }
    }
}

/// A volume: devices striped RAID0.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    /// Unique name.
    pub name: String,
    /// Device names, striped in this order.
    pub devices: Vec<String>,
    /// Stripe unit.
    #[serde(default = "default_stripe")]
    pub stripe_size: ByteSize,
    /// Logical block size exported (512 or 4096).
    #[serde(default = "default_block_size")]
    pub block_size: u32,
}

fn default_stripe() -> ByteSize {
    ByteSize(128 << 10)
}
fn default_block_size() -> u32 {
    512
}

/// An NVMe subsystem.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubsystemConfig {
    /// Subsystem NQN.
    pub nqn: String,
    /// Serial number reported by every controller (defaults from the NQN).
    #[serde(default)]
    pub serial: Option<String>,
    /// Model number.
    #[serde(default = "default_model")]
    pub model: String,
    /// Let any host connect.
    #[serde(default)]
    pub allow_any_host: bool,
    /// Host NQNs allowed to connect.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Namespaces.
    #[serde(default)]
    pub namespaces: Vec<NamespaceConfig>,
}

fn default_model() -> String {
    "Baton".to_owned()
}

/// A namespace of a subsystem.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Namespace ID (1-based).
    pub nsid: u32,
    /// Volume it maps to.
    pub volume: String,
    /// ANA group (1 ..= 32); its state is set per controller (`nvme_tcp.ana`, `baton ctl ana`).
    #[serde(default = "default_ana_group")]
    pub ana_group: u32,
}

fn default_ana_group() -> u32 {
    1
}

/// Logging.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// A level or an `EnvFilter` directive string; `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
    /// Output format.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: default_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_level() -> String {
    "info".to_owned()
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// Parses and validates YAML text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Self::parse_with_warnings(text, origin).map(|(c, _)| c)
    }

    /// Parses and validates YAML text, and returns the [`Config::warnings`] with their lines.
    pub fn parse_with_warnings(
        text: &str,
        origin: &str,
    ) -> Result<(Self, Vec<ConfigError>), ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError {
                origin: origin.to_owned(),
                path: String::new(),
                line: None,
                message: format!("larger than {MAX_CONFIG_BYTES} bytes"),
            });
        }
        let lines = LineIndex::new(text);
        if let Some(line) = lines.too_deep() {
            return Err(ConfigError {
                origin: origin.to_owned(),
                path: String::new(),
                line: Some(line),
                message: format!("nested deeper than {} levels", locate::MAX_DEPTH),
            });
        }
        let de = serde_norway::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|err| {
            let mut path = err.path().to_string();
            let inner = err.into_inner();
            let message = strip_prefix_and_location(&inner.to_string());
            // Point an unknown key at its own line, not its parent's.
            // (In a flow mapping the path already ends with the key.)
            if let Some(field) =
                unknown_field(&message).filter(|f| path != *f && !path.ends_with(&format!(".{f}")))
            {
                path = if path.is_empty() || path == "." {
                    field.to_owned()
                } else {
                    format!("{path}.{field}")
                };
            }
            let line = lines
                .line_of(&path)
                .or_else(|| inner.location().map(|l| l.line()));
            ConfigError {
                origin: origin.to_owned(),
                path,
                line,
                message,
            }
        })?;
        let located = |(path, message): (String, String)| ConfigError {
            origin: origin.to_owned(),
            line: lines.line_of(&path),
            path,
            message,
        };
        config.validate().map_err(located)?;
        let warnings = config.warnings().into_iter().map(located).collect();
        Ok((config, warnings))
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_warnings(path).map(|(c, _)| c)
    }

    /// Reads, parses and validates a file, with its warnings. Only a regular file of at most
    /// [`MAX_CONFIG_BYTES`] is read (a FIFO or `/dev/zero` is refused, not read forever).
    pub fn load_with_warnings(path: &Path) -> Result<(Self, Vec<ConfigError>), ConfigError> {
        use std::io::Read;
        let origin = path.display().to_string();
        let fail = |message: String| ConfigError {
            origin: origin.clone(),
            path: String::new(),
            line: None,
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        if !meta.is_file() {
            return Err(fail("not a regular file".into()));
        }
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| {
                f.take(MAX_CONFIG_BYTES as u64 + 1)
                    .read_to_string(&mut text)
            })
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        Self::parse_with_warnings(&text, &origin)
    }

    /// The embedded default.
    pub fn embedded_default() -> Self {
        Self::parse(EMBEDDED_DEFAULT, "embedded default")
            .unwrap_or_else(|e| unreachable!("the embedded default is checked by a test: {e}"))
    }

    /// Settings that are valid but probably not what the operator wants, as (key path,
    /// message); `check-config` prints them and `serve` logs them.
    pub fn warnings(&self) -> Vec<(String, String)> {
        let mut w = Vec::new();
        if let Some(addr) = self.admin.address {
            if !addr.ip().is_loopback()
                && self.admin.token.is_none()
                && self.admin.token_file.is_none()
            {
                w.push((
                    "admin.address".into(),
                    format!(
                        "{addr} is not a loopback address and no admin.token or \
                         admin.token_file is set: /metrics and /api/v1/status are open to \
                         the network, and actions need the generated token in \
                         {}/admin.token",
                        self.data_dir.display()
                    ),
                ));
            }
        }
        w
    }

    /// PCI addresses of every nvme-pcie device's controllers.
    pub fn pci_functions(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .devices
            .iter()
            .filter_map(|d| match d {
                DeviceConfig::NvmePcie { controllers, .. } => Some(controllers.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The stream service's settings, if it is configured.
    pub fn stream_settings(&self) -> Option<stream::Settings> {
        let s = self.stream.as_ref()?;
        Some(stream::Settings {
            volume: s.volume.clone(),
            address: s.address,
            control_port: s.control_port,
            http_port: s.http_port,
            data_port_base: s.data_port_base,
            block_size: s.block_size.bytes(),
            window: s.window,
            send_budget: s.send_budget,
            catalog_entries: s.catalog_entries,
            sync_timeout: std::time::Duration::from_millis(s.sync_timeout_ms),
            limits: self.limits.stream(),
        })
    }

    /// Number of controller threads to run.
    pub fn controller_count(&self) -> usize {
        match self.controllers.count {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// The devices to open, paths resolved against `data_dir`.
    pub fn device_specs(&self) -> Vec<backplane::DeviceSpec> {
        self.devices
            .iter()
            .map(|d| match d {
                DeviceConfig::Ram {
                    name,
                    size,
                    read_rate,
                } => backplane::DeviceSpec::Ram {
                    name: name.clone(),
                    size: size.bytes(),
                    read_rate: read_rate.map(|r| r.bytes()),
                },
                DeviceConfig::File {
                    name,
                    path,
                    read_rate,
                    size,
                    direct,
                } => backplane::DeviceSpec::File {
                    name: name.clone(),
                    path: self.resolve(path),
                    size: size.map(|s| s.bytes()),
                    direct: *direct,
                    read_rate: read_rate.map(|r| r.bytes()),
                },
                DeviceConfig::NvmePcie {
                    name,
                    controllers,
                    nsid,
                    queue_depth,
                } => backplane::DeviceSpec::NvmePcie {
                    name: name.clone(),
                    controllers: controllers.clone(),
                    nsid: *nsid,
                    queue_depth: *queue_depth,
                },
            })
            .collect()
    }

    /// The volumes to assemble.
    pub fn volume_specs(&self) -> Vec<backplane::VolumeSpec> {
        self.volumes
            .iter()
            .map(|v| backplane::VolumeSpec {
                name: v.name.clone(),
                devices: v.devices.clone(),
                stripe: v.stripe_size.bytes(),
                block_size: v.block_size,
            })
            .collect()
    }

    /// File devices whose paths cannot be opened as configured, as (key path, message):
    /// `check-config` reports them without opening or creating anything.
    pub fn check_device_paths(&self) -> Vec<(String, String)> {
        backplane::check_device_paths(&self.device_specs())
            .into_iter()
            .map(|(i, m)| (format!("devices[{i}].path"), m))
            .collect()
    }

    /// Opens the backplane the configuration describes.
    pub fn open_backplane(&self) -> Result<backplane::Backplane, backplane::BackplaneError> {
        backplane::Backplane::open(&self.device_specs(), &self.volume_specs())
    }

    /// A file device's path, resolved against `data_dir`.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.data_dir.join(path)
        }
    }

    /// Cross-field checks; the error is (key path, message).
    /// Checks the whole configuration; the error names the key path and says why.
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        for (i, r) in self.nvme_tcp.referrals.iter().enumerate() {
            if r.port == 0 {
                return Err((
                    format!("nvme_tcp.referrals[{i}].port"),
                    "must be a port number (1..=65535)".into(),
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, dev) in self.devices.iter().enumerate() {
            check_name(dev.name()).map_err(|m| (format!("devices[{i}].name"), m))?;
            if !names.insert(dev.name()) {
                return Err((
                    format!("devices[{i}].name"),
                    format!("duplicate device name `{}`", dev.name()),
                ));
            }
            let size = match dev {
                DeviceConfig::Ram { size, .. } => Some(*size),
                DeviceConfig::File { size, .. } => *size,
                DeviceConfig::NvmePcie {
                    controllers, nsid, ..
                } => {
                    if controllers.is_empty() {
                        return Err((
                            format!("devices[{i}].controllers"),
                            "name at least one PCI address".into(),
                        ));
                    }
                    if let Some(bad) = controllers.iter().find(|c| !is_bdf(c)) {
                        return Err((
                            format!("devices[{i}].controllers"),
                            format!("`{bad}` is not a PCI address like 0000:00:04.0"),
                        ));
                    }
                    if *nsid == 0 || *nsid == u32::MAX {
                        return Err((format!("devices[{i}].nsid"), "not a namespace ID".into()));
                    }
                    None
                }
            };
            if size.is_some_and(|s| s.bytes() == 0 || s.bytes() % 4096 != 0) {
                return Err((
                    format!("devices[{i}].size"),
                    "size must be a non-zero multiple of 4KiB".into(),
                ));
            }
        }
        let mut used_devices = HashSet::new();
        let mut volumes = HashSet::new();
        for (i, vol) in self.volumes.iter().enumerate() {
            let at = |key: &str| format!("volumes[{i}].{key}");
            check_name(&vol.name).map_err(|m| (at("name"), m))?;
            if !volumes.insert(vol.name.as_str()) {
                return Err((at("name"), format!("duplicate volume name `{}`", vol.name)));
            }
            if vol.devices.is_empty() {
                return Err((at("devices"), "a volume needs at least one device".into()));
            }
            for (j, dev) in vol.devices.iter().enumerate() {
                if !names.contains(dev.as_str()) {
                    return Err((
                        format!("volumes[{i}].devices[{j}]"),
                        format!("unknown device `{dev}`"),
                    ));
                }
                if !used_devices.insert(dev.as_str()) {
                    return Err((
                        format!("volumes[{i}].devices[{j}]"),
                        format!("device `{dev}` is already used by another volume"),
                    ));
                }
            }
            if !matches!(vol.block_size, 512 | 4096) {
                return Err((at("block_size"), "block_size must be 512 or 4096".into()));
            }
            let stripe = vol.stripe_size.bytes();
            if stripe < u64::from(vol.block_size) || !stripe.is_power_of_two() {
                return Err((
                    at("stripe_size"),
                    "stripe_size must be a power of two, at least the block size".into(),
                ));
            }
        }
        let mut nqns = HashSet::new();
        let mut exported = HashSet::new();
        for (i, sub) in self.subsystems.iter().enumerate() {
            let at = |key: &str| format!("subsystems[{i}].{key}");
            check_nqn(&sub.nqn).map_err(|m| (at("nqn"), m))?;
            if !nqns.insert(sub.nqn.as_str()) {
                return Err((at("nqn"), format!("duplicate subsystem `{}`", sub.nqn)));
            }
            if sub.allowed_hosts.len() > nvme_target::access::MAX_ALLOWED_HOSTS {
                return Err((
                    at("allowed_hosts"),
                    format!(
                        "at most {} allowed hosts per subsystem",
                        nvme_target::access::MAX_ALLOWED_HOSTS
                    ),
                ));
            }
            for (j, host) in sub.allowed_hosts.iter().enumerate() {
                check_nqn(host).map_err(|m| (format!("subsystems[{i}].allowed_hosts[{j}]"), m))?;
            }
            if let Some(serial) = &sub.serial {
                if serial.is_empty() || serial.len() > 20 || !serial.is_ascii() {
                    return Err((
                        at("serial"),
                        "serial must be 1..=20 ASCII characters".into(),
                    ));
                }
            }
            if sub.model.len() > 40 || !sub.model.is_ascii() {
                return Err((
                    at("model"),
                    "model must be at most 40 ASCII characters".into(),
                ));
            }
            if sub.namespaces.len() > nvme_target::ana::MAX_NAMESPACES as usize {
                return Err((
                    at("namespaces"),
                    format!(
                        "at most {} namespaces per subsystem",
                        nvme_target::ana::MAX_NAMESPACES
                    ),
                ));
            }
            let mut nsids = HashSet::new();
            for (j, ns) in sub.namespaces.iter().enumerate() {
                let at = |key: &str| format!("subsystems[{i}].namespaces[{j}].{key}");
                if ns.nsid == 0 || ns.nsid == u32::MAX {
                    return Err((at("nsid"), "nsid must be between 1 and 0xfffffffe".into()));
                }
                if !nsids.insert(ns.nsid) {
                    return Err((at("nsid"), format!("duplicate nsid {}", ns.nsid)));
                }
                if !volumes.contains(ns.volume.as_str()) {
                    return Err((at("volume"), format!("unknown volume `{}`", ns.volume)));
                }
                if !exported.insert(ns.volume.as_str()) {
                    return Err((
                        at("volume"),
                        format!("volume `{}` is already exported", ns.volume),
                    ));
                }
            }
        }
        let nvme = &self.nvme_tcp;
        hosts::validate(&nvme.hosts)?;
        ana::validate(self)?;
        // The target's own limits, so check-config and serve agree.
        let mut target = nvme_target::config::TargetConfig::new(Vec::new(), Vec::new());
        target.max_h2c_data = u32::try_from(nvme.max_h2c_data.bytes()).unwrap_or(u32::MAX);
        target.max_transfer = u32::try_from(nvme.max_transfer.bytes()).unwrap_or(u32::MAX);
        target.max_queue_entries = nvme.queue_entries;
        target.max_io_queues = nvme.io_queues;
        nvme_target::config::Limits::check(&target)
            .map_err(|e| (format!("nvme_tcp.{}", e.key), e.to_string()))?;
        let count = self.controller_count();
        if usize::from(nvme.base_port) + count > usize::from(u16::MAX) {
            return Err((
                "nvme_tcp.base_port".into(),
                format!("base_port + {count} controllers passes port 65535"),
            ));
        }
        if let Some(dp) = nvme
            .discovery_port
            .filter(|&p| p != 0 && nvme.base_port != 0)
        {
            let ports = usize::from(nvme.base_port)..usize::from(nvme.base_port) + count;
            if ports.contains(&usize::from(dp)) {
                return Err((
                    "nvme_tcp.discovery_port".into(),
                    format!("discovery_port {dp} collides with a controller port"),
                ));
            }
        }
        if nvme.address.is_unspecified() {
            return Err((
                "nvme_tcp.address".into(),
                "give a concrete address: discovery must advertise it to hosts".into(),
            ));
        }
        if let Some(st) = &self.stream {
            let Some(v) = self.volumes.iter().find(|v| v.name == st.volume) else {
                return Err((
                    "stream.volume".into(),
                    format!("no volume named `{}`", st.volume),
                ));
            };
            for (i, s) in self.subsystems.iter().enumerate() {
                for (j, ns) in s.namespaces.iter().enumerate() {
                    if ns.volume == st.volume {
                        return Err((
                            format!("subsystems[{i}].namespaces[{j}].volume"),
                            format!(
                                "`{}` holds the content store and cannot be exported",
                                st.volume
                            ),
                        ));
                    }
                }
            }
            let bs = st.block_size.bytes();
            if !bs.is_power_of_two()
                || !(4096..=16 << 20).contains(&bs)
                || bs < u64::from(v.block_size)
            {
                return Err((
                    "stream.block_size".into(),
                    "a power of two from 4KiB to 16MiB, at least the volume's block size".into(),
                ));
            }
            let count = self.controller_count();
            if st.data_port_base != 0 && usize::from(st.data_port_base) + count > 65536 {
                return Err((
                    "stream.data_port_base".into(),
                    format!("data_port_base + {count} controllers passes port 65535"),
                ));
            }
            if st.window == 0 || st.window > 64 {
                return Err(("stream.window".into(), "must be in 1..=64".into()));
            }
            if st.send_budget == 0 {
                return Err(("stream.send_budget".into(), "must be at least 1".into()));
            }
            if !(16..=65536).contains(&st.catalog_entries) {
                return Err((
                    "stream.catalog_entries".into(),
                    "must be in 16..=65536".into(),
                ));
            }
            if st.sync_timeout_ms < 50 {
                return Err((
                    "stream.sync_timeout_ms".into(),
                    "must be at least 50".into(),
                ));
            }
        }
        if self.admin.token.is_some() && self.admin.token_file.is_some() {
            return Err((
                "admin.token_file".into(),
                "give either admin.token or admin.token_file, not both".into(),
            ));
        }
        if let Some(t) = &self.admin.token {
            if t.trim().len() < 16
                || t.trim().len() > 1024
                || !t.trim().bytes().all(|b| b.is_ascii_graphic())
            {
                return Err((
                    "admin.token".into(),
                    "the token must be 16..=1024 printable ASCII characters without spaces".into(),
                ));
            }
        }
        self.limits
            .validate()
            .map_err(|(key, m)| (format!("limits.{key}"), m))?;
        if let Err(e) = self.logging.level.parse::<tracing_subscriber::EnvFilter>() {
            return Err(("logging.level".into(), format!("bad filter: {e}")));
        }
        Ok(())
    }
}

/// The line of `key_path` (such as `devices[2].path`) in YAML `text`, for errors found by
/// checks outside this module.
pub fn line_of(text: &str, key_path: &str) -> Option<usize> {
    LineIndex::new(text).line_of(key_path)
}

/// serde_norway prefixes the key path and appends " at line L column C"; both are reported
/// separately.
fn strip_prefix_and_location(message: &str) -> String {
    let message = match message.find(" at line ") {
        Some(cut) => &message[..cut],
        None => message,
    };
    match message.split_once(": ") {
        Some((prefix, rest)) if !prefix.contains(' ') => rest.to_owned(),
        _ => message.to_owned(),
    }
}

/// The key named by an "unknown field `x`" message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(field, _)| field)
}

/// `DDDD:BB:DD.F`.
fn is_bdf(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s.chars()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}`: names are 1..=64 characters of letters, digits, '-', '_', '.'"
        ))
    }
}

/// The target's DH-HMAC-CHAP settings of the host entries (the key path and message of
/// the first bad one).
pub fn hosts_auth(
    hosts: &[HostConfig],
) -> Result<Vec<nvme_target::HostAuthConfig>, (String, String)> {
    hosts::validate(hosts)
}

fn check_nqn(nqn: &str) -> Result<(), String> {
    if !nqn.starts_with("nqn.") || nqn.len() > 223 || !nqn.is_ascii() {
        return Err(format!(
            "`{nqn}` is not an NQN (starts with `nqn.`, at most 223 ASCII bytes)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
