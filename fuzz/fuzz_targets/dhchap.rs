//! DH-HMAC-CHAP parsing: the `DHHC-1` secret text (`nvme_target::auth::Secret`), and the
//! host's handling of a controller's Challenge and Success1 (`nvme_target::host::
//! HostExchange`), where a hostile controller picks the hash, the DH group and the DH value.
//! Any bytes give an error or a well-formed message, never a panic; a parsed secret
//! re-encodes to text that parses to it. (The target's side of the exchange is reached
//! through `nvme_conn`.)
//!
//! Input: the first byte picks the parser (even: secret text, odd: controller messages),
//! the rest is its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvme_target::auth::Secret;
use nvme_target::host::{Dhchap, HostExchange};

/// A host key and a controller key, as `nvme gen-dhchap-key` prints them.
const KEY: &str = "DHHC-1:00:nzQyGoB2tG6k4QXJ9MSbg3WTmAs0QmItr2jX2WfAercscsIq:";
const CTRL_KEY: &str = "DHHC-1:01:s3kqwrZlE0XAzs5jg++NfK2FwfBuVkVDAf4zKkQVLzX5wKAr:";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(s) = Secret::parse(&String::from_utf8_lossy(rest)) {
            let _ = s.transformed("nqn.2014-08.org.nvmexpress:uuid:fuzz");
        }
        return;
    }
    let (Ok(key), Ok(ctrl)) = (Secret::parse(KEY), Secret::parse(CTRL_KEY)) else {
        return;
    };
    let mut d = Dhchap::new(key);
    d.ctrl_key = (mode & 2 != 0).then_some(ctrl);
    let mut x = HostExchange::new(&d, "nqn.2014-08.org.nvmexpress:uuid:fuzz", "nqn.fuzz:sub", 0);
    // The same bytes as a Challenge, then (after a genuine-looking reply) as Success1.
    if let Ok(reply) = x.reply(rest) {
        assert!(reply.len() >= 16, "a reply has its header");
    }
    let _ = x.success1(rest);
});
