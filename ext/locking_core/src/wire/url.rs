//! Redis URLs, read the way redis-rb and the `redis` crate read them, and
//! the one text form of every server setting (the Ruby side turns a
//! settings Hash or a `Redis` object into one of these):
//!
//! - `redis://[[user][:password]@]host[:port][/db]` (also `valkey://`); an IPv6
//!   host in brackets; the port 6379 by default; user and password
//!   percent-decoded;
//! - `rediss://...` (also `redis://...?ssl=true`): TLS, with the query options
//!   `ca_file`, `ca_path`, `cert`, `key` (paths), `verify_mode=none|peer` and
//!   `verify_hostname=true|false`;
//! - `redis+sentinel://[[user][:password]@]host:port[,host:port...]/MASTER[/db]`
//!   (`rediss+sentinel://` for TLS): the sentinels, and the master's name.
//!   `user` and `password` are the master's; the query options
//!   `sentinel_username` and `sentinel_password` are the sentinels';
//! - `redis+cluster://[[user][:password]@]host:port[,host:port...]` (also
//!   `rediss+cluster://`): a Redis Cluster, by one or more of its nodes
//!   (seeds); the rest of the cluster is learnt from them. Only database 0;
//! - `unix:///path/to/socket[?db=N][&user=U][&pass=P]` (also `redis+unix://`).

use crate::wire::tls::TlsSettings;
use crate::wire::transport::Address;
use std::path::PathBuf;

/// What a URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// The server; for a Sentinel URL, the first sentinel (see `sentinel`).
    pub address: Address,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<TlsSettings>,
    pub sentinel: Option<Sentinel>,
    /// A Redis Cluster: the seed nodes (`address` is the first).
    pub cluster: Option<Vec<Address>>,
}

/// A master found through sentinels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentinel {
    pub master: String,
    pub sentinels: Vec<Address>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl RedisUrl {
    /// The URL without user, password or file paths, for messages.
    pub fn name(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        if let Some(sentinel) = &self.sentinel {
            let hosts: Vec<String> = sentinel
                .sentinels
                .iter()
                .map(crate::wire::transport::describe)
                .collect();
            return format!(
                "{scheme}+sentinel://{}/{}/{}",
                hosts.join(","),
                sentinel.master,
                self.db
            );
        }
        if let Some(seeds) = &self.cluster {
            let hosts: Vec<String> = seeds.iter().map(crate::wire::transport::describe).collect();
            return format!("{scheme}+cluster://{}", hosts.join(","));
        }
        match &self.address {
            Address::Unix(path) => format!("unix://{}?db={}", path.display(), self.db),
            tcp => format!(
                "{scheme}://{}/{}",
                crate::wire::transport::describe(tcp),
                self.db
            ),
        }
    }
}

/// Reads `url`; the error says what is wrong, in words.
pub fn parse(url: &str) -> Result<RedisUrl, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        "no scheme (expected redis://, rediss://, redis+sentinel://, redis+cluster:// or unix://)"
            .to_string()
    })?;
    match scheme {
        "redis" | "valkey" => tcp(rest, false),
        "rediss" | "valkeys" => tcp(rest, true),
        "redis+sentinel" | "valkey+sentinel" => sentinel(rest, false),
        "rediss+sentinel" | "valkeys+sentinel" => sentinel(rest, true),
        "redis+cluster" | "valkey+cluster" => cluster(rest, false),
        "rediss+cluster" | "valkeys+cluster" => cluster(rest, true),
        "unix" | "redis+unix" | "valkey+unix" => unix(rest),
        other => Err(format!("unsupported scheme {other:?}")),
    }
}

/// `[[user][:password]@]` and the rest of the authority.
fn credentials(authority: &str) -> Result<(Option<String>, Option<String>, &str), String> {
    Ok(match authority.rfind('@') {
        Some(at) => {
            let info = &authority[..at];
            let (user, pass) = match info.split_once(':') {
                Some((user, pass)) => (non_empty(decode(user)?), Some(decode(pass)?)),
                None => (non_empty(decode(info)?), None),
            };
            (user, pass, &authority[at + 1..])
        }
        None => (None, None, authority),
    })
}

fn tcp(rest: &str, tls: bool) -> Result<RedisUrl, String> {
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match main.find('/') {
        Some(slash) => (&main[..slash], &main[slash + 1..]),
        None => (main, ""),
    };
    let (username, password, host_port) = credentials(authority)?;
    let (host, port) = host_and_port(host_port, 6379)?;
    if host.is_empty() {
        return Err("no host".into());
    }
    let db = match path.trim_matches('/') {
        "" => 0,
        text => database(text)?,
    };
    let mut url = RedisUrl {
        address: Address::Tcp(host, port),
        db,
        username,
        password,
        tls: tls.then(TlsSettings::default),
        sentinel: None,
        cluster: None,
    };
    options(&mut url, query)?;
    Ok(url)
}

fn sentinel(rest: &str, tls: bool) -> Result<RedisUrl, String> {
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').ok_or(
        "a Sentinel URL needs the master's name: redis+sentinel://host:26379,host:26379/mymaster",
    )?;
    let (username, password, hosts) = credentials(authority)?;
    let sentinels = host_list(hosts, 26379, "sentinel")?;
    if sentinels.is_empty() {
        return Err("no sentinel host".into());
    }
    let mut parts = path.trim_matches('/').splitn(2, '/');
    let master = decode(parts.next().unwrap_or(""))?;
    if master.is_empty() {
        return Err("no master name (redis+sentinel://host:26379/mymaster)".into());
    }
    let db = match parts.next() {
        None | Some("") => 0,
        Some(text) => database(text)?,
    };
    let mut url = RedisUrl {
        address: sentinels[0].clone(),
        db,
        username,
        password,
        tls: tls.then(TlsSettings::default),
        sentinel: Some(Sentinel {
            master,
            sentinels,
            username: None,
            password: None,
        }),
        cluster: None,
    };
    options(&mut url, query)?;
    Ok(url)
}

fn cluster(rest: &str, tls: bool) -> Result<RedisUrl, String> {
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match main.find('/') {
        Some(slash) => (&main[..slash], &main[slash + 1..]),
        None => (main, ""),
    };
    let (username, password, hosts) = credentials(authority)?;
    let seeds = host_list(hosts, 6379, "cluster node")?;
    if seeds.is_empty() {
        return Err("no cluster node (redis+cluster://host:7000[,host:7001])".into());
    }
    let db = match path.trim_matches('/') {
        "" => 0,
        text => database(text)?,
    };
    let mut url = RedisUrl {
        address: seeds[0].clone(),
        db,
        username,
        password,
        tls: tls.then(TlsSettings::default),
        sentinel: None,
        cluster: Some(seeds),
    };
    options(&mut url, query)?;
    if url.db != 0 {
        return Err(format!(
            "a Redis Cluster has only database 0, not {}",
            url.db
        ));
    }
    Ok(url)
}

/// `host:port,host:port...` (a sentinel's, or a cluster's seeds).
fn host_list(hosts: &str, default_port: u16, what: &str) -> Result<Vec<Address>, String> {
    let mut addresses = Vec::new();
    for host_port in hosts.split(',').filter(|h| !h.is_empty()) {
        let (host, port) = host_and_port(host_port, default_port)?;
        if host.is_empty() {
            return Err(format!("a {what} without a host"));
        }
        addresses.push(Address::Tcp(host, port));
    }
    Ok(addresses)
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
        tls: None,
        sentinel: None,
        cluster: None,
    };
    options(&mut url, query)?;
    if url.tls.is_some() {
        return Err("TLS over a unix socket is not supported".into());
    }
    Ok(url)
}

/// The query options; others' (`protocol=`, ...) are ignored.
fn options(url: &mut RedisUrl, query: &str) -> Result<(), String> {
    let mut tls_options = Vec::new();
    for (name, value) in query_pairs(query)? {
        match name.as_str() {
            "db" => url.db = database(&value)?,
            "user" | "username" => url.username = non_empty(value),
            "pass" | "password" => url.password = Some(value),
            "ssl" | "tls" => {
                if flag(&name, &value)? {
                    url.tls.get_or_insert_with(TlsSettings::default);
                } else {
                    url.tls = None;
                }
            }
            "ca_file" | "ca_path" | "cert" | "key" | "verify_mode" | "verify_hostname" => {
                tls_options.push((name, value))
            }
            "sentinel_username" | "sentinel_password" | "role" => {
                let sentinel = url
                    .sentinel
                    .as_mut()
                    .ok_or_else(|| format!("{name} is for a redis+sentinel:// URL"))?;
                match name.as_str() {
                    "sentinel_username" => sentinel.username = non_empty(value),
                    "sentinel_password" => sentinel.password = Some(value),
                    _ if value == "master" => {}
                    _ => {
                        return Err(format!(
                            "role {value:?}: locks are only ever read and written on the master (role=master)"
                        ))
                    }
                }
            }
            _ => {}
        }
    }
    if tls_options.is_empty() {
        return Ok(());
    }
    let tls = url.tls.as_mut().ok_or_else(|| {
        format!(
            "{} given but TLS is off (use rediss://, or ssl=true)",
            tls_options[0].0
        )
    })?;
    for (name, value) in tls_options {
        match name.as_str() {
            "ca_file" => tls.ca_file = Some(path(&name, value)?),
            "ca_path" => tls.ca_path = Some(path(&name, value)?),
            "cert" => tls.cert = Some(path(&name, value)?),
            "key" => tls.key = Some(path(&name, value)?),
            "verify_mode" => {
                tls.verify_peer = match value.to_ascii_lowercase().as_str() {
                    "none" | "0" => false,
                    "peer" | "1" => true,
                    _ => return Err(format!("verify_mode {value:?} (expected none or peer)")),
                }
            }
            _ => tls.verify_hostname = flag(&name, &value)?,
        }
    }
    Ok(())
}

fn path(name: &str, value: String) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err(format!("{name} is empty"));
    }
    Ok(PathBuf::from(value))
}

fn flag(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{name}={value:?} (expected true or false)")),
    }
}

fn host_and_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
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
        None => default_port,
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
            tls: None,
            sentinel: None,
            cluster: None,
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
    fn reads_cluster_forms() {
        let url = parse("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001,[::1]").unwrap();
        assert_eq!(
            url.cluster,
            Some(vec![
                Address::Tcp("10.0.0.1".into(), 7000),
                Address::Tcp("10.0.0.2".into(), 7001),
                Address::Tcp("::1".into(), 6379),
            ])
        );
        assert_eq!(url.address, Address::Tcp("10.0.0.1".into(), 7000));
        assert_eq!(url.password.as_deref(), Some("pw"));
        assert_eq!(
            url.name(),
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:6379"
        );
        assert!(parse("rediss+cluster://h:7000?verify_hostname=false")
            .unwrap()
            .tls
            .is_some());
        assert!(parse("redis+cluster://h:7000/0").is_ok());
        for (url, why) in [
            ("redis+cluster://", "no cluster node"),
            ("redis+cluster://h:7000/3", "only database 0"),
            ("redis+cluster://h:7000?db=2", "only database 0"),
            (
                "redis+cluster://h:7000?sentinel_password=x",
                "redis+sentinel",
            ),
        ] {
            let error = parse(url).unwrap_err();
            assert!(error.contains(why), "{url}: {error}");
        }
    }

    #[test]
    fn reads_tls_and_sentinel_forms() {
        let url = parse(
            "rediss://:pw@cache.example:6380/1?ca_file=%2Fetc%2Fca.pem&verify_hostname=false",
        )
        .unwrap();
        let tls = url.tls.clone().unwrap();
        assert_eq!(tls.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert!(tls.verify_peer && !tls.verify_hostname);
        assert_eq!(url.name(), "rediss://cache.example:6380/1");
        let plain_with_ssl = parse("redis://h:1?ssl=true&verify_mode=none").unwrap();
        assert!(!plain_with_ssl.tls.unwrap().verify_peer);
        let url =
            parse("redis+sentinel://:mpw@s1:26379,s2,[::1]:26381/mymaster/2?sentinel_password=spw")
                .unwrap();
        let sentinel = url.sentinel.clone().unwrap();
        assert_eq!(sentinel.master, "mymaster");
        assert_eq!(
            sentinel.sentinels,
            vec![
                Address::Tcp("s1".into(), 26379),
                Address::Tcp("s2".into(), 26379),
                Address::Tcp("::1".into(), 26381)
            ]
        );
        assert_eq!((url.db, url.password.as_deref()), (2, Some("mpw")));
        assert_eq!(sentinel.password.as_deref(), Some("spw"));
        assert_eq!(
            url.name(),
            "redis+sentinel://s1:26379,s2:26379,[::1]:26381/mymaster/2"
        );
        assert!(parse("rediss+sentinel://s1/m").unwrap().tls.is_some());
    }

    #[test]
    fn says_what_is_wrong() {
        for (url, says) in [
            ("", "no scheme"),
            ("nonsense", "no scheme"),
            ("http://127.0.0.1", "unsupported scheme"),
            ("redis://[::1", "closing ]"),
            ("redis://h:1?ca_file=/x", "TLS is off"),
            ("unix:///s?ssl=true", "unix socket"),
            ("redis+sentinel://h:1", "master's name"),
            ("redis+sentinel://h:1/", "no master name"),
            ("redis://h?role=master", "redis+sentinel"),
            ("redis+sentinel://h/m?role=replica", "only ever"),
            ("rediss://h?verify_mode=maybe", "verify_mode"),
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
