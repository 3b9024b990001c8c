//! Text from outside shown safely: in service logs, and by the `ferry` command.

use std::borrow::Cow;

/// `text` with every control character but tab shown as an escape, so that it cannot start a
/// line of its own (`\n`, `\r`) or drive a terminal (ESC, CSI, OSC): C0 controls and DEL as
/// `\xNN` (ESC as `\x1b`), C1 controls as `\u{NN}`. Text without any is returned as is.
pub fn visible(text: &str) -> Cow<'_, str> {
    let hidden = |c: char| c.is_control() && c != '\t';
    if !text.contains(hidden) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !hidden(c) => shown.push(c),
            c if (c as u32) < 0x80 => shown.push_str(&format!("\\x{:02x}", c as u32)),
            c => shown.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_sequences_are_shown_not_obeyed() {
        assert_eq!(visible("plain\ttext é"), "plain\ttext é");
        assert!(matches!(visible("plain"), Cow::Borrowed(_)));
        assert_eq!(visible("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        // OSC (a window title), a carriage return that would overwrite the line, a bell, DEL.
        assert_eq!(
            visible("\x1b]0;owned\x07ok\rforged\x7f\n"),
            "\\x1b]0;owned\\x07ok\\x0dforged\\x7f\\x0a"
        );
        // The C1 CSI, one character in UTF-8.
        assert_eq!(visible("a\u{9b}2Jb"), "a\\u{9b}2Jb");
    }
}
