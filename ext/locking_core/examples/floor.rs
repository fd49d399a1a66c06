//! The round-trip floor: the same commands locking sends for one operation,
//! written by hand to plain TCP sockets and their replies skipped unparsed.
//! No client library, no pool, no Ruby: what the wire and the servers cost.
//!
//!   cargo run --release --example floor -- N SOURCE DESTINATION STEP...
//!
//! Each STEP is one round trip: commands separated by " ++ ", each starting
//! with `S:` or `D:` for its server; the commands of one step are sent to
//! their servers at once and then all replies are read. `{i}` in a command is
//! replaced by the iteration number. Prints the mean microseconds per
//! iteration (all steps). Example, phase 3's acquire+release:
//!
//!   floor 10000 127.0.0.1:7001 127.0.0.1:7002 \
//!     'D:SET f{i} t NX GET PX 10000' 'D:EVALSHA <sha> 1 f{i} t ++ S:EVALSHA <sha> 1 f{i} t'

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

struct Server {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

fn connect(address: &str) -> Server {
    let stream =
        TcpStream::connect(address).unwrap_or_else(|error| fail(&format!("{address}: {error}")));
    let _ = stream.set_nodelay(true);
    let reader = BufReader::new(stream.try_clone().unwrap_or_else(|e| fail(&e.to_string())));
    Server {
        writer: stream,
        reader,
    }
}

fn fail(message: &str) -> ! {
    eprintln!("floor: {message}");
    std::process::exit(2);
}

/// Reads one reply of any type, discarding it; an error reply is fatal
/// (the floor must run the same commands successfully, not fail fast).
fn skip_reply(reader: &mut BufReader<TcpStream>, line: &mut Vec<u8>) {
    line.clear();
    if reader.read_until(b'\n', line).unwrap_or(0) < 3 {
        fail("connection lost");
    }
    let number = || -> i64 {
        std::str::from_utf8(&line[1..line.len() - 2])
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| fail("bad reply"))
    };
    match line[0] {
        b'+' | b':' => {}
        b'-' => fail(&String::from_utf8_lossy(line)),
        b'$' => {
            let length = number();
            if length >= 0 {
                let mut body = vec![0u8; length as usize + 2];
                reader
                    .read_exact(&mut body)
                    .unwrap_or_else(|_| fail("connection lost"));
            }
        }
        b'*' => {
            let count = number();
            let mut inner = Vec::new();
            for _ in 0..count.max(0) {
                skip_reply(reader, &mut inner);
            }
        }
        _ => fail("unknown reply type"),
    }
}

/// One command, encoded once: fixed bytes, and the words holding `{i}`
/// (written per iteration without allocating), in order.
enum Piece {
    Fixed(Vec<u8>),
    Iteration { before: Vec<u8>, after: Vec<u8> },
}

fn template(command: &str) -> Vec<Piece> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let mut pieces = vec![Piece::Fixed(format!("*{}\r\n", words.len()).into_bytes())];
    for word in words {
        match word.split_once("{i}") {
            Some((before, after)) => pieces.push(Piece::Iteration {
                before: before.as_bytes().to_vec(),
                after: after.as_bytes().to_vec(),
            }),
            None => pieces.push(Piece::Fixed(
                format!("${}\r\n{}\r\n", word.len(), word).into_bytes(),
            )),
        }
    }
    pieces
}

fn encode(pieces: &[Piece], iteration: u64, out: &mut Vec<u8>) {
    for piece in pieces {
        match piece {
            Piece::Fixed(bytes) => out.extend_from_slice(bytes),
            Piece::Iteration { before, after } => {
                let mut digits = [0u8; 20];
                let mut start = digits.len();
                let mut n = iteration;
                loop {
                    start -= 1;
                    digits[start] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                let number = &digits[start..];
                let length = before.len() + number.len() + after.len();
                let _ = write!(out, "${length}\r\n");
                out.extend_from_slice(before);
                out.extend_from_slice(number);
                out.extend_from_slice(after);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        fail("usage: floor N SOURCE DESTINATION STEP...");
    }
    let count: u64 = args[0]
        .parse()
        .unwrap_or_else(|_| fail("N must be a number"));
    let mut servers = [connect(&args[1]), connect(&args[2])];
    // Each step: (server index, command template) pairs.
    let steps: Vec<Vec<(usize, Vec<Piece>)>> = args[3..]
        .iter()
        .map(|step| {
            step.split(" ++ ")
                .map(|command| match command.trim().split_once(':') {
                    Some(("S", rest)) => (0, template(rest)),
                    Some(("D", rest)) => (1, template(rest)),
                    _ => fail(&format!(
                        "a command must start with S: or D:, got {command:?}"
                    )),
                })
                .collect()
        })
        .collect();
    let mut buffers = [Vec::new(), Vec::new()];
    let mut line = Vec::new();
    let started = Instant::now();
    for iteration in 0..count {
        for step in &steps {
            for buffer in buffers.iter_mut() {
                buffer.clear();
            }
            for (server, command) in step {
                encode(command, iteration, &mut buffers[*server]);
            }
            for (server, buffer) in servers.iter_mut().zip(&buffers) {
                if !buffer.is_empty() {
                    server
                        .writer
                        .write_all(buffer)
                        .unwrap_or_else(|_| fail("connection lost"));
                }
            }
            for (server, _) in step {
                skip_reply(&mut servers[*server].reader, &mut line);
            }
        }
    }
    println!(
        "{:.2}",
        started.elapsed().as_secs_f64() * 1e6 / count as f64
    );
}
