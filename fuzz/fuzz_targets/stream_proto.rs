//! The stream service's wire formats: control requests (what the coordinator parses from
//! every line) and replies (what the client parses), including the plans a client follows,
//! the 40-byte ATTACH and the 24-byte frame header. Any bytes give a value or an error,
//! never a panic; what parses re-encodes to itself.
#![no_main]

use stream::proto::{
    ATTACH_LEN, Attach, FRAME_HEADER, FrameHeader, Reply, parse_reply, parse_request, unhex,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(r) = parse_request(rest) {
                let again = serde_json::to_vec(&r).unwrap();
                assert_eq!(parse_request(&again).unwrap(), r);
            }
        }
        1 => {
            if let Ok(r) = parse_reply(rest) {
                // What a client does with a plan: check it, then look up controllers.
                let plans = match &r {
                    Reply::Session(info) => {
                        let _ = unhex(&info.secret);
                        vec![(&info.plan, info.data_ports.len())]
                    }
                    Reply::Replan(p) => vec![(p, 4)],
                    _ => vec![],
                };
                for (p, n) in plans {
                    let ok = p.check(n).is_ok();
                    for k in [0, 1, p.from_block, p.from_block.wrapping_add(7), u64::MAX] {
                        let c = p.controller(k);
                        assert!(!ok || c < n);
                    }
                }
            }
        }
        2 => {
            if let Ok(b) = <&[u8; ATTACH_LEN]>::try_from(rest.get(..ATTACH_LEN).unwrap_or(&[])) {
                if let Some(a) = Attach::decode(b) {
                    assert_eq!(Attach::decode(&a.encode()), Some(a));
                }
            }
        }
        _ => {
            if let Ok(b) = <&[u8; FRAME_HEADER]>::try_from(rest.get(..FRAME_HEADER).unwrap_or(&[])) {
                if let Some(h) = FrameHeader::decode(b) {
                    assert_eq!(FrameHeader::decode(&h.encode()), Some(h));
                }
            }
        }
    }
});
