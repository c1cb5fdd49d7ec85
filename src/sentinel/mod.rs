//! Everything that talks to Sentinel: a small RESP client for the proxy's own queries, the parser
//! of Sentinel's pub/sub events, the watcher that turns both into route changes, and the timeline
//! of what it lived (for /status); the event subscriptions every group shares (`hub.rs`).

pub mod client;
mod decide;
pub mod events;
pub mod hub;
mod input;
mod subscription;
pub mod timeline;
pub mod watcher;
