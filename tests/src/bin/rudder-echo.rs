//! `rudder-echo`: the server (and a matching client) the end-to-end tests talk to.
//!
//! ```text
//! rudder-echo serve --name NAME --port P [--udp-port Q] [--http-port H] [--address IP]
//! rudder-echo ask tcp|udp IP PORT [--timeout-ms N]
//! ```
//!
//! `serve` listens on `--address` (default 0.0.0.0; an IPv6 address for IPv6 tests, which
//! also makes UDP replies leave from that address). Every TCP connection on P gets `NAME\n` and is
//! closed; every UDP datagram on Q (default P) gets a `NAME\n` datagram back; with
//! `--http-port`, HTTP requests on H get `200 OK` with body `NAME\n`. It prints `ready` once
//! all sockets are bound, so callers can wait for that instead of sleeping.
//!
//! `ask` sends one request and prints the name in the reply. Exit codes: 0 answered,
//! 1 other failure, 2 usage, 3 refused, 4 timeout, 5 unreachable.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    thread,
    time::Duration,
};

use rudder_tests::netns::{AskErrorKind, Proto, ask};

const USAGE: &str = "usage:
  rudder-echo serve --name NAME --port P [--udp-port Q] [--http-port H] [--address IP]
  rudder-echo ask tcp|udp IP PORT [--timeout-ms N]";
/// Bounds how long a connection thread waits on a client that neither sends nor closes.
const CLIENT_IDLE: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((cmd, rest)) if cmd == "serve" => serve(rest),
        Some((cmd, rest)) if cmd == "ask" => return ask_once(rest),
        _ => Err(Usage("expected `serve` or `ask`".into())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Usage(msg)) => {
            eprintln!("rudder-echo: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

struct Usage(String);

/// `--flag value` pairs after the positional arguments.
fn flags<'a>(args: &'a [String], known: &[&str]) -> Result<Vec<(&'a str, &'a str)>, Usage> {
    args.chunks(2)
        .map(|pair| match pair {
            [flag, value] if known.contains(&flag.as_str()) => Ok((flag.as_str(), value.as_str())),
            [flag, _] => Err(Usage(format!("unknown flag {flag}"))),
            [flag] => Err(Usage(format!("{flag} needs a value"))),
            _ => Err(Usage("bad arguments".into())),
        })
        .collect()
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, Usage> {
    value
        .parse()
        .map_err(|_| Usage(format!("{flag}: {value:?} is not a valid number")))
}

fn serve(args: &[String]) -> Result<(), Usage> {
    let (mut name, mut port, mut udp_port, mut http_port) = (None, None, None, None);
    let mut any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    for (flag, value) in flags(args, &["--name", "--port", "--udp-port", "--http-port", "--address"])? {
        match flag {
            "--name" => name = Some(value.to_owned()),
            "--address" => {
                any = value
                    .parse()
                    .map_err(|_| Usage(format!("--address: {value:?} is not an IP address")))?
            }
            "--port" => port = Some(number::<u16>(flag, value)?),
            "--udp-port" => udp_port = Some(number::<u16>(flag, value)?),
            _ => http_port = Some(number::<u16>(flag, value)?),
        }
    }
    let name = name.ok_or_else(|| Usage("--name is required".into()))?;
    let port = port.ok_or_else(|| Usage("--port is required".into()))?;
    // Leaked once so every connection thread can borrow it for 'static.
    let reply: &'static str = Box::leak(format!("{name}\n").into_boxed_str());

    let bound = (|| -> io::Result<_> {
        let tcp = TcpListener::bind((any, port))?;
        let udp = UdpSocket::bind((any, udp_port.unwrap_or(port)))?;
        let http = http_port.map(|p| TcpListener::bind((any, p))).transpose()?;
        Ok((tcp, udp, http))
    })();
    let (tcp, udp, http) = match bound {
        Ok(sockets) => sockets,
        Err(err) => {
            eprintln!("rudder-echo {name}: cannot bind: {err}");
            std::process::exit(1);
        }
    };

    thread::spawn(move || serve_udp(udp, reply));
    if let Some(http) = http {
        thread::spawn(move || accept_loop(http, move |stream| answer_http(stream, reply)));
    }
    println!("ready");
    let _ = io::stdout().flush();
    accept_loop(tcp, move |stream| answer_tcp(stream, reply));
    Ok(())
}

fn accept_loop(listener: TcpListener, answer: impl Fn(TcpStream) -> io::Result<()> + Copy + Send + 'static) {
    for stream in listener.incoming() {
        match stream {
            // A thread per connection: answering waits for the client to close (see finish).
            Ok(stream) => {
                thread::spawn(move || answer(stream));
            }
            Err(err) => eprintln!("accept: {err}"),
        }
    }
}

fn answer_tcp(mut stream: TcpStream, reply: &str) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.write_all(reply.as_bytes())?;
    finish(stream)
}

fn answer_http(stream: TcpStream, reply: &str) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_IDLE))?;
    // Read the request head; the path and headers do not matter.
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 && !(line == "\r\n" || line == "\n") {
        line.clear();
    }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close";
    let mut stream = stream;
    write!(stream, "{head}\r\nContent-Length: {}\r\n\r\n{reply}", reply.len())?;
    finish(stream)
}

/// Half-closes, then drains what the client sent until it closes too: closing a socket with
/// unread data makes the kernel send RST, which can destroy the reply still in flight.
fn finish(mut stream: TcpStream) -> io::Result<()> {
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(CLIENT_IDLE))?;
    let mut sink = [0u8; 512];
    while stream.read(&mut sink)? > 0 {}
    Ok(())
}

fn serve_udp(socket: UdpSocket, reply: &str) {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, from)) => {
                if let Err(err) = socket.send_to(reply.as_bytes(), from) {
                    eprintln!("udp reply to {from}: {err}");
                }
            }
            Err(err) => eprintln!("udp recv: {err}"),
        }
    }
}

fn ask_once(args: &[String]) -> ExitCode {
    match parse_ask(args) {
        Ok((proto, addr, timeout)) => match ask(proto, addr, timeout) {
            Ok(name) => {
                println!("{name}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("rudder-echo ask: {err}");
                ExitCode::from(match err.kind {
                    AskErrorKind::Refused => 3,
                    AskErrorKind::Timeout => 4,
                    AskErrorKind::Unreachable => 5,
                    AskErrorKind::Other => 1,
                })
            }
        },
        Err(Usage(msg)) => {
            eprintln!("rudder-echo: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn parse_ask(args: &[String]) -> Result<(Proto, SocketAddr, Duration), Usage> {
    let [proto, ip, port, rest @ ..] = args else {
        return Err(Usage("ask needs tcp|udp IP PORT".into()));
    };
    let proto = match proto.as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        other => return Err(Usage(format!("unknown protocol {other:?}"))),
    };
    let ip: IpAddr = ip.parse().map_err(|_| Usage(format!("{ip:?} is not an IP address")))?;
    let port = number::<u16>("PORT", port)?;
    let mut timeout = Duration::from_secs(2);
    for (flag, value) in flags(rest, &["--timeout-ms"])? {
        timeout = Duration::from_millis(number(flag, value)?);
    }
    Ok((proto, SocketAddr::new(ip, port), timeout))
}
