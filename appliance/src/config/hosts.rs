//! `nvme_tcp.hosts`: hosts that authenticate with DH-HMAC-CHAP, with their secrets in the
//! `DHHC-1:XX:BASE64:` form `nvme gen-dhchap-key` prints.

use std::collections::HashSet;

use nvme_target::HostAuthConfig;
use nvme_target::auth::{Group, HashFn, Secret};
use serde::{Deserialize, Serialize};

/// One host's DH-HMAC-CHAP settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Host NQN.
    pub nqn: String,
    /// The host's secret (`nvme connect --dhchap-secret`); every queue of this host to an
    /// NVM subsystem must authenticate with it.
    pub dhchap_key: String,
    /// The controller's secret (`--dhchap-ctrl-secret`), for hosts that authenticate the
    /// controller too.
    #[serde(default)]
    pub dhchap_ctrl_key: Option<String>,
    /// Hash the controller selects: `sha256`, `sha384` or `sha512`.
    #[serde(default = "default_hash")]
    pub dhchap_hash: String,
    /// DH group the controller selects: `null` (no exchange) or `ffdhe2048` ... `ffdhe8192`.
    #[serde(default = "default_dhgroup")]
    pub dhchap_dhgroup: String,
}

fn default_hash() -> String {
    "sha256".to_owned()
}

fn default_dhgroup() -> String {
    "null".to_owned()
}

impl HostConfig {
    /// The target's form of these settings; the error names the key (under `at`).
    pub fn to_target(&self, at: &str) -> Result<HostAuthConfig, (String, String)> {
        let key_err =
            |key: &str, e: nvme_target::auth::SecretError| (format!("{at}.{key}"), e.to_string());
        let key = Secret::parse(&self.dhchap_key).map_err(|e| key_err("dhchap_key", e))?;
        let ctrl_key = self
            .dhchap_ctrl_key
            .as_deref()
            .map(Secret::parse)
            .transpose()
            .map_err(|e| key_err("dhchap_ctrl_key", e))?;
        if ctrl_key.as_ref() == Some(&key) {
            return Err((
                format!("{at}.dhchap_ctrl_key"),
                "the controller key must differ from the host key".into(),
            ));
        }
        let hash = HashFn::from_name(&self.dhchap_hash).ok_or_else(|| {
            (
                format!("{at}.dhchap_hash"),
                format!(
                    "unknown hash `{}` (sha256, sha384, sha512)",
                    self.dhchap_hash
                ),
            )
        })?;
        let dh_group = match self.dhchap_dhgroup.as_str() {
            "null" => None,
            name => Some(Group::from_name(name).ok_or_else(|| {
                (
                    format!("{at}.dhchap_dhgroup"),
                    format!("unknown DH group `{name}` (null, ffdhe2048, ffdhe3072, ffdhe4096, ffdhe6144, ffdhe8192)"),
                )
            })?),
        };
        Ok(HostAuthConfig {
            nqn: self.nqn.clone(),
            key,
            ctrl_key,
            hash,
            dh_group,
        })
    }
}

/// Checks every host entry: NQN, secrets, hash, group, no host twice.
pub fn validate(hosts: &[HostConfig]) -> Result<Vec<HostAuthConfig>, (String, String)> {
    let mut seen = HashSet::new();
    hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let at = format!("nvme_tcp.hosts[{i}]");
            super::check_nqn(&h.nqn).map_err(|m| (format!("{at}.nqn"), m))?;
            if !seen.insert(h.nqn.as_str()) {
                return Err((
                    format!("{at}.nqn"),
                    format!("host `{}` listed twice", h.nqn),
                ));
            }
            h.to_target(&at)
        })
        .collect()
}
