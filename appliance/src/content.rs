//! `baton put`, `ls`, `rm` and `fetch`: the stream service's command line.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use stream::client::StreamClient;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn bar(len: u64) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{bytes:>10}/{total_bytes:10} {wide_bar} {binary_bytes_per_sec:>12} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// `baton put`: stores `file` (or standard input) under `name`; an existing item of that
/// name is refused unless `replace`.
pub fn put(
    stream: SocketAddr,
    file: &Path,
    name: Option<String>,
    replace: bool,
) -> anyhow::Result<()> {
    let rt = runtime()?;
    let c = StreamClient::new(stream);
    let store = |name: &str, size: u64, f: tokio::fs::File, progress: &dyn Fn(u64)| {
        rt.block_on(async {
            if replace {
                c.replace(name, size, f, progress).await
            } else {
                c.put(name, size, f, progress).await
            }
        })
    };
    let msg = if file == Path::new("-") {
        let name = name.context("--name is required when reading standard input")?;
        // The size must be known up front: spool standard input to a temporary file.
        let mut tmp = tempfile::tempfile()?;
        std::io::copy(&mut std::io::stdin().lock(), &mut tmp)?;
        let size = tmp.metadata()?.len();
        use std::io::Seek;
        tmp.rewind()?;
        store(&name, size, tokio::fs::File::from_std(tmp), &|_| {})?
    } else {
        let name = match name {
            Some(n) => n,
            None => file
                .file_name()
                .and_then(|n| n.to_str())
                .context("cannot derive a name from the path; use --name")?
                .to_owned(),
        };
        let f =
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        let size = f.metadata()?.len();
        let pb = bar(size);
        let r = store(&name, size, tokio::fs::File::from_std(f), &|n| {
            pb.set_position(n);
        });
        pb.finish_and_clear();
        r?
    };
    println!("{msg}");
    Ok(())
}

pub fn ls(stream: SocketAddr) -> anyhow::Result<()> {
    let items = runtime()?.block_on(StreamClient::new(stream).list())?;
    println!("{:<40} {:>14} {:>10}", "NAME", "BYTES", "CRC32C");
    for i in items {
        println!(
            "{:<40} {:>14} {:>10}",
            i.name,
            i.size,
            format!("{:08x}", i.crc32c)
        );
    }
    Ok(())
}

pub fn rm(stream: SocketAddr, name: &str) -> anyhow::Result<()> {
    println!(
        "{}",
        runtime()?.block_on(StreamClient::new(stream).remove(name))?
    );
    Ok(())
}

pub fn fetch(
    stream: SocketAddr,
    name: &str,
    output: &Path,
    offset: u64,
    length: Option<u64>,
    rate: Option<u64>,
) -> anyhow::Result<()> {
    let rt = runtime()?;
    let c = StreamClient::new(stream);
    let stats = if output == Path::new("-") {
        rt.block_on(c.fetch(name, offset, length, rate, tokio::io::stdout(), |_, _| {}))?
    } else {
        let f = std::fs::File::create(output)
            .with_context(|| format!("cannot create {}", output.display()))?;
        let pb = bar(0);
        let r = rt.block_on(c.fetch(
            name,
            offset,
            length,
            rate,
            tokio::fs::File::from_std(f),
            |len, n| {
                pb.set_length(len);
                pb.set_position(n);
            },
        ));
        pb.finish_and_clear();
        let stats = r?;
        eprintln!(
            "{}: {} bytes in {} blocks ({} re-plans)",
            output.display(),
            stats.bytes,
            stats.blocks,
            stats.replans
        );
        stats
    };
    let _ = stats;
    Ok(())
}
