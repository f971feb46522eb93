//! A small expression language for compositions: `ring AND bar`, `left OR right`,
//! `1.3*box_large NOT 0.3*box_small`, `horse AND (beach OR grass) NOT sunny`, and prompts of
//! text-conditioned models: `"red circle top left" AND "blue square" NOT "green"`,
//! `ring AND shapes:"red"`.
//!
//! # Grammar
//!
//! ```text
//! expr   := and ( OR and )*
//! and    := term ( ( AND | NOT ) term )*
//! term   := [ number '*' ] atom
//! atom   := name | prompt | '(' expr ')'
//! prompt := [ name ':' ] '"' text '"'
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
//! A prompt is a double-quoted text, the condition of a text-conditioned model
//! ([`crate::prompt`]); `shapes:"red circle"` names the model, a bare `"red circle"` belongs
//! to the only text model of the composition (which one is decided when the expression is
//! built, [`crate::tree::build_with`]). The text is kept as written (the model's tokenizer
//! normalizes it); it may not be empty or blank (the empty prompt is the unconditional model,
//! which guidance adds by itself), hold a control character, or hold a `"` — there are no
//! escapes.
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
        Expr::Model { .. } | Expr::Prompt { .. } => 0,
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
    /// A prompt of a text-conditioned model: `"text"` or `model:"text"`.
    Prompt {
        /// The text model named in front of the prompt, if any.
        model: Option<String>,
        /// The prompt as written between the quotes (never empty or blank).
        text: String,
        /// Where it is written, the model's name and both quotes included.
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
    /// Calls `visit` on every model name and prompt, left to right.
    fn walk<'a>(&'a self, visit: &mut dyn FnMut(&'a Expr)) {
        match self {
            Expr::Model { .. } | Expr::Prompt { .. } => visit(self),
            Expr::Weighted { expr, .. } => expr.walk(visit),
            Expr::And(v) | Expr::Or(v) => v.iter().for_each(|x| x.walk(visit)),
            Expr::Not(a, b) => {
                a.walk(visit);
                b.walk(visit);
            }
        }
    }

    /// The prompts a sample of this expression should satisfy and those it should not, for
    /// judging samples: every prompt of an AND chain (weights ignored) is wanted, every prompt
    /// removed by NOT unwanted. `None` for expressions that are not such a conjunction of
    /// prompts: named models, OR, or a NOT whose removed side is not a single prompt (`NOT (a
    /// AND b)` asks for "not both", which is no list of unwanted prompts).
    pub fn prompt_conjunction(&self) -> Option<(Vec<&str>, Vec<&str>)> {
        fn positive<'a>(e: &'a Expr, want: &mut Vec<&'a str>, not: &mut Vec<&'a str>) -> bool {
            match e {
                Expr::Prompt { text, .. } => {
                    want.push(text);
                    true
                }
                Expr::Weighted { expr, .. } => positive(expr, want, not),
                Expr::And(v) => v.iter().all(|x| positive(x, want, not)),
                Expr::Not(a, b) => {
                    let removed = match &**b {
                        Expr::Weighted { expr, .. } => &**expr,
                        other => other,
                    };
                    match removed {
                        Expr::Prompt { text, .. } => {
                            let kept = positive(a, want, not);
                            not.push(text);
                            kept
                        }
                        _ => false,
                    }
                }
                Expr::Model { .. } | Expr::Or(_) => false,
            }
        }
        let (mut want, mut not) = (Vec::new(), Vec::new());
        positive(self, &mut want, &mut not).then_some((want, not))
    }

    /// The model names, in order of first appearance, without repetitions: the names of
    /// models and the names qualifying prompts (`shapes` in `shapes:"red"`).
    pub fn model_names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        self.walk(&mut |e| {
            let name = match e {
                Expr::Model { name, .. } => Some(name),
                Expr::Prompt { model, .. } => model.as_ref(),
                _ => None,
            };
            if let Some(name) = name
                && !out.contains(name)
            {
                out.push(name.clone());
            }
        });
        out
    }

    /// The prompts (qualifying model name, text), in order of appearance, with repetitions.
    pub fn prompts(&self) -> Vec<(Option<&str>, &str)> {
        let mut out = Vec::new();
        self.walk(&mut |e| {
            if let Expr::Prompt { model, text, .. } = e {
                out.push((model.as_deref(), text.as_str()));
            }
        });
        out
    }

    /// Whether the expression holds a prompt without a model name (`"red"`, not
    /// `shapes:"red"`): it needs exactly one text model.
    pub fn has_unqualified_prompts(&self) -> bool {
        self.prompts().iter().any(|(model, _)| model.is_none())
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
            Expr::Prompt { model, text, .. } => match model {
                Some(m) => write!(f, "{m}:\"{text}\""),
                None => write!(f, "\"{text}\""),
            },
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
    /// A prompt's text, without its quotes.
    Prompt(String),
    Number(f64),
    Colon,
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
            ':' => {
                out.push(single(Tok::Colon));
                i += 1;
            }
            '"' => {
                let (text, end) = lex_prompt(text, start)?;
                out.push((Tok::Prompt(text), Span { start, end }));
                i = end;
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
                        "unexpected character `{other}`; expressions use names, \"prompts\", numbers, *, AND, OR, NOT and parentheses"
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

/// The prompt whose opening quote is at byte `start` of `text`: its text and the byte after its
/// closing quote.
fn lex_prompt(text: &str, start: usize) -> Result<(String, usize), ParseError> {
    let err = |message: &str, s: usize, e: usize| ParseError {
        message: message.to_string(),
        span: Span { start: s, end: e },
        source: text.to_string(),
    };
    let body = start + 1;
    let Some(len) = text[body..].find('"') else {
        return Err(err(
            "unterminated prompt: a `\"` opens it but none closes it",
            start,
            text.len(),
        ));
    };
    let close = body + len;
    let inner = &text[body..close];
    if let Some((k, c)) = inner.char_indices().find(|(_, c)| c.is_control()) {
        return Err(err(
            "a prompt cannot hold a control character",
            body + k,
            body + k + c.len_utf8(),
        ));
    }
    if inner.ends_with('\\') {
        return Err(err(
            "a prompt cannot hold a `\"` (there are no escapes)",
            close - 1,
            close + 1,
        ));
    }
    // A quote followed at once by a word or another quote is a quote inside the prompt.
    if let Some(next) = text[close + 1..].chars().next()
        && (next == '"' || next.is_alphanumeric() || next == '_')
    {
        return Err(err(
            "a prompt cannot hold a `\"` (there are no escapes); leave a space after the \
             closing quote",
            close,
            close + 1,
        ));
    }
    if inner.trim().is_empty() {
        return Err(err(
            "an empty prompt; the empty prompt is the unconditional model, which guidance adds \
             by itself",
            start,
            close + 1,
        ));
    }
    Ok((inner.to_string(), close + 1))
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
                if self.peek().0 != Tok::Colon {
                    return Ok(Expr::Model { name, span });
                }
                self.bump();
                match self.peek().clone() {
                    (Tok::Prompt(text), end) => {
                        self.bump();
                        Ok(Expr::Prompt {
                            model: Some(name),
                            text,
                            span: Span {
                                start: span.start,
                                end: end.end,
                            },
                        })
                    }
                    _ => {
                        Err(self.unexpected(&format!("a prompt in double quotes after `{name}:`")))
                    }
                }
            }
            (Tok::Prompt(text), span) => {
                self.bump();
                Ok(Expr::Prompt {
                    model: None,
                    text,
                    span,
                })
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
            _ => Err(self.unexpected("a model name, a \"prompt\", a number or `(`")),
        }
    }
}

/// Parses an expression (see the [module documentation](self)).
///
/// # Errors
///
/// [`ParseError`] pointing at the first offending token: an empty expression, an unknown
/// character, a missing operand or operator, unbalanced parentheses, a weight without `*`, a
/// number that is not finite, a mixture weight that is not positive, an unterminated, empty
/// or blank prompt, a prompt holding a `"` or a control character, a model name and `:` not
/// followed by a prompt.
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
            ("\"red circle\"", "\"red circle\""),
            (
                "\"red circle top left\" AND \"blue square\" NOT \"green\"",
                "((\"red circle top left\" AND \"blue square\") NOT \"green\")",
            ),
            ("ring AND shapes:\"red\"", "(ring AND shapes:\"red\")"),
            ("shapes : \" a  b \"", "shapes:\" a  b \""),
            (
                "2*\"a AND b\" OR 0.5*x:\"c\"",
                "(2.0*\"a AND b\" OR 0.5*x:\"c\")",
            ),
            ("(\"é (ü)\")", "\"é (ü)\""),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_or_else(|err| panic!("{text}: {err}"));
            assert_eq!(shape(&e), want, "{text}");
        }
        let e = parse("b AND a AND b").expect("parses");
        assert_eq!(e.model_names(), vec![m("b"), m("a")]);
        assert!(e.prompts().is_empty() && !e.has_unqualified_prompts());
        let e = parse("ring AND c:\"x\" AND \"y\" NOT (c:\"x\" OR d:\"z\")").expect("parses");
        assert_eq!(e.model_names(), vec![m("ring"), m("c"), m("d")]);
        assert_eq!(
            e.prompts(),
            vec![
                (Some("c"), "x"),
                (None, "y"),
                (Some("c"), "x"),
                (Some("d"), "z")
            ]
        );
        assert!(e.has_unqualified_prompts());
        let Expr::Prompt { span, .. } = parse("  shapes:\"red\"").expect("parses") else {
            panic!("a prompt");
        };
        assert_eq!((span.start, span.end), (2, 14));
    }

    #[test]
    fn conjunctions_of_prompts_list_what_they_want_and_exclude() {
        let get = |t: &str| {
            parse(t).ok().and_then(|e| {
                e.prompt_conjunction()
                    .map(|(w, n)| (w.join("|"), n.join("|")))
            })
        };
        assert_eq!(get("\"a\""), Some(("a".into(), String::new())));
        assert_eq!(
            get("\"a b\" AND 2*\"c\" NOT 0.5*\"d\""),
            Some(("a b|c".into(), "d".into()))
        );
        assert_eq!(
            get("(\"a\" NOT \"b\") NOT \"c\""),
            Some(("a".into(), "b|c".into()))
        );
        for t in [
            "\"a\" OR \"b\"",
            "ring AND \"a\"",
            "\"a\" NOT (\"b\" AND \"c\")",
        ] {
            assert_eq!(get(t), None, "{t}");
        }
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
        let prompts: [(&str, usize, usize, &str); 9] = [
            ("ring AND \"red", 9, 13, "unterminated prompt"),
            ("\"\"", 0, 2, "empty prompt"),
            ("a AND \"   \"", 6, 11, "empty prompt"),
            ("\"say \"hi\"\"", 5, 6, "cannot hold a `\"`"),
            ("\"a\"\"b\"", 2, 3, "cannot hold a `\"`"),
            ("\"a \\\" b\"", 3, 5, "no escapes"),
            ("\"a\tb\"", 2, 3, "control character"),
            (
                "shapes: red",
                8,
                11,
                "a prompt in double quotes after `shapes:`",
            ),
            (": \"red\"", 0, 1, "expected a model name, a \"prompt\""),
        ];
        for (text, start, end, msg) in prompts {
            let err = parse(text).expect_err(text);
            assert_eq!(
                (err.span.start, err.span.end),
                (start, end),
                "{text}: {err}"
            );
            assert!(err.message.contains(msg), "{text}: {}", err.message);
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
        let err = parse("ring AND \"red").expect_err("bad");
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "  ring AND \"red");
        assert_eq!(lines[2], "           ^^^^", "{text}");
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

        /// Prompts with any printable text but a quote round-trip as written.
        #[test]
        fn prompts_round_trip(
            text in "[ !#-\\[\\]-~]{0,12}[!#-\\[\\]-~][ !#-\\[\\]-~]{0,12}",
            model in prop::option::of("m[a-z0-9_]{0,6}"),
            weight in prop::option::of(0.1f64..4.0),
        ) {
            let atom = match &model {
                Some(m) => format!("{m}:\"{text}\""),
                None => format!("\"{text}\""),
            };
            let written = match weight {
                Some(w) => format!("{w}*{atom} AND x"),
                None => format!("{atom} AND x"),
            };
            let e = parse(&written).expect("a prompt parses");
            prop_assert_eq!(e.prompts(), vec![(model.as_deref(), text.as_str())]);
            let again = parse(&e.to_string()).expect("canonical form parses");
            prop_assert_eq!(shape(&again), shape(&e));
            prop_assert_eq!(again.prompts(), e.prompts());
        }

        #[test]
        fn token_soup_never_panics(parts in prop::collection::vec(
            prop::sample::select(vec![
                "a", "b_2", "AND", "or", "NOT", "(", ")", "*", "1.5", "-2", " ", "\"red box\"",
                "m:", "\"", ":",
            ]),
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
