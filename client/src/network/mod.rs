//! Networking on its own thread. A tokio runtime there runs the session
//! task ([`session`]) and, without `--server`, the embedded server with its
//! bots. The ECS talks to it through two bounded channels, commands out
//! (chat) and events in (state, deltas, chat, notices, drained once a frame
//! by [`NetworkSystems::Receive`]), and a slot holding the newest pose,
//! which the network thread sends once a tick. A third, small channel carries
//! frame-timing reports out ([`TelemetryOutbox`], posted by [`telemetry`]).
//! Nothing in a frame ever waits on the network.

pub mod connection;
pub mod session;
pub mod telemetry;
pub mod voice;

pub use connection::{ConnectionStatus, Notice};

use bevy::prelude::*;
use plaza_shared::messages::{ChatMessage, Delta, ErrorMessage, Joined};
use plaza_shared::pose::Pose;
use plaza_shared::telemetry::TelemetryReport;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Commands queued to the network task.
const COMMAND_QUEUE: usize = 64;
/// Events queued to the app: a few seconds of deltas at 20 Hz.
const EVENT_QUEUE: usize = 256;
/// At most this many events are applied per frame, so a burst after a
/// stall spreads over frames instead of making one long one.
const EVENTS_PER_FRAME: usize = 128;

#[derive(Debug)]
pub enum NetCommand {
    Chat { id: String, text: String },
    /// Go to this room (an id or a name; a new name creates it), leaving
    /// the one we are in; it is also where a reconnect goes from then on.
    JoinRoom { room: String },
    /// Read the server's rooms: [`NetEvent::Rooms`] answers.
    ListRooms,
    /// Go by another display name: signs in again under it and rejoins
    /// the room (others see you leave and come back with the new name).
    Rename { name: String },
}

/// The network task's ends of what the app sends: commands in order, and
/// the newest pose (only the latest matters, so it is a slot, not a queue:
/// a frame's pose never waits behind, or crowds out, a chat).
pub struct NetInput {
    pub commands: mpsc::Receiver<NetCommand>,
    pub pose: watch::Receiver<Option<Pose>>,
    /// Voice, when it is on and there is audio to use.
    pub voice: Option<voice::VoicePort>,
}

#[derive(Debug)]
pub enum NetEvent {
    Status(ConnectionStatus),
    Notice(Notice),
    Welcome { user_id: String },
    Joined(Joined),
    Delta(Delta),
    Chat(ChatMessage),
    /// The room's newest messages (oldest first), read after each join:
    /// what was said before we came, or while we were away.
    ChatHistory(Vec<ChatMessage>),
    ChatHistoryFailed(String),
    ChatAck(String),
    ChatFailed { id: String, reason: String },
    Rtt(Duration),
    /// The access token was refreshed in band.
    TokenRefreshed,
    ServerError(ErrorMessage),
    /// The server's rooms, or why they could not be read.
    Rooms(Result<Vec<plaza_shared::messages::RoomSummary>, String>),
}

/// The app's ends of the channels.
#[derive(Resource)]
pub struct NetLink {
    commands: mpsc::Sender<NetCommand>,
    pose: watch::Sender<Option<Pose>>,
    events: Mutex<mpsc::Receiver<NetEvent>>,
}

impl NetLink {
    /// A link with no network behind it, for tests: returns the other ends.
    pub fn pair() -> (NetLink, NetInput, mpsc::Sender<NetEvent>) {
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (pose, pose_rx) = watch::channel(None);
        let (event_tx, events) = mpsc::channel(EVENT_QUEUE);
        (NetLink { commands, pose, events: Mutex::new(events) }, NetInput { commands: command_rx, pose: pose_rx, voice: None }, event_tx)
    }

    /// Queues a command; false when the queue is full or the task is gone.
    pub fn send(&self, command: NetCommand) -> bool {
        self.commands.try_send(command).is_ok()
    }

    /// Leaves `pose` as the newest for the network thread to send at its
    /// next slot (replacing one not sent yet); false when the task is gone.
    pub fn send_pose(&self, pose: Pose) -> bool {
        self.pose.send(Some(pose)).is_ok()
    }
}

/// Where finished telemetry reports go: the network thread, which posts
/// them. Present only when telemetry is on and the network runs.
#[derive(Resource, Debug, Clone)]
pub struct TelemetryOutbox(mpsc::Sender<TelemetryReport>);

impl TelemetryOutbox {
    /// An outbox with no network behind it, for tests: returns the other end.
    pub fn pair() -> (TelemetryOutbox, mpsc::Receiver<TelemetryReport>) {
        let (tx, rx) = mpsc::channel(telemetry::QUEUE);
        (TelemetryOutbox(tx), rx)
    }

    /// Hands a report over without waiting; false when the queue is full
    /// (the network is behind) or the network thread is gone.
    pub fn try_send(&self, report: TelemetryReport) -> bool {
        self.0.try_send(report).is_ok()
    }
}

/// What the rest of the app knows about the connection.
#[derive(Resource, Debug, Default, Clone)]
pub struct ConnectionInfo {
    pub status: ConnectionStatus,
    pub user_id: Option<String>,
    /// Our own avatar's id in the room.
    pub you: Option<u32>,
    pub rtt: Option<Duration>,
    /// The server we talk to, `http://host:port`.
    pub server: Option<String>,
    /// The name we go by.
    pub name: String,
    /// The server's rooms as last read ([`NetCommand::ListRooms`]), or why
    /// they could not be.
    pub rooms: Option<Result<Vec<plaza_shared::messages::RoomSummary>, String>>,
}

/// Room state from the server, for the avatars plugin.
#[derive(Message, Debug, Clone)]
pub enum RoomUpdate {
    /// The full state (join or resume).
    Joined(Joined),
    Delta(Delta),
}

/// Chat and chat outcomes, for the HUD.
#[derive(Message, Debug, Clone)]
pub enum ChatUpdate {
    Message(ChatMessage),
    /// The room's newest messages, oldest first, read after a join.
    History(Vec<ChatMessage>),
    /// The history could not be read (why).
    HistoryFailed(String),
    Acked(String),
    Failed { id: String, reason: String },
}

/// A toast to show.
#[derive(Message, Debug, Clone)]
pub struct Toast(pub Notice);

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum NetworkSystems {
    /// Drains the network's events into resources and messages (PreUpdate).
    Receive,
}

/// Where to connect.
#[derive(Debug, Clone)]
pub enum NetworkMode {
    /// No network at all.
    Offline,
    /// Start the server in-process with this many bots, then join it.
    Embedded { bots: u32 },
    /// Join this server.
    Remote { server: String },
}

pub struct NetworkPlugin {
    pub mode: NetworkMode,
    pub room: String,
    pub name: String,
    /// Post frame-timing reports (`--telemetry`): opens [`TelemetryOutbox`].
    pub telemetry: bool,
    /// Voice (`--voice`), with or without the microphone.
    pub voice: Option<VoiceOptions>,
}

/// How voice runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceOptions {
    /// Send the microphone (`--mic`); off: listen only.
    pub mic: bool,
    /// `--voice-qos-debug`.
    pub qos_debug: bool,
    /// The speakers and microphone (`--audio-out`, `--audio-in`).
    pub devices: plaza_voice::device_list::DeviceChoice,
}

/// The app's ends of voice while it runs ([`crate::voice`] reads them).
#[derive(Resource, Debug)]
pub struct VoiceLink(pub voice::VoiceControl);

/// Why voice is not running, when it was asked for: shown on the HUD.
#[derive(Resource, Debug, Clone)]
pub struct VoiceUnavailable(pub String);

impl Plugin for NetworkPlugin {
    fn build(&self, app: &mut App) {
        app.add_message::<RoomUpdate>()
            .add_message::<ChatUpdate>()
            .add_message::<Toast>()
            .init_resource::<ConnectionInfo>()
            .add_systems(PreUpdate, receive.in_set(NetworkSystems::Receive));
        match &self.mode {
            NetworkMode::Offline => {
                app.insert_resource(ConnectionInfo { status: ConnectionStatus::Offline, ..default() });
            }
            mode => match start(mode.clone(), self.room.clone(), self.name.clone(), self.telemetry, self.open_voice(app)) {
                Ok((link, outbox, server)) => {
                    app.insert_resource(link).insert_resource(ConnectionInfo { server: Some(server), name: self.name.clone(), ..default() });
                    if let Some(outbox) = outbox {
                        app.insert_resource(outbox);
                    }
                }
                Err(e) => {
                    error!(cause = %e, "the network could not start; running offline");
                    app.insert_resource(ConnectionInfo { status: ConnectionStatus::Failed { reason: e }, ..default() });
                }
            },
        }
    }
}

impl NetworkPlugin {
    /// Opens the sound devices for voice, when asked for: the network
    /// thread's ends, with the app's in [`VoiceLink`]. No sound device is one
    /// log line and [`VoiceUnavailable`]; the rest of the client runs on.
    fn open_voice(&self, app: &mut App) -> Option<voice::VoicePort> {
        let options = self.voice.clone()?;
        match plaza_voice::devices::AudioIo::open(options.mic, options.devices.clone()) {
            Ok(audio) => {
                info!(devices = %audio.description(), "voice: audio ready");
                let (control, port) = voice::voice_link(audio, options.qos_debug, options.devices);
                app.insert_resource(VoiceLink(control));
                Some(port)
            }
            Err(e) => {
                warn!("voice is off: {e} (--voice off silences this)");
                app.insert_resource(VoiceUnavailable(e.to_string()));
                None
            }
        }
    }
}

/// Starts the network thread; returns the link, the telemetry outbox (when
/// asked for) and the server's address.
fn start(mode: NetworkMode, room: String, name: String, telemetry: bool, voice: Option<voice::VoicePort>) -> Result<(NetLink, Option<TelemetryOutbox>, String), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("plaza-net")
        .enable_all()
        .build()
        .map_err(|e| format!("no network runtime: {e}"))?;
    let server = match mode {
        NetworkMode::Offline => unreachable!("offline has no network thread"),
        NetworkMode::Remote { server } => server,
        NetworkMode::Embedded { bots } => runtime.block_on(start_embedded(bots, &room))?,
    };
    let (link, mut input, events) = NetLink::pair();
    input.voice = voice;
    let (outbox, reports) = if telemetry {
        let (outbox, reports) = TelemetryOutbox::pair();
        (Some(outbox), Some(reports))
    } else {
        (None, None)
    };
    let config = session::SessionConfig::new(server.clone(), room, name);
    std::thread::Builder::new()
        .name("plaza-network".into())
        .spawn(move || runtime.block_on(session::run_with_telemetry(config, input, events, reports)))
        .map_err(|e| format!("no network thread: {e}"))?;
    Ok((link, outbox, server))
}

/// The server in-process on 127.0.0.1 (any free port), chat in memory, with
/// `bots` wandering the room.
async fn start_embedded(bots: u32, room: &str) -> Result<String, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("the embedded server can't listen: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The room holds 40: leave a seat for the player.
    let capacity = plaza_shared::limits::DEFAULT_ROOM_CAPACITY - 1;
    if bots > capacity {
        warn!(bots, capacity, "the embedded room holds {capacity} bots besides you; starting {capacity}");
    }
    let config = plaza_server::ServerConfig { bots: bots.min(capacity), bots_room: room.to_owned(), ..plaza_server::ServerConfig::ephemeral() };
    tokio::spawn(async move {
        if let Err(e) = plaza_server::run(config, listener, std::future::pending()).await {
            error!(cause = %e, "the embedded server stopped");
        }
    });
    info!(%addr, bots, "embedded server started");
    Ok(format!("http://{addr}"))
}

fn receive(
    link: Option<Res<NetLink>>,
    mut info: ResMut<ConnectionInfo>,
    mut room: MessageWriter<RoomUpdate>,
    mut chat: MessageWriter<ChatUpdate>,
    mut toasts: MessageWriter<Toast>,
) {
    let Some(link) = link else { return };
    profile_span!("net_receive");
    let Ok(mut events) = link.events.lock() else { return };
    for _ in 0..EVENTS_PER_FRAME {
        let event = match events.try_recv() {
            Ok(event) => event,
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                if !matches!(info.status, ConnectionStatus::Failed { .. }) {
                    info.status = ConnectionStatus::Failed { reason: "the network thread stopped".into() };
                }
                break;
            }
        };
        match event {
            NetEvent::Status(status) => {
                if !matches!(status, ConnectionStatus::InRoom { .. }) {
                    info.rtt = None;
                }
                info.status = status;
            }
            NetEvent::Notice(notice) => {
                toasts.write(Toast(notice));
            }
            NetEvent::Welcome { user_id } => info.user_id = Some(user_id),
            NetEvent::Rooms(rooms) => info.rooms = Some(rooms),
            NetEvent::Joined(j) => {
                info.you = Some(j.you);
                room.write(RoomUpdate::Joined(j));
            }
            NetEvent::Delta(d) => {
                room.write(RoomUpdate::Delta(d));
            }
            NetEvent::Chat(c) => {
                chat.write(ChatUpdate::Message(c));
            }
            NetEvent::ChatHistory(page) => {
                chat.write(ChatUpdate::History(page));
            }
            NetEvent::ChatHistoryFailed(reason) => {
                chat.write(ChatUpdate::HistoryFailed(reason));
            }
            NetEvent::ChatAck(id) => {
                chat.write(ChatUpdate::Acked(id));
            }
            NetEvent::ChatFailed { id, reason } => {
                chat.write(ChatUpdate::Failed { id, reason });
            }
            NetEvent::Rtt(rtt) => info.rtt = Some(rtt),
            NetEvent::TokenRefreshed => debug!("token refreshed"),
            NetEvent::ServerError(e) => warn!(code = e.code.as_str(), message = %e.message, "server error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plaza_shared::messages::{AvatarInfo, Delta};

    #[test]
    fn events_become_state_and_messages_and_a_dead_thread_shows() {
        let mut app = App::new();
        app.add_plugins(MinimalPlugins).add_plugins(NetworkPlugin { mode: NetworkMode::Offline, room: "plaza".into(), name: "Ada".into(), telemetry: false, voice: None });
        let (link, _input, events) = NetLink::pair();
        app.insert_resource(link);
        events.try_send(NetEvent::Status(ConnectionStatus::InRoom { room: "r_1".into(), room_name: "plaza".into() })).unwrap();
        let joined = Joined { room: "r_1".into(), room_name: "plaza".into(), you: 7, tick: 3, avatars: vec![AvatarInfo { id: 1, user: "u".into(), name: "Bob".into(), pose: Pose::default() }] };
        events.try_send(NetEvent::Joined(joined)).unwrap();
        events.try_send(NetEvent::Delta(Delta { tick: 4, avatars: vec![], joined: vec![], left: vec![1] })).unwrap();
        events.try_send(NetEvent::Rtt(Duration::from_millis(12))).unwrap();
        app.update();
        let info = app.world().resource::<ConnectionInfo>().clone();
        assert_eq!(info.you, Some(7));
        assert_eq!(info.rtt, Some(Duration::from_millis(12)));
        assert!(matches!(info.status, ConnectionStatus::InRoom { .. }));
        let updates: Vec<RoomUpdate> = app.world_mut().resource_mut::<Messages<RoomUpdate>>().drain().collect();
        assert!(matches!(updates.as_slice(), [RoomUpdate::Joined(_), RoomUpdate::Delta(_)]));
        drop(events);
        app.update();
        assert!(matches!(app.world().resource::<ConnectionInfo>().status, ConnectionStatus::Failed { .. }));
    }
}
