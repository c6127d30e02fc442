//! On/off switches as written in flags (`--lod off`) and environment
//! variables (`ENABLE_LOD=false`); servers' base URLs (`--server`,
//! `--advertise-url`).

use std::fmt;
use std::str::FromStr;

/// An on/off value. Accepts `on/off`, `true/false`, `yes/no`, `1/0`
/// (any case); anything else is an error that lists what is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Switch(pub bool);

impl Switch {
    pub const ON: Switch = Switch(true);
    pub const OFF: Switch = Switch(false);
    pub const ALLOWED: &'static str = "on, off, true, false, yes, no, 1, 0";

    pub fn is_on(self) -> bool {
        self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not an on/off value; allowed: {allowed}", allowed = Switch::ALLOWED)]
pub struct SwitchParseError {
    pub value: String,
}

impl FromStr for Switch {
    type Err = SwitchParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" | "1" => Ok(Switch::ON),
            "off" | "false" | "no" | "0" => Ok(Switch::OFF),
            _ => Err(SwitchParseError { value: s.to_owned() }),
        }
    }
}

impl fmt::Display for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 { "on" } else { "off" })
    }
}

/// What is wrong with a server's base URL ([`http_base`]); each program
/// words it for its own flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpBaseError {
    /// Not `http://…` (https is not supported).
    NotHttp,
    /// No host, or a path after it.
    NotHostPort,
}

/// The `HOST[:PORT]` of a server's base URL, `http://HOST[:PORT]` with at
/// most trailing slashes after it: what the client's and the load tool's
/// `--server` and the server's `--advertise-url` take.
pub fn http_base(url: &str) -> Result<&str, HttpBaseError> {
    let host = url.strip_prefix("http://").ok_or(HttpBaseError::NotHttp)?.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(HttpBaseError::NotHostPort);
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_is_http_a_host_and_nothing_after() {
        assert_eq!(http_base("http://h:7878/"), Ok("h:7878"));
        assert_eq!(http_base("http://h"), Ok("h"));
        assert_eq!(http_base("https://h:1"), Err(HttpBaseError::NotHttp));
        assert_eq!(http_base("http://"), Err(HttpBaseError::NotHostPort));
        assert_eq!(http_base("http://h:1/api"), Err(HttpBaseError::NotHostPort));
    }

    #[test]
    fn accepts_the_documented_spellings() {
        for on in ["on", "ON", "true", "Yes", "1", " on "] {
            assert_eq!(on.parse::<Switch>(), Ok(Switch::ON), "{on}");
        }
        for off in ["off", "False", "no", "0"] {
            assert_eq!(off.parse::<Switch>(), Ok(Switch::OFF), "{off}");
        }
    }

    #[test]
    fn rejects_anything_else_naming_the_allowed_values() {
        let err = "maybe".parse::<Switch>().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`maybe`") && text.contains("on, off"), "{text}");
        assert!("".parse::<Switch>().is_err());
    }
}
