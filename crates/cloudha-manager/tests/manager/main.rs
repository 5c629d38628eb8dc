//! cloudha-manager through its public API, under paused time, with fake or mock ports and the
//! real registry and direct attaches.

mod config;
mod connect;
mod ha;
mod lifecycle;
mod monitor;
mod support;
mod verdicts;
