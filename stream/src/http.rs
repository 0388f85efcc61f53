//! The HTTP face: `GET /content/{name}` (and HEAD) with single byte ranges. The coordinator
//! answers the headers; the client's socket then travels with the baton from controller to
//! controller, each writing its own block straight to the client. The session runs under
//! the same watchdog as a framed one ([`super::watchdog`]).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::debug;

use super::coordinator::CoordRef;
use super::http_head::{HeadError, MAX_HEAD, parse_head, parse_range, percent_decode};
use super::{Delivery, write_within};

/// What a refused connection gets when the HTTP listener is full.
pub(super) const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n";

pub(super) async fn serve(
    coord: CoordRef,
    mut l: listener::Listener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let c = tokio::select! {
            c = l.accept() => c,
            _ = shutdown.changed() => return,
        };
        tokio::task::spawn_local(request(std::rc::Rc::clone(&coord), c.stream, c.slot));
    }
}

fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("ts" | "m2ts") => "video/mp2t",
        Some("mp4" | "m4v") => "video/mp4",
        Some("m4a") => "audio/mp4",
        Some("mkv") => "video/x-matroska",
        Some("webm") => "video/webm",
        Some("mp3") => "audio/mpeg",
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("mpd") => "application/dash+xml",
        Some("txt") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

async fn simple(s: &mut TcpStream, send_timeout: Duration, status: &str, body: &str, extra: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    if write_within(s, head.as_bytes(), send_timeout).await.is_ok() {
        let _ = tokio::time::timeout(send_timeout, s.shutdown()).await;
    }
}

/// Reads the request head: the whole head within the handshake timeout (not per read, so
/// a client dribbling bytes cannot hold the connection), at most [`MAX_HEAD`] bytes.
async fn read_head(s: &mut TcpStream) -> Result<Option<super::http_head::Head>, HeadError> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut n = 0;
    loop {
        match s.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(k) => n += k,
        }
        if let Some(h) = parse_head(&buf[..n])? {
            return Ok(Some(h));
        }
    }
}

async fn request(coord: CoordRef, mut s: TcpStream, slot: listener::Slot) {
    let _ = s.set_nodelay(true);
    let limits = coord.shared.cfg.limits;
    let st = limits.send_timeout;
    let head = match tokio::time::timeout(limits.handshake_timeout, read_head(&mut s)).await {
        Err(_) => {
            debug!("HTTP request head not received within the handshake timeout");
            return simple(
                &mut s,
                st,
                "408 Request Timeout",
                "request head too slow\n",
                "",
            )
            .await;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(h))) => h,
        Ok(Err(HeadError::TooLarge)) => {
            return simple(
                &mut s,
                st,
                "431 Request Header Fields Too Large",
                "request head too large\n",
                "",
            )
            .await;
        }
        Ok(Err(HeadError::Malformed)) => {
            return simple(&mut s, st, "400 Bad Request", "bad request\n", "").await;
        }
    };
    if head.method != "GET" && head.method != "HEAD" {
        return simple(
            &mut s,
            st,
            "405 Method Not Allowed",
            "only GET and HEAD\n",
            "Allow: GET, HEAD\r\n",
        )
        .await;
    }
    let Some(name) = head.path.strip_prefix("/content/").map(percent_decode) else {
        return simple(&mut s, st, "404 Not Found", "no such resource\n", "").await;
    };
    let size = coord.store.borrow().get(&name).map(|i| i.size).ok();
    let Some(size) = size else {
        return simple(&mut s, st, "404 Not Found", "no such content\n", "").await;
    };
    let (status, offset, length) = match parse_range(head.range.as_deref(), size) {
        Ok(None) => ("200 OK", 0, size),
        Ok(Some((o, l))) => ("206 Partial Content", o, l),
        Err(_) => {
            return simple(
                &mut s,
                st,
                "416 Range Not Satisfiable",
                "range not satisfiable\n",
                &format!("Content-Range: bytes */{size}\r\n"),
            )
            .await;
        }
    };
    let content_range = if status.starts_with("206") {
        format!(
            "Content-Range: bytes {offset}-{}/{size}\r\n",
            offset + length - 1
        )
    } else {
        String::new()
    };
    let head_out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {length}\r\nAccept-Ranges: bytes\r\n{content_range}Connection: close\r\n\r\n",
        content_type(&name)
    );
    if head.method == "HEAD" || length == 0 {
        if write_within(&mut s, head_out.as_bytes(), st).await.is_ok() {
            let _ = tokio::time::timeout(st, s.shutdown()).await;
        }
        return;
    }
    let (session, plan) = match coord.new_session(&name, offset, Some(length), None, Delivery::Http)
    {
        Ok(x) => x,
        Err((code, message)) => {
            let (status, extra) = match code {
                503 => ("503 Service Unavailable", "Retry-After: 1\r\n"),
                404 => ("404 Not Found", ""),
                416 => ("416 Range Not Satisfiable", ""),
                _ => ("500 Internal Server Error", ""),
            };
            return simple(&mut s, st, status, &format!("{message}\n"), extra).await;
        }
    };
    *session
        .slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(slot);
    let events = coord.watch(session.id);
    if let Err(f) = write_within(&mut s, head_out.as_bytes(), st).await {
        coord.end(&session, Err(f));
        return;
    }
    session.advance(super::Phase::Attached);
    let Ok(std_sock) = s.into_std() else {
        coord.end(&session, Err(super::Failure::ClientGone));
        return;
    };
    let r = super::watchdog::supervise(
        &coord,
        &session,
        plan,
        events,
        super::watchdog::Face::Http(std_sock),
    )
    .await;
    coord.end(&session, r);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(content_type("movie.TS"), "video/mp2t");
        assert_eq!(content_type("x"), "application/octet-stream");
    }
}
