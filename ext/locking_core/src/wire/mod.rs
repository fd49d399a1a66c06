//! Bytes to and from one server: the codec (every command and reply, the
//! script table), the byte stream (`transport`, `tls`, `dial`), the URL of a
//! server, a `connection`, the `pipeline` executor over it, and the `pool`
//! of idle ones. Nothing here knows which node serves a key.

pub mod codec;
pub mod connection;
pub mod dial;
pub mod pipeline;
pub mod pool;
pub mod tls;
pub mod transport;
pub mod url;
