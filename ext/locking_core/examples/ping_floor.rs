//! The round-trip floor: bare PINGs on one TCP connection, no client library.
//!
//!   cargo run --release --example ping_floor -- 127.0.0.1:6379 20000
//! prints the mean microseconds per round trip.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:6379".into());
    let count: u32 = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let mut stream = match TcpStream::connect(&address) {
        Ok(stream) => stream,
        Err(error) => {
            eprintln!("ping_floor: {address}: {error}");
            std::process::exit(2);
        }
    };
    let _ = stream.set_nodelay(true);
    let mut reply = [0u8; 7];
    let started = Instant::now();
    for _ in 0..count {
        if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err()
            || stream.read_exact(&mut reply).is_err()
        {
            eprintln!("ping_floor: connection lost");
            std::process::exit(1);
        }
    }
    println!(
        "{:.2}",
        started.elapsed().as_secs_f64() * 1e6 / f64::from(count)
    );
}
