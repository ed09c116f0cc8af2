//! `Secret<T>`: a value (password, token) that never prints.

use std::fmt;

/// Holds a credential. `Debug` and `Display` print `<redacted>`; the value is reached only
/// through [`Secret::expose`], at the one place that puts it on the wire.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let s = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{s:?} {s} {s:#?}"), "<redacted> <redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Creds {
            user: String,
            pass: Secret<String>,
        }
        let c = Creds { user: "u".into(), pass: s };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
