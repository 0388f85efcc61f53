//! Helpers shared by the black-box tests of the `baton` binary.
#![allow(dead_code)]

use std::net::SocketAddr;

/// A loopback address with a port free right now.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A port free right now.
pub fn free_port() -> u16 {
    free_addr().port()
}
