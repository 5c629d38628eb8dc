//! Tests of cloudha-attache through its public API: direct attaches under paused time, connected
//! attaches over in-memory duplexes and real loopback TCP.

mod connected;
mod direct;
mod support;
