//! Whether the other end of a socket is still there, from what it hears:
//! the client's and the load tool's silent-link policy (pure; the caller
//! brings the clock, so tests need no sleeping).

use std::time::Duration;

/// How long the server may stay silent before the link is taken for dead:
/// a cable pulled, Wi-Fi gone, a NAT that forgot us. TCP alone would keep
/// such a socket "open" for many minutes while the world stands still.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(8);

/// Whether the server is still there, from what the socket hears. In a
/// busy room deltas come 20 times a second; in a quiet one nothing comes
/// but pongs, so after a quarter of the limit in silence a ping goes out
/// to ask, and again each quarter after. Nothing at all for the whole
/// limit, or no answer to a join within it, ends the socket as dropped,
/// and the seat is resumed on a new one.
#[derive(Debug, Clone)]
pub struct Liveness<T> {
    limit: Duration,
    heard: T,
    probed: T,
    join_asked: Option<T>,
}

/// What [`Liveness::check`] says to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Send a ping: the server has been quiet a while.
    Probe,
    /// The link is dead; the reason, for the log and the status line.
    Dead(String),
}

impl<T: Copy + Ord + std::ops::Add<Duration, Output = T>> Liveness<T> {
    /// A new socket at `now` (its opening counts as hearing from it).
    pub fn new(limit: Duration, now: T) -> Self {
        Liveness { limit, heard: now, probed: now, join_asked: None }
    }

    /// A frame arrived.
    pub fn heard(&mut self, now: T) {
        self.heard = now;
    }

    /// When a frame last arrived (or the socket opened).
    pub fn last_heard(&self) -> T {
        self.heard
    }

    /// A join went out; it is answered by `joined` or a join error.
    pub fn join_sent(&mut self, now: T) {
        self.join_asked = Some(now);
    }

    pub fn join_answered(&mut self) {
        self.join_asked = None;
    }

    fn probe_gap(&self) -> Duration {
        self.limit / 4
    }

    /// When [`Liveness::check`] may next have something to say.
    pub fn next_check(&self) -> T {
        let probe = self.heard.max(self.probed) + self.probe_gap();
        let dead = self.heard + self.limit;
        let join = self.join_asked.map(|asked| asked + self.limit);
        join.map_or(probe.min(dead), |join| probe.min(dead).min(join))
    }

    pub fn check(&mut self, now: T) -> Verdict {
        let secs = self.limit.as_secs_f32();
        if now >= self.heard + self.limit {
            return Verdict::Dead(format!("nothing from the server for {secs:.0} s"));
        }
        if self.join_asked.is_some_and(|asked| now >= asked + self.limit) {
            return Verdict::Dead(format!("the server did not answer the join within {secs:.0} s"));
        }
        if now >= self.heard.max(self.probed) + self.probe_gap() {
            self.probed = now;
            return Verdict::Probe;
        }
        Verdict::Fine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_server_is_asked_each_quarter_of_the_limit_and_dead_at_the_limit() {
        let s = Duration::from_secs;
        let mut l = Liveness::new(s(8), s(0));
        assert_eq!(l.next_check(), s(2));
        assert_eq!(l.check(s(1)), Verdict::Fine);
        assert_eq!(l.check(s(2)), Verdict::Probe);
        assert_eq!(l.next_check(), s(4), "the next probe, a quarter later");
        assert_eq!(l.check(s(3)), Verdict::Fine);
        assert_eq!(l.check(s(4)), Verdict::Probe);
        assert_eq!(l.check(s(6)), Verdict::Probe);
        assert_eq!(l.next_check(), s(8));
        assert_eq!(l.check(s(8)), Verdict::Dead("nothing from the server for 8 s".into()));
    }

    #[test]
    fn anything_heard_puts_off_the_probe_and_the_verdict() {
        let s = Duration::from_secs;
        let mut l = Liveness::new(s(8), s(0));
        assert_eq!(l.check(s(2)), Verdict::Probe);
        l.heard(s(3)); // the pong
        assert_eq!(l.next_check(), s(5));
        assert_eq!(l.check(s(4)), Verdict::Fine);
        assert_eq!(l.check(s(10)), Verdict::Probe, "7 s after the pong: not dead yet");
        l.heard(s(10));
        assert_eq!(l.check(s(17)), Verdict::Probe);
        assert!(matches!(l.check(s(18)), Verdict::Dead(_)));
    }

    #[test]
    fn a_join_with_no_answer_ends_the_socket_even_while_pongs_come() {
        let s = Duration::from_secs;
        let mut l = Liveness::new(s(8), s(0));
        l.join_sent(s(1));
        for t in 2..9 {
            l.heard(s(t));
            assert_eq!(l.check(s(t)), Verdict::Fine, "at {t} s");
        }
        assert_eq!(l.next_check(), s(9));
        l.heard(s(9));
        assert_eq!(l.check(s(9)), Verdict::Dead("the server did not answer the join within 8 s".into()));
        // Answered in time, it is forgotten.
        let mut l = Liveness::new(s(8), s(0));
        l.join_sent(s(1));
        l.heard(s(2));
        l.join_answered();
        l.heard(s(9));
        assert_eq!(l.check(s(9)), Verdict::Fine);
    }
}
