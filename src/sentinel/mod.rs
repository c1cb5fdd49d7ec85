//! Everything that talks to Sentinel: a small RESP client for the proxy's own queries, the parser
//! of Sentinel's pub/sub events, and the watcher that turns both into route changes.

pub mod client;
pub mod events;
pub mod watcher;
