//! The subset of the Google list filter language both APIs here accept: terms `FIELD OP VALUE`
//! joined by `AND`, where `FIELD` is a dotted path whose parts may be quoted
//! (`labels."job_uid"`), `OP` one of `=`, `!=`, `<`, `<=`, `>`, `>=`, `:`, and `VALUE` a
//! double-quoted string (with `\"` and `\\` escapes) or a bare word. Which fields and operators
//! mean something is up to each API. Batch's job filters here are conjunctions ([`parse`]);
//! Cloud Logging's may also join terms with `OR` and group them in parentheses ([`parse_expr`]),
//! `OR` binding tighter than `AND` as in Logging's query language. `NOT` is refused.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Has,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Has => ":",
        })
    }
}

impl Op {
    /// Whether `ordering` (of the entry's value against the filter's) satisfies the operator;
    /// `:` (has) counts as `=` for the scalar fields served here.
    pub fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Op::Eq | Op::Has => ordering == Equal,
            Op::Ne => ordering != Equal,
            Op::Lt => ordering == Less,
            Op::Le => ordering != Greater,
            Op::Gt => ordering == Greater,
            Op::Ge => ordering != Less,
        }
    }
}

/// One `FIELD OP VALUE`, the field's quotes removed: `labels."a.b"` is `labels.a.b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub field: String,
    pub op: Op,
    pub value: String,
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}\"{}\"", self.field, self.op, self.value)
    }
}

/// A filter as a tree: every one of `All` holds (an empty `All` always does), or any one of
/// `Any`, or the term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr<T> {
    All(Vec<Expr<T>>),
    Any(Vec<Expr<T>>),
    Term(T),
}

impl<T> Expr<T> {
    /// The same tree with each term mapped, or the first error.
    pub fn try_map<U, E>(self, f: &impl Fn(T) -> Result<U, E>) -> Result<Expr<U>, E> {
        Ok(match self {
            Expr::All(v) => Expr::All(v.into_iter().map(|e| e.try_map(f)).collect::<Result<_, _>>()?),
            Expr::Any(v) => Expr::Any(v.into_iter().map(|e| e.try_map(f)).collect::<Result<_, _>>()?),
            Expr::Term(t) => Expr::Term(f(t)?),
        })
    }

    /// Whether the tree holds when each term holds as `holds` says.
    pub fn eval(&self, holds: &impl Fn(&T) -> bool) -> bool {
        match self {
            Expr::All(v) => v.iter().all(|e| e.eval(holds)),
            Expr::Any(v) => v.iter().any(|e| e.eval(holds)),
            Expr::Term(t) => holds(t),
        }
    }

    /// A least value every match is at or after, from what `bound` says of single terms: the
    /// greatest of an `All`'s, the least of an `Any`'s (none when one of its branches has none).
    pub fn lower_bound<B: Ord + Copy>(&self, bound: &impl Fn(&T) -> Option<B>) -> Option<B> {
        match self {
            Expr::All(v) => v.iter().filter_map(|e| e.lower_bound(bound)).max(),
            Expr::Any(v) => v
                .iter()
                .map(|e| e.lower_bound(bound))
                .collect::<Option<Vec<B>>>()?
                .into_iter()
                .min(),
            Expr::Term(t) => bound(t),
        }
    }
}

/// The terms of `filter`, a conjunction; an empty or blank filter has none.
pub fn parse(filter: &str) -> Result<Vec<Term>, String> {
    let chars: Vec<char> = filter.chars().collect();
    let mut at = 0;
    let mut terms = Vec::new();
    let skip_ws = |at: &mut usize| {
        while *at < chars.len() && chars[*at].is_whitespace() {
            *at += 1;
        }
    };
    skip_ws(&mut at);
    if at == chars.len() {
        return Ok(terms);
    }
    loop {
        let start = at;
        let field = field(&chars, &mut at)?;
        if field.is_empty() {
            let rest: String = chars[start..].iter().collect();
            return Err(format!(
                "expected a field at `{rest}`: this test server accepts terms FIELD=\"VALUE\" joined by AND, without OR, NOT or parentheses"
            ));
        }
        skip_ws(&mut at);
        let op = op(&chars, &mut at)
            .ok_or_else(|| format!("expected an operator (=, !=, <, <=, >, >=, :) after `{field}`"))?;
        skip_ws(&mut at);
        let value = value(&chars, &mut at)?;
        terms.push(Term { field, op, value });
        skip_ws(&mut at);
        if at == chars.len() {
            return Ok(terms);
        }
        let word: String = chars[at..].iter().take_while(|c| !c.is_whitespace()).collect();
        if word != "AND" {
            return Err(format!(
                "expected AND between terms, found `{word}`: this test server accepts only conjunctions"
            ));
        }
        at += 3;
        skip_ws(&mut at);
        if at == chars.len() {
            return Err("the filter ends with AND".into());
        }
    }
}

/// `filter` as Cloud Logging reads it: terms joined by `AND` and `OR` (which binds tighter),
/// grouped in parentheses; an empty or blank filter is `All` of nothing.
pub fn parse_expr(filter: &str) -> Result<Expr<Term>, String> {
    let chars: Vec<char> = filter.chars().collect();
    let mut p = Parser { chars: &chars, at: 0 };
    p.ws();
    if p.done() {
        return Ok(Expr::All(Vec::new()));
    }
    let e = p.all()?;
    p.ws();
    if !p.done() {
        return Err(format!("unexpected `{}`", p.rest()));
    }
    Ok(e)
}

struct Parser<'a> {
    chars: &'a [char],
    at: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.at < self.chars.len() && self.chars[self.at].is_whitespace() {
            self.at += 1;
        }
    }

    fn done(&self) -> bool {
        self.at >= self.chars.len()
    }

    fn rest(&self) -> String {
        self.chars[self.at..].iter().collect()
    }

    /// Takes the keyword `k` if it comes next, as a word of its own.
    fn keyword(&mut self, k: &str) -> bool {
        self.ws();
        let n = k.chars().count();
        let word: String = self.chars[self.at..].iter().take(n).collect();
        let ends = self
            .chars
            .get(self.at + n)
            .is_none_or(|c| c.is_whitespace() || *c == '(');
        if word == k && ends {
            self.at += n;
            true
        } else {
            false
        }
    }

    fn all(&mut self) -> Result<Expr<Term>, String> {
        let mut v = vec![self.any()?];
        while self.keyword("AND") {
            v.push(self.any()?);
        }
        Ok(if v.len() == 1 { v.remove(0) } else { Expr::All(v) })
    }

    fn any(&mut self) -> Result<Expr<Term>, String> {
        let mut v = vec![self.factor()?];
        while self.keyword("OR") {
            v.push(self.factor()?);
        }
        Ok(if v.len() == 1 { v.remove(0) } else { Expr::Any(v) })
    }

    fn factor(&mut self) -> Result<Expr<Term>, String> {
        self.ws();
        if self.done() {
            return Err("the filter ends where a term was expected".into());
        }
        if self.chars[self.at] == '(' {
            self.at += 1;
            let e = self.all()?;
            self.ws();
            if self.chars.get(self.at) != Some(&')') {
                return Err(format!("expected `)` at `{}`", self.rest()));
            }
            self.at += 1;
            return Ok(e);
        }
        if self.keyword("NOT") {
            return Err("NOT is not supported by this test server".into());
        }
        let field = field(self.chars, &mut self.at)?;
        if field.is_empty() {
            return Err(format!("expected a field at `{}`", self.rest()));
        }
        self.ws();
        let op = op(self.chars, &mut self.at)
            .ok_or_else(|| format!("expected an operator (=, !=, <, <=, >, >=, :) after `{field}`"))?;
        self.ws();
        let value = value(self.chars, &mut self.at)?;
        Ok(Expr::Term(Term { field, op, value }))
    }
}

fn field(chars: &[char], at: &mut usize) -> Result<String, String> {
    let mut out = String::new();
    while *at < chars.len() {
        let c = chars[*at];
        if c == '"' {
            *at += 1;
            out.push_str(&quoted(chars, at)?);
        } else if c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '/') {
            out.push(c);
            *at += 1;
        } else {
            break;
        }
    }
    Ok(out)
}

fn op(chars: &[char], at: &mut usize) -> Option<Op> {
    let two: String = chars[*at..].iter().take(2).collect();
    let (op, len) = match two.as_str() {
        ">=" => (Op::Ge, 2),
        "<=" => (Op::Le, 2),
        "!=" => (Op::Ne, 2),
        _ => match chars.get(*at)? {
            '=' => (Op::Eq, 1),
            '<' => (Op::Lt, 1),
            '>' => (Op::Gt, 1),
            ':' => (Op::Has, 1),
            _ => return None,
        },
    };
    *at += len;
    Some(op)
}

fn value(chars: &[char], at: &mut usize) -> Result<String, String> {
    if chars.get(*at) == Some(&'"') {
        *at += 1;
        return quoted(chars, at);
    }
    let mut out = String::new();
    while *at < chars.len() && !chars[*at].is_whitespace() && chars[*at] != ')' {
        if chars[*at] == '(' {
            return Err("a value cannot hold `(` unquoted".into());
        }
        out.push(chars[*at]);
        *at += 1;
    }
    if out.is_empty() {
        return Err("expected a value at the end of the filter".into());
    }
    Ok(out)
}

/// The rest of a string whose opening quote has been read, up to its closing quote.
fn quoted(chars: &[char], at: &mut usize) -> Result<String, String> {
    let mut out = String::new();
    while *at < chars.len() {
        let c = chars[*at];
        *at += 1;
        match c {
            '"' => return Ok(out),
            '\\' if *at < chars.len() => {
                out.push(chars[*at]);
                *at += 1;
            }
            _ => out.push(c),
        }
    }
    Err(format!("unterminated string \"{out}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(field: &str, op: Op, value: &str) -> Term {
        Term {
            field: field.into(),
            op,
            value: value.into(),
        }
    }

    #[test]
    fn conjunctions_parse_with_quoted_fields_and_values() {
        let terms = parse(
            r#"logName="projects/p/logs/batch_task_logs" AND labels."job_uid"="u-1" AND timestamp>="2024-01-01T00:00:00Z" AND labels.x = y"#,
        )
        .unwrap();
        assert_eq!(
            terms,
            [
                t("logName", Op::Eq, "projects/p/logs/batch_task_logs"),
                t("labels.job_uid", Op::Eq, "u-1"),
                t("timestamp", Op::Ge, "2024-01-01T00:00:00Z"),
                t("labels.x", Op::Eq, "y"),
            ]
        );
        assert_eq!(
            parse(r#"a="say \"hi\"""#).unwrap(),
            [t("a", Op::Eq, "say \"hi\"")]
        );
        assert!(parse("  ").unwrap().is_empty());
    }

    #[test]
    fn logging_filters_join_terms_with_or_in_parentheses() {
        let e = parse_expr(
            r#"logName="l" AND (labels.job_uid="a" AND timestamp>="2024-01-01T00:00:00Z" OR (labels.job_uid=b))"#,
        )
        .unwrap();
        assert_eq!(
            e,
            Expr::All(vec![
                Expr::Term(t("logName", Op::Eq, "l")),
                Expr::All(vec![
                    Expr::Term(t("labels.job_uid", Op::Eq, "a")),
                    // OR binds tighter than AND, as in Logging's query language.
                    Expr::Any(vec![
                        Expr::Term(t("timestamp", Op::Ge, "2024-01-01T00:00:00Z")),
                        Expr::Term(t("labels.job_uid", Op::Eq, "b")),
                    ]),
                ]),
            ])
        );
        let e = parse_expr(r#"(a="1" AND b>"5") OR (a="2" AND b>"3")"#).unwrap();
        let lower = |t: &Term| (t.field == "b").then(|| t.value.parse::<u32>().unwrap());
        assert_eq!(e.lower_bound(&lower), Some(3));
        assert!(e.eval(&|t: &Term| t.value == "2" || t.value == "3"));
        assert!(!e.eval(&|t: &Term| t.value == "1"));
        assert_eq!(parse_expr(" ").unwrap(), Expr::All(Vec::new()));
        for bad in [r#"(a="1""#, r#"a="1")"#, r#"NOT a="1""#, r#"a="1" OR"#, "()"] {
            assert!(parse_expr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn what_is_not_a_conjunction_is_refused() {
        for bad in [
            r#"a="1" OR b="2""#,
            r#"a="1" b="2""#,
            r#"(a="1")"#,
            r#"a="1" AND"#,
            r#"a="1"#,
            r#"a"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
