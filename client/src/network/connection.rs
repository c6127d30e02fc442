//! The connection's state machine, as plain data: what the network task
//! does after each thing that happens (a drop, a close code, a welcome, the
//! clock passing the token's refresh time). The async code in
//! [`super::session`] only carries out its answers, so tests can drive the
//! whole policy without sockets.

use plaza_shared::limits::close;
pub use plaza_shared::backoff::Backoff;
pub use plaza_shared::liveness::{Liveness, SILENCE_LIMIT, Verdict};
use std::time::Duration;

/// What the HUD shows about the connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConnectionStatus {
    #[default]
    Starting,
    /// Signing in and opening the socket (first time).
    Connecting,
    InRoom { room: String, room_name: String },
    /// Connected, joining this room (a switch, or the first join).
    Joining { room: String },
    /// Connected and in no room: the one asked for could not be joined.
    NoRoom { reason: String },
    /// Lost; trying again after `retry_in`.
    Reconnecting { attempt: u32, retry_in: Duration, reason: String },
    /// Gave up; the reason says what to do.
    Failed { reason: String },
    /// `--offline`: no server at all.
    Offline,
}

/// The `reason` of a [`ConnectionStatus::Reconnecting`] after `503 server_full`.
pub const SERVER_FULL: &str = "server full";

impl ConnectionStatus {
    pub fn label(&self) -> String {
        match self {
            ConnectionStatus::Starting => "starting".into(),
            ConnectionStatus::Connecting => "connecting".into(),
            ConnectionStatus::InRoom { room_name, .. } => format!("in {room_name}"),
            ConnectionStatus::Joining { room } => format!("joining {room}…"),
            ConnectionStatus::NoRoom { reason } => format!("in no room: {reason}; pick one in Settings (F1)"),
            // A full server is not a network problem: say so.
            // The wait is over and the try is under way.
            ConnectionStatus::Reconnecting { attempt, retry_in, reason } if retry_in.is_zero() => {
                let what = if reason == SERVER_FULL { "server full: retrying" } else { "reconnecting" };
                format!("{what} (try {attempt}, now)")
            }
            ConnectionStatus::Reconnecting { attempt, retry_in, reason } if reason == SERVER_FULL => {
                format!("server full: retrying (try {attempt}, in {:.1} s)", retry_in.as_secs_f32())
            }
            ConnectionStatus::Reconnecting { attempt, retry_in, .. } => format!("reconnecting (try {attempt}, in {:.1} s)", retry_in.as_secs_f32()),
            ConnectionStatus::Failed { .. } => "disconnected".into(),
            ConnectionStatus::Offline => "offline".into(),
        }
    }
}

/// The credentials the client holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
    /// When the access token expires, in the task's clock (since start).
    pub expires_at: Duration,
}

/// Refresh this long before the access token expires (the server warns 60 s
/// before; a refresh ahead of that never races the expiry).
pub const REFRESH_AHEAD: Duration = Duration::from_secs(90);
/// After a refresh the server could not answer (down, restarting), the
/// next try waits this long; the tokens are kept meanwhile.
pub const REFRESH_RETRY: Duration = Duration::from_secs(5);

/// What to do before opening a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No tokens (or the refresh token failed): sign in as a guest.
    Login,
    /// The access token is near expiry: trade the refresh token.
    Refresh(String),
    /// Good to go.
    Use(String),
}

/// How a socket ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The server closed it with this code.
    Closed(u16, String),
    /// The connection broke without a close frame.
    Dropped(String),
    /// We couldn't sign in or open it.
    Unreachable(String),
    /// The server answered the upgrade `503 server_full`: it is at its
    /// connection limit and asked us to wait `retry_after`.
    ServerFull { retry_after: Duration },
}

/// What to do after a socket ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Retry { after: Duration, resume: bool, notice: Notice },
    GiveUp { reason: String, notice: Notice },
}

/// Things the player is told in a toast, each with a next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Disconnected { reason: String },
    Reconnecting { attempt: u32 },
    Reconnected { resumed: bool },
    TokenExpired,
    /// A room could not be joined (full, or gone); `back_in` is the room we
    /// went back to, if we were in one.
    RoomFull { room: String, detail: String, back_in: Option<String> },
    /// The server is at its connection limit; the next try is this far off.
    ServerBusy { retry_in: Duration },
    ServerRestarting,
    VoiceLost,
    /// A chosen sound device is missing or failed; the default plays.
    AudioDevice { problem: String },
    /// `--xr` found no headset (why): the desktop view instead.
    NoHeadset { reason: String },
    /// The headset session ended (taken off, runtime quit).
    HeadsetOff,
}

impl Notice {
    /// The toast's text: what happened and what to do.
    pub fn text(&self) -> String {
        match self {
            Notice::Disconnected { reason } => format!("Disconnected: {reason}. Check your network; Plaza keeps retrying."),
            Notice::Reconnecting { attempt } => format!("Connection lost. Reconnecting (try {attempt})…"),
            Notice::Reconnected { resumed: true } => "Reconnected. Your place in the room was kept.".into(),
            Notice::Reconnected { resumed: false } => "Reconnected and rejoined the room.".into(),
            Notice::TokenExpired => "Your session expired; signing in again.".into(),
            Notice::RoomFull { room, detail, back_in: Some(back) } => format!("Can't join {room}: {detail}. You are back in {back}."),
            Notice::RoomFull { room, detail, back_in: None } => format!("Can't join {room}: {detail}. Pick another in Settings (F1)."),
            Notice::ServerBusy { retry_in } => format!("The server is full right now. Trying again in {} s…", retry_in.as_secs_f64().ceil() as u64),
            Notice::ServerRestarting => "The server is restarting. Reconnecting shortly…".into(),
            Notice::VoiceLost => "Voice connection lost. Voice resumes when the connection is back.".into(),
            Notice::AudioDevice { problem } => format!("Sound: {problem}. Plaza switches to it when it is plugged in, or pick another in Settings (F1)."),
            Notice::NoHeadset { reason } => format!("VR is off: {reason}. This is the desktop view."),
            Notice::HeadsetOff => "The headset session ended; the keyboard and this window drive you until it starts again.".into(),
        }
    }
}

/// The client's side of the session: tokens, the session id to resume,
/// backoff.
#[derive(Debug, Clone)]
pub struct Connection {
    pub tokens: Option<Tokens>,
    /// The `session` of the last welcome: sent as `resume` on reconnect.
    pub session: Option<String>,
    pub backoff: Backoff,
    /// Set once the first join succeeded (later ones are reconnects).
    pub was_in_room: bool,
    /// No refresh before this (task clock): the last one got no answer.
    refresh_not_before: Duration,
}

impl Connection {
    pub fn new(seed: u64) -> Connection {
        Connection { tokens: None, session: None, backoff: Backoff::new(seed), was_in_room: false, refresh_not_before: Duration::ZERO }
    }

    pub fn credentials(&self, now: Duration) -> Credentials {
        match &self.tokens {
            None => Credentials::Login,
            // A refresh just went unanswered: the access token still works.
            Some(t) if now < self.refresh_not_before && now < t.expires_at => Credentials::Use(t.access.clone()),
            Some(t) if now + REFRESH_AHEAD >= t.expires_at => Credentials::Refresh(t.refresh.clone()),
            Some(t) => Credentials::Use(t.access.clone()),
        }
    }

    /// When the access token should be refreshed in the background.
    pub fn refresh_at(&self) -> Option<Duration> {
        self.tokens.as_ref().map(|t| t.expires_at.saturating_sub(REFRESH_AHEAD).max(self.refresh_not_before))
    }

    /// The server refused the refresh (the refresh token is spent, unknown
    /// or expired): sign in afresh.
    pub fn refresh_failed(&mut self) {
        self.tokens = None;
        self.session = None;
    }

    /// Another name: a guest's name is its sign-in's, so the next socket
    /// signs in afresh and joins anew (nothing to resume).
    pub fn renamed(&mut self) {
        self.tokens = None;
        self.session = None;
        self.backoff.reset();
        // Not a reconnect to tell of: the app says the name changed.
        self.was_in_room = false;
    }

    /// The server did not answer a refresh (down, restarting, a 5xx): keep
    /// the tokens, which may still work, and try again in [`REFRESH_RETRY`].
    /// Signing in afresh here would make the player someone new.
    pub fn refresh_unanswered(&mut self, now: Duration) {
        self.refresh_not_before = now + REFRESH_RETRY;
    }

    /// The `welcome` arrived: true when it resumed our old session.
    pub fn welcomed(&mut self, session: &str) -> bool {
        let resumed = self.session.as_deref() == Some(session);
        self.session = Some(session.to_owned());
        resumed
    }

    /// `joined` arrived: the connection works; the next failure starts the
    /// backoff from the beginning.
    pub fn joined(&mut self) -> Option<Notice> {
        let reconnect = self.backoff.attempt() > 0 || self.was_in_room;
        self.backoff.reset();
        self.was_in_room = true;
        reconnect.then_some(Notice::Reconnected { resumed: false })
    }

    /// The socket ended: when to retry, and whether resuming makes sense.
    pub fn ended(&mut self, how: &Ended) -> Next {
        match how {
            Ended::ServerFull { retry_after } => {
                // Spread over one to two times what was asked, plus the
                // growing backoff: clients refused together must not all
                // come back in the same instant.
                let after = retry_after.mul_f64(1.0 + self.backoff.unit()) + self.backoff.next_delay();
                Next::Retry { after, resume: self.session.is_some(), notice: Notice::ServerBusy { retry_in: after } }
            }
            Ended::Closed(code, _) if *code == close::BAD_TOKEN => {
                // Expired or revoked: new credentials, then a fresh session.
                if let Some(t) = &mut self.tokens {
                    t.expires_at = Duration::ZERO; // forces a refresh first
                }
                self.session = None;
                Next::Retry { after: self.backoff.next_delay(), resume: false, notice: Notice::TokenExpired }
            }
            Ended::Closed(code, reason) if [close::BAD_HELLO, close::POLICY, close::TOO_LARGE, close::RATE_LIMITED].contains(code) => {
                // The server says this client misbehaved: retrying the same
                // thing in a loop would only repeat it. Retry, slowly.
                self.session = None;
                let after = self.backoff.next_delay().max(Duration::from_secs(5));
                Next::Retry { after, resume: false, notice: Notice::Disconnected { reason: format!("the server closed the connection ({code}: {reason})") } }
            }
            Ended::Closed(code, _) => {
                // 1001 draining, 4009 too slow, 1000 heartbeat or replaced:
                // the server let the seat go, so join afresh.
                self.session = None;
                let notice = if *code == close::SERVER_DRAINING { Notice::ServerRestarting } else { Notice::Reconnecting { attempt: self.backoff.attempt() + 1 } };
                Next::Retry { after: self.backoff.next_delay(), resume: false, notice }
            }
            Ended::Dropped(_) => {
                // The seat waits 30 s for us: come back at once and resume.
                let notice = Notice::Reconnecting { attempt: self.backoff.attempt() + 1 };
                Next::Retry { after: self.backoff.next_wait(self.session.is_some()), resume: self.session.is_some(), notice }
            }
            Ended::Unreachable(reason) => {
                // While resuming, keep trying often enough to be back
                // within the seat's 30 s.
                let notice = if self.was_in_room { Notice::Reconnecting { attempt: self.backoff.attempt() + 1 } } else { Notice::Disconnected { reason: reason.clone() } };
                Next::Retry { after: self.backoff.next_wait(self.session.is_some()), resume: self.session.is_some(), notice }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(expires_s: u64) -> Tokens {
        Tokens { access: "a".into(), refresh: "r".into(), expires_at: Duration::from_secs(expires_s) }
    }

    #[test]
    fn a_drop_retries_soon_and_resumes_the_session() {
        let mut c = Connection::new(1);
        c.tokens = Some(tokens(900));
        assert!(!c.welcomed("s1"), "a first welcome is not a resume");
        assert_eq!(c.joined(), None, "the first join is no reconnect");
        let Next::Retry { after, resume, notice } = c.ended(&Ended::Dropped("reset".into())) else { panic!("retry") };
        assert!(resume && after < Duration::from_millis(250), "a dropped seat is resumed within a quarter second, not {after:?}");
        assert_eq!(notice, Notice::Reconnecting { attempt: 1 });
        assert!(c.welcomed("s1"), "the same session back means resumed");
        // Failing again backs off further.
        let Next::Retry { after: second, .. } = c.ended(&Ended::Unreachable("refused".into())) else { panic!() };
        let Next::Retry { after: third, .. } = c.ended(&Ended::Unreachable("refused".into())) else { panic!() };
        assert!(second >= Duration::from_millis(500) && third >= Duration::from_millis(1000));
        // While the seat may still be held, the tries stay close together.
        for _ in 0..5 {
            let Next::Retry { after, resume, .. } = c.ended(&Ended::Unreachable("refused".into())) else { panic!() };
            assert!(resume && after <= Duration::from_secs(2), "{after:?}");
        }
        assert_eq!(c.joined(), Some(Notice::Reconnected { resumed: false }));
        assert_eq!(c.backoff.attempt(), 0, "a successful join resets the backoff");
    }

    #[test]
    fn an_expired_token_refreshes_before_reconnecting_and_a_failed_refresh_logs_in() {
        let mut c = Connection::new(1);
        assert_eq!(c.credentials(Duration::ZERO), Credentials::Login);
        c.tokens = Some(tokens(900));
        assert_eq!(c.credentials(Duration::from_secs(100)), Credentials::Use("a".into()));
        assert_eq!(c.refresh_at(), Some(Duration::from_secs(810)));
        assert_eq!(c.credentials(Duration::from_secs(811)), Credentials::Refresh("r".into()), "refreshed ahead of expiry");
        c.welcomed("s1");
        let Next::Retry { resume, notice, .. } = c.ended(&Ended::Closed(close::BAD_TOKEN, "expired".into())) else { panic!() };
        assert!(!resume);
        assert_eq!(notice, Notice::TokenExpired);
        assert_eq!(c.credentials(Duration::from_secs(1)), Credentials::Refresh("r".into()), "refresh first");
        c.refresh_failed();
        assert_eq!(c.credentials(Duration::from_secs(1)), Credentials::Login, "then a fresh login");
    }

    #[test]
    fn an_unanswered_refresh_keeps_the_tokens_and_tries_again_later() {
        let mut c = Connection::new(1);
        c.tokens = Some(tokens(900));
        let now = Duration::from_secs(811);
        assert_eq!(c.credentials(now), Credentials::Refresh("r".into()));
        // The server was restarting: no answer.
        c.refresh_unanswered(now);
        assert!(c.tokens.is_some(), "kept: signing in again would make a new user");
        assert_eq!(c.credentials(now), Credentials::Use("a".into()), "the access token still has 89 s");
        assert_eq!(c.refresh_at(), Some(now + REFRESH_RETRY), "the next try waits");
        assert_eq!(c.credentials(now + REFRESH_RETRY), Credentials::Refresh("r".into()));
        // Expired meanwhile: only a refresh will do, whenever the server is back.
        c.refresh_unanswered(Duration::from_secs(899));
        assert_eq!(c.credentials(Duration::from_secs(900)), Credentials::Refresh("r".into()));
    }

    #[test]
    fn server_closes_join_afresh_and_a_full_room_says_what_to_do() {
        let mut c = Connection::new(1);
        c.welcomed("s1");
        let Next::Retry { resume, notice, .. } = c.ended(&Ended::Closed(close::SERVER_DRAINING, "restart".into())) else { panic!() };
        assert!(!resume, "a drained server let the seat go");
        assert_eq!(notice, Notice::ServerRestarting);
        let Next::Retry { after, .. } = c.ended(&Ended::Closed(close::RATE_LIMITED, "flood".into())) else { panic!() };
        assert!(after >= Duration::from_secs(5), "misbehaviour retries slowly");
        assert!(Notice::RoomFull { room: "plaza".into(), detail: "the room is full (40 members)".into(), back_in: None }.text().contains("Pick another in Settings (F1)."));
    }

    #[test]
    fn the_status_line_tells_a_full_server_from_a_lost_connection() {
        let status = |reason: &str| ConnectionStatus::Reconnecting { attempt: 2, retry_in: Duration::from_millis(7300), reason: reason.into() };
        assert_eq!(status(SERVER_FULL).label(), "server full: retrying (try 2, in 7.3 s)");
        assert_eq!(status("the connection closed").label(), "reconnecting (try 2, in 7.3 s)");
        let trying = |reason: &str| ConnectionStatus::Reconnecting { attempt: 2, retry_in: Duration::ZERO, reason: reason.into() };
        assert_eq!(trying("nothing from the server for 8 s").label(), "reconnecting (try 2, now)");
        assert_eq!(trying(SERVER_FULL).label(), "server full: retrying (try 2, now)");
    }

    #[test]
    fn a_full_server_is_retried_after_it_asked_and_never_in_step_with_other_clients() {
        let wait = Duration::from_secs(5);
        let mut afters = Vec::new();
        for n in 0..20 {
            let mut c = Connection::new(2 * n + 1);
            c.welcomed("s1");
            let Next::Retry { after, resume, notice } = c.ended(&Ended::ServerFull { retry_after: wait }) else { panic!("retry") };
            assert!(after >= wait, "never sooner than asked: {after:?}");
            assert!(resume, "the seat may still be waiting");
            assert_eq!(notice, Notice::ServerBusy { retry_in: after });
            assert!(notice.text().contains("server is full") && notice.text().contains(&format!("{} s", after.as_secs_f64().ceil() as u64)), "{}", notice.text());
            afters.push(after);
        }
        afters.sort();
        afters.dedup();
        assert!(afters.len() >= 15, "jittered: {afters:?}");
        assert!(afters[afters.len() - 1] - afters[0] >= Duration::from_secs(2), "spread over seconds, not a burst: {afters:?}");
        // Refused again, it waits longer.
        let mut c = Connection::new(3);
        let first = match c.ended(&Ended::ServerFull { retry_after: wait }) { Next::Retry { after, .. } => after, _ => panic!() };
        for _ in 0..4 {
            c.ended(&Ended::ServerFull { retry_after: wait });
        }
        let fifth = match c.ended(&Ended::ServerFull { retry_after: wait }) { Next::Retry { after, .. } => after, _ => panic!() };
        assert!(fifth > first, "{first:?} then {fifth:?}");
    }
}
