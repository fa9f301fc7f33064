//! A small Rust lexer: enough to tell code from comments and string literals, so the
//! measurements in [`crate::house`] do not count a path mentioned in a doc comment as an
//! import.

/// What a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An identifier or keyword (`crate`, `use`, `Mprotect`, `r#type` without the `r#`).
    Ident(String),
    /// `::`.
    PathSep,
    /// Any other punctuation character (`{`, `}`, `,`, `;`, `*`, `#`, `[`, `(` ...).
    Punct(char),
    /// A string literal's contents, escapes left as written (`"thp"` gives `thp`).
    Str(String),
    /// A comment's text, doc comments included.
    Comment(String),
}

/// One token and the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The token.
    pub kind: Kind,
    /// Its line.
    pub line: usize,
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Splits `src` into tokens. Never fails: an unterminated literal or comment runs to the end
/// of the input, numbers and lifetimes are dropped.
pub fn lex(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0usize, 1usize);
    let n = c.len();
    // Advances over c[from..to], counting newlines, and returns the text.
    let take = |from: usize, to: usize, line: &mut usize| -> String {
        let s: String = c[from..to.min(n)].iter().collect();
        *line += s.matches('\n').count();
        s
    };
    while i < n {
        let ch = c[i];
        let start_line = line;
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && c.get(i + 1) == Some(&'/') {
            let mut j = i;
            while j < n && c[j] != '\n' {
                j += 1;
            }
            let text = take(i + 2, j, &mut line);
            out.push(Token {
                kind: Kind::Comment(text),
                line: start_line,
            });
            i = j;
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            let (mut j, mut depth) = (i + 2, 1usize);
            while j < n && depth > 0 {
                if c[j] == '/' && c.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            let text = take(i + 2, j.saturating_sub(2).max(i + 2), &mut line);
            line += c[j.saturating_sub(2).max(i + 2)..j.min(n)]
                .iter()
                .filter(|&&x| x == '\n')
                .count();
            out.push(Token {
                kind: Kind::Comment(text),
                line: start_line,
            });
            i = j;
        } else if ch == '"' || (ch == 'b' && c.get(i + 1) == Some(&'"')) {
            let s = if ch == 'b' { i + 2 } else { i + 1 };
            let mut j = s;
            while j < n && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            let text = take(s, j, &mut line);
            out.push(Token {
                kind: Kind::Str(text),
                line: start_line,
            });
            i = j + 1;
        } else if (ch == 'r' || ch == 'b')
            && raw_string_hashes(
                &c,
                if ch == 'b' && c.get(i + 1) == Some(&'r') {
                    i + 2
                } else {
                    i + 1
                },
            )
            .is_some()
            && (ch == 'r' || c.get(i + 1) == Some(&'r'))
        {
            let at = if ch == 'b' { i + 2 } else { i + 1 };
            let hashes = raw_string_hashes(&c, at).unwrap_or(0);
            let s = at + hashes + 1;
            let mut j = s;
            while j < n {
                if c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#')) {
                    break;
                }
                j += 1;
            }
            let text = take(s, j, &mut line);
            out.push(Token {
                kind: Kind::Str(text),
                line: start_line,
            });
            i = j + 1 + hashes;
        } else if ch == '\'' {
            // A char literal ('a', '\n', '\u{1F}') or a lifetime ('a): a lifetime has no
            // closing quote right after its name.
            if c.get(i + 1) == Some(&'\\') {
                let mut j = i + 2;
                while j < n && c[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < n && is_ident_char(c[i]) {
                    i += 1;
                }
            }
        } else if ch == 'r'
            && c.get(i + 1) == Some(&'#')
            && c.get(i + 2).is_some_and(|&x| is_ident_start(x))
        {
            let mut j = i + 2;
            while j < n && is_ident_char(c[j]) {
                j += 1;
            }
            out.push(Token {
                kind: Kind::Ident(c[i + 2..j].iter().collect()),
                line,
            });
            i = j;
        } else if is_ident_start(ch) {
            let mut j = i;
            while j < n && is_ident_char(c[j]) {
                j += 1;
            }
            out.push(Token {
                kind: Kind::Ident(c[i..j].iter().collect()),
                line,
            });
            i = j;
        } else if ch.is_ascii_digit() {
            while i < n
                && (is_ident_char(c[i])
                    || (c[i] == '.' && c.get(i + 1).is_some_and(|x| x.is_ascii_digit())))
            {
                i += 1;
            }
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push(Token {
                kind: Kind::PathSep,
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                kind: Kind::Punct(ch),
                line,
            });
            i += 1;
        }
    }
    out
}

/// `Some(number of #)` when `c[at..]` opens a raw string (`#*"`).
fn raw_string_hashes(c: &[char], at: usize) -> Option<usize> {
    let mut k = 0;
    while c.get(at + k) == Some(&'#') {
        k += 1;
    }
    (c.get(at + k) == Some(&'"')).then_some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<Kind> {
        lex(s).into_iter().map(|t| t.kind).collect()
    }

    #[test]
    fn comments_strings_and_paths_are_told_apart() {
        let k = kinds(
            "// crate::a\nuse crate::b; let s = \"crate::c\"; /* x /* y */ */ 'a' 'b: r#\"q\"# x",
        );
        assert_eq!(k[0], Kind::Comment(" crate::a".into()));
        assert_eq!(k[1], Kind::Ident("use".into()));
        assert_eq!(k[2], Kind::Ident("crate".into()));
        assert_eq!(k[3], Kind::PathSep);
        assert_eq!(k[4], Kind::Ident("b".into()));
        assert!(k.contains(&Kind::Str("crate::c".into())));
        assert!(k.contains(&Kind::Comment(" x /* y */ ".into())));
        assert!(k.contains(&Kind::Str("q".into())));
        assert_eq!(k.last(), Some(&Kind::Ident("x".into())));
        // The lifetime 'b is dropped, the char 'a' too.
        assert_eq!(
            k.iter().filter(|x| **x == Kind::Ident("b".into())).count(),
            1
        );
        assert!(!k.contains(&Kind::Ident("a".into())));
    }

    #[test]
    fn lines_are_counted_across_comments_and_strings() {
        let t = lex("a\n/* 1\n2 */ b \"x\ny\" c");
        let line = |name: &str| {
            t.iter()
                .find(|t| t.kind == Kind::Ident(name.into()))
                .map(|t| t.line)
        };
        assert_eq!(
            (line("a"), line("b"), line("c")),
            (Some(1), Some(3), Some(4))
        );
    }
}
