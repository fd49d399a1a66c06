//! Redis URLs, read the way redis-rb and the `redis` crate read them:
//!
//! - `redis://[[user][:password]@]host[:port][/db]` (also `valkey://`); an IPv6
//!   host in brackets; the port 6379 by default; user and password
//!   percent-decoded;
//! - `unix:///path/to/socket[?db=N][&user=U][&pass=P]` (also `redis+unix://`).
//!
//! `rediss://` (TLS) is refused with a clear message until TLS lands.

use crate::transport::Address;
use std::path::PathBuf;

/// What a URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub address: Address,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl RedisUrl {
    /// The URL without user or password, for messages.
    pub fn name(&self) -> String {
        match &self.address {
            Address::Tcp(host, port) if host.contains(':') => {
                format!("redis://[{host}]:{port}/{}", self.db)
            }
            Address::Tcp(host, port) => format!("redis://{host}:{port}/{}", self.db),
            Address::Unix(path) => format!("unix://{}?db={}", path.display(), self.db),
        }
    }
}

/// Reads `url`; the error says what is wrong, in words.
pub fn parse(url: &str) -> Result<RedisUrl, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "no scheme (expected redis:// or unix://)".to_string())?;
    match scheme {
        "redis" | "valkey" => tcp(rest),
        "unix" | "redis+unix" | "valkey+unix" => unix(rest),
        "rediss" | "valkeys" => Err("TLS Redis URLs are not supported yet".into()),
        other => Err(format!("unsupported scheme {other:?}")),
    }
}

fn tcp(rest: &str) -> Result<RedisUrl, String> {
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match main.find('/') {
        Some(slash) => (&main[..slash], &main[slash + 1..]),
        None => (main, ""),
    };
    let (userinfo, host_port) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let (host, port) = host_and_port(host_port)?;
    if host.is_empty() {
        return Err("no host".into());
    }
    let (mut username, mut password) = match userinfo {
        Some(info) => match info.split_once(':') {
            Some((user, pass)) => (non_empty(decode(user)?), Some(decode(pass)?)),
            None => (non_empty(decode(info)?), None),
        },
        None => (None, None),
    };
    let mut db = match path.trim_matches('/') {
        "" => 0,
        text => database(text)?,
    };
    for (name, value) in query_pairs(query)? {
        match name.as_str() {
            "db" => db = database(&value)?,
            "user" | "username" => username = non_empty(value),
            "pass" | "password" => password = Some(value),
            _ => {} // other clients' options (protocol=, ...)
        }
    }
    Ok(RedisUrl {
        address: Address::Tcp(host, port),
        db,
        username,
        password,
    })
}

fn unix(rest: &str) -> Result<RedisUrl, String> {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') {
        return Err("a unix:// URL needs an absolute path: unix:///path/to/redis.sock".into());
    }
    let mut url = RedisUrl {
        address: Address::Unix(PathBuf::from(decode(path)?)),
        db: 0,
        username: None,
        password: None,
    };
    for (name, value) in query_pairs(query)? {
        match name.as_str() {
            "db" => url.db = database(&value)?,
            "user" | "username" => url.username = non_empty(value),
            "pass" | "password" => url.password = Some(value),
            _ => {}
        }
    }
    Ok(url)
}

fn host_and_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(inner) = text.strip_prefix('[') {
        let close = inner
            .find(']')
            .ok_or("an IPv6 host without its closing ]")?;
        let after = &inner[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected {after:?} after the host")),
        };
        (&inner[..close], port)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        None => 6379,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| format!("bad port {port:?}"))?,
    };
    if host.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!("bad host {host:?}"));
    }
    Ok((host.to_string(), port))
}

fn database(text: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .ok()
        .filter(|db| *db >= 0)
        .ok_or_else(|| format!("bad database number {text:?}"))
}

fn query_pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// Percent-decoding (`p%40ss` is `p@ss`).
fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = bytes
                .get(index + 1..index + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or("a bad %-escape")?;
            out.push(hex);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a %-escape that is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tcp_url(host: &str, port: u16, db: i64, user: Option<&str>, pass: Option<&str>) -> RedisUrl {
        RedisUrl {
            address: Address::Tcp(host.into(), port),
            db,
            username: user.map(Into::into),
            password: pass.map(Into::into),
        }
    }

    #[test]
    fn reads_the_forms_users_write() {
        assert_eq!(
            parse("redis://127.0.0.1:6390/2").unwrap(),
            tcp_url("127.0.0.1", 6390, 2, None, None)
        );
        assert_eq!(
            parse("redis://localhost").unwrap(),
            tcp_url("localhost", 6379, 0, None, None)
        );
        assert_eq!(
            parse("redis://:s%40cret@h:1/0").unwrap(),
            tcp_url("h", 1, 0, None, Some("s@cret"))
        );
        assert_eq!(
            parse("redis://app:pw@h:1").unwrap(),
            tcp_url("h", 1, 0, Some("app"), Some("pw"))
        );
        assert_eq!(
            parse("redis://[::1]:7000/3").unwrap(),
            tcp_url("::1", 7000, 3, None, None)
        );
        assert_eq!(
            parse("redis://[::1]:7000/3").unwrap().name(),
            "redis://[::1]:7000/3"
        );
        let unix = parse("unix:///tmp/r.sock?db=4&pass=x").unwrap();
        assert_eq!(unix.address, Address::Unix("/tmp/r.sock".into()));
        assert_eq!((unix.db, unix.password.as_deref()), (4, Some("x")));
        assert_eq!(unix.name(), "unix:///tmp/r.sock?db=4");
    }

    #[test]
    fn says_what_is_wrong() {
        for (url, says) in [
            ("", "no scheme"),
            ("nonsense", "no scheme"),
            ("http://127.0.0.1", "unsupported scheme"),
            ("redis://[::1", "closing ]"),
            ("rediss://h:1", "TLS"),
            ("redis://h:0", "bad port"),
            ("redis://h:99999", "bad port"),
            ("redis://h:1/x", "bad database"),
            ("redis://:1", "no host"),
            ("unix://relative", "absolute path"),
            ("redis://:%zz@h", "%-escape"),
        ] {
            let error = parse(url).unwrap_err();
            assert!(error.contains(says), "{url}: {error}");
        }
    }

    #[test]
    fn agrees_with_the_redis_crate_on_what_both_accept() {
        use redis::{ConnectionAddr, IntoConnectionInfo};
        for url in [
            "redis://127.0.0.1:6390/2",
            "redis://localhost",
            "redis://:secret@h:1/0",
            "redis://app:p%40ss@h:1/5",
            "redis://user@h:1",
            "unix:///tmp/redis.sock",
            "redis+unix:///tmp/redis.sock?db=2",
        ] {
            let ours = parse(url).unwrap();
            let theirs = url.into_connection_info().unwrap();
            let address = match theirs.addr {
                ConnectionAddr::Tcp(host, port) => Address::Tcp(host, port),
                ConnectionAddr::Unix(path) => Address::Unix(path),
                other => panic!("{other:?}"),
            };
            assert_eq!(ours.address, address, "{url}");
            assert_eq!(ours.db, theirs.redis.db, "{url}");
            assert_eq!(ours.username, theirs.redis.username, "{url}");
            assert_eq!(ours.password, theirs.redis.password, "{url}");
        }
    }

    proptest! {
        #[test]
        fn any_text_parses_or_says_why(url in ".{0,40}") {
            let _ = parse(&url);
        }

        #[test]
        fn redis_looking_urls_never_panic(host in "[a-z0-9.:@\\[\\]/%?=-]{0,30}", port in any::<u32>(), db in any::<i64>()) {
            let _ = parse(&format!("redis://{host}:{port}/{db}"));
        }
    }
}
