//! The HTTP face: `GET /content/{name}` (and HEAD) with single byte ranges. The coordinator
//! answers the headers; the client's socket then travels with the baton from controller to
//! controller, each writing its own block straight to the client.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::Delivery;
use super::coordinator::CoordRef;

/// Largest request head accepted.
const MAX_HEAD: usize = 8192;

pub(super) async fn serve(coord: CoordRef, l: TcpListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        let c = tokio::select! {
            c = l.accept() => c,
            _ = shutdown.changed() => return,
        };
        if let Ok((s, _)) = c {
            tokio::task::spawn_local(request(std::rc::Rc::clone(&coord), s));
        }
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

/// A parsed `Range: bytes=...` header against a size: `Ok(None)` for no range.
fn parse_range(value: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = value else { return Ok(None) };
    let spec = v.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        // One range per request.
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>()
                .map_err(|_| ())?
                .min(size.saturating_sub(1))
        };
        (start, end)
    };
    if start >= size || end < start {
        return Err(());
    }
    Ok(Some((start, end - start + 1)))
}

async fn simple(s: &mut TcpStream, status: &str, body: &str, extra: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.shutdown().await;
}

async fn request(coord: CoordRef, mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; MAX_HEAD];
    let mut n = 0;
    let (method, path, range) = loop {
        let r =
            tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf[n..])).await;
        match r {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(k)) => n += k,
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..n]) {
            Ok(httparse::Status::Complete(_)) => {
                let range = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("range"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(str::to_owned);
                break (
                    req.method.unwrap_or("").to_owned(),
                    req.path.unwrap_or("").to_owned(),
                    range,
                );
            }
            Ok(httparse::Status::Partial) if n < MAX_HEAD => continue,
            _ => return simple(&mut s, "400 Bad Request", "bad request\n", "").await,
        }
    };
    if method != "GET" && method != "HEAD" {
        return simple(
            &mut s,
            "405 Method Not Allowed",
            "only GET and HEAD\n",
            "Allow: GET, HEAD\r\n",
        )
        .await;
    }
    let Some(name) = path.strip_prefix("/content/").map(percent_decode) else {
        return simple(&mut s, "404 Not Found", "no such resource\n", "").await;
    };
    let size = coord.store.borrow().get(&name).map(|i| i.size).ok();
    let Some(size) = size else {
        return simple(&mut s, "404 Not Found", "no such content\n", "").await;
    };
    let (status, offset, length) = match parse_range(range.as_deref(), size) {
        Ok(None) => ("200 OK", 0, size),
        Ok(Some((o, l))) => ("206 Partial Content", o, l),
        Err(()) => {
            return simple(
                &mut s,
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
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {length}\r\nAccept-Ranges: bytes\r\n{content_range}Connection: close\r\n\r\n",
        content_type(&name)
    );
    if method == "HEAD" || length == 0 {
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.shutdown().await;
        return;
    }
    let (session, plan) = match coord.new_session(&name, offset, Some(length), None, Delivery::Http)
    {
        Ok(x) => x,
        Err((code, message)) => {
            let status = if code == 503 {
                "503 Service Unavailable"
            } else {
                "500 Internal Server Error"
            };
            return simple(&mut s, status, &format!("{message}\n"), "").await;
        }
    };
    if s.write_all(head.as_bytes()).await.is_err() {
        coord.end(&session, false);
        return;
    }
    let mut events = coord.watch(session.id);
    let Ok(std_sock) = s.into_std() else {
        coord.end(&session, false);
        return;
    };
    coord.kick(&session, &plan, Some(std_sock));
    let ok = matches!(events.recv().await, Some(super::Event::Finished(_)));
    coord.end(&session, ok);
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Ok(Some((0, 10))));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Ok(Some((90, 10))));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Ok(Some((90, 10))));
        assert_eq!(parse_range(Some("bytes=50-500"), 100), Ok(Some((50, 50))));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=5-1"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Err(()));
        assert_eq!(parse_range(Some("items=0-1"), 100), Err(()));
    }

    #[test]
    fn content_types_and_names() {
        assert_eq!(content_type("movie.TS"), "video/mp2t");
        assert_eq!(content_type("x"), "application/octet-stream");
        assert_eq!(percent_decode("a%20b.ts"), "a b.ts");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
