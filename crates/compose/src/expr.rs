//! A small expression language for compositions: `ring AND bar`, `left OR right`,
//! `1.3*box_large NOT 0.3*box_small`, `horse AND (beach OR grass) NOT sunny`.
//!
//! # Grammar
//!
//! ```text
//! expr  := and ( OR and )*
//! and   := term ( ( AND | NOT ) term )*
//! term  := [ number '*' ] atom
//! atom  := name | '(' expr ')'
//! ```
//!
//! OR binds loosest; AND and NOT share one level and associate to the left, so
//! `a AND b NOT c` is `(a AND b) NOT c` and `a NOT b AND c` is `(a NOT b) AND c`. Keywords are
//! case-insensitive. A name starts with a letter or `_` and continues with letters, digits, `_`,
//! `-` and `.`; it may not be a keyword. A number is a finite decimal such as `2`, `1.3`, `.5`,
//! `1e-2` or `-0.3`; `w*term` weights the term (a product's exponent, a mixture's weight, a
//! negation's a or α — see [`crate::tree`]). Chains of the same operator are flattened:
//! `a AND b AND c` is one product of three terms.
//!
//! An expression nests at most [`MAX_DEPTH`] levels (parentheses, weights and operators
//! counted together); a deeper one is an error, not a stack overflow.
//!
//! Errors carry the byte span of the offending token and display the expression with a caret
//! line under it:
//!
//! ```text
//! expected a model name, a number or `(`, found `)` at column 10:
//!   ring AND )
//!            ^
//! ```

use std::fmt;

/// The deepest nesting an expression may have: levels of parentheses, weights and operators
/// (a chain `a AND b AND c` is one level, `a NOT b NOT c` two).
pub const MAX_DEPTH: usize = 64;

/// The nesting depth of `e` (a model name is 1). Trees built by the parser are at most
/// [`MAX_DEPTH`] deep, so the recursion is bounded.
fn depth(e: &Expr) -> usize {
    1 + match e {
        Expr::Model { .. } => 0,
        Expr::Weighted { expr, .. } => depth(expr),
        Expr::And(v) | Expr::Or(v) => v.iter().map(depth).max().unwrap_or(0),
        Expr::Not(a, b) => depth(a).max(depth(b)),
    }
}

/// A byte range of the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A named model.
    Model {
        /// The name.
        name: String,
        /// Where it is written.
        span: Span,
    },
    /// `weight*expr`.
    Weighted {
        /// The weight.
        weight: f64,
        /// The weighted expression.
        expr: Box<Expr>,
        /// Where the weight is written.
        span: Span,
    },
    /// `a AND b AND …`, flattened.
    And(Vec<Expr>),
    /// `a OR b OR …`, flattened.
    Or(Vec<Expr>),
    /// `a NOT b`.
    Not(Box<Expr>, Box<Expr>),
}

impl Expr {
    /// The model names, in order of first appearance, without repetitions.
    pub fn model_names(&self) -> Vec<String> {
        fn walk(e: &Expr, out: &mut Vec<String>) {
            match e {
                Expr::Model { name, .. } => {
                    if !out.contains(name) {
                        out.push(name.clone());
                    }
                }
                Expr::Weighted { expr, .. } => walk(expr, out),
                Expr::And(v) | Expr::Or(v) => v.iter().for_each(|x| walk(x, out)),
                Expr::Not(a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }
}

impl fmt::Display for Expr {
    /// The canonical form, fully parenthesized: parsing it gives the same tree.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, v: &[Expr], op: &str| -> fmt::Result {
            write!(f, "(")?;
            for (i, e) in v.iter().enumerate() {
                if i > 0 {
                    write!(f, " {op} ")?;
                }
                write!(f, "{e}")?;
            }
            write!(f, ")")
        };
        match self {
            Expr::Model { name, .. } => write!(f, "{name}"),
            Expr::Weighted { weight, expr, .. } => match **expr {
                Expr::Weighted { .. } => write!(f, "{weight:?}*({expr})"),
                _ => write!(f, "{weight:?}*{expr}"),
            },
            Expr::And(v) => join(f, v, "AND"),
            Expr::Or(v) => join(f, v, "OR"),
            Expr::Not(a, b) => write!(f, "({a} NOT {b})"),
        }
    }
}

/// An expression that does not parse, with the span of the offending token.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// What was wrong.
    pub message: String,
    /// The offending token (empty at the end of the input).
    pub span: Span,
    /// The expression.
    pub source: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = self.source.get(..self.span.start).unwrap_or(&self.source);
        let token = self
            .source
            .get(self.span.start..self.span.end)
            .unwrap_or("");
        let column = prefix.chars().count() + 1;
        let width = token.chars().count().max(1);
        write!(
            f,
            "{} at column {column}:\n  {}\n  {}{}",
            self.message,
            self.source,
            " ".repeat(column - 1),
            "^".repeat(width)
        )
    }
}

impl std::error::Error for ParseError {}

/// A token of the language.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Number(f64),
    And,
    Or,
    Not,
    Star,
    Open,
    Close,
    End,
}

impl Tok {
    fn describe(&self, text: &str) -> String {
        match self {
            Tok::End => "the end of the expression".to_string(),
            _ => format!("`{text}`"),
        }
    }
}

/// Splits `text` into tokens with their spans (the last one `End`).
fn lex(text: &str) -> Result<Vec<(Tok, Span)>, ParseError> {
    let err = |message: String, start: usize, end: usize| ParseError {
        message,
        span: Span { start, end },
        source: text.to_string(),
    };
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let Some(c) = text[i..].chars().next() else {
            break;
        };
        let start = i;
        let single = |tok| {
            (
                tok,
                Span {
                    start,
                    end: start + 1,
                },
            )
        };
        match c {
            c if c.is_whitespace() => i += c.len_utf8(),
            '*' => {
                out.push(single(Tok::Star));
                i += 1;
            }
            '(' => {
                out.push(single(Tok::Open));
                i += 1;
            }
            ')' => {
                out.push(single(Tok::Close));
                i += 1;
            }
            c if c.is_ascii_digit() || c == '.' || c == '-' || c == '+' => {
                i += 1;
                while i < text.len() {
                    let b = bytes[i];
                    let exp_sign = (b == b'-' || b == b'+') && matches!(bytes[i - 1], b'e' | b'E');
                    if b.is_ascii_alphanumeric() || b == b'.' || exp_sign {
                        i += 1;
                    } else {
                        break;
                    }
                }
                let s = &text[start..i];
                match s.parse::<f64>() {
                    Ok(v) if v.is_finite() => out.push((Tok::Number(v), Span { start, end: i })),
                    Ok(_) => return Err(err(format!("the number `{s}` is not finite"), start, i)),
                    Err(_) => return Err(err(format!("`{s}` is not a number"), start, i)),
                }
            }
            c if c.is_alphabetic() || c == '_' => {
                while i < text.len() {
                    let Some(ch) = text[i..].chars().next() else {
                        break;
                    };
                    if ch.is_alphanumeric() || matches!(ch, '_' | '-' | '.') {
                        i += ch.len_utf8();
                    } else {
                        break;
                    }
                }
                let word = &text[start..i];
                let tok = match word.to_ascii_uppercase().as_str() {
                    "AND" => Tok::And,
                    "OR" => Tok::Or,
                    "NOT" => Tok::Not,
                    _ => Tok::Name(word.to_string()),
                };
                out.push((tok, Span { start, end: i }));
            }
            other => {
                let end = start + other.len_utf8();
                return Err(err(
                    format!(
                        "unexpected character `{other}`; expressions use names, numbers, *, AND, OR, NOT and parentheses"
                    ),
                    start,
                    end,
                ));
            }
        }
    }
    out.push((
        Tok::End,
        Span {
            start: text.len(),
            end: text.len(),
        },
    ));
    Ok(out)
}

struct Parser<'a> {
    text: &'a str,
    toks: Vec<(Tok, Span)>,
    pos: usize,
    /// Parentheses open at the current token.
    open: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &(Tok, Span) {
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }

    fn bump(&mut self) -> (Tok, Span) {
        let t = self.peek().clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn error(&self, message: String, span: Span) -> ParseError {
        ParseError {
            message,
            span,
            source: self.text.to_string(),
        }
    }

    fn unexpected(&self, expected: &str) -> ParseError {
        let (tok, span) = self.peek();
        let text = &self.text[span.start..span.end];
        self.error(
            format!("expected {expected}, found {}", tok.describe(text)),
            *span,
        )
    }

    /// An error unless a node of depth `d` (built at `span`) is within [`MAX_DEPTH`].
    fn within_depth(&self, d: usize, span: Span) -> Result<(), ParseError> {
        if d > MAX_DEPTH {
            return Err(self.error(
                format!("the expression nests deeper than {MAX_DEPTH} levels"),
                span,
            ));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        let first = self.and()?;
        let mut d = depth(&first);
        let mut terms = vec![first];
        while self.peek().0 == Tok::Or {
            let (_, span) = self.bump();
            let right = self.and()?;
            d = d.max(depth(&right));
            self.within_depth(d + 1, span)?;
            terms.push(right);
        }
        for t in &terms {
            if let Expr::Weighted { weight, span, .. } = t
                && *weight <= 0.0
            {
                return Err(self.error(
                    format!("mixture weights must be positive, got {weight}"),
                    *span,
                ));
            }
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.term()?;
        // The depth of `left`, kept as it grows.
        let mut d = depth(&left);
        loop {
            match self.peek().0 {
                Tok::And => {
                    let (_, span) = self.bump();
                    let right = self.term()?;
                    d = match &left {
                        Expr::And(_) => d.max(1 + depth(&right)),
                        _ => 1 + d.max(depth(&right)),
                    };
                    self.within_depth(d, span)?;
                    left = match left {
                        Expr::And(mut v) => {
                            v.push(right);
                            Expr::And(v)
                        }
                        other => Expr::And(vec![other, right]),
                    };
                }
                Tok::Not => {
                    let (_, span) = self.bump();
                    let right = self.term()?;
                    d = 1 + d.max(depth(&right));
                    self.within_depth(d, span)?;
                    left = Expr::Not(Box::new(left), Box::new(right));
                }
                _ => return Ok(left),
            }
        }
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        if let (Tok::Number(weight), span) = self.peek().clone() {
            self.bump();
            if self.peek().0 != Tok::Star {
                return Err(self.unexpected("`*` after the weight"));
            }
            self.bump();
            let expr = self.atom()?;
            self.within_depth(1 + depth(&expr), span)?;
            return Ok(Expr::Weighted {
                weight,
                expr: Box::new(expr),
                span,
            });
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Expr, ParseError> {
        match self.peek().clone() {
            (Tok::Name(name), span) => {
                self.bump();
                Ok(Expr::Model { name, span })
            }
            (Tok::Open, open) => {
                // Each level of parentheses is a level of the parser's recursion.
                self.within_depth(self.open + 1, open)?;
                self.bump();
                self.open += 1;
                let inner = self.expr()?;
                self.open -= 1;
                if self.peek().0 != Tok::Close {
                    let (tok, span) = self.peek().clone();
                    let text = &self.text[span.start..span.end];
                    return Err(self.error(
                        format!(
                            "expected `)` to close the `(` at column {}, found {}",
                            self.text[..open.start].chars().count() + 1,
                            tok.describe(text)
                        ),
                        span,
                    ));
                }
                self.bump();
                Ok(inner)
            }
            _ => Err(self.unexpected("a model name, a number or `(`")),
        }
    }
}

/// Parses an expression (see the [module documentation](self)).
///
/// # Errors
///
/// [`ParseError`] pointing at the first offending token: an empty expression, an unknown
/// character, a missing operand or operator, unbalanced parentheses, a weight without `*`, a
/// number that is not finite, a mixture weight that is not positive.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let toks = lex(text)?;
    let mut p = Parser {
        text,
        toks,
        pos: 0,
        open: 0,
    };
    if p.peek().0 == Tok::End {
        return Err(p.error("empty expression".into(), p.peek().1));
    }
    let e = p.expr()?;
    if p.peek().0 != Tok::End {
        return Err(p.unexpected("AND, OR, NOT or the end of the expression"));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The tree without spans, for comparisons.
    fn shape(e: &Expr) -> String {
        e.to_string()
    }

    fn m(name: &str) -> String {
        name.to_string()
    }

    #[test]
    fn examples_parse_to_the_expected_trees() {
        let cases = [
            ("ring AND bar", "(ring AND bar)"),
            ("left_bar OR right_bar", "(left_bar OR right_bar)"),
            ("box_large NOT box_small", "(box_large NOT box_small)"),
            (
                "1.3*box_large NOT 0.3*box_small",
                "(1.3*box_large NOT 0.3*box_small)",
            ),
            (
                "horse AND (beach OR grass) NOT sunny",
                "((horse AND (beach OR grass)) NOT sunny)",
            ),
            ("0.25*left OR 0.75*right", "(0.25*left OR 0.75*right)"),
            ("2*(a AND b)", "2.0*(a AND b)"),
            ("-0.5*a AND b", "(-0.5*a AND b)"),
            ("a and b Or c", "((a AND b) OR c)"),
            ("a AND b AND c", "(a AND b AND c)"),
            ("a OR b OR c", "(a OR b OR c)"),
            ("a NOT b AND c", "((a NOT b) AND c)"),
            ("a AND b NOT c", "((a AND b) NOT c)"),
            ("(a)", "a"),
            ("1e-2*x.y-z", "0.01*x.y-z"),
            ("2*(3*a)", "2.0*(3.0*a)"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_or_else(|err| panic!("{text}: {err}"));
            assert_eq!(shape(&e), want, "{text}");
        }
        let e = parse("b AND a AND b").expect("parses");
        assert_eq!(e.model_names(), vec![m("b"), m("a")]);
    }

    #[test]
    fn errors_point_at_the_offending_token() {
        let cases: [(&str, usize, usize, &str); 12] = [
            ("", 0, 0, "empty"),
            ("ring & bar", 5, 6, "unexpected character `&`"),
            ("ring AND", 8, 8, "found the end"),
            ("ring AND )", 9, 10, "expected a model name"),
            ("ring bar", 5, 8, "expected AND, OR, NOT"),
            ("(ring AND bar", 13, 13, "to close the `(` at column 1"),
            ("ring)", 4, 5, "expected AND, OR, NOT"),
            ("1.3 ring", 4, 8, "`*` after the weight"),
            ("*ring", 0, 1, "expected a model name"),
            ("1e999*ring", 0, 5, "not finite"),
            ("1.2.3*a", 0, 5, "not a number"),
            ("AND ring", 0, 3, "expected a model name"),
        ];
        for (text, start, end, msg) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(
                (err.span.start, err.span.end),
                (start, end),
                "{text}: {err}"
            );
            assert!(err.message.contains(msg), "{text}: {}", err.message);
        }
        for text in ["0*a OR b", "-1*a OR b"] {
            let err = parse(text).expect_err(text);
            assert!(err.message.contains("mixture weights must be positive"));
            assert_eq!(err.span.start, 0);
        }
    }

    #[test]
    fn the_error_display_draws_a_caret_under_the_token() {
        let err = parse("ring AND )").expect_err("bad");
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].ends_with("at column 10:"));
        assert_eq!(lines[1], "  ring AND )");
        assert_eq!(lines[2], "           ^");
        let err = parse("ring AND").expect_err("bad");
        assert!(err.to_string().ends_with("\n          ^"), "{err}");
    }

    /// Deep nesting is an error at the token that goes too deep, not a stack overflow (the
    /// fuzz target `expr` overflowed the stack on 100 000 parentheses); up to [`MAX_DEPTH`]
    /// levels parse and round-trip.
    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let nested = |n: usize| format!("{}a{}", "(".repeat(n), ")".repeat(n));
        let err = parse(&nested(100_000)).expect_err("too deep");
        assert!(err.message.contains("deeper than 64"), "{}", err.message);
        assert_eq!(err.span.start, MAX_DEPTH);
        // 63 parentheses around a weighted name: 64 levels.
        let ok = format!("{}2*a{}", "(".repeat(63), ")".repeat(63));
        let e = parse(&ok).expect("within the limit");
        assert_eq!(depth(&e), 2);
        let weights = format!("{}a{}", "2*(".repeat(63), ")".repeat(63));
        let e = parse(&weights).expect("64 levels");
        assert_eq!(depth(&e), MAX_DEPTH);
        assert_eq!(
            shape(&parse(&e.to_string()).expect("round trip")),
            shape(&e)
        );
        assert!(parse(&format!("2*({weights})")).is_err());
        // A chain of NOT nests one level per operator: the 64th NOT is refused.
        let chain = |n: usize| {
            (0..=n)
                .map(|i| format!("m{i}"))
                .collect::<Vec<_>>()
                .join(" NOT ")
        };
        assert_eq!(depth(&parse(&chain(63)).expect("63 NOTs")), MAX_DEPTH);
        let err = parse(&chain(100_000)).expect_err("too deep");
        assert!(err.message.contains("deeper than 64"), "{}", err.message);
        // A flat chain of AND or OR is one level, however long.
        let flat = (0..10_000)
            .map(|i| format!("m{i}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        assert_eq!(depth(&parse(&flat).expect("flat")), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn never_panics_and_round_trips(text in "[ -~]{0,40}") {
            if let Ok(e) = parse(&text) {
                let again = parse(&e.to_string()).expect("canonical form parses");
                prop_assert_eq!(shape(&again), shape(&e));
            }
        }

        #[test]
        fn token_soup_never_panics(parts in prop::collection::vec(
            prop::sample::select(vec!["a", "b_2", "AND", "or", "NOT", "(", ")", "*", "1.5", "-2", " "]),
            0..16,
        )) {
            let text = parts.join(" ");
            if let Ok(e) = parse(&text) {
                let again = parse(&e.to_string()).expect("canonical form parses");
                prop_assert_eq!(shape(&again), shape(&e));
            }
        }
    }
}
