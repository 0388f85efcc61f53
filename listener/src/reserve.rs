//! A reserve descriptor: when the process has run out of descriptors, closing it makes room to
//! accept one pending connection and close it at once, so peers are refused instead of
//! waiting in the backlog while the accept loop backs off.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use nix::sys::socket::{SockFlag, accept4};
use tokio::net::TcpListener;

static RESERVE: Mutex<Option<File>> = Mutex::new(None);

/// Opens the reserve if it is not open (called when a listener is created).
pub(crate) fn ensure() {
    let mut r = RESERVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if r.is_none() {
        *r = File::open("/dev/null").ok();
    }
}

/// Refuses one pending connection of `listener` through the reserve descriptor; true if one
/// was refused. Runs only on the error path (the process is out of descriptors).
pub(crate) fn refuse_one(listener: &TcpListener) -> bool {
    let mut r = RESERVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(reserve) = r.take() else {
        return false;
    };
    drop(reserve);
    let refused = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
        Ok(fd) => nix::unistd::close(fd).is_ok(),
        Err(_) => false,
    };
    *r = File::open("/dev/null").ok();
    refused
}
