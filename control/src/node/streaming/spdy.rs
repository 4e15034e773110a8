//! The server side of SPDY/3.1 as Kubernetes clients speak it (client-go's `spdystream`):
//! the framing, the zlib header blocks, and a connection that turns frames into stream
//! events. Only what the exec and port-forward protocols use is here: no flow control
//! (spdystream neither sends nor honours WINDOW_UPDATE), no server push, no priorities.
//!
//! Header blocks are one zlib stream per direction with SPDY/3's preset dictionary. Ours
//! are written as stored (uncompressed) deflate blocks, which need no dictionary and which
//! every inflater reads; the client's are inflated over a window that starts with the
//! dictionary (what a zlib preset dictionary is).

use bytes::Bytes;
use miniz_oxide::inflate::{
    TINFLStatus,
    core::{DecompressorOxide, decompress, inflate_flags},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

const DICTIONARY: &[u8] = include_bytes!("spdy3_dictionary.bin");
const VERSION: u16 = 3;
const FLAG_FIN: u8 = 0x01;
/// Frames larger than this are refused: our clients' frames are a few KiB.
const MAX_FRAME: usize = 1 << 20;
/// Data we send is cut into frames of at most this size.
pub const MAX_DATA_FRAME: usize = 32 * 1024;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY frame of {0} bytes is too large")]
    TooLarge(usize),
    #[error("SPDY control frame of version {0} (only 3 is spoken)")]
    Version(u16),
    #[error("malformed SPDY frame: {0}")]
    Malformed(&'static str),
    #[error("SPDY header block does not inflate: {0}")]
    Inflate(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One header block's name/value pairs, names lower case as SPDY/3 sends them.
pub type Headers = Vec<(String, String)>;

pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Inflates the client's header blocks: a continuous raw deflate stream after the zlib
/// header, with the dictionary as the history it starts from.
pub struct HeaderInflater {
    state: Box<DecompressorOxide>,
    window: Vec<u8>,
    pos: usize,
    /// Bytes of the zlib header still to skip (2, then 4 more when it names a dictionary).
    header: Vec<u8>,
    header_done: bool,
}

impl Default for HeaderInflater {
    fn default() -> Self {
        let mut window = DICTIONARY.to_vec();
        let pos = window.len();
        window.resize(pos + 64 * 1024, 0);
        Self {
            state: Box::default(),
            window,
            pos,
            header: Vec::new(),
            header_done: false,
        }
    }
}

impl HeaderInflater {
    pub fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        while !self.header_done && !input.is_empty() {
            self.header.push(input[0]);
            input = &input[1..];
            let need = if self.header.len() >= 2 && self.header[1] & 0x20 != 0 {
                6
            } else {
                2
            };
            if self.header.len() >= 2 && (self.header[0] & 0x0f) != 8 {
                return Err(SpdyError::Inflate("not a deflate zlib stream".into()));
            }
            self.header_done = self.header.len() == need;
        }
        let start = self.pos;
        let flags = inflate_flags::TINFL_FLAG_HAS_MORE_INPUT | inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
        loop {
            if self.window.len() - self.pos < 32 * 1024 {
                let len = self.window.len();
                self.window.resize(len + 64 * 1024, 0);
            }
            let (status, read, written) = decompress(&mut self.state, input, &mut self.window, self.pos, flags);
            input = &input[read..];
            self.pos += written;
            match status {
                TINFLStatus::NeedsMoreInput if input.is_empty() => break,
                TINFLStatus::NeedsMoreInput | TINFLStatus::HasMoreOutput => {
                    if read == 0 && written == 0 && status == TINFLStatus::NeedsMoreInput {
                        return Err(SpdyError::Inflate("inflate made no progress".into()));
                    }
                }
                TINFLStatus::Done => break,
                other => return Err(SpdyError::Inflate(format!("{other:?}"))),
            }
        }
        let out = self.window[start..self.pos].to_vec();
        // Keep the last 32 KiB (deflate's reach) and drop the rest, so the window stays small.
        if self.pos > 256 * 1024 {
            let keep = self.pos - 32 * 1024;
            self.window.copy_within(keep..self.pos, 0);
            self.pos = 32 * 1024;
            self.window.truncate(self.pos + 64 * 1024);
        }
        Ok(out)
    }
}

/// Reads a decompressed header block.
pub fn parse_header_block(mut b: &[u8]) -> Result<Headers, SpdyError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], SpdyError> {
        if b.len() < n {
            return Err(SpdyError::Malformed("header block is truncated"));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn u32_of(b: &mut &[u8]) -> Result<usize, SpdyError> {
        let v = take(b, 4)?;
        Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize)
    }
    let count = u32_of(&mut b)?;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = u32_of(&mut b)?;
        let name = String::from_utf8_lossy(take(&mut b, n)?).to_ascii_lowercase();
        let n = u32_of(&mut b)?;
        let value = take(&mut b, n)?;
        // Several values of one name are joined by NUL.
        for v in value.split(|c| *c == 0) {
            headers.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
        }
    }
    Ok(headers)
}

/// Writes our header blocks: the zlib header once, then each block as one stored block.
#[derive(Default)]
pub struct HeaderDeflater {
    started: bool,
}

impl HeaderDeflater {
    pub fn deflate(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (n, v) in headers {
            raw.extend_from_slice(&(n.len() as u32).to_be_bytes());
            raw.extend_from_slice(n.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 16);
        if !self.started {
            // Deflate, 32 KiB window, no dictionary named, check bits.
            out.extend_from_slice(&[0x78, 0x01]);
            self.started = true;
        }
        for chunk in raw.chunks(0xffff) {
            let len = chunk.len() as u16;
            out.push(0x00); // not final, stored
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        // An empty stored block, as zlib's sync flush ends a block: Go's inflater hands
        // out a stored block's bytes only when it has read the next block's header, and
        // without one it reads past the frame, fails, and every later header block fails.
        out.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);
        out
    }
}

/// What the reader saw.
#[derive(Debug)]
pub enum Event {
    Stream { id: u32, headers: Headers, fin: bool },
    Data { id: u32, data: Bytes, fin: bool },
    Reset { id: u32 },
}

/// What the writer sends.
#[derive(Debug)]
pub enum Out {
    Reply { id: u32 },
    Data { id: u32, data: Bytes, fin: bool },
    Reset { id: u32 },
    Ping(u32),
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

pub fn encode(frame: &Out, deflater: &mut HeaderDeflater) -> Vec<u8> {
    match frame {
        Out::Reply { id } => {
            let mut p = id.to_be_bytes().to_vec();
            p.extend_from_slice(&deflater.deflate(&[]));
            control(SYN_REPLY, 0, &p)
        }
        Out::Data { id, data, fin } => {
            let mut f = Vec::with_capacity(8 + data.len());
            f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
            f.push(if *fin { FLAG_FIN } else { 0 });
            f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            f.extend_from_slice(data);
            f
        }
        Out::Reset { id } => {
            let mut p = id.to_be_bytes().to_vec();
            // CANCEL
            p.extend_from_slice(&5u32.to_be_bytes());
            control(RST_STREAM, 0, &p)
        }
        Out::Ping(id) => control(PING, 0, &id.to_be_bytes()),
    }
}

/// A frame as read: control (kind, flags, payload) or data (stream, flags, payload).
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Control { kind: u16, flags: u8, payload: Vec<u8> },
    Data { id: u32, flags: u8, payload: Vec<u8> },
}

pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, SpdyError> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if len > MAX_FRAME {
        return Err(SpdyError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    if head[0] & 0x80 != 0 {
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        Ok(Some(Frame::Control { kind, flags, payload }))
    } else {
        let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
        Ok(Some(Frame::Data { id, flags, payload }))
    }
}

fn stream_id(p: &[u8]) -> Result<u32, SpdyError> {
    p.get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
        .ok_or(SpdyError::Malformed("control frame too short"))
}

/// A server connection: frames in become [`Event`]s, [`Out`] frames are written in order.
pub struct Connection {
    pub events: mpsc::Receiver<Event>,
    pub out: mpsc::Sender<Out>,
}

impl Connection {
    pub fn start<S: AsyncRead + AsyncWrite + Send + 'static>(io: S) -> Self {
        let (mut rd, mut wr) = tokio::io::split(io);
        let (out_tx, mut out_rx) = mpsc::channel::<Out>(64);
        let (ev_tx, ev_rx) = mpsc::channel::<Event>(64);
        tokio::spawn(async move {
            let mut deflater = HeaderDeflater::default();
            while let Some(frame) = out_rx.recv().await {
                let bytes = encode(&frame, &mut deflater);
                if wr.write_all(&bytes).await.is_err() {
                    return;
                }
                if out_rx.is_empty() && wr.flush().await.is_err() {
                    return;
                }
            }
            let _ = wr.shutdown().await;
        });
        let pings = out_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = read_loop(&mut rd, ev_tx, pings).await {
                tracing::debug!(error = %e, "SPDY connection ended");
            }
        });
        Self {
            events: ev_rx,
            out: out_tx,
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    rd: &mut R,
    events: mpsc::Sender<Event>,
    out: mpsc::Sender<Out>,
) -> Result<(), SpdyError> {
    let mut inflater = HeaderInflater::default();
    while let Some(frame) = read_frame(rd).await? {
        let event = match frame {
            Frame::Data { id, flags, payload } => Event::Data {
                id,
                data: Bytes::from(payload),
                fin: flags & FLAG_FIN != 0,
            },
            Frame::Control { kind, flags, payload } => match kind {
                SYN_STREAM => {
                    let id = stream_id(&payload)?;
                    let block = payload.get(10..).ok_or(SpdyError::Malformed("SYN_STREAM too short"))?;
                    let headers = parse_header_block(&inflater.inflate(block)?)?;
                    Event::Stream {
                        id,
                        headers,
                        fin: flags & FLAG_FIN != 0,
                    }
                }
                // Their header blocks go through the shared inflater even though we do not
                // use them, or the next block would not inflate.
                SYN_REPLY | HEADERS => {
                    if let Some(block) = payload.get(4..) {
                        inflater.inflate(block)?;
                    }
                    continue;
                }
                RST_STREAM => Event::Reset {
                    id: stream_id(&payload)?,
                },
                PING => {
                    let id = stream_id(&payload)?;
                    let _ = out.send(Out::Ping(id)).await;
                    continue;
                }
                GOAWAY => return Ok(()),
                // SETTINGS, WINDOW_UPDATE and the rest carry nothing we act on.
                _ => continue,
            },
        };
        if events.send(event).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert!(DICTIONARY.starts_with(b"\0\0\0\x07options"));
    }

    #[test]
    fn header_blocks_inflate_across_frames_with_the_dictionary() {
        // Python's zlib with zdict=the SPDY/3 dictionary, one compressor, Z_SYNC_FLUSH after
        // each block: {"streamtype": "error"} then {"streamtype": "stdout", "port": "8080"}.
        let first = hex(FIRST_BLOCK);
        let second = hex(SECOND_BLOCK);
        let mut inflater = HeaderInflater::default();
        let h = parse_header_block(&inflater.inflate(&first).unwrap()).unwrap();
        assert_eq!(h, vec![("streamtype".to_owned(), "error".to_owned())]);
        let h = parse_header_block(&inflater.inflate(&second).unwrap()).unwrap();
        assert_eq!(
            h,
            vec![
                ("streamtype".to_owned(), "stdout".to_owned()),
                ("port".to_owned(), "8080".to_owned())
            ]
        );
    }

    #[test]
    fn our_header_blocks_are_stored_zlib() {
        let mut d = HeaderDeflater::default();
        let first = d.deflate(&[("a", "b")]);
        assert_eq!(&first[..3], &[0x78, 0x01, 0x00]);
        let second = d.deflate(&[]);
        // The block, then the empty stored block Go's inflater needs to hand it out.
        assert_eq!(second, vec![0, 4, 0, 0xfb, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert!(first.ends_with(&[0, 0, 0, 0xff, 0xff]));
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut d = HeaderDeflater::default();
        let bytes = encode(
            &Out::Data {
                id: 3,
                data: Bytes::from_static(b"hi"),
                fin: true,
            },
            &mut d,
        );
        let frame = read_frame(&mut &bytes[..]).await.unwrap().unwrap();
        assert_eq!(
            frame,
            Frame::Data {
                id: 3,
                flags: FLAG_FIN,
                payload: b"hi".to_vec()
            }
        );
        let bytes = encode(&Out::Ping(7), &mut d);
        let frame = read_frame(&mut &bytes[..]).await.unwrap().unwrap();
        assert_eq!(
            frame,
            Frame::Control {
                kind: PING,
                flags: 0,
                payload: 7u32.to_be_bytes().to_vec()
            }
        );
    }

    const FIRST_BLOCK: &str = "78f9e3c6a7c202a62346703a2b294a4dcc851625aca9a08006000000ffff";
    const SECOND_BLOCK: &str = "02651c0c2960624ec90797d1c022bb084c5b18581800000000ffff";
}
