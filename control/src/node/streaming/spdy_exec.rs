//! Exec over SPDY (`v4.channel.k8s.io`, what kubectl before 1.30 speaks, and newer ones
//! when WebSocket fails): one stream per channel, named by its `streamType` header.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;

use super::{
    exec::{self, Input, Options, Output, Target},
    spdy::{self, Event, Out},
    websocket::TerminalSize,
};

/// How long the client gets to open every stream it asked for.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);
const LINGER: Duration = Duration::from_secs(5);

pub async fn serve(mut conn: spdy::Connection, target: Target, opts: Options) {
    let mut expected = vec!["error"];
    for (on, name) in [
        (opts.stdin, "stdin"),
        (opts.stdout, "stdout"),
        (opts.stderr, "stderr"),
        (opts.tty, "resize"),
    ] {
        if on {
            expected.push(name);
        }
    }
    let mut ids: HashMap<String, u32> = HashMap::new();
    let gathered = tokio::time::timeout(STREAMS_TIMEOUT, async {
        while !expected.iter().all(|e| ids.contains_key(*e)) {
            match conn.events.recv().await {
                Some(Event::Stream { id, headers, .. }) => {
                    let _ = conn.out.send(Out::Reply { id }).await;
                    if let Some(kind) = spdy::header(&headers, "streamtype") {
                        ids.insert(kind.to_owned(), id);
                    }
                }
                Some(_) => {}
                None => return false,
            }
        }
        true
    })
    .await;
    if gathered != Ok(true) {
        tracing::debug!(?expected, "exec: the client did not open its streams");
        return;
    }
    let id = |name: &str| ids.get(name).copied();
    let (in_tx, in_rx) = tokio::sync::mpsc::channel(16);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel(16);
    let attach = opts.attach;
    tokio::spawn(exec::run(target, opts, in_rx, out_tx));
    let mut in_tx = Some(in_tx);
    let mut resize_buf = Vec::new();
    let mut client_gone = false;
    loop {
        tokio::select! {
            event = conn.events.recv(), if !client_gone => match event {
                Some(Event::Data { id: sid, data, fin }) if Some(sid) == id("stdin") => {
                    if let Some(tx) = &in_tx {
                        if !data.is_empty() {
                            let _ = tx.send(Input::Stdin(data)).await;
                        }
                        if fin {
                            let _ = tx.send(Input::StdinEnd).await;
                            in_tx = None;
                        }
                    }
                }
                Some(Event::Data { id: sid, data, .. }) if Some(sid) == id("resize") => {
                    resize_buf.extend_from_slice(&data);
                    let mut sizes = serde_json::Deserializer::from_slice(&resize_buf).into_iter::<TerminalSize>();
                    let mut last = None;
                    for size in sizes.by_ref() {
                        match size {
                            Ok(s) => last = Some(s),
                            Err(_) => break,
                        }
                    }
                    let used = sizes.byte_offset();
                    resize_buf.drain(..used);
                    if let (Some(s), Some(tx)) = (last, &in_tx) {
                        let _ = tx.send(Input::Resize { width: s.width, height: s.height }).await;
                    }
                }
                Some(Event::Stream { id, .. }) => {
                    let _ = conn.out.send(Out::Reset { id }).await;
                }
                Some(_) => {}
                None => {
                    client_gone = true;
                    in_tx = None;
                    // An attach session ends with its client; the container goes on.
                    if attach {
                        break;
                    }
                }
            },
            out = out_rx.recv() => {
                let (sid, data) = match out {
                    Some(Output::Stdout(b)) => (id("stdout"), b),
                    Some(Output::Stderr(b)) => (id("stderr"), b),
                    Some(Output::Done(status)) => {
                        // v4 reads a Status from the error stream; a success may be empty.
                        let body = Bytes::from(serde_json::to_vec(&status).unwrap_or_default());
                        if let Some(e) = id("error") {
                            let _ = conn.out.send(Out::Data { id: e, data: body, fin: false }).await;
                        }
                        break;
                    }
                    None => break,
                };
                if let Some(sid) = sid {
                    let _ = conn.out.send(Out::Data { id: sid, data, fin: false }).await;
                }
            }
        }
    }
    for name in ["stdout", "stderr", "error"] {
        if let Some(sid) = id(name) {
            let _ = conn
                .out
                .send(Out::Data {
                    id: sid,
                    data: Bytes::new(),
                    fin: true,
                })
                .await;
        }
    }
    // The client closes the connection once it has read everything.
    let _ = tokio::time::timeout(LINGER, async { while conn.events.recv().await.is_some() {} }).await;
}
