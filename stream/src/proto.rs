//! Wire formats of the stream service.
//!
//! Control channel (coordinator port): newline-delimited JSON requests and replies, at most
//! [`MAX_LINE`] bytes a line; `put` is followed by exactly `size` raw bytes.
//! Data channels (one per controller): the client sends an [`Attach`] (40 bytes), then reads
//! framed blocks: a [`FRAME_HEADER`]-byte header (magic, epoch, sequence number, length,
//! CRC32C of the payload) and the payload.

use serde::{Deserialize, Serialize};

/// Longest control line accepted.
pub const MAX_LINE: usize = 4096;
/// Longest reply line a client accepts (a listing page is built to fit, see [`LIST_PAGE`]).
pub const MAX_REPLY: usize = 256 * 1024;
/// Items in one listing page: at most 255-byte names whose JSON escaping at most doubles
/// them, so a page stays well under [`MAX_REPLY`] whatever the names.
pub const LIST_PAGE: usize = 256;
/// Data frame magic ("BTNB").
pub const FRAME_MAGIC: u32 = 0x424e_5442;
/// Error frame magic ("BTNE"): the session failed at block `seq`; `len` carries the
/// HTTP-like code and no payload follows.
pub const ERROR_MAGIC: u32 = 0x454e_5442;
/// Data frame header length.
pub const FRAME_HEADER: usize = 24;
/// Attach message magic ("BTNA").
pub const ATTACH_MAGIC: u32 = 0x414e_5442;
/// Attach message length.
pub const ATTACH_LEN: usize = 40;

/// A control request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Request {
    /// Open a streaming session.
    Open {
        /// Item name.
        name: String,
        /// First byte.
        #[serde(default)]
        offset: u64,
        /// Bytes (absent: to the end).
        #[serde(default)]
        length: Option<u64>,
        /// Pacing in bits per second (absent: as fast as the client reads).
        #[serde(default)]
        rate: Option<u64>,
    },
    /// Store an item. The coordinator answers [`Reply::Continue`] once the space is
    /// reserved (or an error), then `size` raw bytes follow, then the final reply.
    Put {
        /// Item name.
        name: String,
        /// Bytes that follow.
        size: u64,
        /// Replace an item of that name (atomically) instead of refusing with 409.
        #[serde(default)]
        replace: bool,
    },
    /// List items, one page of at most [`LIST_PAGE`] in name order.
    List {
        /// Only names after this one (the last name of the previous page).
        #[serde(default)]
        after: Option<String>,
    },
    /// Remove an item.
    Remove {
        /// Item name.
        name: String,
    },
}

/// One item in a listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ItemInfo {
    /// Name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// CRC32C of the content.
    pub crc32c: u32,
    /// Seconds since the Unix epoch at commit.
    pub created: u64,
}

/// Which controller sends each block from `from_block` on: block `k` goes to
/// `controllers[(k - from_block) % controllers.len()]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Plan {
    /// Plan generation (re-plans increase it).
    pub epoch: u32,
    /// First block this plan covers.
    pub from_block: u64,
    /// Controller indexes, in turn order.
    pub controllers: Vec<usize>,
}

impl Plan {
    /// The controller of block `k` (`k >= from_block`); `usize::MAX` (no controller) for an
    /// empty plan, which [`Plan::check`] refuses.
    pub fn controller(&self, k: u64) -> usize {
        let n = self.controllers.len().max(1) as u64;
        let i = usize::try_from(k.saturating_sub(self.from_block) % n).unwrap_or(0);
        self.controllers.get(i).copied().unwrap_or(usize::MAX)
    }

    /// Whether a plan received from the wire can be followed over `controllers` data ports.
    pub fn check(&self, controllers: usize) -> Result<(), String> {
        if self.controllers.is_empty() {
            return Err("a plan without controllers".into());
        }
        if let Some(c) = self.controllers.iter().find(|&&c| c >= controllers) {
            return Err(format!("plan names unknown controller {c}"));
        }
        Ok(())
    }
}

/// A session as the client needs it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionInfo {
    /// Session ID.
    pub session: u64,
    /// Secret to present on every data channel (hex).
    pub secret: String,
    /// Total bytes the session delivers.
    pub length: u64,
    /// Item size.
    pub size: u64,
    /// Blocks the session sends.
    pub blocks: u64,
    /// Bytes per block (the first and last may be shorter).
    pub block_size: u64,
    /// Data port of each controller, by index.
    pub data_ports: Vec<u16>,
    /// The plan.
    pub plan: Plan,
}

/// A control reply (one line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "reply")]
pub enum Reply {
    /// A session is open; attach data channels now.
    Session(SessionInfo),
    /// The plan changed (a controller failed or stalled).
    Replan(Plan),
    /// The session delivered everything.
    Done,
    /// One page of items.
    Items {
        /// The items.
        items: Vec<ItemInfo>,
        /// More items follow the last one (ask again with `after`).
        #[serde(default)]
        more: bool,
    },
    /// The put's space is reserved: send the bytes.
    Continue,
    /// Success.
    Ok {
        /// What happened.
        message: String,
    },
    /// Failure, with an HTTP-like code (400 bad request, 404 unknown content, 409, 416 bad
    /// range, 503 no capacity, 500 internal).
    Error {
        /// Code.
        code: u16,
        /// Why.
        message: String,
    },
}

/// The first message on a data channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attach {
    /// Session ID.
    pub session: u64,
    /// Session secret.
    pub secret: [u8; 16],
}

impl Attach {
    /// Encodes the message.
    pub fn encode(&self) -> [u8; ATTACH_LEN] {
        let mut b = [0u8; ATTACH_LEN];
        b[0..4].copy_from_slice(&ATTACH_MAGIC.to_le_bytes());
        b[8..16].copy_from_slice(&self.session.to_le_bytes());
        b[16..32].copy_from_slice(&self.secret);
        b
    }

    /// Decodes the message.
    pub fn decode(b: &[u8; ATTACH_LEN]) -> Option<Self> {
        if u32::from_le_bytes([b[0], b[1], b[2], b[3]]) != ATTACH_MAGIC {
            return None;
        }
        let mut s = [0u8; 8];
        s.copy_from_slice(&b[8..16]);
        let mut secret = [0u8; 16];
        secret.copy_from_slice(&b[16..32]);
        Some(Self {
            session: u64::from_le_bytes(s),
            secret,
        })
    }
}

/// A data frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// A block, or the session's failure.
    pub kind: FrameKind,
    /// Plan epoch the block was sent under.
    pub epoch: u32,
    /// Block sequence number within the session.
    pub seq: u64,
    /// Payload bytes.
    pub len: u32,
    /// CRC32C of the payload.
    pub crc: u32,
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A block: `len` payload bytes follow.
    Block,
    /// The session failed (device read error, ...): `len` is the code, nothing follows.
    Error,
}

impl FrameHeader {
    /// An error frame for block `seq` with an HTTP-like `code`.
    pub fn error(epoch: u32, seq: u64, code: u16) -> Self {
        Self {
            kind: FrameKind::Error,
            epoch,
            seq,
            len: u32::from(code),
            crc: 0,
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; FRAME_HEADER] {
        let mut b = [0u8; FRAME_HEADER];
        let magic = match self.kind {
            FrameKind::Block => FRAME_MAGIC,
            FrameKind::Error => ERROR_MAGIC,
        };
        b[0..4].copy_from_slice(&magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.epoch.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b[20..24].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// Decodes a header.
    pub fn decode(b: &[u8; FRAME_HEADER]) -> Option<Self> {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let kind = match w(0) {
            FRAME_MAGIC => FrameKind::Block,
            ERROR_MAGIC => FrameKind::Error,
            _ => return None,
        };
        let mut s = [0u8; 8];
        s.copy_from_slice(&b[8..16]);
        Some(Self {
            kind,
            epoch: w(4),
            seq: u64::from_le_bytes(s),
            len: w(16),
            crc: w(20),
        })
    }
}

/// Parses one control request line (without its newline), the coordinator's first step
/// with every line it reads; public for fuzzing.
pub fn parse_request(line: &[u8]) -> Result<Request, serde_json::Error> {
    serde_json::from_slice(line)
}

/// Parses one control reply line, the client's first step with every line it reads;
/// public for fuzzing.
pub fn parse_reply(line: &[u8]) -> Result<Reply, serde_json::Error> {
    serde_json::from_slice(line)
}

/// Hex encoding of a secret.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a 32-digit hex secret.
pub fn unhex(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_attach_round_trip() {
        let h = FrameHeader {
            kind: FrameKind::Block,
            epoch: 3,
            seq: 1 << 40,
            len: 262_144,
            crc: 0xdead_beef,
        };
        assert_eq!(FrameHeader::decode(&h.encode()), Some(h));
        let mut bad = h.encode();
        bad[0] ^= 1;
        assert_eq!(FrameHeader::decode(&bad), None);
        let e = FrameHeader::error(2, 7, 500);
        assert_eq!(FrameHeader::decode(&e.encode()), Some(e));
        let a = Attach {
            session: 42,
            secret: [7; 16],
        };
        assert_eq!(Attach::decode(&a.encode()), Some(a));
        assert_eq!(unhex(&hex(&[0xab; 16])), Some([0xab; 16]));
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn plans_rotate_from_their_first_block() {
        let p = Plan {
            epoch: 1,
            from_block: 10,
            controllers: vec![2, 0],
        };
        assert_eq!(p.controller(10), 2);
        assert_eq!(p.controller(11), 0);
        assert_eq!(p.controller(12), 2);
        assert_eq!(p.check(3), Ok(()));
        assert!(p.check(2).is_err());
        let empty = Plan {
            epoch: 1,
            from_block: 0,
            controllers: vec![],
        };
        assert_eq!(empty.controller(5), usize::MAX);
        assert!(empty.check(4).is_err());
    }

    #[test]
    fn requests_parse_from_json_lines() {
        let r: Request =
            serde_json::from_str(r#"{"op":"open","name":"a.ts","rate":4000000}"#).unwrap();
        assert_eq!(
            r,
            Request::Open {
                name: "a.ts".into(),
                offset: 0,
                length: None,
                rate: Some(4_000_000)
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"format"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"list"}"#).unwrap(),
            Request::List { after: None }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"put","name":"a","size":3}"#).unwrap(),
            Request::Put {
                name: "a".into(),
                size: 3,
                replace: false
            }
        );
    }

    #[test]
    fn a_listing_page_of_the_longest_names_fits_a_reply_line() {
        // The worst name for JSON: 255 bytes that all need escaping.
        let name = "\"".repeat(crate::store::MAX_NAME);
        let items = (0..LIST_PAGE)
            .map(|_| ItemInfo {
                name: name.clone(),
                size: u64::MAX,
                crc32c: u32::MAX,
                created: u64::MAX,
            })
            .collect();
        let line = serde_json::to_vec(&Reply::Items { items, more: true }).unwrap();
        assert!(line.len() < MAX_REPLY, "{} bytes", line.len());
    }
}
