//! `plaza-load`: simulated users, a fault proxy and reports. The commands
//! arrive with the load issue; until then this says so instead of pretending.

fn main() -> std::process::ExitCode {
    eprintln!(
        "plaza-load: no commands yet (`run` and `proxy` come with the load-harness issue); \
         it will speak {} and {}",
        plaza_shared::limits::SUBPROTOCOL_BINARY,
        plaza_shared::limits::SUBPROTOCOL_JSON
    );
    std::process::ExitCode::from(2)
}
