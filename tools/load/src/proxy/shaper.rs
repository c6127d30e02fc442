//! When each segment of one direction of one connection is delivered:
//! `latency ± jitter` after it was read, plus a retransmission timeout when
//! `--loss-mode tcp` decides the segment was lost, and never before the
//! segment ahead of it. Pure arithmetic on instants, tested without sockets.

use plaza_shared::rng::SplitMix;
use std::time::Duration;
use tokio::time::Instant;

/// Bytes per segment: a TCP segment's payload on a 1500-byte Ethernet MTU
/// (1500 − 20 IP − 20 TCP − 12 timestamp option).
pub const SEGMENT: usize = 1448;
/// Linux's smallest retransmission timeout (`TCP_RTO_MIN`).
pub const MIN_RTO: Duration = Duration::from_millis(200);
/// Linux's first retransmission timeout on a new connection
/// (`TCP_TIMEOUT_INIT`): a lost SYN or SYN-ACK is sent again after it.
pub const INITIAL_RTO: Duration = Duration::from_secs(1);

/// The stall a lost segment causes: Linux's RTO is the smoothed round trip
/// plus four times its variation, at least 200 ms. Through the proxy the
/// round trip is twice the latency and varies by up to twice the jitter,
/// so: `max(200 ms, 2 × latency + 4 × jitter)`.
pub fn rto(latency: Duration, jitter: Duration) -> Duration {
    MIN_RTO.max(latency * 2 + jitter * 4)
}

/// What one direction does to its segments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shaping {
    pub latency: Duration,
    pub jitter: Duration,
    /// Chance (0–1) that a segment is "lost" and waits [`Shaping::rto`]
    /// more; 0 when loss drops messages instead (`--loss-mode message`).
    pub loss: f64,
    pub rto: Duration,
}

impl Shaping {
    pub fn new(latency: Duration, jitter: Duration, loss: f64) -> Self {
        Shaping { latency, jitter, loss, rto: rto(latency, jitter) }
    }
}

/// When a segment goes out, and whether it was stalled by a "loss".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub at: Instant,
    pub stalled: bool,
}

/// One direction's schedule: its own generator and the last delivery time.
#[derive(Debug, Clone)]
pub struct Shaper {
    shaping: Shaping,
    rng: SplitMix,
    last: Option<Instant>,
    /// Nothing is sent before the connection is open (see [`Shaper::open`]).
    opens_at: Option<Instant>,
}

/// TCP's handshake through the proxy: when the client's connection is
/// open, and how many of its two segments were "lost".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    pub open_at: Instant,
    pub lost: u32,
}

impl Shaper {
    pub fn new(shaping: Shaping, seed: u64) -> Self {
        Shaper { shaping, rng: SplitMix::new(seed), last: None, opens_at: None }
    }

    /// The client side of a connection that the client began at `began`.
    /// The proxy's kernel accepted it at once, but on the link it models a
    /// connect takes a round trip (the SYN there, the SYN-ACK back, each
    /// latency ± jitter, each lost with the loss chance and sent again
    /// after [`INITIAL_RTO`]), and the client's first bytes leave only
    /// then: a WebSocket costs the connect's round trip and the upgrade's,
    /// as on a real link.
    pub fn open(&mut self, began: Instant) -> Handshake {
        let s = self.shaping;
        let mut open_at = began;
        let mut lost = 0;
        for _ in 0..2 {
            open_at += self.one_way();
            if s.loss > 0.0 && self.rng.unit() < s.loss {
                open_at += INITIAL_RTO;
                lost += 1;
            }
        }
        self.opens_at = Some(open_at);
        Handshake { open_at, lost }
    }

    /// One trip across: latency ± jitter (uniform), never below zero.
    fn one_way(&mut self) -> Duration {
        let s = self.shaping;
        let mut delay = s.latency.as_secs_f64();
        if !s.jitter.is_zero() {
            let j = s.jitter.as_secs_f64();
            delay = (delay + self.rng.range(-j, j)).max(0.0);
        }
        Duration::from_secs_f64(delay)
    }

    pub fn shaping(&self) -> Shaping {
        self.shaping
    }

    /// The delivery time of a segment read at `read_at`: `read_at + latency
    /// ± jitter` (uniform), plus the RTO with probability `loss`, and not
    /// before the previous segment's delivery (order within a connection is
    /// kept, so a stalled segment holds back everything behind it).
    pub fn schedule(&mut self, read_at: Instant) -> Due {
        let s = self.shaping;
        let read_at = self.opens_at.map_or(read_at, |open| read_at.max(open));
        let delay = self.one_way();
        let stalled = s.loss > 0.0 && self.rng.unit() < s.loss;
        let mut at = read_at + delay;
        if stalled {
            at += s.rto;
        }
        if let Some(last) = self.last {
            at = at.max(last);
        }
        self.last = Some(at);
        Due { at, stalled }
    }
}

/// `data` cut into segments of at most [`SEGMENT`] bytes.
pub fn segments(data: &[u8]) -> std::slice::Chunks<'_, u8> {
    data.chunks(SEGMENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_rto_is_at_least_200_ms_and_grows_with_the_round_trip() {
        assert_eq!(rto(Duration::ZERO, Duration::ZERO), MIN_RTO);
        assert_eq!(rto(50 * MS, Duration::ZERO), MIN_RTO);
        assert_eq!(rto(500 * MS, 50 * MS), 1200 * MS);
    }

    #[test]
    fn without_jitter_or_loss_every_segment_takes_the_latency() {
        let mut s = Shaper::new(Shaping::new(100 * MS, Duration::ZERO, 0.0), 1);
        let t0 = Instant::now();
        for k in 0..50 {
            let due = s.schedule(t0 + k * MS);
            assert_eq!(due, Due { at: t0 + k * MS + 100 * MS, stalled: false });
        }
    }

    #[test]
    fn jitter_stays_in_bounds_and_never_reorders() {
        let mut s = Shaper::new(Shaping::new(50 * MS, 20 * MS, 0.0), 7);
        let t0 = Instant::now();
        let mut last = t0;
        let mut own_min = Duration::MAX;
        for k in 0..1000u32 {
            // Read 10 ms apart: far enough for the jitter to show on its own.
            let read = t0 + k * 10 * MS;
            let due = s.schedule(read);
            assert!(due.at >= last, "segment {k} overtook the one before it");
            assert!(due.at >= read + 30 * MS, "segment {k} came early");
            assert!(due.at <= read.max(last) + 70 * MS, "segment {k} came late");
            own_min = own_min.min(due.at - read);
            last = due.at;
        }
        assert!(own_min < 35 * MS, "the jitter reaches down: {own_min:?}");
    }

    #[test]
    fn a_lost_segment_waits_the_rto_and_holds_back_the_rest() {
        let shaping = Shaping::new(10 * MS, Duration::ZERO, 1.0);
        let mut s = Shaper::new(shaping, 3);
        let t0 = Instant::now();
        let first = s.schedule(t0);
        assert!(first.stalled);
        assert_eq!(first.at, t0 + 10 * MS + shaping.rto);

        // At 20 % one stall delays the segments read right after it too.
        let mut s = Shaper::new(Shaping::new(10 * MS, Duration::ZERO, 0.2), 11);
        let mut stalls = 0;
        let mut held_back = 0;
        let mut stall_until = t0;
        for k in 0..1000u32 {
            let read = t0 + k * MS;
            let due = s.schedule(read);
            if due.stalled {
                stalls += 1;
                assert!(due.at >= read + 10 * MS + MIN_RTO);
                stall_until = due.at;
            } else if read + 10 * MS < stall_until {
                assert!(due.at >= stall_until, "segment {k} overtook a stalled one");
                held_back += 1;
            }
        }
        assert!((120..=280).contains(&stalls), "{stalls} of 1000 at 20 %");
        assert!(held_back > 0);
    }

    #[test]
    fn the_first_bytes_leave_a_round_trip_after_the_connect_and_a_lost_syn_costs_a_second() {
        let t0 = Instant::now();
        let mut s = Shaper::new(Shaping::new(100 * MS, Duration::ZERO, 0.0), 5);
        assert_eq!(s.open(t0), Handshake { open_at: t0 + 200 * MS, lost: 0 });
        // Sent at once, it leaves when the connection is open.
        assert_eq!(s.schedule(t0 + MS).at, t0 + 300 * MS);
        // Sent after that, only the latency.
        assert_eq!(s.schedule(t0 + 500 * MS).at, t0 + 600 * MS);

        let mut s = Shaper::new(Shaping::new(100 * MS, Duration::ZERO, 1.0), 5);
        assert_eq!(s.open(t0), Handshake { open_at: t0 + 200 * MS + 2 * INITIAL_RTO, lost: 2 });

        // At 5 %, about one handshake in ten loses a segment.
        let mut lost = 0;
        for seed in 0..2000 {
            let mut s = Shaper::new(Shaping::new(100 * MS, 10 * MS, 0.05), seed);
            let h = s.open(t0);
            assert!(h.open_at >= t0 + 180 * MS && h.open_at <= t0 + 220 * MS + u32::from(h.lost > 0) * 2 * INITIAL_RTO);
            lost += u32::from(h.lost > 0);
        }
        assert!((120..=280).contains(&lost), "{lost} of 2000 handshakes lost a segment at 5 %");

        // No latency and no loss: open at once.
        let mut s = Shaper::new(Shaping::new(Duration::ZERO, Duration::ZERO, 0.0), 1);
        assert_eq!(s.open(t0).open_at, t0);
    }

    #[test]
    fn segments_cut_at_1448_bytes() {
        let data: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
        let parts: Vec<&[u8]> = segments(&data).collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![1448, 1448, 1104]);
        assert_eq!(parts.concat(), data);
        assert_eq!(segments(&[]).count(), 0);
    }
}
