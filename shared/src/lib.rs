//! `plaza-shared`: what Plaza's client, server, load tool and bots agree on.
//!
//! Plain data and pure functions only — no Bevy, no tokio — so every crate in
//! the workspace (and the fuzzers) can use it cheaply.
//!
//! - [`messages`]: every WebSocket message of the contract, as Rust types.
//! - [`codec`]: the two subprotocols, `plaza.v1.json` and `plaza.v1.bin`.
//! - [`pose`]: poses, their validation and their quantization.
//! - [`limits`]: sizes and rates both sides enforce.
//! - [`quality`]: the quality presets (low / medium / high / ultra).
//! - [`lod`]: the level-of-detail policy: distances, bias, hysteresis, budget.
//! - [`liveness`]: when a silent socket is probed, and when it is taken for dead.
//! - [`backoff`]: when a client tries again after its socket ended.
//! - [`errors`]: error text with its innermost cause.
//! - [`flags`]: parsing of the on/off switches used by flags and env vars.
//! - [`rng`]: a small seeded generator for the tools (SplitMix64).
//! - [`telemetry`]: the client's frame-timing reports and their aggregation.
//! - [`voice`]: voice signaling and the SFU's choice of who hears whom.
//! - [`upgrade_hello`]: the hello carried in the WebSocket upgrade request.

pub mod backoff;
pub mod codec;
pub mod errors;
pub mod flags;
pub mod limits;
pub mod liveness;
pub mod lod;
pub mod messages;
pub mod pacing;
pub mod pose;
pub mod quality;
pub mod rng;
pub mod telemetry;
pub mod upgrade_hello;
pub mod voice;

pub use codec::{DecodeError, Subprotocol};
pub use messages::{ClientMessage, ServerMessage};
pub use pose::{Pose, Transform};
