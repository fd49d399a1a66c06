//! A delaying TCP proxy for the benchmarks: loopback flatters every client,
//! and this kernel has no netem qdisc. Each byte a side sends is delivered
//! to the other side DELAY_US microseconds after it was read, in order, so
//! a round trip costs 2 x DELAY_US more, as across one cloud zone.
//!
//!   cargo run --release --example delay_proxy -- TARGET_HOST:PORT DELAY_US
//!
//! Prints the port it listens on (loopback), then serves until killed.
//!
//! Delays are scheduled against the time each chunk was read, not added one
//! after another: a chunk read while an earlier one waits still leaves
//! DELAY_US after its own arrival, so pipelined traffic does not pile up.
//! Each direction of each connection has a reader thread (timestamps
//! chunks) and a writer thread (sleeps until a chunk is due, then writes it).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, delay] = args.as_slice() else {
        fail("usage: delay_proxy TARGET_HOST:PORT DELAY_US");
    };
    let delay = Duration::from_micros(delay.parse().unwrap_or_else(|_| fail("DELAY_US: a number")));
    // Sleep as precisely as the kernel allows: the default 50 µs of timer
    // slack would be a fifth of a 250 µs delay.
    // SAFETY: prctl with PR_SET_TIMERSLACK only changes this process's slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0);
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail(&e.to_string()));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    println!("{port}");
    let _ = std::io::stdout().flush();
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let Ok(upstream) = TcpStream::connect(target) else {
            continue;
        };
        for stream in [&client, &upstream] {
            let _ = stream.set_nodelay(true);
        }
        let pairs = [
            (client.try_clone(), upstream.try_clone()),
            (upstream.try_clone(), client.try_clone()),
        ];
        for (from, to) in pairs {
            if let (Ok(from), Ok(to)) = (from, to) {
                forward(from, to, delay);
            }
        }
    }
}

/// How long before a chunk is due its writer stops sleeping and spins.
const SPIN: Duration = Duration::from_micros(60);

/// Forwards `from` to `to`, each chunk `delay` after it was read.
fn forward(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (chunks, due) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    if chunks
                        .send((Instant::now() + delay, buffer[..read].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Read);
    });
    thread::spawn(move || {
        for (at, bytes) in due {
            // Sleep to just before the chunk is due, then spin: a thread
            // woken from sleep runs tens of µs late on this VM.
            let now = Instant::now();
            if at > now + SPIN {
                thread::sleep(at - now - SPIN);
            }
            while Instant::now() < at {
                std::hint::spin_loop();
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

fn fail(message: &str) -> ! {
    eprintln!("delay_proxy: {message}");
    std::process::exit(2);
}
