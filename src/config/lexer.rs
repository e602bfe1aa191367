//! smtpd.conf(5) tokens, as OpenSMTPD's parse.y lexes them: words, quoted strings,
//! punctuation `{ } ( ) , < > = !`, newlines (which end statements) and `#` comments.
//!
//! - `\` before a newline joins the lines (in a comment too); `\x` outside quotes is `x`.
//! - Inside quotes a newline is dropped and the string goes on; `\` escapes the quote, a
//!   blank or a newline, and is kept before anything else (parse.y does the same).
//! - `$name` in an unquoted word is replaced by the macro's value, which is lexed again
//!   without expansion: a macro holding several words gives several words, as in parse.y.
//!   Unlike parse.y, `$name` may stand anywhere in a word (`smtp+tls://$IP`).
//!
//! Never panics; every token carries its line.

use std::collections::{BTreeMap, BTreeSet};
use std::iter::Peekable;
use std::str::Chars;

use super::ErrorKind;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Tok {
    Word(String),
    /// A quoted string: never a keyword, never macro-expanded.
    Str(String),
    Punct(char),
    Newline,
}

#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    pub(crate) line: u32,
}

const PUNCT: &[char] = &['{', '}', '(', ')', ',', '<', '>', '=', '!'];

/// A macro value longer than this is refused: expansion must stay bounded.
const MAX_MACRO_LEN: usize = 64 * 1024;

/// Characters of the input with `\`-newline continuation and line counting.
struct Input<'a> {
    chars: Peekable<Chars<'a>>,
    line: u32,
}

impl Input<'_> {
    /// The next character outside quotes: `\`-newline is skipped, `\x` is `x`. The bool is
    /// true for an escaped character (never punctuation or a separator).
    fn next(&mut self) -> Option<(char, bool)> {
        loop {
            let c = self.chars.next()?;
            if c != '\\' {
                return Some((c, false));
            }
            match self.chars.next() {
                Some('\n') => self.line += 1,
                Some(n) => return Some((n, true)),
                None => return Some(('\\', false)),
            }
        }
    }

    /// Peeks at the next character as `next` would return it.
    fn peek(&mut self) -> Option<char> {
        loop {
            match self.chars.peek() {
                Some('\\') => {
                    let mut ahead = self.chars.clone();
                    ahead.next();
                    match ahead.next() {
                        Some('\n') => {
                            self.chars.next();
                            self.chars.next();
                            self.line += 1;
                        }
                        Some(n) => return Some(n),
                        None => return Some('\\'),
                    }
                }
                other => return other.copied(),
            }
        }
    }
}

/// Splits `text` into tokens. `macros` expands `$name` in words; an unknown macro is an
/// error at its line. A line `name = value` defines a macro for the lines after it, unless
/// `name` is in `fixed` (defined by `-D`, which wins as in OpenSMTPD).
pub(crate) fn lex(
    text: &str,
    macros: &mut BTreeMap<String, String>,
    fixed: &BTreeSet<String>,
) -> Result<Vec<Token>, (u32, ErrorKind)> {
    let mut out: Vec<Token> = Vec::new();
    let mut line_start = 0;
    // Inside `{ … }` a line `k = v` is a table entry, not a macro definition.
    let mut depth = 0usize;
    let mut input = Input { chars: text.chars().peekable(), line: 1 };
    while let Some((c, escaped)) = input.next() {
        let line = input.line;
        match c {
            '\n' if !escaped => {
                if depth == 0 {
                    define_macro(&out[line_start..], macros, fixed).map_err(|k| (line, k))?;
                }
                out.push(Token { tok: Tok::Newline, line });
                line_start = out.len();
                input.line += 1;
            }
            ' ' | '\t' | '\r' if !escaped => {}
            '#' if !escaped => {
                // parse.y reads comments with its continuation rule too.
                while input.peek().is_some_and(|c| c != '\n') {
                    input.next();
                }
            }
            '"' | '\'' if !escaped => {
                let s = quoted(&mut input, c).map_err(|k| (line, k))?;
                out.push(Token { tok: Tok::Str(s), line });
            }
            c if PUNCT.contains(&c) && !escaped => {
                match c {
                    '{' => depth += 1,
                    '}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
                out.push(Token { tok: Tok::Punct(c), line })
            }
            _ => {
                let mut word = String::from(c);
                let mut has_macro = c == '$' && !escaped;
                while let Some(n) = input.peek() {
                    if n.is_whitespace() || PUNCT.contains(&n) || n == '#' || n == '"' || n == '\'' {
                        // An escaped separator (`\ `) belongs to the word.
                        if !matches!(input.chars.peek(), Some('\\')) {
                            break;
                        }
                    }
                    let Some((n, esc)) = input.next() else { break };
                    has_macro |= n == '$' && !esc;
                    word.push(n);
                }
                if has_macro {
                    let value = expand_macros(&word, macros).map_err(|k| (line, k))?;
                    expanded(&value, line, &mut out).map_err(|k| (line, k))?;
                } else {
                    out.push(Token { tok: Tok::Word(word), line });
                }
            }
        }
    }
    let line = input.line;
    if depth == 0 {
        define_macro(&out[line_start..], macros, fixed).map_err(|k| (line, k))?;
    }
    out.push(Token { tok: Tok::Newline, line });
    Ok(out)
}

/// A quoted string after its opening `quote`.
fn quoted(input: &mut Input<'_>, quote: char) -> Result<String, ErrorKind> {
    let mut s = String::new();
    loop {
        match input.chars.next() {
            None => return Err(ErrorKind::UnterminatedString),
            Some('\n') => input.line += 1,
            Some('\\') => match input.chars.peek().copied() {
                Some('\n') => {
                    input.chars.next();
                    input.line += 1;
                }
                Some(n) if n == quote || n == ' ' || n == '\t' => {
                    input.chars.next();
                    s.push(n);
                }
                _ => s.push('\\'),
            },
            Some(q) if q == quote => return Ok(s),
            Some('\0') => return Err(ErrorKind::UnterminatedString),
            Some(ch) => s.push(ch),
        }
    }
}

/// The tokens of an expanded word: lexed again, without macros, on the word's line.
fn expanded(value: &str, line: u32, out: &mut Vec<Token>) -> Result<(), ErrorKind> {
    if value.len() > MAX_MACRO_LEN {
        return Err(ErrorKind::BadValue {
            what: "macro expansion",
            value: format!("{}…", value.chars().take(40).collect::<String>()),
            expected: "at most 64 KiB",
        });
    }
    let mut none = BTreeMap::new();
    let toks = lex_plain(value, &mut none)?;
    out.extend(toks.into_iter().filter(|t| t.tok != Tok::Newline).map(|t| Token { tok: t.tok, line }));
    Ok(())
}

/// Lexes a macro's value: no `$` expansion (parse.y does not expand inside an expansion).
fn lex_plain(value: &str, none: &mut BTreeMap<String, String>) -> Result<Vec<Token>, ErrorKind> {
    let escaped = value.replace('$', "\\$");
    let fixed = BTreeSet::new();
    let toks = lex(&escaped, none, &fixed).map_err(|(_, k)| k)?;
    // Quoted strings kept their escaping backslash before `$`; undo it there.
    Ok(toks
        .into_iter()
        .map(|t| match t.tok {
            Tok::Str(s) => Token { tok: Tok::Str(s.replace("\\$", "$")), line: t.line },
            other => Token { tok: other, line: t.line },
        })
        .collect())
}

fn define_macro(
    line: &[Token],
    macros: &mut BTreeMap<String, String>,
    fixed: &BTreeSet<String>,
) -> Result<(), ErrorKind> {
    if let [Token { tok: Tok::Word(name), .. }, Token { tok: Tok::Punct('='), .. }, Token { tok: Tok::Word(v) | Tok::Str(v), .. }] =
        line
    {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ErrorKind::BadValue {
                what: "macro name",
                value: name.clone(),
                expected: "letters, digits and '_'",
            });
        }
        if !fixed.contains(name) {
            macros.insert(name.clone(), v.clone());
        }
    }
    Ok(())
}

fn expand_macros(word: &str, macros: &BTreeMap<String, String>) -> Result<String, ErrorKind> {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        let name = &after[..end];
        if name.is_empty() {
            out.push('$');
        } else {
            let value = macros.get(name).ok_or_else(|| ErrorKind::UndefinedMacro(name.to_owned()))?;
            out.push_str(value);
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<Tok> {
        let mut m = BTreeMap::new();
        m.insert("IP".to_owned(), "192.0.2.1".to_owned());
        lex(text, &mut m, &Default::default()).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn tokens() {
        use Tok::*;
        assert_eq!(
            words("table t { a, \"b c\" } # comment\nrelay host smtp+tls://$IP\\\n tls"),
            vec![
                Word("table".into()),
                Word("t".into()),
                Punct('{'),
                Word("a".into()),
                Punct(','),
                Str("b c".into()),
                Punct('}'),
                Newline,
                Word("relay".into()),
                Word("host".into()),
                Word("smtp+tls://192.0.2.1".into()),
                Word("tls".into()),
                Newline
            ]
        );
        assert_eq!(words("x=\"$IP\"")[2], Str("$IP".into()));
    }

    #[test]
    fn errors_carry_lines() {
        let mut m = BTreeMap::new();
        let fixed = Default::default();
        assert_eq!(lex("a\nb $NOPE\n", &mut m, &fixed).unwrap_err(), (2, ErrorKind::UndefinedMacro("NOPE".into())));
        assert_eq!(lex("a\n\"open\n", &mut m, &fixed).unwrap_err(), (2, ErrorKind::UnterminatedString));
        let toks = lex("X = \"v\"\nuse $X\n", &mut m, &fixed).unwrap();
        assert_eq!(toks[5].tok, Tok::Word("v".into()));
    }

    #[test]
    fn macros_with_several_words_give_several_words() {
        use Tok::*;
        let mut m = BTreeMap::new();
        let fixed = Default::default();
        let toks = lex("opts = \"tls pki mx\"\nlisten on lo $opts\nx = '{ a, b }'\nt $x\n", &mut m, &fixed).unwrap();
        let toks: Vec<Tok> = toks.into_iter().map(|t| t.tok).collect();
        let want: Vec<Tok> = ["listen", "on", "lo", "tls", "pki", "mx"].iter().map(|w| Word((*w).into())).collect();
        assert_eq!(&toks[4..10], &want[..]);
        assert_eq!(
            &toks[15..21],
            &[Word("t".into()), Punct('{'), Word("a".into()), Punct(','), Word("b".into()), Punct('}')]
        );
        // An expansion is not expanded again.
        let mut m = BTreeMap::from([("A".to_owned(), "$B".to_owned()), ("B".to_owned(), "no".to_owned())]);
        assert_eq!(lex("x $A\n", &mut m, &fixed).unwrap()[1].tok, Word("$B".into()));
    }

    #[test]
    fn continuation_escapes_and_strings_as_parse_y() {
        use Tok::*;
        let toks = lex(
            "listen on lo \\\n  port 25 # comment \\\n still comment\nx \"a\\\"b\\nc\" 'multi\nline' a\\ b\n",
            &mut BTreeMap::new(),
            &Default::default(),
        )
        .unwrap();
        let lines: Vec<(Tok, u32)> = toks.into_iter().map(|t| (t.tok, t.line)).collect();
        assert_eq!(lines[3], (Word("port".into()), 2));
        assert_eq!(lines[5], (Newline, 3));
        assert_eq!(lines[6], (Word("x".into()), 4));
        assert_eq!(lines[7], (Str("a\"b\\nc".into()), 4));
        assert_eq!(lines[8], (Str("multiline".into()), 4));
        assert_eq!(lines[9], (Word("a b".into()), 5));
    }

    #[test]
    fn table_entries_are_not_macros() {
        let mut m = BTreeMap::new();
        lex("table t {\n  joe@x = y\n}\n", &mut m, &Default::default()).unwrap();
        assert!(m.is_empty());
    }
}
