//! Property tests of both codecs: every message type round-trips, and no
//! input — random, truncated or oversized — panics.

use plaza_shared::codec::{DecodeError, Subprotocol, binary, json};
use plaza_shared::limits::MAX_MESSAGE_BYTES;
use plaza_shared::messages::*;
use plaza_shared::pose::{Pose, Transform};
use proptest::prelude::*;

fn unit_quaternion() -> impl Strategy<Value = [f32; 4]> {
    let any = prop::array::uniform4(-1.0f32..1.0)
        .prop_filter("non-zero", |q| q.iter().map(|v| v * v).sum::<f32>() > 1e-2)
        .prop_map(|q| {
            let len = q.iter().map(|v| v * v).sum::<f32>().sqrt();
            q.map(|v| v / len)
        });
    let yaw = (-3.2f32..3.2).prop_map(|a| [0.0, (a / 2.0).sin(), 0.0, (a / 2.0).cos()]);
    prop_oneof![any, yaw]
}

fn position() -> impl Strategy<Value = [f32; 3]> {
    prop::array::uniform3(-995.0f32..995.0)
}

fn limb(root: [f32; 3]) -> impl Strategy<Value = Transform> {
    (prop::array::uniform3(-3.9f32..3.9), unit_quaternion())
        .prop_map(move |(off, r)| Transform { p: [0, 1, 2].map(|i| root[i] + off[i]), r })
}

fn pose() -> impl Strategy<Value = Pose> {
    (position(), unit_quaternion()).prop_flat_map(|(p, r)| {
        (prop::option::of(limb(p)), prop::option::of([limb(p), limb(p)]))
            .prop_map(move |(head, hands)| Pose { p, r, head, hands })
    })
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

fn signal() -> impl Strategy<Value = serde_json::Value> {
    (text(), any::<u32>(), any::<bool>())
        .prop_map(|(sdp, n, b)| serde_json::json!({"kind": "offer", "sdp": sdp, "mid": n, "ice_lite": b}))
}

fn avatar_info() -> impl Strategy<Value = AvatarInfo> {
    (any::<u32>(), text(), text(), pose()).prop_map(|(id, user, name, pose)| AvatarInfo { id, user, name, pose })
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (text(), any::<u32>(), prop::option::of(text()))
            .prop_map(|(token, protocol, resume)| ClientMessage::Hello(Hello { token, protocol, resume })),
        text().prop_map(|room| ClientMessage::Join(Join { room })),
        Just(ClientMessage::Leave),
        (any::<u64>(), pose()).prop_map(|(t, pose)| ClientMessage::Pose(PoseUpdate { t, pose })),
        (text(), text()).prop_map(|(id, text)| ClientMessage::Chat(ChatSend { id, text })),
        any::<u64>().prop_map(|t| ClientMessage::Ping(Ping { t })),
        text().prop_map(|token| ClientMessage::Refresh(Refresh { token })),
        signal().prop_map(|signal| ClientMessage::Voice(Voice { signal })),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(ErrorCode::ALL.to_vec())
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (text(), text(), any::<u64>(), any::<u32>()).prop_map(|(user_id, session, server_time, tick_hz)| {
            ServerMessage::Welcome(Welcome { user_id, session, server_time, tick_hz })
        }),
        (text(), text(), any::<u32>(), any::<u64>(), prop::collection::vec(avatar_info(), 0..5)).prop_map(
            |(room, room_name, you, tick, avatars)| ServerMessage::Joined(Joined { room, room_name, you, tick, avatars })
        ),
        (
            any::<u64>(),
            prop::collection::vec((any::<u32>(), prop::option::of(any::<u64>()), pose()), 0..8),
            prop::collection::vec(avatar_info(), 0..3),
            prop::collection::vec(any::<u32>(), 0..4),
        )
            .prop_map(|(tick, moved, joined, left)| {
                let avatars = moved.into_iter().map(|(id, t, pose)| AvatarPose { id, t, pose }).collect();
                ServerMessage::Delta(Delta { tick, avatars, joined, left })
            }),
        (text(), text(), text(), text(), text(), any::<u64>())
            .prop_map(|(id, room, from, name, text, ts)| ServerMessage::Chat(ChatMessage { id, room, from, name, text, ts })),
        text().prop_map(|id| ServerMessage::ChatAck(ChatAck { id })),
        (any::<u64>(), any::<u64>()).prop_map(|(t, server_time)| ServerMessage::Pong(Pong { t, server_time })),
        any::<u32>().prop_map(|in_s| ServerMessage::TokenExpiring(TokenExpiring { in_s })),
        (error_code(), text()).prop_map(|(code, message)| ServerMessage::Error(ErrorMessage { code, message })),
        signal().prop_map(|signal| ServerMessage::Voice(Voice { signal })),
    ]
}

/// What a binary receiver sees: the same message with quantized poses.
fn quantized_client(msg: &ClientMessage) -> ClientMessage {
    match msg {
        ClientMessage::Pose(p) => ClientMessage::Pose(PoseUpdate { t: p.t, pose: p.pose.quantized() }),
        other => other.clone(),
    }
}

fn quantized_info(a: &AvatarInfo) -> AvatarInfo {
    AvatarInfo { pose: a.pose.quantized(), ..a.clone() }
}

fn quantized_server(msg: &ServerMessage) -> ServerMessage {
    match msg {
        ServerMessage::Joined(j) => {
            ServerMessage::Joined(Joined { avatars: j.avatars.iter().map(quantized_info).collect(), ..j.clone() })
        }
        ServerMessage::Delta(d) => ServerMessage::Delta(Delta {
            tick: d.tick,
            avatars: d.avatars.iter().map(|a| AvatarPose { pose: a.pose.quantized(), ..a.clone() }).collect(),
            joined: d.joined.iter().map(quantized_info).collect(),
            left: d.left.clone(),
        }),
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The lists of type names hold every message's, and each is the JSON
    /// `type` tag the contract names.
    #[test]
    fn every_type_name_is_listed_and_is_the_json_tag(msg in server_message(), cmsg in client_message()) {
        prop_assert!(ServerMessage::TYPE_NAMES.contains(&msg.type_name()), "{} not in ServerMessage::TYPE_NAMES", msg.type_name());
        prop_assert!(ClientMessage::TYPE_NAMES.contains(&cmsg.type_name()), "{} not in ClientMessage::TYPE_NAMES", cmsg.type_name());
        let tag = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap()["type"].as_str().map(str::to_owned);
        prop_assert_eq!(tag(&json::encode(&msg)), Some(msg.type_name().to_owned()));
        prop_assert_eq!(tag(&json::encode(&cmsg)), Some(cmsg.type_name().to_owned()));
    }

    /// A room encodes each delta once and splices every member's frame
    /// from it: the bytes must be exactly those of encoding the delta with
    /// the member's own avatar filtered out, for every member.
    #[test]
    fn a_shared_delta_spliced_for_a_member_is_the_filtered_delta_encoded(
        tick in any::<u64>(),
        moved in prop::collection::vec((1u32..12, prop::option::of(any::<u64>()), pose()), 0..10),
        joined in prop::collection::vec(avatar_info(), 0..3),
        left in prop::collection::vec(1u32..12, 0..4),
        own in 0u32..14,
    ) {
        let avatars = moved.into_iter().map(|(id, t, pose)| AvatarPose { id, t, pose }).collect();
        let joined: Vec<AvatarInfo> = joined.into_iter().enumerate().map(|(i, a)| AvatarInfo { id: if i == 0 { 5 } else { 20 + i as u32 }, ..a }).collect();
        let delta = Delta { tick, avatars, joined, left };
        let shared = binary::SharedDelta::new(&delta);
        let filtered = Delta {
            avatars: delta.avatars.iter().filter(|a| own == 0 || a.id != own).cloned().collect(),
            joined: delta.joined.iter().filter(|a| own == 0 || a.id != own).cloned().collect(),
            ..delta.clone()
        };
        let mut out = vec![9, 9, 9];
        let sent = shared.frame_for(own, &mut out);
        let nothing = filtered.avatars.is_empty() && filtered.joined.is_empty() && filtered.left.is_empty();
        prop_assert_eq!(sent, !nothing);
        if sent {
            prop_assert_eq!(out, binary::encode_server(&ServerMessage::Delta(filtered)));
        }
    }

    /// A relay's look at the header calls a frame a delta exactly when the
    /// decoder does.
    #[test]
    fn a_frame_is_a_delta_by_its_header_exactly_when_it_decodes_to_one(msg in server_message()) {
        let bytes = binary::encode_server(&msg);
        prop_assert_eq!(binary::is_delta(&bytes), matches!(binary::decode_server(&bytes).unwrap(), ServerMessage::Delta(_)));
        prop_assert!(!binary::is_delta(&bytes[..1]));
    }

    /// The load tool's pose-less reading of a delta agrees with the full
    /// decoder on every id, stamp and section, and reads every other
    /// message as "not a delta".
    #[test]
    fn a_delta_read_without_its_poses_has_the_full_decoders_ids_and_stamps(msg in server_message()) {
        let bytes = binary::encode_server(&msg);
        let mut stamps = binary::DeltaStamps { tick: 7, moved: vec![(1, None)], ..Default::default() };
        let is_delta = binary::decode_delta_stamps(&bytes, &mut stamps).unwrap();
        match binary::decode_server(&bytes).unwrap() {
            ServerMessage::Delta(d) => {
                prop_assert!(is_delta);
                prop_assert_eq!(stamps.tick, d.tick);
                prop_assert_eq!(&stamps.moved, &d.avatars.iter().map(|a| (a.id, a.t)).collect::<Vec<_>>());
                prop_assert_eq!(&stamps.joined, &d.joined);
                prop_assert_eq!(&stamps.left, &d.left);
            }
            _ => {
                prop_assert!(!is_delta);
                prop_assert_eq!(stamps.tick, 7, "left alone");
            }
        }
        // A cut-short delta is an error, as for the full decoder.
        if is_delta && bytes.len() > 3 {
            let cut = &bytes[..bytes.len() - 1];
            prop_assert_eq!(binary::decode_delta_stamps(cut, &mut stamps).is_err(), binary::decode_server(cut).is_err());
        }
    }

    #[test]
    fn json_round_trips_every_client_message(msg in client_message()) {
        let text = json::encode(&msg);
        prop_assert_eq!(json::decode::<ClientMessage>(text.as_bytes()).unwrap(), msg);
    }

    #[test]
    fn json_round_trips_every_server_message(msg in server_message()) {
        let text = json::encode(&msg);
        prop_assert_eq!(json::decode::<ServerMessage>(text.as_bytes()).unwrap(), msg);
    }

    #[test]
    fn binary_round_trips_every_client_message(msg in client_message()) {
        let bytes = binary::encode_client(&msg);
        let back = binary::decode_client(&bytes).unwrap();
        prop_assert_eq!(&back, &quantized_client(&msg));
        // What decodes re-encodes to a frame of the same size.
        prop_assert_eq!(binary::encode_client(&back).len(), bytes.len());
    }

    #[test]
    fn binary_round_trips_every_server_message(msg in server_message()) {
        let bytes = binary::encode_server(&msg);
        let back = binary::decode_server(&bytes).unwrap();
        prop_assert_eq!(&back, &quantized_server(&msg));
        prop_assert_eq!(binary::encode_server(&back).len(), bytes.len());
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for proto in Subprotocol::ALL {
            let _ = proto.decode_client(&bytes);
            let _ = proto.decode_server(&bytes);
        }
    }

    #[test]
    fn random_bodies_after_a_valid_header_never_panic(kind in any::<u8>(), body in prop::collection::vec(any::<u8>(), 0..128)) {
        let mut bytes = vec![1, kind];
        bytes.extend(body);
        let _ = binary::decode_client(&bytes);
        let _ = binary::decode_server(&bytes);
    }

    #[test]
    fn every_truncation_is_an_error(msg in server_message(), cmsg in client_message()) {
        let bytes = binary::encode_server(&msg);
        for end in 0..bytes.len() {
            prop_assert!(binary::decode_server(&bytes[..end]).is_err(), "prefix {end} of {msg:?} decoded");
        }
        let bytes = binary::encode_client(&cmsg);
        for end in 0..bytes.len() {
            prop_assert!(binary::decode_client(&bytes[..end]).is_err(), "prefix {end} of {cmsg:?} decoded");
        }
        let text = json::encode(&msg);
        for end in 0..text.len() {
            prop_assert!(json::decode::<ServerMessage>(&text.as_bytes()[..end]).is_err());
        }
    }
}

fn desktop_delta(n: u32) -> ServerMessage {
    let avatars = (0..n)
        .map(|id| {
            let yaw = id as f32 * 0.3;
            AvatarPose {
                id,
                t: None,
                pose: Pose { p: [id as f32 * 1.7 - 30.0, 0.0, 12.5 - id as f32], r: [0.0, yaw.sin(), 0.0, yaw.cos()], head: None, hands: None },
            }
        })
        .collect();
    ServerMessage::Delta(Delta { tick: 123_456, avatars, joined: vec![], left: vec![] })
}

#[test]
fn a_moving_desktop_avatar_costs_at_most_12_bytes_in_a_binary_delta() {
    let one = binary::encode_server(&desktop_delta(1)).len();
    let forty = binary::encode_server(&desktop_delta(40)).len();
    let per_avatar = (forty - one) as f64 / 39.0;
    assert!(per_avatar <= 12.0, "{per_avatar} bytes per avatar");
    assert_eq!(per_avatar, 10.0, "desktop avatars are a 1-byte id and a 9-byte pose");
}

#[test]
fn version_byte_and_direction_are_checked() {
    let ping = binary::encode_client(&ClientMessage::Ping(Ping { t: 1 }));
    assert_eq!(ping[0], 1, "first byte is the format version");
    let mut v2 = ping.clone();
    v2[0] = 2;
    assert_eq!(binary::decode_client(&v2), Err(DecodeError::UnsupportedVersion { expected: 1, actual: 2 }));
    // A client message is not a server message.
    assert!(matches!(binary::decode_server(&ping), Err(DecodeError::UnknownType(0x06))));
}

#[test]
fn oversized_frames_are_refused_before_parsing() {
    let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
    for proto in Subprotocol::ALL {
        assert!(matches!(proto.decode_client(&big), Err(DecodeError::TooLarge { .. })));
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut leave = binary::encode_client(&ClientMessage::Leave);
    leave.push(0);
    assert_eq!(binary::decode_client(&leave), Err(DecodeError::TrailingBytes(1)));
}

#[test]
fn json_field_names_are_the_contracts() {
    let msg = json::encode(&ClientMessage::Hello(Hello { token: "tok".into(), protocol: 1, resume: None }));
    assert_eq!(msg, r#"{"type":"hello","token":"tok","protocol":1,"resume":null}"#);
    let pose = r#"{"type":"pose","t":5,"p":[1,2,3],"r":[0,0,0,1],"hands":[{"p":[1,2,3],"r":[0,0,0,1]},{"p":[1,2,3],"r":[0,0,0,1]}]}"#;
    let ClientMessage::Pose(p) = json::decode(pose.as_bytes()).unwrap() else { panic!("not a pose") };
    assert_eq!(p.t, 5);
    assert!(p.pose.head.is_none() && p.pose.hands.is_some());
    let ack = json::encode(&ServerMessage::ChatAck(ChatAck { id: "m1".into() }));
    assert_eq!(ack, r#"{"type":"chat_ack","id":"m1"}"#);
    let exp = json::encode(&ServerMessage::TokenExpiring(TokenExpiring { in_s: 60 }));
    assert_eq!(exp, r#"{"type":"token_expiring","in_s":60}"#);
    let leave: ClientMessage = json::decode(br#"{"type":"leave"}"#).unwrap();
    assert_eq!(leave, ClientMessage::Leave);
}

#[test]
fn json_errors_say_what_was_wrong() {
    let err = json::decode::<ClientMessage>(br#"{"type":"teleport"}"#).unwrap_err().to_string();
    assert!(err.contains("teleport"), "{err}");
    let err = json::decode::<ClientMessage>(br#"{"type":"chat","id":"x"}"#).unwrap_err().to_string();
    assert!(err.contains("text"), "{err}");
    let err = json::decode::<ClientMessage>(br#"{"type":"pose","t":1,"p":[1,2],"r":[0,0,0,1]}"#).unwrap_err();
    assert!(matches!(err, DecodeError::Json(_)));
}

/// The worked examples in docs/protocol.md, byte for byte.
#[test]
fn protocol_doc_examples_are_exact() {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ");
    assert_eq!(hex(&binary::encode_client(&ClientMessage::Leave)), "01 03");
    assert_eq!(hex(&binary::encode_client(&ClientMessage::Ping(Ping { t: 1234 }))), "01 06 d2 09");
    assert_eq!(hex(&binary::encode_client(&ClientMessage::Join(Join { room: "plaza".into() }))), "01 02 05 70 6c 61 7a 61");
    let hello = ClientMessage::Hello(Hello { token: "abc".into(), protocol: 1, resume: None });
    assert_eq!(hex(&binary::encode_client(&hello)), "01 01 01 03 61 62 63 00");
    assert_eq!(hex(&binary::encode_server(&ServerMessage::ChatAck(ChatAck { id: "m1".into() }))), "01 85 02 6d 31");
    let half = std::f32::consts::FRAC_1_SQRT_2;
    let pose = Pose { p: [2.5, 0.0, -4.0], r: [0.0, half, 0.0, half], head: None, hands: None };
    let delta = ServerMessage::Delta(Delta { tick: 48214, avatars: vec![AvatarPose { id: 3, t: None, pose }], joined: vec![], left: vec![] });
    let bytes = binary::encode_server(&delta);
    println!("delta: {}", hex(&bytes));
    assert_eq!(hex(&bytes), DOC_DELTA_HEX);
}

const DOC_DELTA_HEX: &str = "01 83 d6 f8 02 01 03 10 0a 37 ff fb fb e4 80 00 00 00";
