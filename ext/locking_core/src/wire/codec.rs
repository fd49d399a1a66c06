//! The codec: every command the library sends is written here, and every
//! reply read. RESP2 only (no HELLO is ever sent). Commands are written
//! straight into a send buffer, without allocating; replies are parsed
//! straight from a connection's byte buffer into `Value`. It also owns the
//! script table (`scripts`) and how each protocol command is spoken and
//! answered (`lock`).
//!
//! Why our own: the `redis` crate's parser zero-fills an 8 KiB buffer on
//! every socket read, which was half of the instructions of an
//! acquire+release (callgrind), and its `Cmd` allocates two vectors per
//! command, a large share of a backfill's client time.

pub mod lock;
pub mod scripts;
pub mod semaphore;

/// One reply, as RESP2 has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Nil,
    Int(i64),
    BulkString(Vec<u8>),
    /// `+OK`, the commonest status line, without allocating.
    Okay,
    SimpleString(String),
    Array(Vec<Value>),
    /// An error reply: `-NOSCRIPT No matching script.`
    ServerError(ErrorReply),
}

impl Value {
    /// The error reply this is, if it is one.
    pub fn as_error(&self) -> Option<&ErrorReply> {
        match self {
            Value::ServerError(error) => Some(error),
            _ => None,
        }
    }
}

/// An error reply's text, as Redis wrote it (without the leading `-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply(pub String);

impl ErrorReply {
    /// The first word: `NOSCRIPT`, `WRONGTYPE`, `ERR` ...
    pub fn code(&self) -> &str {
        self.0.split(' ').next().unwrap_or("")
    }

    /// The server does not have the script (restart, failover, SCRIPT FLUSH).
    pub fn is_noscript(&self) -> bool {
        self.code() == "NOSCRIPT"
    }

    /// A syntax error: what Redis 6 answers to `SET .. NX GET`.
    pub fn is_syntax_error(&self) -> bool {
        self.0.to_ascii_lowercase().contains("syntax error")
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Nesting deeper than any reply we ask for (EXEC of SCAN-like arrays is 3).
const MAX_DEPTH: usize = 16;

/// Why bytes are not a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// One argument of a command.
#[derive(Clone, Copy)]
pub enum Arg<'a> {
    Bytes(&'a [u8]),
    Number(u64),
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        Arg::Bytes(bytes)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(text: &'a str) -> Self {
        Arg::Bytes(text.as_bytes())
    }
}

impl From<u64> for Arg<'_> {
    fn from(number: u64) -> Self {
        Arg::Number(number)
    }
}

/// Appends one command (an array of bulk strings) to `out`.
pub fn write_command(out: &mut Vec<u8>, args: &[Arg<'_>]) {
    write_header(out, b'*', args.len() as u64);
    for arg in args {
        write_arg(out, *arg);
    }
}

/// One command, encoded: for the commands sent one at a time.
pub fn command(args: &[Arg<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.len() * 16);
    write_command(&mut out, args);
    out
}

/// Appends the array header of a command of `count` arguments; the caller
/// then appends exactly `count` arguments with `write_arg` (MGET of a page).
pub fn write_header_of(out: &mut Vec<u8>, count: usize) {
    write_header(out, b'*', count as u64);
}

pub fn write_arg(out: &mut Vec<u8>, arg: Arg<'_>) {
    match arg {
        Arg::Bytes(bytes) => {
            write_header(out, b'$', bytes.len() as u64);
            out.extend_from_slice(bytes);
        }
        Arg::Number(number) => {
            let mut digits = [0u8; 20];
            let text = decimal(number, &mut digits);
            write_header(out, b'$', text.len() as u64);
            out.extend_from_slice(text);
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn write_header(out: &mut Vec<u8>, kind: u8, number: u64) {
    let mut digits = [0u8; 20];
    out.push(kind);
    out.extend_from_slice(decimal(number, &mut digits));
    out.extend_from_slice(b"\r\n");
}

fn decimal(mut number: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (number % 10) as u8;
        number /= 10;
        if number == 0 {
            return &digits[start..];
        }
    }
}

/// A reader of one reply: what it made of it and the bytes it took, or
/// `None` when more bytes are needed.
pub type Parse<T> = fn(&[u8]) -> Result<Option<(T, usize)>, ProtocolError>;

/// The first complete reply in `bytes` and how many bytes it took, or
/// `None` if more bytes are needed.
pub fn parse(bytes: &[u8]) -> Result<Option<(Value, usize)>, ProtocolError> {
    let mut position = 0;
    Ok(value(bytes, &mut position, 0)?.map(|value| (value, position)))
}

/// Like `parse`, for an acknowledgement (MULTI's OK, a queued command's
/// QUEUED): a status line is skipped without allocating (`None`); any other
/// reply, an error above all, is returned.
pub fn parse_acknowledgement(
    bytes: &[u8],
) -> Result<Option<(Option<Value>, usize)>, ProtocolError> {
    if bytes.first() == Some(&b'+') {
        return Ok(line(bytes, 0)?.map(|line| (None, line.len() + 2)));
    }
    Ok(parse(bytes)?.map(|(value, used)| (Some(value), used)))
}

fn value(bytes: &[u8], position: &mut usize, depth: usize) -> Result<Option<Value>, ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError("reply nested too deeply".into()));
    }
    let Some(line) = line(bytes, *position)? else {
        return Ok(None);
    };
    let after_line = *position + line.len() + 2;
    let (kind, body) = match line.split_first() {
        Some((kind, body)) => (*kind, body),
        None => return Err(ProtocolError("empty reply line".into())),
    };
    let parsed = match kind {
        b'+' => {
            *position = after_line;
            if body == b"OK" {
                Value::Okay
            } else {
                Value::SimpleString(text(body)?)
            }
        }
        b'-' => {
            *position = after_line;
            Value::ServerError(ErrorReply(String::from_utf8_lossy(body).into_owned()))
        }
        b':' => {
            *position = after_line;
            Value::Int(integer(body)?)
        }
        b'$' => {
            let Some(length) = length(body, "bulk string")? else {
                *position = after_line;
                return Ok(Some(Value::Nil));
            };
            let end = after_line
                .checked_add(length)
                .ok_or_else(|| ProtocolError("bulk string length too large".into()))?;
            if bytes.len() < end + 2 {
                return Ok(None);
            }
            if &bytes[end..end + 2] != b"\r\n" {
                return Err(ProtocolError("bulk string not followed by CRLF".into()));
            }
            *position = end + 2;
            Value::BulkString(bytes[after_line..end].to_vec())
        }
        b'*' => {
            let Some(count) = length(body, "array")? else {
                *position = after_line;
                return Ok(Some(Value::Nil));
            };
            // Each element takes at least 3 bytes: never trust the header
            // for more memory than the bytes could hold.
            let mut items = Vec::with_capacity(count.min((bytes.len() - after_line) / 3));
            let mut inner = after_line;
            for _ in 0..count {
                match value(bytes, &mut inner, depth + 1)? {
                    Some(item) => items.push(item),
                    None => return Ok(None),
                }
            }
            *position = inner;
            Value::Array(items)
        }
        other => {
            return Err(ProtocolError(format!(
                "unexpected reply type byte {:?}",
                char::from(other)
            )))
        }
    };
    Ok(Some(parsed))
}

/// The line starting at `start`, without its CRLF; `None` if incomplete.
/// Redis never writes a bare LF in a reply line, so the first LF ends it.
fn line(bytes: &[u8], start: usize) -> Result<Option<&[u8]>, ProtocolError> {
    let Some(rest) = bytes.get(start..) else {
        return Ok(None);
    };
    let Some(newline) = rest.iter().position(|&byte| byte == b'\n') else {
        return Ok(None);
    };
    match newline.checked_sub(1) {
        Some(end) if rest[end] == b'\r' => Ok(Some(&rest[..end])),
        _ => Err(ProtocolError("reply line ends without CR".into())),
    }
}

fn text(bytes: &[u8]) -> Result<String, ProtocolError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtocolError("reply line is not UTF-8".into()))
}

/// The length a bulk string's or an array's header gives (`what`): `None`
/// for a negative one, which is RESP2's nil.
fn length(body: &[u8], what: &str) -> Result<Option<usize>, ProtocolError> {
    let length = integer(body)?;
    if length < 0 {
        return Ok(None);
    }
    usize::try_from(length)
        .map(Some)
        .map_err(|_| ProtocolError(format!("{what} length too large")))
}

fn integer(bytes: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| ProtocolError(format!("bad integer {:?}", String::from_utf8_lossy(bytes))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn whole(bytes: &[u8]) -> Value {
        let (value, used) = parse(bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        value
    }

    #[test]
    fn reads_every_reply_type() {
        assert_eq!(whole(b"+OK\r\n"), Value::Okay);
        assert_eq!(whole(b"+QUEUED\r\n"), Value::SimpleString("QUEUED".into()));
        assert_eq!(whole(b":-2\r\n"), Value::Int(-2));
        assert_eq!(whole(b"$-1\r\n"), Value::Nil);
        assert_eq!(whole(b"*-1\r\n"), Value::Nil);
        assert_eq!(
            whole(b"$4\r\na\r\nb\r\n"),
            Value::BulkString(b"a\r\nb".to_vec())
        );
        assert_eq!(
            whole(b"*2\r\n$1\r\n0\r\n*2\r\n$1\r\na\r\n:1\r\n"),
            Value::Array(vec![
                Value::BulkString(b"0".to_vec()),
                Value::Array(vec![Value::BulkString(b"a".to_vec()), Value::Int(1)]),
            ])
        );
    }

    #[test]
    fn server_errors_keep_the_kinds_the_client_acts_on() {
        let noscript = whole(b"-NOSCRIPT No matching script.\r\n");
        let noscript = noscript.as_error().unwrap();
        assert!(noscript.is_noscript());
        assert!(!noscript.is_syntax_error());
        let wrongtype = whole(b"-WRONGTYPE Operation against a key\r\n");
        let wrongtype = wrongtype.as_error().unwrap();
        assert_eq!(wrongtype.code(), "WRONGTYPE");
        assert_eq!(wrongtype.to_string(), "WRONGTYPE Operation against a key");
        assert!(whole(b"-ERR syntax error\r\n")
            .as_error()
            .unwrap()
            .is_syntax_error());
    }

    #[test]
    fn asks_for_more_until_a_reply_is_complete() {
        let reply = b"*2\r\n$5\r\nhello\r\n:42\r\n+OK\r\n";
        for cut in 0..20 {
            assert_eq!(parse(&reply[..cut]), Ok(None), "cut at {cut}");
        }
        let (value, used) = parse(reply).unwrap().unwrap();
        assert_eq!(used, 20);
        assert_eq!(
            value,
            Value::Array(vec![Value::BulkString(b"hello".to_vec()), Value::Int(42)])
        );
        assert_eq!(parse(&reply[used..]), Ok(Some((Value::Okay, 5))));
    }

    #[test]
    fn skips_status_acknowledgements_and_returns_the_rest() {
        assert_eq!(
            parse_acknowledgement(b"+QUEUED\r\n+OK"),
            Ok(Some((None, 9)))
        );
        assert_eq!(parse_acknowledgement(b"+QUEU"), Ok(None));
        let (error, used) = parse_acknowledgement(b"-ERR unknown\r\n").unwrap().unwrap();
        assert_eq!(used, 14);
        assert!(matches!(error, Some(Value::ServerError(_))));
    }

    #[test]
    fn writes_commands_as_the_redis_crate_does() {
        let mut ours = Vec::new();
        write_command(
            &mut ours,
            &[
                "SET".into(),
                b"k\r\n".as_slice().into(),
                0u64.into(),
                u64::MAX.into(),
            ],
        );
        write_header_of(&mut ours, 2);
        write_arg(&mut ours, "MGET".into());
        write_arg(&mut ours, b"".as_slice().into());
        let mut theirs = Vec::new();
        redis::cmd("SET")
            .arg(b"k\r\n".as_slice())
            .arg(0u64)
            .arg(u64::MAX)
            .write_packed_command(&mut theirs);
        redis::cmd("MGET")
            .arg(b"".as_slice())
            .write_packed_command(&mut theirs);
        assert_eq!(ours, theirs);
    }

    #[test]
    fn refuses_what_is_not_resp2() {
        assert!(parse(b"%1\r\n").is_err());
        assert!(parse(b":x\r\n").is_err());
        assert!(parse(b"$1\r\nab\r\n").is_err());
        assert!(parse(b"+OK\n").is_err());
        assert!(parse(&[b"*1\r\n".repeat(40), b":1\r\n".to_vec()].concat()).is_err());
    }

    /// The redis crate's reading of a reply, in our terms.
    fn from_theirs(value: redis::Value) -> Value {
        match value {
            redis::Value::Nil => Value::Nil,
            redis::Value::Int(n) => Value::Int(n),
            redis::Value::BulkString(bytes) => Value::BulkString(bytes),
            redis::Value::Okay => Value::Okay,
            redis::Value::SimpleString(text) => Value::SimpleString(text),
            redis::Value::Array(items) => {
                Value::Array(items.into_iter().map(from_theirs).collect())
            }
            redis::Value::ServerError(error) => {
                Value::ServerError(ErrorReply(match error.details() {
                    Some(detail) => format!("{} {detail}", error.code()),
                    None => error.code().to_string(),
                }))
            }
            other => panic!("not RESP2: {other:?}"),
        }
    }

    proptest! {
        // Any bytes give a reply, a request for more, or an error: never a
        // panic, and never a reply longer than the bytes.
        #[test]
        fn any_bytes_parse_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            if let Ok(Some((_, used))) = parse(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }

        // Whatever the redis crate's own parser accepts, we read the same way.
        #[test]
        fn agrees_with_the_redis_crate(bytes in proptest::collection::vec(
            prop_oneof![Just(b'*'), Just(b'$'), Just(b':'), Just(b'+'), Just(b'-'), Just(b'\r'),
                        Just(b'\n'), Just(b'1'), Just(b'2'), Just(b'O'), Just(b'K'), Just(b'a')], 0..40)) {
            // (An empty error line has no code for the crate to name.)
            let empty_error = bytes.starts_with(b"-\r");
            if let (false, Ok(theirs), Ok(Some((ours, _)))) = (empty_error, redis::parse_redis_value(&bytes), parse(&bytes)) {
                prop_assert_eq!(ours, from_theirs(theirs));
            }
        }
    }
}
