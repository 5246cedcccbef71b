//! Parsing and rendering of the text a user types after a chat slash command,
//! e.g. `add-documentdb mailer instances=3 name="my db"`.
//!
//! Every chat adapter and the CLI go through [`parse`], so all of them accept
//! exactly the same syntax, and [`CommandText::render`] gives the canonical
//! text for echoing a command back (it always parses to an equal value).
//!
//! # Grammar
//!
//! The text is `WORD* INPUT*`: positional words (action, entity, ...) followed
//! by `key=value` inputs.
//!
//! * Tokens are separated by runs of Unicode whitespace ([`char::is_whitespace`]).
//! * A token may mix unquoted text with `"..."` and `'...'` segments, shell-like:
//!   `a"b c"d` is the single word `ab cd`. Typographic quotes, which Slack
//!   clients substitute, count as straight ones: `“` and `”` as `"` (either
//!   may open or close), `‘` and `’` as `'` (with the exception below).
//! * A double quote opens a segment anywhere. A single quote opens one only
//!   at the start of a token, right after the token's first unquoted,
//!   unescaped `=` (the start of a value), or right after a closed quoted
//!   segment; and only `'` or `‘` opens, never `’`. Anywhere else `'`, `‘`
//!   and `’` are literal, so apostrophes need no quoting: `don't`,
//!   `summary=it's` and `don’t stop` (two words) parse as typed, while
//!   `name='my db'` and `‘my db’` are quoted. Inside a single-quoted segment
//!   any of `'`, `‘` and `’` closes it (so `'don't'` is `dont'`; use
//!   double quotes for such text).
//! * Backslashes:
//!   - in double quotes, `\` escapes any next character (`\"`, `\\`, `\”`, ...);
//!   - in single quotes, `\` is literal (so a single-quoted segment cannot
//!     contain a single quote);
//!   - unquoted, `\` escapes a following quote character, `\`, whitespace or
//!     `=`; before anything else (or at the end of the text) it is literal.
//! * A token is an input when it contains an `=` that is neither quoted nor
//!   escaped. The part before the first such `=` is the key and must be
//!   unquoted, unescaped and match `[A-Za-z_][A-Za-z0-9_.-]*`; the rest is the
//!   value, which may be empty and may contain more `=`.
//! * Errors: an unclosed quote, an invalid key (`=x`, `1a=b`, `"a"=b`), a key
//!   given twice, or a positional word after the first input.
//!
//! Control characters other than whitespace are kept as literal characters.
//!
//! # Rendering
//!
//! Words, then inputs, separated by single spaces. A word or value is written
//! bare unless it is empty or contains whitespace, a quote (straight or
//! typographic), `\` or, for words only, `=`; then it is double-quoted with
//! `\`, `"`, `“` and `”` backslash-escaped. Keys are always written bare.
//! (A single quote is only significant at the start of a word, value or
//! after a quoted segment, but any quote character triggers quoting, which
//! keeps the rule simple.)

use std::collections::HashSet;
use std::fmt;

/// A parsed command: positional words followed by `key=value` inputs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandText {
    /// Positional words in order (action, then entity, ...). Unquoted/quoted, already unescaped.
    pub words: Vec<String>,
    /// `key=value` pairs in the order given. Keys are unique.
    pub inputs: Vec<(String, String)>,
}

/// Why a command text could not be parsed. `Display` gives a message meant
/// for the end user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// A quote was opened but never closed. `position` is the 1-based
    /// character (not byte) position of the opening quote in the text.
    UnterminatedQuote { quote: char, position: usize },
    /// The same input key was given more than once.
    DuplicateKey { key: String },
    /// A token has an unquoted `=` but what precedes it is not a valid key.
    /// `token` is the token as typed.
    InvalidKey { token: String },
    /// A positional word (as typed) came after the first `key=value` input.
    WordAfterInputs { token: String },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnterminatedQuote { quote, position } => write!(
                f,
                "the quote `{quote}` opened at character {position} is never closed"
            ),
            Self::DuplicateKey { key } => write!(f, "input `{key}` is given twice"),
            Self::InvalidKey { token } => write!(
                f,
                "`{token}` is not a valid key=value input: the key must start with a letter \
                 or `_` and contain only letters, digits, `_`, `.` and `-` (quote the whole \
                 word if the `=` is meant literally)"
            ),
            Self::WordAfterInputs { token } => write!(
                f,
                "`{token}` must come before the inputs or be written as key=value"
            ),
        }
    }
}

impl std::error::Error for ParseError {}

fn is_double_quote(c: char) -> bool {
    matches!(c, '"' | '“' | '”')
}

fn is_single_quote(c: char) -> bool {
    matches!(c, '\'' | '‘' | '’')
}

fn is_quote(c: char) -> bool {
    is_double_quote(c) || is_single_quote(c)
}

/// Whether `c` may open a single-quoted segment where one is allowed to open.
/// `’` never does: it is almost always an apostrophe (`don’t`).
fn opens_single_quote(c: char) -> bool {
    matches!(c, '\'' | '‘')
}

fn is_valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// One whitespace-separated token after quote removal and unescaping.
struct Token<'a> {
    /// The token as typed, for error messages.
    raw: &'a str,
    /// The unquoted, unescaped text.
    text: String,
    /// Byte offset in `text` of the first unquoted, unescaped `=`.
    eq: Option<usize>,
    /// Whether anything before that `=` (or in the whole token, if there is
    /// none) was quoted or escaped; such a prefix is never a valid key.
    key_quoted: bool,
}

fn tokenize(text: &str) -> Result<Vec<Token<'_>>, ParseError> {
    let mut tokens = Vec::new();
    // (1-based char position, byte offset, char)
    let mut chars = text
        .char_indices()
        .enumerate()
        .map(|(n, (b, c))| (n + 1, b, c))
        .peekable();
    loop {
        while chars.next_if(|&(_, _, c)| c.is_whitespace()).is_some() {}
        let Some(&(_, start, _)) = chars.peek() else {
            return Ok(tokens);
        };
        let mut end = text.len();
        let mut tok = Token {
            raw: "",
            text: String::new(),
            eq: None,
            key_quoted: false,
        };
        // Whether a single quote here would open a segment: at the start of
        // the token, of the value, or right after a closed quoted segment.
        let mut single_may_open = true;
        while let Some((position, byte, c)) = chars.next() {
            let at_opening_point = std::mem::replace(&mut single_may_open, false);
            if c.is_whitespace() {
                end = byte;
                break;
            } else if is_double_quote(c) || (at_opening_point && opens_single_quote(c)) {
                let double = is_double_quote(c);
                let mut closed = false;
                while let Some((_, _, q)) = chars.next() {
                    if (double && is_double_quote(q)) || (!double && is_single_quote(q)) {
                        closed = true;
                        break;
                    } else if double && q == '\\' {
                        // A trailing backslash leaves the quote unclosed.
                        let Some((_, _, escaped)) = chars.next() else {
                            break;
                        };
                        tok.text.push(escaped);
                    } else {
                        tok.text.push(q);
                    }
                }
                if !closed {
                    return Err(ParseError::UnterminatedQuote { quote: c, position });
                }
                tok.key_quoted |= tok.eq.is_none();
                single_may_open = true;
            } else if let Some((_, _, escaped)) = chars.next_if(|&(_, _, n)| {
                c == '\\' && (is_quote(n) || n == '\\' || n == '=' || n.is_whitespace())
            }) {
                tok.text.push(escaped);
                tok.key_quoted |= tok.eq.is_none();
            } else {
                if c == '=' && tok.eq.is_none() {
                    tok.eq = Some(tok.text.len());
                    single_may_open = true;
                }
                tok.text.push(c);
            }
        }
        tok.raw = &text[start..end];
        tokens.push(tok);
    }
}

/// Parses the text typed after a slash command. See the module docs for the grammar.
pub fn parse(text: &str) -> Result<CommandText, ParseError> {
    let mut out = CommandText::default();
    let mut seen = HashSet::new();
    for tok in tokenize(text)? {
        match tok.eq {
            None if out.inputs.is_empty() => out.words.push(tok.text),
            None => {
                return Err(ParseError::WordAfterInputs {
                    token: tok.raw.to_owned(),
                })
            }
            Some(eq) => {
                let (key, value) = (&tok.text[..eq], &tok.text[eq + 1..]);
                if tok.key_quoted || !is_valid_key(key) {
                    return Err(ParseError::InvalidKey {
                        token: tok.raw.to_owned(),
                    });
                }
                if !seen.insert(key.to_owned()) {
                    return Err(ParseError::DuplicateKey {
                        key: key.to_owned(),
                    });
                }
                out.inputs.push((key.to_owned(), value.to_owned()));
            }
        }
    }
    Ok(out)
}

/// Writes `s` bare when that is unambiguous, otherwise double-quoted with
/// `\`, `"`, `“` and `”` escaped. Words also get quoted when they contain
/// `=` so they are not read back as inputs; in a value `=` is harmless.
fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str, is_word: bool) -> fmt::Result {
    let needs_quotes = s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || is_quote(c) || c == '\\' || (is_word && c == '='));
    if !needs_quotes {
        return f.write_str(s);
    }
    f.write_str("\"")?;
    for c in s.chars() {
        if c == '\\' || is_double_quote(c) {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

impl CommandText {
    /// The command from arguments a shell has already split and unquoted (the CLI's
    /// `portbot run ACTION [ENTITY] [key=value ...]`): each argument is one token, so
    /// `name=my db` is one input. The same rules as [`parse`] apply.
    pub fn from_args<S: AsRef<str>>(args: &[S]) -> Result<CommandText, ParseError> {
        let tokens: Vec<String> = args
            .iter()
            .map(|arg| {
                let arg = arg.as_ref();
                let single = match arg.split_once('=') {
                    Some((key, value)) if is_valid_key(key) => CommandText {
                        words: Vec::new(),
                        inputs: vec![(key.to_owned(), value.to_owned())],
                    },
                    _ => CommandText {
                        words: vec![arg.to_owned()],
                        inputs: Vec::new(),
                    },
                };
                single.render()
            })
            .collect();
        parse(&tokens.join(" "))
    }

    /// Canonical text: words then inputs, separated by single spaces, quoted
    /// only where needed. `parse(&ct.render()) == Ok(ct)` for any value whose
    /// input keys are valid and unique.
    pub fn render(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for CommandText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for word in &self.words {
            f.write_str(sep)?;
            write_quoted(f, word, true)?;
            sep = " ";
        }
        for (key, value) in &self.inputs {
            write!(f, "{sep}{key}=")?;
            write_quoted(f, value, false)?;
            sep = " ";
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_split_arguments_keep_their_spaces() {
        let ct =
            CommandText::from_args(&["add-documentdb", "mailer", "name=my db", "note=a \"q\""])
                .unwrap();
        assert_eq!(ct.words, vec!["add-documentdb", "mailer"]);
        assert_eq!(
            ct.inputs,
            vec![
                ("name".to_owned(), "my db".to_owned()),
                ("note".to_owned(), "a \"q\"".to_owned())
            ]
        );
        assert!(matches!(
            CommandText::from_args(&["a", "k=1", "k=2"]),
            Err(ParseError::DuplicateKey { .. })
        ));
    }
    use proptest::prelude::*;

    fn ct(words: &[&str], inputs: &[(&str, &str)]) -> CommandText {
        CommandText {
            words: words.iter().map(|w| w.to_string()).collect(),
            inputs: inputs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn ok(text: &str, words: &[&str], inputs: &[(&str, &str)]) {
        let expected = ct(words, inputs);
        assert_eq!(parse(text), Ok(expected.clone()), "parsing {text:?}");
        assert_eq!(
            parse(&expected.render()),
            Ok(expected),
            "round-trip {text:?}"
        );
    }

    #[test]
    fn parses_examples() {
        ok("", &[], &[]);
        ok(" \t\n ", &[], &[]);
        ok(
            "add-documentdb mailer instances=3 name=\"my db\"",
            &["add-documentdb", "mailer"],
            &[("instances", "3"), ("name", "my db")],
        );
        ok("  a\u{3000}b  ", &["a", "b"], &[]);
        ok("a\"b c\"d", &["ab cd"], &[]);
        ok("'x \"y' z", &["x \"y", "z"], &[]);
        ok("\"\" ''", &["", ""], &[]);
        ok("k=v", &[], &[("k", "v")]);
    }

    #[test]
    fn typographic_quotes() {
        ok("act name=“my db”", &["act"], &[("name", "my db")]);
        ok("act name=”my db“", &["act"], &[("name", "my db")]);
        ok("act name=\"my db”", &["act"], &[("name", "my db")]);
        ok("act ‘a b’ 'c d’", &["act", "a b", "c d"], &[]);
    }

    #[test]
    fn apostrophes_are_literal_mid_word() {
        ok("don't", &["don't"], &[]);
        ok("it's", &["it's"], &[]);
        ok("act summary=don't", &["act"], &[("summary", "don't")]);
        ok("don’t stop", &["don’t", "stop"], &[]);
        ok("act summary=don’t", &["act"], &[("summary", "don’t")]);
        ok("a‘b c'd e’f", &["a‘b", "c'd", "e’f"], &[]);
        ok("a' b'c k=v'", &["a'", "b'c"], &[("k", "v'")]);
        // Not an opening point: after an escape, or after a later `=`.
        ok(r"a\ 'b", &["a 'b"], &[]);
        ok("k=a='b", &[], &[("k", "a='b")]);
        ok("k=='b", &[], &[("k", "='b")]);
        // Inside a single-quoted segment any single quote closes it.
        ok("'don't'", &["dont'"], &[]);
        ok("‘a’b’", &["ab’"], &[]);
        // Double quotes still open anywhere.
        ok("don\"t stop\"", &["dont stop"], &[]);
    }

    #[test]
    fn single_quotes_open_at_token_value_or_after_segment() {
        ok("act name='my db'", &["act"], &[("name", "my db")]);
        ok("‘my db’", &["my db"], &[]);
        ok("act name=‘my db’", &["act"], &[("name", "my db")]);
        ok("'a''b c'", &["ab c"], &[]);
        ok("\"a\"'b c' ‘a’‘b c’", &["ab c", "ab c"], &[]);
        ok("k=\"a\"'b c'", &[], &[("k", "ab c")]);
        ok("k='a'\"b c\"'d e'", &[], &[("k", "ab cd e")]);
        ok("\"k=\"'a b'", &["k=a b"], &[]);
        // `’` never opens a segment.
        ok("’a b’", &["’a", "b’"], &[]);
        ok("k=’v", &[], &[("k", "’v")]);
        ok("'a'’b", &["a’b"], &[]);
    }

    #[test]
    fn escapes() {
        ok(r#""a\"b\\c\”d\x""#, &["a\"b\\c”dx"], &[]);
        ok(r"'a\b'", &[r"a\b"], &[]);
        ok(r"a\ b c\=d e\'f g\\h", &["a b", "c=d", "e'f", r"g\h"], &[]);
        ok(r"a\b c\", &[r"a\b", r"c\"], &[]);
        ok(r"k=a\ b", &[], &[("k", "a b")]);
    }

    #[test]
    fn inputs() {
        ok("name= x=\"\"", &[], &[("name", ""), ("x", "")]);
        ok("expr=a=b", &[], &[("expr", "a=b")]);
        ok("k=\"=\"=", &[], &[("k", "==")]);
        ok("_a.b-c9=1", &[], &[("_a.b-c9", "1")]);
        ok("\"a=b\" 'c=d' e\\=f", &["a=b", "c=d", "e=f"], &[]);
    }

    #[test]
    fn renders_canonically() {
        let c = ct(
            &["act", "", "a b", "x=y"],
            &[
                ("n", "3"),
                ("s", "db.t3.medium"),
                ("e", ""),
                ("q", "a\"“\\"),
            ],
        );
        assert_eq!(
            c.render(),
            r#"act "" "a b" "x=y" n=3 s=db.t3.medium e="" q="a\"\“\\""#
        );
        assert_eq!(c.to_string(), c.render());
        assert_eq!(ct(&[], &[("e", "a=b")]).render(), "e=a=b");
        assert_eq!(
            ct(&["don't", "’"], &[("s", "it’s"), ("t", "‘x’")]).render(),
            r#""don't" "’" s="it’s" t="‘x’""#
        );
        assert_eq!(CommandText::default().render(), "");
    }

    #[test]
    fn errors() {
        use ParseError::*;
        let open = |quote, position| UnterminatedQuote { quote, position };
        let invalid = |t: &str| InvalidKey { token: t.into() };
        let extra = |t: &str| WordAfterInputs { token: t.into() };
        let cases = [
            (
                "aé k=“my db",
                open('“', 6),
                "the quote `“` opened at character 6 is never closed",
            ),
            (
                "'abc",
                open('\'', 1),
                "the quote `'` opened at character 1 is never closed",
            ),
            (
                "‘abc",
                open('‘', 1),
                "the quote `‘` opened at character 1 is never closed",
            ),
            (
                "act it's 'oops",
                open('\'', 10),
                "the quote `'` opened at character 10 is never closed",
            ),
            ("k='abc", open('\'', 3), ""),
            ("'a''b", open('\'', 4), ""),
            ("don\"t", open('"', 4), ""),
            ("k=a='b c'", extra("c'"), ""),
            ("k=’v w’", extra("w’"), ""),
            (
                r#"a "b\""#,
                open('"', 3),
                "the quote `\"` opened at character 3 is never closed",
            ),
            (
                r#""b\"#,
                open('"', 1),
                "the quote `\"` opened at character 1 is never closed",
            ),
            (
                "a k=1 k=2",
                DuplicateKey { key: "k".into() },
                "input `k` is given twice",
            ),
            (
                "a k=v extra",
                extra("extra"),
                "`extra` must come before the inputs or be written as key=value",
            ),
            (
                "a k=v 'b c'",
                extra("'b c'"),
                "`'b c'` must come before the inputs or be written as key=value",
            ),
            (
                "a 1a=b",
                invalid("1a=b"),
                "`1a=b` is not a valid key=value input: the key must start with a letter or `_` \
                 and contain only letters, digits, `_`, `.` and `-` (quote the whole word if \
                 the `=` is meant literally)",
            ),
        ];
        for (text, expected, message) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e, expected, "parsing {text:?}");
            if !message.is_empty() {
                assert_eq!(e.to_string(), message);
            }
        }
        for token in [
            "=x",
            "\"a\"=b",
            "a\\ b=c",
            "a'b'=c",
            "don't=x",
            "é=1",
            "“k”=v",
        ] {
            assert_eq!(parse(&format!("act {token}")), Err(invalid(token)));
        }
    }

    /// Strings heavy in the characters the grammar cares about.
    fn tricky_string() -> impl Strategy<Value = String> {
        let c = prop_oneof![
            3 => prop::sample::select(vec!['"', '\'', '“', '”', '‘', '’', '\\', '=']),
            2 => prop::sample::select(vec![' ', '\t', '\n', '\u{3000}', '\0', '\u{7f}']),
            2 => prop::sample::select(vec!['a', 'k', '_', '.', '-', '1', 'é']),
            1 => any::<char>(),
        ];
        prop::collection::vec(c, 0..24).prop_map(String::from_iter)
    }

    fn command_text() -> impl Strategy<Value = CommandText> {
        let key = "[A-Za-z_][A-Za-z0-9_.-]{0,6}";
        let words = prop::collection::vec(prop_oneof![tricky_string(), any::<String>()], 0..5);
        let inputs = prop::collection::vec((key, tricky_string()), 0..5);
        (words, inputs).prop_map(|(words, inputs)| {
            let mut seen = HashSet::new();
            let inputs = inputs
                .into_iter()
                .filter(|(k, _)| seen.insert(k.clone()))
                .collect();
            CommandText { words, inputs }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn parse_never_panics(s in prop_oneof![tricky_string(), any::<String>()]) {
            let _ = parse(&s);
        }

        #[test]
        fn render_round_trips(c in command_text()) {
            prop_assert_eq!(parse(&c.render()), Ok(c));
        }

        #[test]
        fn interior_apostrophes_are_literal(
            words in prop::collection::vec("[a-zé]{1,4}(['‘’][a-zé]{1,4}){1,3}['‘’]?", 1..4),
            value in "’?[a-zé]{1,4}(['‘’][a-zé]{0,4}){1,3}",
        ) {
            let text = format!("{} k={value}", words.join(" "));
            let inputs = vec![("k".to_owned(), value)];
            prop_assert_eq!(parse(&text), Ok(CommandText { words, inputs }));
        }

        #[test]
        fn parse_render_idempotent(s in tricky_string()) {
            if let Ok(c) = parse(&s) {
                prop_assert_eq!(parse(&c.render()), Ok(c));
            }
        }
    }
}
