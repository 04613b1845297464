//! Mutations of real inputs for the fuzz properties (odp-core's over scenarios and events,
//! odp-ctl's over its recording reader): one set of edits and edge tokens, whatever generates
//! the choices.

/// Values at the edges, and the ones that once panicked a parser (issue 15's cases).
pub const TOKENS: &[&str] = &[
    "1e30",
    "1e300",
    "1e-300",
    "1e19",
    "-1",
    "0",
    "18446744073709551615",
    "18446744073709551616",
    "9999999999999999999999",
    "\"1h\"",
    "\"2401h\"",
    "\"99999999999h\"",
    "nan",
    "inf",
    "\"\"",
    "true",
    "[]",
    "{}",
    "\"0:0\"",
    "\"0x7fffffffffffffff:1\"",
    "\"1T\"",
    "7",
    "\"0xffffffffffffffff\"",
    "\"0x\"",
    "[[invalidate]]\nmr = \"buf\"\naction = \"dontneed\"\n",
    "[[phase]]\nduration = \"1s\"\n",
];

#[derive(Debug, Clone)]
pub enum Mutation {
    /// Overwrite the byte at (position modulo length).
    Byte(usize, u8),
    /// Insert a token at a position.
    Insert(usize, usize),
    /// Delete a run of bytes.
    Delete(usize, usize),
    /// Replace what follows the first `=` or `:` after a position with a token.
    Value(usize, usize),
}

/// Applies `mutations` in order; the result is text (invalid UTF-8 replaced), as an editor
/// would save it.
pub fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for m in mutations {
        let len = bytes.len().max(1);
        match *m {
            Mutation::Byte(p, b) => {
                if !bytes.is_empty() {
                    bytes[p % len] = b;
                }
            }
            Mutation::Insert(p, t) => {
                let at = p % (bytes.len() + 1);
                bytes.splice(at..at, TOKENS[t].bytes());
            }
            Mutation::Delete(p, n) => {
                let at = p % len;
                let end = (at + n).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            Mutation::Value(p, t) => {
                let at = p % len;
                let Some(sep) = bytes[at.min(bytes.len())..]
                    .iter()
                    .position(|&b| b == b'=' || b == b':')
                else {
                    continue;
                };
                let start = at + sep + 1;
                let end = bytes[start..]
                    .iter()
                    .position(|&b| b == b'\n' || b == b',')
                    .map_or(bytes.len(), |e| start + e);
                bytes.splice(start..end, TOKENS[t].bytes());
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
