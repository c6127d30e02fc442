//! Encode + decode of a 40-avatar delta, binary and JSON, with sizes.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use plaza_benches::room_delta;
use plaza_shared::codec::Subprotocol;
use std::hint::black_box;

fn delta_codecs(c: &mut Criterion) {
    let mut group = c.benchmark_group("delta_40");
    for (label, vr) in [("desktop", 0), ("vr", 40)] {
        let msg = room_delta(40, vr);
        for proto in Subprotocol::ALL {
            let encoded = proto.encode_server(&msg);
            println!("size delta_40/{label}/{}: {} bytes", proto.name(), encoded.len());
            group.throughput(Throughput::Bytes(encoded.len() as u64));
            group.bench_with_input(BenchmarkId::new(format!("encode/{label}"), proto.name()), &msg, |b, m| {
                b.iter(|| proto.encode_server(black_box(m)))
            });
            group.bench_with_input(BenchmarkId::new(format!("decode/{label}"), proto.name()), &encoded, |b, bytes| {
                b.iter(|| proto.decode_server(black_box(bytes)).expect("decodes"))
            });
        }
    }
    group.finish();
}

/// A room's tick, fanned out to its 40 members in binary: each member's
/// frame is the delta without its own avatar. Encoding it again per member
/// (what the server did) against splicing 40 frames from one shared
/// encoding (what it does now).
fn delta_fanout(c: &mut Criterion) {
    use plaza_shared::codec::binary::{SharedDelta, encode_server};
    use plaza_shared::messages::{Delta, ServerMessage};
    let mut group = c.benchmark_group("fanout_40_members");
    for (label, vr) in [("desktop", 0), ("vr", 40)] {
        let ServerMessage::Delta(delta) = room_delta(40, vr) else { unreachable!() };
        let members: Vec<u32> = delta.avatars.iter().map(|a| a.id).collect();
        group.bench_function(format!("encode_per_member/{label}"), |b| {
            b.iter(|| {
                for &own in &members {
                    let filtered = Delta { avatars: delta.avatars.iter().filter(|a| a.id != own).cloned().collect(), ..delta.clone() };
                    black_box(encode_server(&ServerMessage::Delta(filtered)));
                }
            })
        });
        group.bench_function(format!("shared_splice/{label}"), |b| {
            b.iter(|| {
                let shared = SharedDelta::new(black_box(&delta));
                for &own in &members {
                    let mut out = Vec::new();
                    black_box(shared.frame_for(own, &mut out));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, delta_codecs, delta_fanout);
criterion_main!(benches);
