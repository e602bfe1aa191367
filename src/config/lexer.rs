//! smtpd.conf(5) tokens: words, quoted strings, punctuation `{ } , < > = !`, newlines (which
//! end statements), `#` comments, `\`-newline continuation, and `$macro` expansion in
//! unquoted words (anywhere in the word, so `smtp+tls://$MAIL_SERVER_IP` works).
//! Never panics; every token carries its line.

use std::collections::BTreeMap;

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

const PUNCT: &[char] = &['{', '}', ',', '<', '>', '=', '!'];

/// Splits `text` into tokens. `macros` expands `$name` in words; an unknown macro is an
/// error at its line. A line `name = value` defines a macro for the lines after it, unless
/// `name` is in `fixed` (defined by `-D`, which wins as in OpenSMTPD).
pub(crate) fn lex(
    text: &str,
    macros: &mut BTreeMap<String, String>,
    fixed: &std::collections::BTreeSet<String>,
) -> Result<Vec<Token>, (u32, ErrorKind)> {
    let mut out: Vec<Token> = Vec::new();
    let mut line_start = 0;
    let mut line = 1u32;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                define_macro(&out[line_start..], macros, fixed);
                out.push(Token { tok: Tok::Newline, line });
                line_start = out.len();
                line += 1;
            }
            ' ' | '\t' | '\r' => {}
            '#' => {
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            '\\' if chars.peek() == Some(&'\n') => {
                chars.next();
                line += 1;
            }
            '"' | '\'' => {
                let start = line;
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None | Some('\n') => return Err((start, ErrorKind::UnterminatedString)),
                        Some(q) if q == c => break,
                        Some('\\') => match chars.next() {
                            Some('\n') => line += 1,
                            Some(e) => s.push(e),
                            None => return Err((start, ErrorKind::UnterminatedString)),
                        },
                        Some(ch) => s.push(ch),
                    }
                }
                out.push(Token { tok: Tok::Str(s), line: start });
            }
            c if PUNCT.contains(&c) => out.push(Token { tok: Tok::Punct(c), line }),
            _ => {
                let mut word = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || PUNCT.contains(&n) || n == '#' || n == '"' || n == '\\' {
                        break;
                    }
                    word.push(n);
                    chars.next();
                }
                let word = expand_macros(&word, macros).map_err(|k| (line, k))?;
                out.push(Token { tok: Tok::Word(word), line });
            }
        }
    }
    define_macro(&out[line_start..], macros, fixed);
    out.push(Token { tok: Tok::Newline, line });
    Ok(out)
}

fn define_macro(line: &[Token], macros: &mut BTreeMap<String, String>, fixed: &std::collections::BTreeSet<String>) {
    if let [Token { tok: Tok::Word(name), .. }, Token { tok: Tok::Punct('='), .. }, Token { tok: Tok::Word(v) | Tok::Str(v), .. }] =
        line
    {
        if !fixed.contains(name) {
            macros.insert(name.clone(), v.clone());
        }
    }
}

fn expand_macros(word: &str, macros: &BTreeMap<String, String>) -> Result<String, ErrorKind> {
    if !word.contains('$') {
        return Ok(word.to_owned());
    }
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
}
