//! Client-chosen text, cut to a size before it is shown: in an error
//! answer, a log line or a preview. One request must not be able to write
//! megabytes into a response or a log.

/// The longest error message returned or logged. serde's messages quote the
/// offending input, which the client chose.
pub const MAX_ERROR_CHARS: usize = 512;

/// The longest client-chosen field (uid, kind, namespace, name) written
/// into a log line or an answer: longer than any valid one (a name is at
/// most 253 characters), so only a hostile or broken client is clipped.
pub const MAX_FIELD_CHARS: usize = 256;

/// A client-chosen string, displayed cut at [`MAX_FIELD_CHARS`] characters
/// with a note of how much was left out; no copy is made to log it.
#[derive(Debug, Clone, Copy)]
pub struct Clipped<'a>(pub &'a str);

impl std::fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No more bytes than the limit means no more characters: skip the
        // walk over the characters, as nearly every string needs.
        if self.0.len() <= MAX_FIELD_CHARS {
            return f.write_str(self.0);
        }
        match self.0.char_indices().nth(MAX_FIELD_CHARS) {
            None => f.write_str(self.0),
            Some((cut, _)) => write!(
                f,
                "{}... ({} more bytes)",
                &self.0[..cut],
                self.0.len() - cut
            ),
        }
    }
}

/// `message`, cut at [`MAX_ERROR_CHARS`] characters with a note of how much
/// was left out.
pub fn clip(mut message: String) -> String {
    // Every change note passes here; most are far shorter than the limit,
    // and walking their characters cost about 9,000 instructions per lease
    // review (`cargo bench --bench icount`, lease-pod, at `6049619`).
    if message.len() <= MAX_ERROR_CHARS {
        return message;
    }
    if let Some((cut, _)) = message.char_indices().nth(MAX_ERROR_CHARS) {
        let more = message.len() - cut;
        message.truncate(cut);
        message.push_str(&format!("... ({more} more bytes)"));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_fields_are_clipped_where_they_are_shown() {
        let long = "k".repeat(200_000);
        let shown = Clipped(&long).to_string();
        assert_eq!(
            shown,
            format!(
                "{}... ({} more bytes)",
                "k".repeat(MAX_FIELD_CHARS),
                200_000 - MAX_FIELD_CHARS
            )
        );
        assert_eq!(Clipped("Pod").to_string(), "Pod");
        // A name at the API's own limit is shown whole.
        let name = "n".repeat(253);
        assert_eq!(Clipped(&name).to_string(), name);
        // Characters are counted, not bytes: 256 two-byte characters are
        // shown whole, and one more is cut.
        let wide = "é".repeat(MAX_FIELD_CHARS);
        assert_eq!(Clipped(&wide).to_string(), wide);
        assert_eq!(
            Clipped(&format!("{wide}é")).to_string(),
            format!("{wide}... (2 more bytes)")
        );
    }

    #[test]
    fn messages_are_clipped_at_the_character_limit() {
        let exact = "m".repeat(MAX_ERROR_CHARS);
        assert_eq!(clip(exact.clone()), exact);
        let wide = "é".repeat(MAX_ERROR_CHARS);
        assert_eq!(clip(wide.clone()), wide);
        assert_eq!(
            clip(format!("{wide}xyz")),
            format!("{wide}... (3 more bytes)")
        );
    }
}
