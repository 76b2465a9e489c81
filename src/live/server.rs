//! The live socket: a Unix stream socket in the state directory (`live.sock`), mode 0660,
//! group `vitalgate` when that group exists, so only the service user, its group and root can
//! read the live state. Line-delimited JSON: each request line (`{"get":"state"}`) gets one
//! response line, `{"ok":true,"state":{...}}` or `{"ok":false,"error":"..."}`; a connection may
//! ask again (that is how `top` refreshes).
//!
//! The daemon never waits on a client: answers come from the last assembled document, each
//! write has a deadline, a request line is at most [`MAX_LINE`] bytes and at most
//! [`MAX_CLIENTS`] connections are served at once. The live view is an aid: if the socket
//! cannot be bound the daemon logs why and carries on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::collector::Live;
use super::model::LiveState;

/// The socket's file name in the state directory.
pub const SOCKET_FILE: &str = "live.sock";
/// Longest request line.
pub const MAX_LINE: usize = 4096;
/// Connections served at once; more wait for a slot.
pub const MAX_CLIENTS: usize = 16;
/// A client that does not take its answer within this is dropped.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// The socket path for a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// A request line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// What to get: `state`.
    pub get: String,
}

/// A response line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Box<LiveState>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why the socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: another process is already serving the live socket; is a second vitalgate running on this state directory?")]
    InUse { path: PathBuf },
    #[error("{path}: cannot create the live socket: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds the socket (replacing a stale one left by a killed daemon) with mode 0660 and the
/// `vitalgate` group when it exists.
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::InUse {
                path: path.to_path_buf(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| ServeError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    if let Some(gid) = group_id("vitalgate") {
        if let Err(e) = std::os::unix::fs::chown(path, None, Some(gid)) {
            tracing::debug!(error = %e, "live socket: cannot give it to group vitalgate");
        }
    }
    Ok(listener)
}

/// The id of a group by name, from `/etc/group` (no NSS: service groups are local).
pub fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// Serves `live` on `path` until `token` is cancelled, then removes the socket file.
pub async fn serve(live: Live, path: PathBuf, token: CancellationToken) {
    let listener = match bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "live view (vitalgate status/top) not available");
            return;
        }
    };
    tracing::debug!(socket = %path.display(), "live socket listening");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let clients = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => break,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (live, token) = (live.clone(), token.clone());
        clients.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = answer(stream, &live) => {}
            }
            drop(slot);
        });
    }
    clients.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), clients.wait()).await;
    let _ = std::fs::remove_file(&path);
}

async fn answer(stream: UnixStream, live: &Live) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take_limit()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = respond(&line, live);
        let mut text = serde_json::to_string(&response).unwrap_or_default();
        text.push('\n');
        match tokio::time::timeout(WRITE_DEADLINE, write.write_all(text.as_bytes())).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Bounds each request line: a reader that never sends a newline cannot grow memory.
trait TakeLimit: tokio::io::AsyncRead + Sized {
    fn take_limit(self) -> LineLimited<Self> {
        LineLimited {
            inner: self,
            since_newline: 0,
        }
    }
}
impl<R: tokio::io::AsyncRead> TakeLimit for R {}

struct LineLimited<R> {
    inner: R,
    since_newline: usize,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for LineLimited<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if poll.is_ready() {
            for &b in &buf.filled()[before..] {
                self.since_newline = if b == b'\n' {
                    0
                } else {
                    self.since_newline + 1
                };
            }
            if self.since_newline > MAX_LINE {
                return std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "request line too long",
                )));
            }
        }
        poll
    }
}

fn respond(line: &str, live: &Live) -> Response {
    let fail = |error: String| Response {
        ok: false,
        state: None,
        error: Some(error),
    };
    match serde_json::from_str::<Request>(line.trim()) {
        Ok(r) if r.get == "state" => match live.latest() {
            Some(state) => Response {
                ok: true,
                state: Some(Box::new(state)),
                error: None,
            },
            None => fail("starting: no state assembled yet, ask again in a second".into()),
        },
        Ok(r) => fail(format!(
            "unknown request get={:?}; the only one is \"state\"",
            r.get
        )),
        Err(e) => fail(format!(
            "not a request ({e}); send {{\"get\":\"state\"}} and a newline"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::client::{LiveClient, LiveError};

    async fn serving(live: &Live) -> (tempfile::TempDir, PathBuf, CancellationToken) {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let token = CancellationToken::new();
        tokio::spawn(serve(live.clone(), path.clone(), token.clone()));
        for _ in 0..100 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (dir, path, token)
    }

    #[tokio::test]
    async fn live_socket_answers_the_latest_state_and_again_on_the_same_connection() {
        let live = Live::default();
        live.publish(crate::live::health::tests::healthy());
        let (_dir, path, token) = serving(&live).await;
        let got = tokio::task::spawn_blocking(move || {
            let mut c = LiveClient::connect(&path).unwrap();
            (c.state().unwrap(), c.state().unwrap())
        })
        .await
        .unwrap();
        assert_eq!(got.0.gateway, "gw");
        assert_eq!(got.0, got.1);
        token.cancel();
    }

    #[tokio::test]
    async fn live_socket_says_starting_before_the_first_state() {
        let (_dir, path, token) = serving(&Live::default()).await;
        let err = tokio::task::spawn_blocking(move || LiveClient::connect(&path).unwrap().state())
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(err, LiveError::Refused { ref message, .. } if message.contains("starting")),
            "{err}"
        );
        token.cancel();
    }

    #[tokio::test]
    async fn live_socket_answers_a_malformed_request_with_an_error_and_drops_an_endless_line() {
        use std::io::{BufRead, Write};
        let (_dir, path, token) = serving(&Live::default()).await;
        let (answer, after_flood) = tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"hello\n").unwrap();
            let mut line = String::new();
            std::io::BufReader::new(s.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            // A line with no end: the server closes the connection instead of buffering it.
            let flood = vec![b'x'; MAX_LINE * 4];
            let _ = s.write_all(&flood);
            let mut rest = String::new();
            let n = std::io::BufReader::new(s).read_line(&mut rest);
            (line, n.map(|n| n == 0).unwrap_or(true))
        })
        .await
        .unwrap();
        let r: Response = serde_json::from_str(&answer).unwrap();
        assert!(!r.ok && r.error.unwrap().contains("{\"get\":\"state\"}"));
        assert!(
            after_flood,
            "the connection stayed open after an oversized line"
        );
        token.cancel();
    }

    #[tokio::test]
    async fn live_socket_is_removed_when_the_daemon_stops() {
        let (_dir, path, token) = serving(&Live::default()).await;
        token.cancel();
        for _ in 0..100 {
            if !path.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{} still exists", path.display());
    }
}
