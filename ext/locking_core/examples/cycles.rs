//! Runs acquire / locked? / ttl / renew / release cycles against a real Redis,
//! for leak checks under valgrind (`spec/leak_spec.rb`) and quick timings.
//!
//!   cargo run --release --example cycles -- redis://127.0.0.1:6379/0 100000

use locking_core::{Client, ClientConfig, Interrupt, Phase};
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
    let cycles: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let client = match Client::new(ClientConfig {
        source: Some(url),
        destination: None,
        phase: Phase::Source,
        key_prefix: b"locking-cycles:".to_vec(),
        timeout: Duration::from_secs(5),
        pool_size: 2,
        dynamic: None,
        eviction: locking_core::EvictionCheck::Warn,
        min_replicas_acked: 0,
    }) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("cycles: {error}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    for cycle in 0..cycles {
        let key = format!("job:{}", cycle % 100);
        let token = format!("token-{cycle}");
        let mut lease = client.lease();
        let interrupt = Interrupt::new();
        let outcome = (|| -> locking_core::Result<bool> {
            let acquired = lease.acquire(key.as_bytes(), token.as_bytes(), 10_000, &interrupt)?;
            let locked = lease.locked(key.as_bytes(), &interrupt)?;
            let _ = lease.ttl(key.as_bytes(), token.as_bytes(), &interrupt)?;
            let renewed = lease.renew(key.as_bytes(), token.as_bytes(), 10_000, &interrupt)?;
            let released = lease.release(key.as_bytes(), token.as_bytes(), &interrupt)?;
            Ok(acquired && locked && renewed && released)
        })();
        client.finish(lease);
        match outcome {
            Ok(true) => {}
            Ok(false) => {
                eprintln!("cycles: cycle {cycle} got a wrong answer");
                std::process::exit(1);
            }
            Err(error) => {
                eprintln!("cycles: {error}");
                std::process::exit(1);
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{cycles} cycles in {:.2}s ({:.1} us per cycle of 5 commands)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / cycles as f64
    );
}
