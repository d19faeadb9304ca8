//! A minimal HTTP/1.1 client over tokio, without TLS: alert webhooks and `weir cep`.
//!
//! One request per connection (`Connection: close`); the response body is de-chunked
//! and handed over as it arrives, so that a Server-Sent Events stream can be followed.

use anyhow::{anyhow, bail, Context};
use std::ops::ControlFlow;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest status or header line accepted.
const MAX_LINE: usize = 16 << 10;
/// Most header lines accepted.
const MAX_HEADERS: usize = 200;
/// Largest body `request` collects.
const MAX_BODY: usize = 64 << 20;

/// A complete response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (lossy), for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `http://host[:port]/path` split into the address to connect to and the request target.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port` (port 80 when absent).
    pub authority: String,
    /// Path and query, `/` when absent.
    pub path: String,
}

pub fn parse_url(url: &str) -> anyhow::Result<Target> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("https://") {
        bail!("{url}: https is not supported (no TLS client); use http://")
    } else {
        bail!("{url}: expected an http:// URL")
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        bail!("{url}: bad host");
    }
    let authority = if authority.rsplit_once(':').is_some_and(|(_, p)| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
    }) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    if path.contains(char::is_whitespace) {
        bail!("{url}: the path contains whitespace");
    }
    Ok(Target {
        authority,
        path: path.to_string(),
    })
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends one request and collects the response, all within `timeout`.
pub async fn request(
    authority: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> anyhow::Result<Response> {
    let mut collected = Vec::new();
    let mut too_big = false;
    let status = tokio::time::timeout(
        timeout,
        exchange(authority, method, path, body, |_, chunk| {
            if collected.len() + chunk.len() > MAX_BODY {
                too_big = true;
                return ControlFlow::Break(());
            }
            collected.extend_from_slice(chunk);
            ControlFlow::Continue(())
        }),
    )
    .await
    .map_err(|_| {
        anyhow!("{method} http://{authority}{path}: no complete answer within {timeout:?}")
    })??;
    if too_big {
        bail!("{method} http://{authority}{path}: the response body exceeds {MAX_BODY} bytes");
    }
    Ok(Response {
        status,
        body: collected,
    })
}

/// Sends one request and hands the response body to `on_data(status, bytes)` as it
/// arrives, until the body ends or `on_data` breaks. Returns the status.
pub async fn exchange<F>(
    authority: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    mut on_data: F,
) -> anyhow::Result<u16>
where
    F: FnMut(u16, &[u8]) -> ControlFlow<()>,
{
    let what = format!("{method} http://{authority}{path}");
    let stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("{what}: cannot connect to {authority}"))?;
    let (read, mut write) = stream.into_split();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: weir\r\nAccept: */*\r\n"
    );
    match body {
        Some((content_type, b)) => head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            b.len()
        )),
        None if method != "GET" && method != "HEAD" => head.push_str("Content-Length: 0\r\n"),
        None => {}
    }
    head.push_str("\r\n");
    write
        .write_all(head.as_bytes())
        .await
        .with_context(|| format!("{what}: sending the request"))?;
    if let Some((_, b)) = body {
        write
            .write_all(b)
            .await
            .with_context(|| format!("{what}: sending the body"))?;
    }
    write
        .flush()
        .await
        .with_context(|| format!("{what}: sending"))?;

    let mut r = BufReader::new(read);
    let status_line = read_line(&mut r)
        .await
        .with_context(|| format!("{what}: reading the status line"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| anyhow!("{what}: malformed status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for n in 0.. {
        if n > MAX_HEADERS {
            bail!("{what}: more than {MAX_HEADERS} header lines");
        }
        let line = read_line(&mut r)
            .await
            .with_context(|| format!("{what}: reading the headers"))?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            bail!("{what}: malformed header line {line:?}");
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "content-length" => {
                length = Some(
                    value
                        .parse()
                        .map_err(|_| anyhow!("{what}: bad Content-Length {value:?}"))?,
                )
            }
            _ => {}
        }
    }
    if method == "HEAD" || status == 204 || status == 304 {
        return Ok(status);
    }
    if chunked {
        loop {
            let line = read_line(&mut r)
                .await
                .with_context(|| format!("{what}: reading a chunk size"))?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| anyhow!("{what}: bad chunk size {line:?}"))?;
            if size == 0 {
                return Ok(status);
            }
            if size > MAX_BODY {
                bail!("{what}: chunk of {size} bytes is too large");
            }
            let mut buf = vec![0u8; size + 2];
            r.read_exact(&mut buf)
                .await
                .with_context(|| format!("{what}: reading a chunk"))?;
            if &buf[size..] != b"\r\n" {
                bail!("{what}: chunk not followed by CRLF");
            }
            if on_data(status, &buf[..size]).is_break() {
                return Ok(status);
            }
        }
    } else if let Some(n) = length {
        if n > MAX_BODY {
            bail!("{what}: body of {n} bytes is too large");
        }
        let mut buf = vec![0u8; n];
        r.read_exact(&mut buf)
            .await
            .with_context(|| format!("{what}: reading the body"))?;
        let _ = on_data(status, &buf);
        Ok(status)
    } else {
        let mut buf = vec![0u8; 8192];
        loop {
            let n = r
                .read(&mut buf)
                .await
                .with_context(|| format!("{what}: reading the body"))?;
            if n == 0 || on_data(status, &buf[..n]).is_break() {
                return Ok(status);
            }
        }
    }
}

/// One CRLF- (or LF-) terminated line without its terminator.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut bytes)
        .await?;
    if n == 0 {
        bail!("connection closed");
    }
    if !bytes.ends_with(b"\n") {
        bail!("line longer than {MAX_LINE} bytes or cut off");
    }
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    String::from_utf8(bytes).map_err(|_| anyhow!("line is not UTF-8"))
}

/// Splits a Server-Sent Events byte stream into events' `data` (multi-line data joined
/// with `\n`); comments and other fields are dropped. Feed bytes as they arrive.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// The data of every event completed by `bytes`.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let text = &self.buf;
            let end = text
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
                .or_else(|| {
                    text.windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|i| (i, 4))
                });
            let Some((i, sep)) = end else {
                break;
            };
            let block: Vec<u8> = self.buf.drain(..i + sep).collect();
            let block = String::from_utf8_lossy(&block[..i]).into_owned();
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:9000/hook?a=1").unwrap(),
            Target {
                authority: "127.0.0.1:9000".into(),
                path: "/hook?a=1".into()
            }
        );
        assert_eq!(
            parse_url("http://example.com").unwrap(),
            Target {
                authority: "example.com:80".into(),
                path: "/".into()
            }
        );
        assert!(parse_url("https://example.com/").is_err());
        assert!(parse_url("ftp://example.com/").is_err());
        assert!(parse_url("http:///x").is_err());
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn sse_events_split_across_pushes() {
        let mut p = SseParser::default();
        assert!(p.push(b": hello\n\nevent: match\ndata: {\"a\"").is_empty());
        assert_eq!(
            p.push(b":1}\n\ndata: x\ndata: y\n\n"),
            vec!["{\"a\":1}", "x\ny"]
        );
        assert!(p.push(b"data: z").is_empty());
        assert_eq!(p.push(b"\r\n\r\n"), vec!["z"]);
    }

    #[tokio::test]
    async fn chunked_and_sized_bodies() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            for reply in [
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"[..],
                &b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope"[..],
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(reply).await.unwrap();
            }
        });
        let r = request(&addr, "GET", "/", None, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "abcde"));
        let r = request(
            &addr,
            "POST",
            "/x",
            Some(("text/plain", b"hi")),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (404, "nope"));
        assert!(!r.is_success());
    }
}
