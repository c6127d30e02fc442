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

criterion_group!(benches, delta_codecs);
criterion_main!(benches);
