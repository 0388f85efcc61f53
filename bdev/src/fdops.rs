//! Blocking positional operations on a file descriptor, shared by the engines that run
//! them: the RAM engine (a memfd: they finish at once) and the file engine's thread pool.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use nix::fcntl::{FallocateFlags, fallocate};

use crate::Op;

/// Zeroes written per call where the file system cannot zero a range itself.
const ZERO_CHUNK: usize = 1 << 20;

/// Runs one operation. `data` is the buffer's first `len` bytes for reads and writes.
pub(crate) fn run(file: &File, op: Op, offset: u64, len: u64, data: &mut [u8]) -> io::Result<()> {
    match op {
        Op::Read => file.read_exact_at(data, offset),
        Op::Write => file.write_all_at(data, offset),
        Op::Flush => file.sync_data(),
        Op::WriteZeroes => write_zeroes(file, offset, len),
        Op::Discard => {
            let mode = FallocateFlags::FALLOC_FL_KEEP_SIZE | FallocateFlags::FALLOC_FL_PUNCH_HOLE;
            // Deallocated blocks must read back as zeroes (DLFEAT): where holes are not
            // supported, writing zeroes keeps that promise.
            match falloc(file, mode, offset, len) {
                Ok(()) => Ok(()),
                Err(_) => write_zeroes(file, offset, len),
            }
        }
    }
}

fn write_zeroes(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let keep = FallocateFlags::FALLOC_FL_KEEP_SIZE;
    for mode in [
        keep | FallocateFlags::FALLOC_FL_ZERO_RANGE,
        keep | FallocateFlags::FALLOC_FL_PUNCH_HOLE,
    ] {
        if falloc(file, mode, offset, len).is_ok() {
            return Ok(());
        }
    }
    let zeroes = vec![0u8; ZERO_CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from((len - done).min(ZERO_CHUNK as u64))
            .map_err(|_| io::ErrorKind::InvalidInput)?;
        file.write_all_at(&zeroes[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

fn falloc(file: &File, mode: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
    let offset = i64::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    let len = i64::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
    fallocate(file.as_fd(), mode, offset, len).map_err(io::Error::from)
}
