//! Turning a task's output bytes into log lines.
//!
//! How bytes become lines depends only on the bytes, never on how they were read: a line is
//! cut at a newline; a line longer than [`MAX_LINE_BYTES`] plus the longest secret (so that a
//! secret is never cut in two) is cut into pieces as soon as that much of it is there; and the
//! end of a line without a newline is only taken once the task has ended. So a launcher that
//! reads the same bytes again from a recorded extent numbers the same lines again.

use crate::secrets::{Masker, char_boundary};

/// Lines longer than this are split into several.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// One line, and where in its stream the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub text: String,
    pub end: u64,
}

/// Cuts `bytes`, read at offset `base` of a stream, into masked lines of at most `limit`
/// bytes, stopping at the first line that takes `out` to `max_pieces` or more. `eof` says that
/// nothing more will be written: the last line is taken even without its newline. Returns how
/// many bytes the pieces cover; the rest waits for more output (or the next batch).
pub fn scan(
    bytes: &[u8],
    base: u64,
    eof: bool,
    masker: &Masker,
    limit: usize,
    max_pieces: usize,
    out: &mut Vec<Piece>,
) -> usize {
    let limit = limit.max(4);
    let window = limit + masker.max_len();
    let mut i = 0;
    while i < bytes.len() && out.len() < max_pieces {
        let rest = &bytes[i..];
        let head = &rest[..rest.len().min(window + 1)];
        if let Some(n) = head.iter().position(|&b| b == b'\n') {
            let mut line = &rest[..n];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            i += n + 1;
            split(&masker.mask_bytes(line), limit, base + i as u64, out);
        } else if rest.len() > window {
            let cut = masker.safe_cut(rest, limit);
            i += cut;
            let text = String::from_utf8_lossy(&masker.mask_bytes(&rest[..cut])).into_owned();
            out.push(Piece {
                text,
                end: base + i as u64,
            });
        } else if eof {
            i = bytes.len();
            split(&masker.mask_bytes(rest), limit, base + i as u64, out);
        } else {
            break;
        }
    }
    i
}

/// Pieces of a whole (masked) line, each ending where the line does.
fn split(mut line: &[u8], limit: usize, end: u64, out: &mut Vec<Piece>) {
    loop {
        let cut = if line.len() > limit {
            char_boundary(line, limit)
        } else {
            line.len()
        };
        out.push(Piece {
            text: String::from_utf8_lossy(&line[..cut]).into_owned(),
            end,
        });
        line = &line[cut..];
        if line.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(masker: &Masker, limit: usize, bytes: &[u8], eof: bool) -> (Vec<(String, u64)>, usize) {
        let mut out = Vec::new();
        let used = scan(bytes, 0, eof, masker, limit, usize::MAX, &mut out);
        (out.into_iter().map(|p| (p.text, p.end)).collect(), used)
    }

    fn texts(pieces: &[(String, u64)]) -> Vec<&str> {
        pieces.iter().map(|(t, _)| t.as_str()).collect()
    }

    #[test]
    fn lines_end_at_newlines_and_the_last_waits_for_the_end() {
        let m = Masker::default();
        let (p, used) = scan_all(&m, 1024, b"a\r\nbc\n\nd", false);
        assert_eq!(texts(&p), ["a", "bc", ""]);
        assert_eq!(used, 7);
        assert_eq!(p.iter().map(|x| x.1).collect::<Vec<_>>(), [3, 6, 7]);
        let (p, used) = scan_all(&m, 1024, b"a\nd", true);
        assert_eq!(texts(&p), ["a", "d"]);
        assert_eq!(used, 3);
        let (p, _) = scan_all(&m, 1024, b"\xffok\n", false);
        assert_eq!(texts(&p), ["\u{fffd}ok"]);
    }

    #[test]
    fn long_lines_are_cut_without_splitting_characters() {
        let m = Masker::default();
        let (p, _) = scan_all(&m, 8, b"0123456789abcdefXYZ\n", true);
        assert_eq!(texts(&p), ["01234567", "89abcdef", "XYZ"]);
        let (p, _) = scan_all(&m, 8, "1234567é89".as_bytes(), true);
        assert_eq!(texts(&p), ["1234567", "é89"]);
        let (p, _) = scan_all(&m, 8, b"01234567\n", false);
        assert_eq!(
            texts(&p),
            ["01234567"],
            "no empty line after a line of exactly the limit"
        );
    }

    #[test]
    fn the_same_bytes_give_the_same_lines_however_they_are_read() {
        let m = Masker::new(["SECRET"]);
        let text = b"short\nx SECRET y\n0123456789abcSECRETdefghijklmnop and more\nend";
        let (whole, _) = scan_all(&m, 16, text, true);
        for cut in 0..text.len() {
            let mut out = Vec::new();
            let used = scan(&text[..cut], 0, false, &m, 16, usize::MAX, &mut out);
            let mut rest = Vec::new();
            scan(&text[used..], used as u64, true, &m, 16, usize::MAX, &mut rest);
            out.extend(rest);
            let got: Vec<(String, u64)> = out.into_iter().map(|p| (p.text, p.end)).collect();
            assert_eq!(got, whole, "read in two parts at {cut}");
        }
        assert!(whole.iter().all(|(t, _)| !t.contains("SEC")), "{whole:?}");
    }

    #[test]
    fn a_scan_stops_at_its_budget_on_a_line_boundary() {
        let m = Masker::default();
        let mut out = Vec::new();
        let used = scan(b"a\nb\nc\nd", 0, true, &m, 1024, 2, &mut out);
        assert_eq!(
            out.iter().map(|p| p.text.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(used, 4);
    }

    #[test]
    fn secrets_are_never_cut_in_two() {
        let m = Masker::new(["SECRET"]);
        let (p, _) = scan_all(&m, 8, b"012345SECRET6789abcdefgh", true);
        let joined: String = texts(&p).concat();
        assert!(!joined.contains("SE"), "{p:?}");
        assert_eq!(joined, "012345****6789abcdefgh");
    }
}
