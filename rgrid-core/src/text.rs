//! Strings from the other side (node names, labels, error texts a node or the engine reported)
//! made safe for a terminal or a log line: control characters (escape sequences, carriage
//! returns, newlines, bells) are shown escaped instead of acting on the terminal.

use std::borrow::Cow;

/// `s` with every control character escaped as Rust writes it (`\u{1b}`, `\n`); `s` itself
/// when it has none.
pub fn printable(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_control) {
        Cow::Owned(
            s.chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_debug().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(printable("site=é ok"), Cow::Borrowed("site=é ok")));
        assert_eq!(
            printable("a\u{1b}[2Jb\r\nc\u{7}"),
            "a\\u{1b}[2Jb\\r\\nc\\u{7}"
        );
    }
}
