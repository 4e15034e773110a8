//! `attach`: a session on a running container's own stdio, through its shim's attach
//! socket (`node::attach`). It speaks the same [`Input`]/[`Output`] as exec, so the
//! WebSocket and SPDY protocols carry both; it ends when the container exits (a success
//! status, as the kubelet sends) or when the client leaves.

use tokio::{io::AsyncWriteExt, sync::mpsc};

use super::exec::{Input, Options, Output, Target, internal_error, success};
use crate::node::attach::{self, frame};

pub async fn run(target: Target, opts: Options, mut input: mpsc::Receiver<Input>, output: mpsc::Sender<Output>) {
    let conn = match attach::connect(&target.run_dir).await {
        Ok(c) => c,
        Err(e) => {
            let message = format!("unable to attach to the container: its shim does not answer: {e}");
            let _ = output.send(Output::Done(internal_error(message))).await;
            return;
        }
    };
    let (mut rd, mut wr) = conn.into_split();
    // Input goes only to a container that keeps its stdin open for it.
    let stdin = opts.stdin && target.spec.stdin;
    if stdin && wr.write_all(&frame(attach::WANTS_STDIN, b"")).await.is_err() {
        return;
    }
    let mut input_open = true;
    loop {
        tokio::select! {
            f = attach::read_frame(&mut rd) => {
                let out = match f {
                    Ok(Some((attach::STDOUT, data))) if opts.stdout => Output::Stdout(data.into()),
                    Ok(Some((attach::STDERR, data))) if opts.stderr => Output::Stderr(data.into()),
                    Ok(Some(_)) => continue,
                    // The shim is gone: the container exited.
                    Ok(None) | Err(_) => Output::Done(success()),
                };
                let done = matches!(out, Output::Done(_));
                if output.send(out).await.is_err() || done {
                    return;
                }
            }
            i = input.recv(), if input_open => {
                let sent = match i {
                    Some(Input::Stdin(b)) if stdin => wr.write_all(&frame(attach::STDIN, &b)).await,
                    Some(Input::StdinEnd) if stdin => wr.write_all(&frame(attach::STDIN_END, b"")).await,
                    Some(Input::Resize { width, height }) => {
                        let mut size = width.to_be_bytes().to_vec();
                        size.extend_from_slice(&height.to_be_bytes());
                        wr.write_all(&frame(attach::RESIZE, &size)).await
                    }
                    Some(_) => Ok(()),
                    // Input ended; whether the client left is told by `output` closing.
                    None => {
                        input_open = false;
                        Ok(())
                    }
                };
                if sent.is_err() {
                    let _ = output.send(Output::Done(success())).await;
                    return;
                }
            }
            () = output.closed() => return,
        }
    }
}
