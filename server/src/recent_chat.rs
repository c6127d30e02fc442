//! The newest chat of one room, kept by its room task, so the history
//! endpoint (`GET /api/v1/rooms/{id}/chat`) answers from memory instead of
//! the store.
//!
//! Every client that reconnects reads the history it missed, so after a
//! restart thousands ask at once. From the store that cost 1.3 ms of CPU a
//! page of 200 (SQLite and row decoding), and 4,000 users coming back put
//! the server seconds behind (docs/benchmarks.md, session 11).
//!
//! A room created by a join starts with all of its history (none). A room
//! loaded from the store reads its newest page from the store the first
//! time someone asks, once; chats that arrive meanwhile are kept and merged
//! after it. Chat is stored before the room broadcasts it, so what the room
//! has seen is always in the store too. The room hears of a chat just after
//! its sender's `chat_ack` is queued (the contract puts the ack first), so
//! a page read in that moment may not have it yet.

use plaza_shared::messages::ChatMessage;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Messages kept: the endpoint's largest page.
pub const RECENT_CHAT: usize = 200;

/// Where a page goes; `None`: ask the store.
pub type Reply = oneshot::Sender<Option<Vec<Arc<ChatMessage>>>>;

#[derive(Debug)]
pub enum RecentChat {
    /// The newest [`RECENT_CHAT`] messages the room has, oldest first.
    Complete(VecDeque<Arc<ChatMessage>>),
    /// The store's page has not been read yet.
    Unseeded {
        /// Chats that arrived since the room started (the newest
        /// [`RECENT_CHAT`]).
        since: VecDeque<Arc<ChatMessage>>,
        /// Pages asked for meanwhile: (limit, reply).
        waiting: Vec<(usize, Reply)>,
        /// The store is being read.
        reading: bool,
    },
}

impl RecentChat {
    /// A room that has just been created: nothing was said in it yet.
    pub fn new_room() -> Self {
        RecentChat::Complete(VecDeque::new())
    }

    /// A room from the store: its history is there.
    pub fn stored_room() -> Self {
        RecentChat::Unseeded { since: VecDeque::new(), waiting: Vec::new(), reading: false }
    }

    /// A chat the room broadcast (stored before).
    pub fn push(&mut self, message: Arc<ChatMessage>) {
        let (RecentChat::Complete(ring) | RecentChat::Unseeded { since: ring, .. }) = self;
        ring.push_back(message);
        trim(ring);
    }

    /// The newest `limit` messages, oldest first, now or once the store's
    /// page is in. True when the store must be read (the first ask).
    pub fn ask(&mut self, limit: usize, reply: Reply) -> bool {
        match self {
            RecentChat::Complete(ring) => {
                let _ = reply.send(Some(newest(ring, limit)));
                false
            }
            RecentChat::Unseeded { waiting, reading, .. } => {
                waiting.push((limit, reply));
                !std::mem::replace(reading, true)
            }
        }
    }

    /// The store's newest page (oldest first), or `Err` when it could not
    /// be read: those waiting are then told to ask the store themselves,
    /// and the next ask tries again.
    pub fn seed(&mut self, stored: Result<Vec<ChatMessage>, ()>) {
        let RecentChat::Unseeded { since, waiting, reading } = self else { return };
        let Ok(stored) = stored else {
            for (_, reply) in waiting.drain(..) {
                let _ = reply.send(None);
            }
            *reading = false;
            return;
        };
        // A chat stored before the read and broadcast after it is in both.
        let in_store: std::collections::HashSet<(&str, &str)> = stored.iter().map(|m| (m.from.as_str(), m.id.as_str())).collect();
        let after: Vec<Arc<ChatMessage>> = since.drain(..).filter(|m| !in_store.contains(&(m.from.as_str(), m.id.as_str()))).collect();
        let mut ring: VecDeque<Arc<ChatMessage>> = stored.into_iter().map(Arc::new).chain(after).collect();
        trim(&mut ring);
        for (limit, reply) in waiting.drain(..) {
            let _ = reply.send(Some(newest(&ring, limit)));
        }
        *self = RecentChat::Complete(ring);
    }
}

/// Keeps the newest [`RECENT_CHAT`].
fn trim(ring: &mut VecDeque<Arc<ChatMessage>>) {
    let over = ring.len().saturating_sub(RECENT_CHAT);
    ring.drain(..over);
}

fn newest(ring: &VecDeque<Arc<ChatMessage>>, limit: usize) -> Vec<Arc<ChatMessage>> {
    ring.iter().skip(ring.len().saturating_sub(limit)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(from: &str, id: &str) -> ChatMessage {
        ChatMessage { id: id.into(), room: "r".into(), from: from.into(), name: from.into(), text: format!("{from} {id}"), ts: 0 }
    }

    fn page(recent: &mut RecentChat, limit: usize) -> (bool, oneshot::Receiver<Option<Vec<Arc<ChatMessage>>>>) {
        let (reply, answer) = oneshot::channel();
        (recent.ask(limit, reply), answer)
    }

    fn ids(page: Option<Vec<Arc<ChatMessage>>>) -> Vec<String> {
        page.expect("a page").iter().map(|m| m.id.clone()).collect()
    }

    #[test]
    fn a_new_room_answers_at_once_with_its_newest_messages_oldest_first() {
        let mut recent = RecentChat::new_room();
        for i in 0..(RECENT_CHAT + 5) {
            recent.push(Arc::new(chat("u", &i.to_string())));
        }
        let (read_store, mut answer) = page(&mut recent, 3);
        assert!(!read_store);
        assert_eq!(ids(answer.try_recv().unwrap()), ["202", "203", "204"]);
        let (_, mut answer) = page(&mut recent, RECENT_CHAT);
        let all = ids(answer.try_recv().unwrap());
        assert_eq!(all.len(), RECENT_CHAT, "only the newest are kept");
        assert_eq!(all[0], "5");
    }

    #[test]
    fn a_stored_room_reads_the_store_once_and_merges_what_came_meanwhile() {
        let mut recent = RecentChat::stored_room();
        let (first, mut a) = page(&mut recent, 10);
        let (second, mut b) = page(&mut recent, 2);
        assert!(first, "the first ask reads the store");
        assert!(!second, "once");
        assert!(a.try_recv().is_err(), "nothing until the store answers");
        // `b3` was stored before the read and broadcast after it; `a9` only
        // after the read.
        recent.push(Arc::new(chat("b", "3")));
        recent.push(Arc::new(chat("a", "9")));
        recent.seed(Ok(vec![chat("a", "1"), chat("b", "2"), chat("b", "3")]));
        assert_eq!(ids(a.try_recv().unwrap()), ["1", "2", "3", "9"], "no duplicate, in order");
        assert_eq!(ids(b.try_recv().unwrap()), ["3", "9"]);
        let (read_store, mut c) = page(&mut recent, 10);
        assert!(!read_store);
        assert_eq!(ids(c.try_recv().unwrap()), ["1", "2", "3", "9"]);
    }

    #[test]
    fn when_the_store_fails_the_askers_go_to_the_store_and_the_next_ask_tries_again() {
        let mut recent = RecentChat::stored_room();
        let (_, mut a) = page(&mut recent, 10);
        recent.push(Arc::new(chat("a", "5")));
        recent.seed(Err(()));
        assert_eq!(a.try_recv().unwrap(), None);
        let (read_store, _b) = page(&mut recent, 10);
        assert!(read_store, "tried again");
        recent.seed(Ok(vec![chat("a", "4")]));
        let (_, mut c) = page(&mut recent, 10);
        assert_eq!(ids(c.try_recv().unwrap()), ["4", "5"], "what came meanwhile was kept");
    }
}
