//! The daemon's Unix control socket: write one JSON [`Request`] line, read
//! one [`sockd_proto::control::Response`] line.

use super::error::{ClientError, code_from_slug};
use serde::Deserialize;
use serde_json::value::RawValue;
use sockd_proto::ErrorCode;
use sockd_proto::code::exit;
use sockd_proto::control::{Request, Response};
use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long to wait for the daemon's answer (a reload can take a while).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest reply line accepted.
const MAX_REPLY: u64 = 64 * 1024 * 1024;

/// A successful reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The `result` value.
    pub result: serde_json::Value,
    /// The `result` exactly as the daemon wrote it (for `--json`).
    pub raw: String,
}

#[derive(Deserialize)]
struct RawOk<'a> {
    #[serde(borrow)]
    result: &'a RawValue,
}

/// Sends `request` to the control socket at `socket` and returns the
/// result; a `{ok:false}` reply becomes an error with the code's exit status.
pub async fn request(socket: &Path, request: &Request) -> Result<Reply, ClientError> {
    let shown = socket.display();
    let stream = UnixStream::connect(socket).await.map_err(|e| match e.kind() {
        ErrorKind::PermissionDenied => ClientError::new(
            exit::CONTROL_DENIED,
            format!(
                "permission denied on control socket {shown}: you must be root, the daemon's user, or in its admin group"
            ),
        ),
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
            ClientError::connect(format!("cannot reach the control socket {shown}: is sockd running?"))
        }
        _ => ClientError::connect(format!("cannot reach the control socket {shown}: {e}; is sockd running?")),
    })?;
    let mut line = serde_json::to_string(request)
        .map_err(|e| ClientError::failure(format!("cannot encode the request: {e}")))?;
    line.push('\n');

    let exchange = async {
        let (read, mut write) = stream.into_split();
        write.write_all(line.as_bytes()).await?;
        write.flush().await?;
        let mut reply = String::new();
        BufReader::new(read)
            .take(MAX_REPLY)
            .read_line(&mut reply)
            .await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = match tokio::time::timeout(REPLY_TIMEOUT, exchange).await {
        Err(_) => {
            return Err(ClientError::failure(format!(
                "sockd did not answer on {shown} within {} s; check the daemon's log",
                REPLY_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(e)) => {
            return Err(ClientError::connect(format!(
                "control socket {shown}: {e}; is sockd running?"
            )));
        }
        Ok(Ok(reply)) => reply,
    };
    parse_reply(&reply, socket)
}

/// Interprets one reply line.
fn parse_reply(line: &str, socket: &Path) -> Result<Reply, ClientError> {
    let shown = socket.display();
    if line.trim().is_empty() {
        return Err(ClientError::protocol(format!(
            "sockd closed the control socket {shown} without answering; check the daemon's log"
        )));
    }
    let bad = |e: serde_json::Error| {
        ClientError::protocol(format!("unexpected reply on control socket {shown}: {e}"))
    };
    match serde_json::from_str::<Response>(line).map_err(bad)? {
        Response::Ok { result, .. } => {
            let raw = serde_json::from_str::<RawOk<'_>>(line)
                .map_err(bad)?
                .result
                .get()
                .to_string();
            Ok(Reply { result, raw })
        }
        Response::Err { error, .. } => Err(match code_from_slug(&error.code) {
            // The daemon's own peer check: the same status as the kernel's refusal.
            Some(ErrorCode::PermissionDenied) => {
                ClientError::new(exit::CONTROL_DENIED, error.message)
            }
            Some(code) => ClientError::remote(code, error.message),
            None if error.message.is_empty() => {
                ClientError::failure(format!("sockd: error {}", error.code))
            }
            None => ClientError::failure(error.message),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_map_to_results_and_exit_statuses() {
        let p = Path::new("/run/sockd.sock");
        let r = parse_reply("{\"ok\":true,\"result\":{\"b\":1,\"a\":[2, 3]}}\n", p).unwrap();
        assert_eq!(r.raw, "{\"b\":1,\"a\":[2, 3]}");
        assert_eq!(r.result["a"][1], 3);
        let e = parse_reply(
            "{\"ok\":false,\"error\":{\"code\":\"not_found\",\"message\":\"no user bob\"}}",
            p,
        )
        .unwrap_err();
        assert_eq!(
            (e.status(), e.message()),
            (ErrorCode::NotFound.exit_status(), "no user bob")
        );
        let e = parse_reply(
            "{\"ok\":false,\"error\":{\"code\":\"brand_new\",\"message\":\"\"}}",
            p,
        )
        .unwrap_err();
        assert_eq!(e.status(), exit::FAILURE);
        assert_eq!(parse_reply("", p).unwrap_err().status(), exit::PROTOCOL);
        assert_eq!(
            parse_reply("garbage", p).unwrap_err().status(),
            exit::PROTOCOL
        );
    }

    #[tokio::test]
    async fn unreachable_sockets_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let e = request(&path, &Request::Status {}).await.unwrap_err();
        assert_eq!(e.status(), exit::CONNECT);
        assert_eq!(
            e.message(),
            format!(
                "cannot reach the control socket {}: is sockd running?",
                path.display()
            )
        );
    }

    #[tokio::test]
    async fn request_and_reply_over_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            BufReader::new(read).read_line(&mut line).await.unwrap();
            write
                .write_all(b"{\"ok\":true,\"result\":null}\n")
                .await
                .unwrap();
            line
        });
        let reply = request(&path, &Request::Kick { id: 4 }).await.unwrap();
        assert_eq!(reply.raw, "null");
        assert_eq!(server.await.unwrap(), "{\"cmd\":\"kick\",\"id\":4}\n");
    }
}
