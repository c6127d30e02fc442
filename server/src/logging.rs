//! Log output. `json`: one object a line with `timestamp`, `level`,
//! `message`, `target`, the event's fields, and the fields of every span it
//! happened in (`request_id`, `user_id`, `room_id`, `session_id`, …) at the
//! top level, so a log query can filter on them directly. `pretty`: for
//! people.

use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Flat JSON lines (see the module docs).
#[derive(Debug, Default)]
pub struct FlatJson;

struct FieldsToJson<'a>(&'a mut Map<String, Value>);

impl Visit for FieldsToJson<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::from(chrono_like_now()));
        line.insert("level".into(), Value::from(event.metadata().level().as_str()));
        line.insert("target".into(), Value::from(event.metadata().target()));
        // Outer spans first, so inner ones (and the event) win on a clash.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<JsonFields>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields)
                {
                    // `otel.*` fields name and shape trace spans; they aren't log fields.
                    line.extend(map.into_iter().filter(|(k, _)| !k.starts_with("otel.")));
                }
            }
        }
        event.record(&mut FieldsToJson(&mut line));
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// RFC 3339 UTC with microseconds, without pulling in a date crate.
fn chrono_like_now() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_micros()
    )
}

/// Filter directives that keep the WebRTC stack's own logs to errors: it
/// warns about the ordinary (a STUN check before the answer is applied, a
/// DTLS server name) on every voice connection. What matters about a
/// connection the SFU logs itself.
pub const QUIET_WEBRTC: &str = "rtc=error,rtc_ice=error,rtc_dtls=error,rtc_srtp=error,rtc_sctp=error,rtc_stun=error,rtc_turn=error,rtc_interceptor=error,rtc_media=error,rtc_mdns=error,rtc_rtp=error,rtc_rtcp=error,rtc_sdp=error,rtc_shared=error,rtc_datachannel=error,webrtc=error";

/// Installs the global subscriber: `json` or `pretty`, filtered by RUST_LOG
/// (default `info`, with [`QUIET_WEBRTC`]), plus the OpenTelemetry layer when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set ([`crate::otel`]) and, built with
/// `--features tracy`, the Tracy layer. Keep the returned
/// pipeline until the end and shut it down (or drop it) to flush the last
/// spans.
pub fn init(format: &str) -> Result<Option<crate::otel::Otel>, crate::otel::OtelError> {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| format!("info,{QUIET_WEBRTC}").into());
    let otel = crate::otel::Otel::from_env()?;
    let fmt = if format == "json" {
        tracing_subscriber::fmt::layer().fmt_fields(JsonFields::new()).event_format(FlatJson).boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let traces = otel.as_ref().map(|o| o.layer());
    // `--features tracy`: every span that passes the filter (the room tick's
    // `room_tick` too) also goes to Tracy.
    #[cfg(feature = "tracy")]
    let tracy = Some(tracing_tracy::TracyLayer::default());
    #[cfg(not(feature = "tracy"))]
    let tracy: Option<tracing_subscriber::layer::Identity> = None;
    tracing_subscriber::registry().with(filter).with(fmt).with(traces).with(tracy).init();
    Ok(otel)
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = super::chrono_like_now();
        assert_eq!(t.len(), "2026-11-23T12:00:00.000000Z".len(), "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }
}
