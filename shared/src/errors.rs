//! Error text people can act on. HTTP clients' errors say "error sending
//! request for url (…)" and keep what went wrong ("Connection refused") in
//! their source chain, which `Display` leaves out.

use std::error::Error;

/// The innermost cause: the last error in the source chain (the error
/// itself when it has none).
pub fn root_cause<'a>(error: &'a (dyn Error + 'static)) -> &'a (dyn Error + 'static) {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause
}

/// The error's own message, then its innermost cause when that is another
/// error: "error sending request for url (…): Connection refused (os error
/// 111)".
pub fn with_root_cause(error: &(dyn Error + 'static)) -> String {
    // Not by address: an error's source may sit at the error's own address
    // (its first field).
    if error.source().is_none() { error.to_string() } else { format!("{error}: {}", root_cause(error)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error sending request")
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn the_innermost_cause_is_named_once() {
        let refused = Outer(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused"));
        assert_eq!(root_cause(&refused).to_string(), "Connection refused");
        assert_eq!(with_root_cause(&refused), "error sending request: Connection refused");
        let alone = std::io::Error::other("disk full");
        assert_eq!(with_root_cause(&alone), "disk full", "no chain, no repeat");
    }
}
