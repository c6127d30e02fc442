//! The chat the HUD shows: our own lines as we send them, the room's as
//! they arrive, and the room's history page merged in after each join, so
//! what was said while we were away (a dropped connection, a server
//! restart) is there once we are back, in its place and once.
//!
//! A room's message is named by its sender and the sender's id for it
//! (`from`, `id`); the history page and the socket both carry it, and a
//! line already shown is not shown again.

use plaza_shared::messages::ChatMessage;
use std::collections::VecDeque;

/// Lines kept; the oldest go first.
pub const CHAT_LINES: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct ChatLine {
    /// The sender's message id.
    pub id: Option<String>,
    /// The sender's user id; `None` for our own line until the room echoes it.
    pub from: Option<String>,
    /// When the server stored it (epoch ms); `None` until it did.
    pub ts: Option<u64>,
    pub name: String,
    pub text: String,
    /// Ours and not yet stored by the server.
    pub pending: bool,
    pub failed: Option<String>,
    /// A note from the client itself (not a message anyone sent).
    pub system: bool,
}

impl ChatLine {
    fn from_message(m: &ChatMessage) -> ChatLine {
        ChatLine { id: Some(m.id.clone()), from: Some(m.from.clone()), ts: Some(m.ts), name: m.name.clone(), text: m.text.clone(), pending: false, failed: None, system: false }
    }
}

/// What a history page brought.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// Messages not shown before.
    pub added: usize,
    /// Of those, the ones said since our first line: missed while away
    /// (the rest were said before we came).
    pub missed: usize,
}

#[derive(Debug, Default)]
pub struct ChatLog {
    lines: VecDeque<ChatLine>,
    /// Lines at the top that history goes below (a room's heading).
    heading: usize,
}

impl ChatLog {
    pub fn lines(&self) -> impl Iterator<Item = &ChatLine> {
        self.lines.iter()
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// A line we typed: pending while the network has it (`sent`), failed
    /// at once when it could not take it.
    pub fn typed(&mut self, id: String, name: String, text: String, sent: bool) {
        let failed = (!sent).then(|| "the network is busy; try again".to_owned());
        self.push(ChatLine { id: Some(id), from: None, ts: None, name, text, pending: sent, failed, system: false });
    }

    /// A note of the client's own (history that could not be read).
    pub fn note(&mut self, text: String) {
        self.push(ChatLine { id: None, from: None, ts: None, name: "Plaza".into(), text, pending: false, failed: None, system: true });
    }

    /// A fresh log under a heading of the client's own (another room):
    /// the room's history goes below it.
    pub fn start_under(text: String) -> ChatLog {
        let mut log = ChatLog::default();
        log.note(text);
        log.heading = 1;
        log
    }

    /// A message from the room; `me` is our user id. Our own echo settles
    /// the line we typed instead of adding one.
    pub fn received(&mut self, m: &ChatMessage, me: Option<&str>) {
        if let Some(line) = self.find(m, me) {
            line.pending = false;
            line.from = Some(m.from.clone());
            line.ts = Some(m.ts);
            return;
        }
        self.push(ChatLine::from_message(m));
    }

    pub fn acked(&mut self, id: &str) {
        if let Some(line) = self.own_line(id) {
            line.pending = false;
        }
    }

    pub fn failed(&mut self, id: &str, reason: String) {
        if let Some(line) = self.own_line(id) {
            line.pending = false;
            line.failed = Some(reason);
        }
    }

    /// The room's newest messages (oldest first), read after a join: each
    /// one not shown yet goes in by its time, after every shown line that
    /// is not newer.
    pub fn history(&mut self, page: &[ChatMessage], me: Option<&str>) -> Merged {
        // Since when we were there: what is new after that, we missed.
        let since = self.lines.iter().filter_map(|l| l.ts).min();
        let mut merged = Merged::default();
        for m in page {
            if let Some(line) = self.find(m, me) {
                line.pending = false;
                line.from = Some(m.from.clone());
                line.ts = Some(m.ts);
                continue;
            }
            // After the newest line not newer than it; lines without a time
            // (ours not stored yet, notes) keep their place below.
            let at = self.lines.iter().rposition(|l| l.ts.is_some_and(|ts| ts <= m.ts)).map_or(self.heading, |i| (i + 1).max(self.heading));
            self.lines.insert(at, ChatLine::from_message(m));
            merged.added += 1;
            if since.is_some_and(|since| m.ts >= since) {
                merged.missed += 1;
            }
        }
        self.trim();
        merged
    }

    /// The line for `m` if shown: the same sender and id, or (our own
    /// message, not echoed yet) the line we typed with that id.
    fn find(&mut self, m: &ChatMessage, me: Option<&str>) -> Option<&mut ChatLine> {
        let ours = me == Some(m.from.as_str());
        self.lines.iter_mut().find(|l| {
            l.id.as_deref() == Some(m.id.as_str()) && match &l.from {
                Some(from) => *from == m.from,
                None => ours && !l.system,
            }
        })
    }

    /// The line we typed with this id, not yet echoed (the newest, if the
    /// id came round again).
    fn own_line(&mut self, id: &str) -> Option<&mut ChatLine> {
        self.lines.iter_mut().rev().find(|l| !l.system && l.from.is_none() && l.id.as_deref() == Some(id))
    }

    fn push(&mut self, line: ChatLine) {
        self.lines.push_back(line);
        self.trim();
    }

    fn trim(&mut self) {
        while self.lines.len() > CHAT_LINES {
            self.lines.pop_front();
            self.heading = self.heading.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: &str, id: &str, ts: u64) -> ChatMessage {
        ChatMessage { id: id.into(), room: "r_1".into(), from: from.into(), name: from.to_uppercase(), text: format!("{from} says {id}"), ts }
    }

    fn texts(log: &ChatLog) -> Vec<String> {
        log.lines().map(|l| l.text.clone()).collect()
    }

    #[test]
    fn what_was_said_while_away_goes_in_by_its_time_and_once() {
        let mut log = ChatLog::default();
        log.received(&msg("ann", "1", 100), Some("me"));
        log.received(&msg("bob", "1", 300), Some("me"));
        // Away from 100 to 300: the page holds both sides of the gap.
        let page = [msg("ann", "1", 100), msg("cy", "7", 150), msg("ann", "2", 200), msg("bob", "1", 300)];
        assert_eq!(log.history(&page, Some("me")), Merged { added: 2, missed: 2 });
        assert_eq!(texts(&log), ["ann says 1", "cy says 7", "ann says 2", "bob says 1"]);
        // The same page again (a second reconnect) adds nothing.
        assert_eq!(log.history(&page, Some("me")), Merged::default());
        assert_eq!(log.len(), 4);
    }

    #[test]
    fn the_same_id_from_two_senders_is_two_messages() {
        let mut log = ChatLog::default();
        log.received(&msg("ann", "c1", 100), Some("me"));
        assert_eq!(log.history(&[msg("ann", "c1", 100), msg("bob", "c1", 110)], Some("me")).added, 1);
        assert_eq!(texts(&log), ["ann says c1", "bob says c1"]);
    }

    #[test]
    fn our_line_still_pending_is_settled_by_the_page_not_doubled() {
        let mut log = ChatLog::default();
        log.typed("c1".into(), "You".into(), "hi".into(), true);
        // Stored, but the ack went down with the old socket.
        let mut ours = msg("me", "c1", 500);
        ours.text = "hi".into();
        assert_eq!(log.history(&[msg("ann", "4", 400), ours.clone()], Some("me")), Merged { added: 1, missed: 0 }, "nothing of ours was stored before: not missed");
        let lines: Vec<&ChatLine> = log.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text, "ann says 4", "the older message goes above our line");
        assert!(!lines[1].pending, "stored, so no longer pending");
        assert_eq!(lines[1].from.as_deref(), Some("me"));
        // The late echo changes nothing more.
        log.received(&ours, Some("me"));
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn someone_elses_message_with_our_id_is_theirs() {
        let mut log = ChatLog::default();
        log.typed("c1".into(), "You".into(), "hi".into(), true);
        log.received(&msg("ann", "c1", 100), Some("me"));
        let lines: Vec<&ChatLine> = log.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].pending, "ann's c1 is not our echo");
    }

    #[test]
    fn acks_and_failures_reach_our_line() {
        let mut log = ChatLog::default();
        log.typed("c1".into(), "You".into(), "one".into(), true);
        log.typed("c2".into(), "You".into(), "two".into(), true);
        log.typed("c3".into(), "You".into(), "three".into(), false);
        log.acked("c1");
        log.failed("c2", "rate limited".into());
        let lines: Vec<&ChatLine> = log.lines().collect();
        assert!(!lines[0].pending && lines[0].failed.is_none());
        assert_eq!(lines[1].failed.as_deref(), Some("rate limited"));
        assert!(lines[2].failed.is_some() && !lines[2].pending, "the busy network failed it at once");
    }

    #[test]
    fn the_log_keeps_the_newest_lines() {
        let mut log = ChatLog::default();
        let page: Vec<ChatMessage> = (0..CHAT_LINES as u64 + 20).map(|i| msg("ann", &i.to_string(), i)).collect();
        assert_eq!(log.history(&page, None), Merged { added: CHAT_LINES + 20, missed: 0 }, "a first page: said before we came");
        assert_eq!(log.len(), CHAT_LINES);
        assert_eq!(log.lines().next().map(|l| l.id.clone()), Some(Some("20".into())));
        log.note("history unavailable".into());
        assert_eq!(log.len(), CHAT_LINES);
        assert!(log.lines().last().is_some_and(|l| l.system));
    }
}
