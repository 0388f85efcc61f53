//! Stream client: the control requests (`put`, `ls`, `rm`) and `fetch`, which opens a
//! session, attaches one data channel per planned controller with the session secret, and
//! reads the blocks in plan order, checking sequence numbers and CRC32C, following re-plans.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::proto::{
    Attach, FRAME_HEADER, FrameHeader, FrameKind, ItemInfo, MAX_REPLY, Plan, Reply, Request,
    SessionInfo, unhex,
};

/// How long the client waits for the appliance's answer to a request or an attach.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong for the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Network.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The appliance refused (HTTP-like code).
    #[error("{message} ({code})")]
    Refused {
        /// Code: 400, 404, 416, 503, ...
        code: u16,
        /// Why.
        message: String,
    },
    /// The appliance broke the protocol or the data is damaged.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// A control connection.
struct Control {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Control {
    async fn connect(addr: SocketAddr) -> Result<Self, ClientError> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (rd, wr) = s.into_split();
        Ok(Self {
            rd: BufReader::new(rd),
            wr,
        })
    }

    async fn send(&mut self, r: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(r).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.wr.write_all(&line).await?;
        Ok(())
    }

    /// The next reply, within [`REPLY_TIMEOUT`].
    async fn reply_within(&mut self) -> Result<Reply, ClientError> {
        tokio::time::timeout(REPLY_TIMEOUT, self.reply())
            .await
            .map_err(|_| ClientError::Protocol("the appliance did not answer in time".into()))?
    }

    async fn reply(&mut self) -> Result<Reply, ClientError> {
        let mut line = Vec::new();
        let n = (&mut self.rd)
            .take(MAX_REPLY as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(ClientError::Protocol(
                "the appliance closed the control connection".into(),
            ));
        }
        if !line.ends_with(b"\n") {
            return Err(ClientError::Protocol(format!(
                "reply longer than {MAX_REPLY} bytes"
            )));
        }
        let r: Reply = super::proto::parse_reply(&line)
            .map_err(|e| ClientError::Protocol(format!("bad reply: {e}")))?;
        if let Reply::Error { code, message } = r {
            return Err(ClientError::Refused { code, message });
        }
        Ok(r)
    }
}

/// A client of one appliance's stream service.
#[derive(Debug, Clone, Copy)]
pub struct StreamClient {
    control: SocketAddr,
}

/// What a fetch delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchStats {
    /// Bytes written.
    pub bytes: u64,
    /// Blocks read.
    pub blocks: u64,
    /// Re-plans followed.
    pub replans: u32,
}

/// One data channel: frames read by its own task, and the way to hand their buffers back
/// for reuse (so a long stream does not allocate per block).
struct Frames {
    rx: mpsc::Receiver<Result<(FrameHeader, Vec<u8>), ClientError>>,
    free: mpsc::UnboundedSender<Vec<u8>>,
}

impl StreamClient {
    /// A client of the coordinator at `control`.
    pub fn new(control: SocketAddr) -> Self {
        Self { control }
    }

    /// Lists the stored items (page by page, so any catalog size works).
    pub async fn list(&self) -> Result<Vec<ItemInfo>, ClientError> {
        let mut c = Control::connect(self.control).await?;
        let mut all: Vec<ItemInfo> = Vec::new();
        loop {
            let after = all.last().map(|i| i.name.clone());
            c.send(&Request::List {
                after: after.clone(),
            })
            .await?;
            match c.reply_within().await? {
                Reply::Items { items, more } => {
                    if more && items.is_empty() {
                        return Err(ClientError::Protocol(
                            "an empty page with more to come".into(),
                        ));
                    }
                    if let (Some(a), Some(first)) = (after.as_deref(), items.first()) {
                        if first.name.as_str() <= a {
                            return Err(ClientError::Protocol("listing pages out of order".into()));
                        }
                    }
                    all.extend(items);
                    if !more {
                        return Ok(all);
                    }
                }
                r => return Err(ClientError::Protocol(format!("unexpected reply {r:?}"))),
            }
        }
    }

    /// Removes an item.
    pub async fn remove(&self, name: &str) -> Result<String, ClientError> {
        let mut c = Control::connect(self.control).await?;
        c.send(&Request::Remove { name: name.into() }).await?;
        match c.reply_within().await? {
            Reply::Ok { message } => Ok(message),
            r => Err(ClientError::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// Stores `size` bytes from `src` as `name`, refused (409) if the name exists;
    /// `progress` sees the bytes sent so far.
    pub async fn put(
        &self,
        name: &str,
        size: u64,
        src: impl AsyncRead + Unpin,
        progress: impl FnMut(u64),
    ) -> Result<String, ClientError> {
        self.store(name, size, false, src, progress).await
    }

    /// Like [`StreamClient::put`], but an existing item of that name is replaced
    /// atomically (sessions reading the old one finish on the old bytes).
    pub async fn replace(
        &self,
        name: &str,
        size: u64,
        src: impl AsyncRead + Unpin,
        progress: impl FnMut(u64),
    ) -> Result<String, ClientError> {
        self.store(name, size, true, src, progress).await
    }

    async fn store(
        &self,
        name: &str,
        size: u64,
        replace: bool,
        mut src: impl AsyncRead + Unpin,
        mut progress: impl FnMut(u64),
    ) -> Result<String, ClientError> {
        let mut c = Control::connect(self.control).await?;
        c.send(&Request::Put {
            name: name.into(),
            size,
            replace,
        })
        .await?;
        // Nothing is sent before the appliance has reserved the space.
        match c.reply_within().await? {
            Reply::Continue => {}
            r => return Err(ClientError::Protocol(format!("unexpected reply {r:?}"))),
        }
        let mut buf = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        while sent < size {
            let want = usize::try_from(size - sent)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = src.read(&mut buf[..want]).await?;
            if n == 0 {
                return Err(ClientError::Protocol(format!(
                    "input ended after {sent} of {size} bytes"
                )));
            }
            if let Err(e) = c.wr.write_all(&buf[..n]).await {
                // The appliance stopped taking data: its reason is on the control
                // connection, and it says more than the broken pipe.
                return Err(match c.reply_within().await {
                    Err(refused @ ClientError::Refused { .. }) => refused,
                    _ => e.into(),
                });
            }
            sent += n as u64;
            progress(sent);
        }
        match c.reply_within().await? {
            Reply::Ok { message } => Ok(message),
            r => Err(ClientError::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// Streams `name` (from `offset`, `length` bytes or to the end, paced at `rate` bits/s)
    /// into `out`; `progress` sees the session length, then the bytes written so far.
    pub async fn fetch(
        &self,
        name: &str,
        offset: u64,
        length: Option<u64>,
        rate: Option<u64>,
        mut out: impl AsyncWrite + Unpin,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<FetchStats, ClientError> {
        let mut c = Control::connect(self.control).await?;
        c.send(&Request::Open {
            name: name.into(),
            offset,
            length,
            rate,
        })
        .await?;
        let info: SessionInfo = match c.reply_within().await? {
            Reply::Session(i) => i,
            r => return Err(ClientError::Protocol(format!("unexpected reply {r:?}"))),
        };
        let secret =
            unhex(&info.secret).ok_or_else(|| ClientError::Protocol("bad secret".into()))?;
        info.plan
            .check(info.data_ports.len())
            .map_err(ClientError::Protocol)?;
        if info.block_size == 0 || info.block_size > 1 << 30 {
            // Frame buffers are sized by it.
            return Err(ClientError::Protocol(format!(
                "block size {} out of range",
                info.block_size
            )));
        }
        if info.blocks == 0 {
            // Nothing to send: no data channels, the coordinator says Done at once.
            return match c.reply_within().await? {
                Reply::Done => Ok(FetchStats {
                    bytes: 0,
                    blocks: 0,
                    replans: 0,
                }),
                r => Err(ClientError::Protocol(format!("unexpected reply {r:?}"))),
            };
        }
        let mut channels: Vec<Option<Frames>> = (0..info.data_ports.len()).map(|_| None).collect();
        let mut planned: Vec<usize> = info.plan.controllers.clone();
        planned.sort_unstable();
        planned.dedup();
        for &i in &planned {
            let port = *info.data_ports.get(i).ok_or_else(|| {
                ClientError::Protocol(format!("plan names unknown controller {i}"))
            })?;
            let addr = SocketAddr::new(self.control.ip(), port);
            channels[i] = Some(attach(addr, info.session, secret, info.block_size).await?);
        }
        // Control replies (re-plans, done, errors) arrive while blocks are read.
        let (ctl_tx, mut ctl_rx) = mpsc::channel(8);
        let mut ctl = c;
        tokio::spawn(async move {
            loop {
                let r = ctl.reply().await;
                let end = r.is_err() || matches!(r, Ok(Reply::Done));
                if ctl_tx.send(r).await.is_err() || end {
                    // Keep the control connection open until the fetch ends: closing it
                    // cancels the session.
                    let _ = ctl_tx.closed().await;
                    return;
                }
            }
        });
        progress(info.length, 0);
        let mut plan: Plan = info.plan.clone();
        let mut stats = FetchStats {
            bytes: 0,
            blocks: 0,
            replans: 0,
        };
        // Every wait has a deadline: no block and no control message for this long (four
        // block times of a paced stream, at least the reply timeout) is a dead appliance.
        let block_time = rate.filter(|&r| r > 0).map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(info.block_size as f64 * 8.0 / r as f64)
        });
        let idle = REPLY_TIMEOUT.max(block_time * 4);
        // The appliance may say Done before the last frame is read here.
        let mut done = false;
        let mut k = 0u64;
        while k < info.blocks {
            let c = plan.controller(k);
            let frames = channels.get_mut(c).and_then(Option::as_mut);
            let next = async {
                match frames {
                    Some(f) => {
                        f.rx.recv()
                            .await
                            .map(|r| r.map(|(h, p)| (h, p, f.free.clone())))
                    }
                    // Not attached: only a re-plan can help.
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = tokio::time::sleep(idle) => {
                    return Err(ClientError::Protocol(format!(
                        "no block {k} and no word from the appliance for {} s",
                        idle.as_secs()
                    )));
                }
                r = ctl_rx.recv() => match r {
                    Some(Ok(Reply::Replan(p))) => {
                        p.check(channels.len()).map_err(ClientError::Protocol)?;
                        if p.controllers.iter().any(|&i| channels.get(i).is_none_or(Option::is_none)) {
                            return Err(ClientError::Protocol("re-plan onto a controller without a data channel".into()));
                        }
                        plan = p;
                        stats.replans += 1;
                    }
                    Some(Ok(Reply::Done)) => done = true,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Err(ClientError::Protocol("control connection lost".into())),
                },
                f = next => match f {
                    Some(Ok((h, payload, free))) => {
                        if h.epoch < plan.epoch || h.seq < k {
                            // Sent under an older plan, and re-sent since: skip.
                            let _ = free.send(payload);
                            continue;
                        }
                        if h.seq != k {
                            return Err(ClientError::Protocol(format!("expected block {k}, got {}", h.seq)));
                        }
                        out.write_all(&payload).await?;
                        stats.bytes += payload.len() as u64;
                        let _ = free.send(payload);
                        stats.blocks += 1;
                        k += 1;
                        progress(info.length, stats.bytes);
                    }
                    Some(Err(e)) => return Err(e),
                    None => {
                        // The controller's channel closed: wait for the re-plan.
                        channels[c] = None;
                    }
                }
            }
        }
        out.flush().await?;
        if stats.bytes != info.length {
            return Err(ClientError::Protocol(format!(
                "got {} of {} bytes",
                stats.bytes, info.length
            )));
        }
        // Every byte is here and verified. Wait for the appliance's Done before closing,
        // so the session ends as finished there too; meanwhile keep reading the data
        // channels (a re-planned controller may still re-send a block), or a full channel
        // would stall it. Frames read now are duplicates and are dropped.
        if done {
            return Ok(stats);
        }
        let mut drain = tokio::task::JoinSet::new();
        for f in channels.into_iter().flatten() {
            let mut rx = f.rx;
            drain.spawn(async move { while rx.recv().await.is_some() {} });
        }
        let _ = tokio::time::timeout(REPLY_TIMEOUT, async {
            while let Some(r) = ctl_rx.recv().await {
                if !matches!(r, Ok(Reply::Replan(_))) {
                    return;
                }
            }
        })
        .await;
        drain.abort_all();
        Ok(stats)
    }
}

async fn attach(
    addr: SocketAddr,
    session: u64,
    secret: [u8; 16],
    block_size: u64,
) -> Result<Frames, ClientError> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(&Attach { session, secret }.encode()).await?;
    let mut ack = [0u8; 1];
    tokio::time::timeout(REPLY_TIMEOUT, s.read_exact(&mut ack))
        .await
        .map_err(|_| ClientError::Protocol("attach timed out".into()))??;
    if ack[0] != 0 {
        return Err(ClientError::Refused {
            code: 403,
            message: "data channel refused (wrong session or secret)".into(),
        });
    }
    let (tx, rx) = mpsc::channel(2);
    let (free, mut recycled) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut s = s;
        loop {
            let mut h = [0u8; FRAME_HEADER];
            if s.read_exact(&mut h).await.is_err() {
                return;
            }
            let r = match FrameHeader::decode(&h) {
                Some(h) if h.kind == FrameKind::Error => Err(ClientError::Refused {
                    code: u16::try_from(h.len).unwrap_or(500),
                    message: format!("the appliance failed the session at block {}", h.seq),
                }),
                Some(h) if u64::from(h.len) <= block_size => {
                    let mut payload = recycled.try_recv().unwrap_or_default();
                    payload.resize(h.len as usize, 0);
                    match s.read_exact(&mut payload).await {
                        Ok(_) if crc32c::crc32c(&payload) == h.crc => Ok((h, payload)),
                        Ok(_) => Err(ClientError::Protocol(format!(
                            "block {} failed its CRC32C",
                            h.seq
                        ))),
                        Err(_) => return,
                    }
                }
                _ => Err(ClientError::Protocol("bad frame header".into())),
            };
            let stop = r.is_err();
            if tx.send(r).await.is_err() || stop {
                return;
            }
        }
    });
    Ok(Frames { rx, free })
}
