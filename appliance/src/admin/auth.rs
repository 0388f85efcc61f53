//! Who may change a running appliance. Read-only endpoints (`/metrics`, `/api/v1/status`,
//! `/healthz`) stay open; every other request must
//!
//! * carry the admin token as `Authorization: Bearer TOKEN`;
//! * name the appliance in `Host` by an IP address or `localhost` (a DNS name is what a
//!   rebinding attack uses to reach a loopback service from a web page);
//! * have no `Origin`, or the same origin as `Host` (a cross-origin POST from a web page).
//!
//! The token is `admin.token`, the contents of `admin.token_file`, or else a random token the
//! appliance writes to `DATA_DIR/admin.token` (mode 0600) at start, as bitcoind's cookie file:
//! whoever can read the appliance's data directory may act on it.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hyper::header::{AUTHORIZATION, HOST, HeaderMap, ORIGIN};
use sha2::{Digest, Sha256};

use crate::config::Config;

/// File name of the generated token under the data directory.
pub const GENERATED_TOKEN_FILE: &str = "admin.token";

/// The admin token, kept as its SHA-256 digest: comparing digests takes the same time
/// whatever the presented token shares with the real one.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Why a request may not act on the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token or a wrong one (401).
    #[error("this action needs the admin token (Authorization: Bearer ...)")]
    Unauthorized,
    /// `Host` missing or a DNS name (403).
    #[error("the Host header must name the appliance by IP address or localhost")]
    ForeignHost,
    /// `Origin` of another site (403).
    #[error("cross-origin requests may not act on the appliance")]
    ForeignOrigin,
}

impl AdminToken {
    /// A token with this secret.
    pub fn new(secret: &str) -> Self {
        Self {
            digest: Sha256::digest(secret.trim().as_bytes()).into(),
        }
    }

    /// Whether `presented` is the token.
    pub fn matches(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        d == self.digest
    }

    /// The configured token, or the generated one (created if missing); also says where a
    /// generated or named token file is.
    pub fn resolve(config: &Config) -> io::Result<(Self, Option<PathBuf>)> {
        if let Some(t) = &config.admin.token {
            return Ok((Self::new(t), None));
        }
        let path = token_path(config);
        if config.admin.token_file.is_some() {
            return Ok((Self::new(&read_token_file(&path)?), Some(path)));
        }
        match read_token_file(&path) {
            Ok(t) => Ok((Self::new(&t), Some(path))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let t = generate(&path)?;
                Ok((Self::new(&t), Some(path)))
            }
            Err(e) => Err(e),
        }
    }

    /// Checks a request that wants to change something.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or(Refusal::ForeignHost)?;
        if !is_address_host(host) {
            return Err(Refusal::ForeignHost);
        }
        if let Some(origin) = headers.get(ORIGIN) {
            let same = origin.to_str().ok().is_some_and(|o| {
                o.strip_prefix("http://")
                    .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
            });
            if !same {
                return Err(Refusal::ForeignOrigin);
            }
        }
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| {
                h.split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            })
            .map(|(_, t)| t);
        match presented {
            Some(t) if self.matches(t) => Ok(()),
            _ => Err(Refusal::Unauthorized),
        }
    }
}

/// Where the token file is: `admin.token_file`, else the generated one under `data_dir`.
pub fn token_path(config: &Config) -> PathBuf {
    match &config.admin.token_file {
        Some(p) => config.resolve(p),
        None => config.data_dir.join(GENERATED_TOKEN_FILE),
    }
}

/// Reads a token file (its first line; at most 4 KiB).
pub fn read_token_file(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(4096)
        .read_to_string(&mut text)?;
    let t = text.lines().next().unwrap_or("").trim().to_owned();
    if t.len() < 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: the admin token must be at least 16 characters",
                path.display()
            ),
        ));
    }
    Ok(t)
}

/// Writes a new random token (32 bytes, hex) readable by the owner only.
fn generate(path: &Path) -> io::Result<String> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    let token: String = b.iter().map(|x| format!("{x:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{token}")?;
    Ok(token)
}

/// `Host` is an IP literal or `localhost`, with or without a port.
fn is_address_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((v6, tail)) if tail.is_empty() || tail.starts_with(':') => {
                return v6.parse::<std::net::Ipv6Addr>().is_ok();
            }
            _ => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn token_host_and_origin_are_all_required() {
        let t = AdminToken::new("0123456789abcdef0123");
        let ok = [
            ("host", "127.0.0.1:9440"),
            ("authorization", "Bearer 0123456789abcdef0123"),
        ];
        assert_eq!(t.authorize(&headers(&ok)), Ok(()));
        assert_eq!(
            t.authorize(&headers(&[("host", "127.0.0.1:9440")])),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(
            t.authorize(&headers(&[
                ("host", "127.0.0.1:9440"),
                ("authorization", "Bearer wrong-token-wrong-token")
            ])),
            Err(Refusal::Unauthorized)
        );
        // DNS rebinding: the page's own name in Host.
        assert_eq!(
            t.authorize(&headers(&[ok[1], ("host", "evil.example:9440")])),
            Err(Refusal::ForeignHost)
        );
        assert_eq!(t.authorize(&headers(&[ok[1]])), Err(Refusal::ForeignHost));
        // A cross-origin form post.
        assert_eq!(
            t.authorize(&headers(&[ok[0], ok[1], ("origin", "http://evil.example")])),
            Err(Refusal::ForeignOrigin)
        );
        assert_eq!(
            t.authorize(&headers(&[ok[0], ok[1], ("origin", "null")])),
            Err(Refusal::ForeignOrigin)
        );
        assert_eq!(
            t.authorize(&headers(&[
                ok[0],
                ok[1],
                ("origin", "http://127.0.0.1:9440")
            ])),
            Ok(())
        );
    }

    #[test]
    fn address_hosts() {
        for h in [
            "127.0.0.1",
            "127.0.0.1:9440",
            "[::1]:9440",
            "[::1]",
            "LOCALHOST:1",
            "10.1.2.3",
        ] {
            assert!(is_address_host(h), "{h}");
        }
        for h in [
            "example.com",
            "localhost.evil.example:9440",
            "[::1",
            "[::1]x",
            "",
            "1.2.3.4.5",
        ] {
            assert!(!is_address_host(h), "{h}");
        }
    }

    #[test]
    fn generated_token_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let text = format!("data_dir: {}\n", dir.path().display());
        let config = Config::parse(&text, "t").unwrap();
        let (t1, path) = AdminToken::resolve(&config).unwrap();
        let path = path.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (t2, _) = AdminToken::resolve(&config).unwrap();
        assert_eq!(t1.digest, t2.digest, "the file is reused across restarts");
        assert!(t1.matches(&read_token_file(&path).unwrap()));
    }
}
