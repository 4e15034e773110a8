//! Port forwarding: a TCP connection to the pod's loopback per forwarded connection, over
//! WebSocket channels (one connection per `ports` entry, kube-rs) or SPDY stream pairs
//! (`streamType` error and data with the same `requestID` and `port`, kubectl).

use std::collections::HashMap;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

use super::{
    exec::connect_in_pod,
    spdy::{self, Event, Out},
};

/// The `ports` query parameter (repeated or comma-separated).
pub fn ports_of(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if k != "ports" {
            continue;
        }
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => {
                    return Err(format!(
                        "unable to parse \"{p}\" as a port: must be between 1 and 65535"
                    ));
                }
            }
        }
    }
    if ports.is_empty() {
        return Err("at least one port must be specified (the ports parameter)".into());
    }
    Ok(ports)
}

fn refused(port: u16, e: &std::io::Error) -> String {
    format!(
        "error forwarding port {port} to pod: failed to connect to localhost:{port} inside the pod's network namespace: {e}"
    )
}

fn framed(channel: u8, data: &[u8]) -> Message {
    let mut m = Vec::with_capacity(data.len() + 1);
    m.push(channel);
    m.extend_from_slice(data);
    Message::binary(m)
}

enum Up {
    Send(Message),
    /// A port's connection ended (or never was).
    Ended,
}

pub async fn websocket<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    ws: WebSocketStream<S>,
    ports: Vec<u16>,
    pid: i32,
) {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Up>(32);
    for (i, port) in ports.iter().enumerate() {
        let data = (2 * i) as u8;
        for ch in [data, data + 1] {
            if sink.send(framed(ch, &port.to_le_bytes())).await.is_err() {
                return;
            }
        }
    }
    let mut writers = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let data = (2 * i) as u8;
        let tx = tx.clone();
        match connect_in_pod(pid, port).await {
            Ok(conn) => {
                let (mut r, w) = conn.into_split();
                writers.push(Some(w));
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    while let Ok(n @ 1..) = r.read(&mut buf).await {
                        if tx.send(Up::Send(framed(data, &buf[..n]))).await.is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(Up::Ended).await;
                });
            }
            Err(e) => {
                writers.push(None);
                let _ = tx.send(Up::Send(framed(data + 1, refused(port, &e).as_bytes()))).await;
                let _ = tx.send(Up::Ended).await;
            }
        }
    }
    drop(tx);
    let mut ended = 0;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    let Some((&ch, data)) = b.split_first() else { continue };
                    if ch % 2 == 0
                        && let Some(Some(w)) = writers.get_mut(usize::from(ch / 2))
                        && w.write_all(data).await.is_err()
                    {
                        writers[usize::from(ch / 2)] = None;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            up = rx.recv() => match up {
                Some(Up::Send(m)) => {
                    if sink.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Up::Ended) => {
                    ended += 1;
                    // Every connection is over: closing tells the client, which has no
                    // other end-of-stream signal per port.
                    if ended == ports.len() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    let _ = sink.send(super::websocket::normal_close()).await;
    let _ = sink.close().await;
}

/// One forwarded connection's streams.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
}

pub async fn spdy(mut conn: spdy::Connection, pid: i32) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut sinks: HashMap<u32, mpsc::UnboundedSender<Bytes>> = HashMap::new();
    while let Some(event) = conn.events.recv().await {
        match event {
            Event::Stream { id, headers, .. } => {
                let _ = conn.out.send(Out::Reply { id }).await;
                let port = spdy::header(&headers, "port").and_then(|p| p.parse::<u16>().ok());
                let kind = spdy::header(&headers, "streamtype").unwrap_or_default();
                let (Some(port), "error" | "data") = (port, kind) else {
                    let _ = conn.out.send(Out::Reset { id }).await;
                    continue;
                };
                // Clients before requestID paired streams by port alone.
                let request = spdy::header(&headers, "requestid").map_or_else(|| port.to_string(), str::to_owned);
                let pair = pairs.entry(request.clone()).or_default();
                pair.port = port;
                if kind == "error" {
                    pair.error = Some(id);
                } else {
                    pair.data = Some(id);
                }
                if let (Some(error), Some(data)) = (pair.error, pair.data) {
                    pairs.remove(&request);
                    let (tx, rx) = mpsc::unbounded_channel();
                    sinks.insert(data, tx);
                    tokio::spawn(forward(pid, port, data, error, rx, conn.out.clone()));
                }
            }
            Event::Data { id, data, fin } => {
                if let Some(tx) = sinks.get(&id) {
                    if !data.is_empty() {
                        let _ = tx.send(data);
                    }
                    if fin {
                        sinks.remove(&id);
                    }
                }
            }
            Event::Reset { id } => {
                sinks.remove(&id);
            }
        }
    }
}

async fn forward(
    pid: i32,
    port: u16,
    data: u32,
    error: u32,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    out: mpsc::Sender<Out>,
) {
    let fin = |id| Out::Data {
        id,
        data: Bytes::new(),
        fin: true,
    };
    let conn = match connect_in_pod(pid, port).await {
        Ok(c) => c,
        Err(e) => {
            let message = Bytes::from(refused(port, &e));
            let _ = out
                .send(Out::Data {
                    id: error,
                    data: message,
                    fin: true,
                })
                .await;
            let _ = out.send(fin(data)).await;
            return;
        }
    };
    let (mut r, mut w) = conn.into_split();
    // The client's half: its end of data (FIN, or the stream gone) half-closes ours.
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut buf = vec![0u8; spdy::MAX_DATA_FRAME];
    while let Ok(n @ 1..) = r.read(&mut buf).await {
        let chunk = Bytes::copy_from_slice(&buf[..n]);
        if out
            .send(Out::Data {
                id: data,
                data: chunk,
                fin: false,
            })
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = out.send(fin(data)).await;
    let _ = out.send(fin(error)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse() {
        assert_eq!(ports_of(Some("ports=80%2C1234")).unwrap(), [80, 1234]);
        assert_eq!(ports_of(Some("ports=80&ports=81")).unwrap(), [80, 81]);
        assert!(ports_of(Some("ports=0")).is_err());
        assert!(ports_of(Some("ports=x")).is_err());
        assert!(ports_of(None).is_err());
    }
}
