//! WebSocket sessions: exec over the v4/v5 channel protocols, and the byte tunnel that
//! carries SPDY for kubectl's port forwarding.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream},
    sync::mpsc,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};

use super::exec::{self, Input, Options, Output, Target};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: `[255, channel]` says the sender will write no more on `channel`.
pub const CLOSE: u8 = 255;

/// How long a client gets to close after the status was sent.
const LINGER: Duration = Duration::from_secs(5);

/// The resize channel's message (client-go's `TerminalSize`).
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// What one client message means for the command.
pub fn input_of(message: &[u8], v5: bool) -> Option<Input> {
    let (&channel, data) = message.split_first()?;
    match channel {
        STDIN => Some(Input::Stdin(Bytes::copy_from_slice(data))),
        RESIZE => serde_json::from_slice::<TerminalSize>(data)
            .ok()
            .map(|s| Input::Resize {
                width: s.width,
                height: s.height,
            }),
        CLOSE if v5 && data.first() == Some(&STDIN) => Some(Input::StdinEnd),
        _ => None,
    }
}

/// A close with status 1000: client-go treats any other close (even one without a
/// status, 1005) as an error and drops the streams it has not read yet, the error
/// channel's exit status among them.
pub fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

fn framed(channel: u8, data: &[u8]) -> Message {
    let mut m = Vec::with_capacity(data.len() + 1);
    m.push(channel);
    m.extend_from_slice(data);
    Message::binary(m)
}

pub async fn exec<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut ws: WebSocketStream<S>,
    v5: bool,
    target: Target,
    opts: Options,
) {
    let (in_tx, in_rx) = mpsc::channel(16);
    let (out_tx, mut out_rx) = mpsc::channel(16);
    let attach = opts.attach;
    tokio::spawn(exec::run(target, opts, in_rx, out_tx));
    let mut in_tx = Some(in_tx);
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if let (Some(input), Some(tx)) = (input_of(&b, v5), in_tx.as_ref()) {
                        let end = matches!(input, Input::StdinEnd);
                        let _ = tx.send(input).await;
                        if end {
                            in_tx = None;
                        }
                    }
                }
                Some(Ok(_)) => {}
                // The client left: the command's stdin ends; its output has nowhere to go.
                // An attach session just ends: the container goes on.
                Some(Err(_)) | None => {
                    drop(in_tx.take());
                    if !attach {
                        while out_rx.recv().await.is_some() {}
                    }
                    return;
                }
            },
            out = out_rx.recv() => {
                let (message, done) = match out {
                    Some(Output::Stdout(b)) => (framed(STDOUT, &b), false),
                    Some(Output::Stderr(b)) => (framed(STDERR, &b), false),
                    Some(Output::Done(status)) => (framed(ERROR, &serde_json::to_vec(&status).unwrap_or_default()), true),
                    None => break,
                };
                if ws.send(message).await.is_err() {
                    return;
                }
                if done {
                    break;
                }
            }
        }
    }
    let _ = ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .await;
    // Wait for the client's close, so the status is read before the connection goes.
    let _ = tokio::time::timeout(LINGER, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

/// Carries a byte stream in binary messages both ways (client-go's tunneling
/// connection: a message is a chunk of the stream, nothing more).
pub async fn tunnel<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(ws: WebSocketStream<S>, bytes: DuplexStream) {
    let (mut sink, mut stream) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(bytes);
    let inbound = async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let outbound = async move {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n @ 1..) = rd.read(&mut buf).await {
            if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
        let _ = sink.send(normal_close()).await;
        let _ = sink.close().await;
    };
    tokio::join!(inbound, outbound);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages() {
        assert!(matches!(input_of(b"\x00abc", true), Some(Input::Stdin(b)) if &b[..] == b"abc"));
        assert!(matches!(
            input_of(b"\x04{\"Width\":80,\"Height\":24}", false),
            Some(Input::Resize { width: 80, height: 24 })
        ));
        assert!(matches!(input_of(&[255, 0], true), Some(Input::StdinEnd)));
        // v4 has no close signal.
        assert!(input_of(&[255, 0], false).is_none());
        assert!(input_of(b"", true).is_none());
    }
}
