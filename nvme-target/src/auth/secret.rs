//! DH-HMAC-CHAP secrets in the `DHHC-1` representation (`nvme gen-dhchap-key`, Base 2.0
//! 8.13.5.8), the key transformation, and the HMAC computations of the protocol.
//!
//! The primitives come from RustCrypto (`hmac`, `sha2`); this module only arranges their
//! inputs the way the specification (and the Linux host and target) does.

use std::fmt;

use base64::Engine;
use hmac::{Hmac, Mac};
use nvme_spec::auth::hash_id;
use sha2::{Digest, Sha256, Sha384, Sha512};
use thiserror::Error;

/// A hash function DH-HMAC-CHAP may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashFn {
    /// SHA-256 (hash ID 1).
    Sha256,
    /// SHA-384 (hash ID 2).
    Sha384,
    /// SHA-512 (hash ID 3).
    Sha512,
}

impl HashFn {
    /// The hash for a hash identifier.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            hash_id::SHA256 => Some(Self::Sha256),
            hash_id::SHA384 => Some(Self::Sha384),
            hash_id::SHA512 => Some(Self::Sha512),
            _ => None,
        }
    }

    /// The hash's identifier on the wire.
    pub fn id(self) -> u8 {
        match self {
            Self::Sha256 => hash_id::SHA256,
            Self::Sha384 => hash_id::SHA384,
            Self::Sha512 => hash_id::SHA512,
        }
    }

    /// Digest length in bytes (the protocol's HL).
    pub fn size(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// The name in configuration files: `sha256`, `sha384` or `sha512` (an `hmac(...)`
    /// wrapper, as nvmet's configfs spells it, is accepted too).
    pub fn from_name(name: &str) -> Option<Self> {
        let n = name
            .strip_prefix("hmac(")
            .and_then(|n| n.strip_suffix(')'))
            .unwrap_or(name);
        match n {
            "sha256" => Some(Self::Sha256),
            "sha384" => Some(Self::Sha384),
            "sha512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// HMAC with `key` over the concatenation of `parts`.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            // HMAC takes keys of any length: this cannot fail.
            let Ok(mut m) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
                return Vec::new();
            };
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Self::Sha256 => run::<Hmac<Sha256>>(key, parts),
            Self::Sha384 => run::<Hmac<Sha384>>(key, parts),
            Self::Sha512 => run::<Hmac<Sha512>>(key, parts),
        }
    }

    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha384 => Sha384::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// Why a `DHHC-1` secret does not parse.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SecretError {
    /// Not `DHHC-1:XX:BASE64:`.
    #[error("not a DHHC-1 secret (DHHC-1:<00..03>:<base64>:)")]
    Format,
    /// The transformation field is not 00 to 03.
    #[error("unknown key transformation {0:?} (00 none, 01 SHA-256, 02 SHA-384, 03 SHA-512)")]
    Transform(String),
    /// The key is not base64.
    #[error("the key is not valid base64")]
    Base64,
    /// The key is not 32, 48 or 64 bytes, or not the transformation hash's length.
    #[error("a {0}-byte key: keys are 32, 48 or 64 bytes, as long as the transformation hash")]
    Length(usize),
    /// The CRC-32 after the key does not match it.
    #[error("the key's CRC-32 does not match (mistyped?)")]
    Crc,
}

/// A DH-HMAC-CHAP secret. Its bytes never appear in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
    transform: Option<HashFn>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.key.len())
    }
}

impl Secret {
    /// Parses `DHHC-1:XX:BASE64:` where XX is the transformation hash (00 for none) and the
    /// base64 holds the key followed by its little-endian CRC-32.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let rest = text
            .trim()
            .strip_prefix("DHHC-1:")
            .ok_or(SecretError::Format)?;
        let (xx, b64) = rest.split_once(':').ok_or(SecretError::Format)?;
        let b64 = b64.strip_suffix(':').unwrap_or(b64);
        let transform = match xx {
            "00" => None,
            "01" => Some(HashFn::Sha256),
            "02" => Some(HashFn::Sha384),
            "03" => Some(HashFn::Sha512),
            other => return Err(SecretError::Transform(other.to_owned())),
        };
        // Limit before decoding: the longest key is 64 bytes plus 4 of CRC.
        if b64.len() > 128 {
            return Err(SecretError::Length(b64.len() * 3 / 4));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| SecretError::Base64)?;
        let n = raw.len().saturating_sub(4);
        if !matches!(n, 32 | 48 | 64) || transform.is_some_and(|h| h.size() != n) {
            return Err(SecretError::Length(n));
        }
        let (key, crc) = raw.split_at(n);
        if crc32fast::hash(key).to_le_bytes() != crc {
            return Err(SecretError::Crc);
        }
        Ok(Self {
            key: key.to_vec(),
            transform,
        })
    }

    /// The `DHHC-1` text of a key (used by tests and tools that make keys).
    pub fn encode(key: &[u8], transform: Option<HashFn>) -> String {
        let mut raw = key.to_vec();
        raw.extend_from_slice(&crc32fast::hash(key).to_le_bytes());
        let xx = transform.map_or(0, HashFn::id);
        format!(
            "DHHC-1:{xx:02}:{}:",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    /// The key the HMAC uses for `nqn`: the secret itself, or HMAC(secret, NQN ||
    /// "NVMe-over-Fabrics") with the transformation hash. A host key is transformed with
    /// the host NQN, a controller key with the subsystem NQN.
    pub fn transformed(&self, nqn: &str) -> Vec<u8> {
        match self.transform {
            None => self.key.clone(),
            Some(h) => h.hmac(&self.key, &[nqn.as_bytes(), b"NVMe-over-Fabrics"]),
        }
    }
}

/// The identities and counters one DH-HMAC-CHAP response covers.
#[derive(Clone, Copy, Debug)]
pub struct Transcript<'a> {
    /// Sequence number (S1 for the host's response, S2 for the controller's).
    pub seqnum: u32,
    /// Transaction identifier.
    pub t_id: u16,
    /// Secure channel concatenation byte (host response only; 0 otherwise).
    pub sc_c: u8,
    /// Host NQN.
    pub hostnqn: &'a str,
    /// Subsystem NQN.
    pub subnqn: &'a str,
}

/// The challenge the response hashes: the challenge itself, or with a DH exchange
/// HMAC(H(session key), challenge).
pub fn augmented(hash: HashFn, session_key: Option<&[u8]>, challenge: &[u8]) -> Vec<u8> {
    match session_key {
        None => challenge.to_vec(),
        Some(k) => hash.hmac(&hash.digest(k), &[challenge]),
    }
}

/// The host's response to challenge C1 (already augmented): HMAC(Kh, C1 || S1 || T_ID ||
/// SC_C || "HostHost" || NQNh || 00h || NQNc).
pub fn host_response(hash: HashFn, key: &[u8], challenge: &[u8], t: &Transcript<'_>) -> Vec<u8> {
    hash.hmac(
        key,
        &[
            challenge,
            &t.seqnum.to_le_bytes(),
            &t.t_id.to_le_bytes(),
            &[t.sc_c],
            b"HostHost",
            t.hostnqn.as_bytes(),
            &[0],
            t.subnqn.as_bytes(),
        ],
    )
}

/// The controller's response to challenge C2 (already augmented): HMAC(Kc, C2 || S2 ||
/// T_ID || 00h || "Controller" || NQNc || 00h || NQNh).
pub fn ctrl_response(hash: HashFn, key: &[u8], challenge: &[u8], t: &Transcript<'_>) -> Vec<u8> {
    hash.hmac(
        key,
        &[
            challenge,
            &t.seqnum.to_le_bytes(),
            &t.t_id.to_le_bytes(),
            &[0],
            b"Controller",
            t.subnqn.as_bytes(),
            &[0],
            t.hostnqn.as_bytes(),
        ],
    )
}

/// Compares two responses in time that does not depend on where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_gen_dhchap_key_prints() {
        // `nvme gen-dhchap-key --key-length=32 --hmac=1 -n nqn.2014-08.org.nvmexpress:uuid:x`
        // style: a 32-byte key, SHA-256 transformation.
        let key: Vec<u8> = (0u8..32).collect();
        let text = Secret::encode(&key, Some(HashFn::Sha256));
        assert!(text.starts_with("DHHC-1:01:") && text.ends_with(':'));
        let s = Secret::parse(&text).unwrap();
        assert_eq!(s.key, key);
        assert_eq!(s.transform, Some(HashFn::Sha256));
        assert!(
            !format!("{s:?}").contains("0, 1, 2"),
            "Debug redacts the key"
        );
    }

    #[test]
    fn refuses_bad_secrets() {
        let key = [7u8; 48];
        let good = Secret::encode(&key, None);
        assert!(Secret::parse(&good).is_ok());
        assert_eq!(Secret::parse("DHHC-2:00:abcd:"), Err(SecretError::Format));
        let wrong_hash = good.replace("DHHC-1:00:", "DHHC-1:01:");
        assert_eq!(Secret::parse(&wrong_hash), Err(SecretError::Length(48)));
        let bad_xx = good.replace("DHHC-1:00:", "DHHC-1:07:");
        assert!(matches!(
            Secret::parse(&bad_xx),
            Err(SecretError::Transform(_))
        ));
        // Flip one key bit: the CRC catches it.
        let mut raw = key.to_vec();
        raw.extend_from_slice(&crc32fast::hash(&key).to_le_bytes());
        raw[3] ^= 1;
        let flipped = format!(
            "DHHC-1:00:{}:",
            base64::engine::general_purpose::STANDARD.encode(&raw)
        );
        assert_eq!(Secret::parse(&flipped), Err(SecretError::Crc));
        assert_eq!(Secret::parse("DHHC-1:00:!!!!:"), Err(SecretError::Base64));
        let short = Secret::encode(&[1u8; 16], None);
        assert_eq!(Secret::parse(&short), Err(SecretError::Length(16)));
    }

    #[test]
    fn transformation_binds_the_nqn() {
        let s = Secret::parse(&Secret::encode(&[9u8; 32], Some(HashFn::Sha256))).unwrap();
        let a = s.transformed("nqn.a");
        assert_eq!(a.len(), 32);
        assert_ne!(a, s.transformed("nqn.b"));
        assert_ne!(a, vec![9u8; 32]);
        let plain = Secret::parse(&Secret::encode(&[9u8; 32], None)).unwrap();
        assert_eq!(plain.transformed("nqn.a"), vec![9u8; 32]);
    }

    #[test]
    fn hmac_sha256_known_answer() {
        // RFC 4231 test case 2.
        let mac = HashFn::Sha256.hmac(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            mac[..8],
            [0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e],
            "HMAC-SHA-256"
        );
    }

    #[test]
    fn responses_differ_by_role_and_transaction() {
        let t = Transcript {
            seqnum: 1,
            t_id: 2,
            sc_c: 0,
            hostnqn: "h",
            subnqn: "s",
        };
        let h = host_response(HashFn::Sha384, b"k", &[1; 48], &t);
        assert_eq!(h.len(), 48);
        assert_ne!(h, ctrl_response(HashFn::Sha384, b"k", &[1; 48], &t));
        let t2 = Transcript { t_id: 3, ..t };
        assert_ne!(h, host_response(HashFn::Sha384, b"k", &[1; 48], &t2));
        assert!(same(&h, &h.clone()) && !same(&h, &h[..47]));
        assert_ne!(
            augmented(HashFn::Sha256, Some(b"sk"), &[0; 32]),
            vec![0; 32]
        );
    }
}
