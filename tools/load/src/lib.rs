//! `plaza-load`: simulated users against a Plaza server, measuring pose
//! latency, join and auth times, delivery and the server's CPU and memory.
//!
//! - [`cli`] — the command line and its validation.
//! - [`run`] — one run from start to end (server, rooms, users, phases).
//! - [`user`] — one simulated user on the network.
//! - [`wire`] — Plaza's subprotocols, or socket.io for the baseline peers.
//! - [`track`] — what a user received (pure bookkeeping).
//! - [`delivery`] — expected, received, lost and chat accounting.
//! - [`histogram`] — percentiles.
//! - [`tickphase`] — a room's tick grid, to split latency into tick wait and net.
//! - [`collect`] — the collector task (per-second series, progress line).
//! - [`server`] — the embedded server and CPU/memory sampling.
//! - [`soak`] — `plaza-load soak`'s leak checks (memory drift, idle after).
//! - [`report`] — `result.json` and `report.html`.
//! - [`ladder`] — `plaza-load ladder`: steps up against Plaza and the socket.io peers ([`peer`]).
//! - [`names`] — user names that carry their room.
//! - [`proxy`] — `plaza-load proxy`: latency, jitter, loss and resets between clients and a server.
//! - [`voice`] — `--voice`: users as voice peers of the server's SFU.
//! - [`hostile`] — `--hostile`: misbehaving clients beside the users.

pub mod cli;
pub mod collect;
pub mod delivery;
pub mod histogram;
pub mod hostile;
pub mod ladder;
pub mod names;
pub mod peer;
pub mod proxy;
pub mod report;
pub mod run;
pub mod server;
pub mod soak;
pub mod stamped;
pub mod tickphase;
pub mod track;
pub mod user;
pub mod voice;
pub mod wire;
