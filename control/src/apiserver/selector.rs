//! Label and field selectors, as apimachinery's `labels.Parse` and `fields.ParseSelector`
//! read them, and the fields each kind can be selected by.
//!
//! Label selectors come from `?labelSelector=`, from `metav1.LabelSelector` objects
//! (Deployment/ReplicaSet `spec.selector`) and from plain maps (Service `spec.selector`).
//! Field selectors come from `?fieldSelector=` and are checked against the flat
//! field set [`object_fields`] derives from an object.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use serde_json::Value;

/// Why a selector was rejected. The messages name the offending key, value or term; the
/// API server sends them back as 400 Bad Request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The label selector string does not follow the grammar.
    #[error("{reason} (in label selector {selector:?})")]
    Syntax { selector: String, reason: String },
    #[error("invalid label key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("invalid value {value:?} for label {key:?}: {reason}")]
    InvalidValue { key: String, value: String, reason: String },
    /// The operator and the number of values do not fit.
    #[error("invalid requirement on label {key:?}: {reason}")]
    InvalidRequirement { key: String, reason: String },
    /// A field of a `metav1.LabelSelector` object, e.g. `matchExpressions[0].operator`.
    #[error("{field}: {reason}")]
    InvalidObject { field: String, reason: String },
    #[error("invalid field selector term {term:?}: {reason}")]
    FieldSyntax { term: String, reason: String },
    /// Kubernetes' wording, which clients show as-is.
    #[error("field label not supported: {field}")]
    UnsupportedField { field: String },
}

/// How a label requirement compares the label's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `a=b`, `a==b`: the label is present with that value.
    Equals,
    /// `a!=b`: the label is absent or has another value.
    NotEquals,
    /// `a in (x,y)`: the label is present with one of the values.
    In,
    /// `a notin (x,y)`: the label is absent or has none of the values.
    NotIn,
    /// `a`
    Exists,
    /// `!a`
    DoesNotExist,
    /// `a>5`: the label is present and an integer greater than the value.
    GreaterThan,
    /// `a<5`
    LessThan,
}

/// One condition on one label key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    op: Operator,
    /// Sorted and deduplicated, like apimachinery's `sets.String`.
    values: Vec<String>,
}

impl Requirement {
    /// A validated requirement: the key and values must be valid label syntax, and the
    /// number of values must fit the operator.
    pub fn new(key: &str, op: Operator, values: impl IntoIterator<Item = String>) -> Result<Self, SelectorError> {
        validate_key(key)?;
        let values: Vec<String> = values.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        let bad = |reason: &str| {
            Err(SelectorError::InvalidRequirement {
                key: key.into(),
                reason: reason.into(),
            })
        };
        match op {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return bad("for 'in', 'notin' operators, values set can't be empty");
            }
            Operator::Equals | Operator::NotEquals if values.len() != 1 => {
                return bad("exact-match compatibility requires one single value");
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return bad("values set must be empty for exists and does not exist");
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 || values[0].parse::<i64>().is_err() {
                    let value = values.join(",");
                    return Err(SelectorError::InvalidValue {
                        key: key.into(),
                        value,
                        reason: "for 'Gt', 'Lt' operators, exactly one integer value is required".into(),
                    });
                }
                return Ok(Self {
                    key: key.into(),
                    op,
                    values,
                });
            }
            _ => {}
        }
        for v in &values {
            validate_value(key, v)?;
        }
        Ok(Self {
            key: key.into(),
            op,
            values,
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }
    pub fn operator(&self) -> Operator {
        self.op
    }
    pub fn values(&self) -> &[String] {
        &self.values
    }

    fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        let found = label(&self.key);
        let in_values = found.is_some_and(|v| self.values.iter().any(|x| x == v));
        let compare = |ord: std::cmp::Ordering| {
            let have = found.and_then(|v| v.parse::<i64>().ok());
            let want = self.values.first().and_then(|v| v.parse::<i64>().ok());
            matches!((have, want), (Some(h), Some(w)) if h.cmp(&w) == ord)
        };
        match self.op {
            Operator::Equals | Operator::In => in_values,
            Operator::NotEquals | Operator::NotIn => !in_values,
            Operator::Exists => found.is_some(),
            Operator::DoesNotExist => found.is_none(),
            Operator::GreaterThan => compare(std::cmp::Ordering::Greater),
            Operator::LessThan => compare(std::cmp::Ordering::Less),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (k, v) = (&self.key, self.values.join(","));
        match self.op {
            Operator::Equals => write!(f, "{k}={v}"),
            Operator::NotEquals => write!(f, "{k}!={v}"),
            Operator::In => write!(f, "{k} in ({v})"),
            Operator::NotIn => write!(f, "{k} notin ({v})"),
            Operator::Exists => write!(f, "{k}"),
            Operator::DoesNotExist => write!(f, "!{k}"),
            Operator::GreaterThan => write!(f, "{k}>{v}"),
            Operator::LessThan => write!(f, "{k}<{v}"),
        }
    }
}

/// A conjunction of label requirements. The default (and the empty string) selects
/// everything; [`LabelSelector::nothing`] selects nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    nothing: bool,
}

impl LabelSelector {
    pub fn everything() -> Self {
        Self::default()
    }

    /// What a null `metav1.LabelSelector` means.
    pub fn nothing() -> Self {
        Self {
            requirements: vec![],
            nothing: true,
        }
    }

    pub fn is_everything(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    pub fn is_nothing(&self) -> bool {
        self.nothing
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Parses the `labelSelector` query syntax: comma-separated (ANDed) requirements of the
    /// forms `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a`, `!a`, `a>1`, `a<1`.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut p = Parser {
            src: selector,
            lx: Lexer { rest: selector },
        };
        let mut requirements = vec![];
        if p.lx.peek() != Tok::End {
            loop {
                requirements.push(p.requirement()?);
                match p.lx.next() {
                    Tok::End => break,
                    Tok::Comma => {}
                    t => return Err(p.syntax(format!("found '{t}', expected: ',' or end of string"))),
                }
            }
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self {
            requirements,
            nothing: false,
        })
    }

    /// The equality AND of all pairs, as for a Service's `spec.selector`. Not validated:
    /// the map was validated when its object was written.
    ///
    /// An empty map gives a selector that matches everything. For a Service an empty or
    /// absent selector means "no Endpoints are managed for it", so callers that have that
    /// meaning must check for an empty map themselves.
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        let requirements = map
            .iter()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                op: Operator::Equals,
                values: vec![v.clone()],
            })
            .collect();
        Self {
            requirements,
            nothing: false,
        }
    }

    /// Converts a `metav1.LabelSelector` object (`matchLabels` and `matchExpressions`).
    /// Like apimachinery, `null` selects nothing and `{}` selects everything. Error fields
    /// are relative to the selector, e.g. `matchExpressions[1].values`.
    pub fn from_label_selector_json(selector: &Value) -> Result<Self, SelectorError> {
        let bad = |field: String, reason: &str| SelectorError::InvalidObject {
            field,
            reason: reason.into(),
        };
        let obj = match selector {
            Value::Null => return Ok(Self::nothing()),
            Value::Object(o) => o,
            _ => return Err(bad("selector".into(), "must be an object")),
        };
        let mut requirements = vec![];
        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (k, v) in labels {
                    let v = v
                        .as_str()
                        .ok_or_else(|| bad(format!("matchLabels.{k}"), "must be a string"))?;
                    requirements.push(Requirement::new(k, Operator::Equals, [v.to_string()])?);
                }
            }
            Some(_) => return Err(bad("matchLabels".into(), "must be an object")),
        }
        let exprs = match obj.get("matchExpressions") {
            None | Some(Value::Null) => &vec![],
            Some(Value::Array(a)) => a,
            Some(_) => return Err(bad("matchExpressions".into(), "must be a list")),
        };
        for (i, e) in exprs.iter().enumerate() {
            let field = |f: &str| format!("matchExpressions[{i}].{f}");
            let key = e
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(field("key"), "must be a string"))?;
            let op = match e.get("operator").and_then(Value::as_str) {
                Some("In") => Operator::In,
                Some("NotIn") => Operator::NotIn,
                Some("Exists") => Operator::Exists,
                Some("DoesNotExist") => Operator::DoesNotExist,
                Some(other) => {
                    return Err(bad(
                        field("operator"),
                        &format!("{other:?} is not a valid label selector operator"),
                    ));
                }
                None => return Err(bad(field("operator"), "must be a string")),
            };
            let values = match e.get("values") {
                None | Some(Value::Null) => vec![],
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| bad(field("values"), "must be strings"))
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(bad(field("values"), "must be a list of strings")),
            };
            match op {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return Err(bad(
                        field("values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return Err(bad(
                        field("values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
                _ => {}
            }
            requirements.push(Requirement::new(key, op, values)?);
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self {
            requirements,
            nothing: false,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.nothing
            && self
                .requirements
                .iter()
                .all(|r| r.matches_with(|k| labels.get(k).map(String::as_str)))
    }

    /// Matches against the object's `metadata.labels`; labels that are not strings are
    /// treated as absent.
    pub fn matches_object(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        !self.nothing
            && self
                .requirements
                .iter()
                .all(|r| r.matches_with(|k| labels.get(k).and_then(Value::as_str)))
    }
}

/// The canonical query form (requirements sorted by key). Both "everything" and
/// "nothing" print as the empty string, as in apimachinery: check [`LabelSelector::is_nothing`]
/// before turning a selector into a query.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    Ident(&'a str),
    Comma,
    Open,
    Close,
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    End,
}

impl fmt::Display for Tok<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tok::Ident(s) => s,
            Tok::Comma => ",",
            Tok::Open => "(",
            Tok::Close => ")",
            Tok::Not => "!",
            Tok::Eq => "=",
            Tok::DoubleEq => "==",
            Tok::NotEq => "!=",
            Tok::Gt => ">",
            Tok::Lt => "<",
            Tok::End => "",
        })
    }
}

/// apimachinery's lexer: identifiers run until whitespace or one of `!=(),<>`, so `in` and
/// `notin` are ordinary identifiers that the parser reads as operators where one is due.
#[derive(Clone, Copy)]
struct Lexer<'a> {
    rest: &'a str,
}

impl<'a> Lexer<'a> {
    fn next(&mut self) -> Tok<'a> {
        let s = self.rest.trim_start();
        let second_is_eq = s.get(1..).is_some_and(|r| r.starts_with('='));
        let (tok, len) = match s.chars().next() {
            None => (Tok::End, 0),
            Some(',') => (Tok::Comma, 1),
            Some('(') => (Tok::Open, 1),
            Some(')') => (Tok::Close, 1),
            Some('>') => (Tok::Gt, 1),
            Some('<') => (Tok::Lt, 1),
            Some('!') if second_is_eq => (Tok::NotEq, 2),
            Some('!') => (Tok::Not, 1),
            Some('=') if second_is_eq => (Tok::DoubleEq, 2),
            Some('=') => (Tok::Eq, 1),
            Some(_) => {
                let end = s
                    .find(|c: char| c.is_whitespace() || "!=(),<>".contains(c))
                    .unwrap_or(s.len());
                (Tok::Ident(&s[..end]), end)
            }
        };
        self.rest = &s[len..];
        tok
    }

    fn peek(&self) -> Tok<'a> {
        self.clone().next()
    }
}

struct Parser<'a> {
    src: &'a str,
    lx: Lexer<'a>,
}

impl<'a> Parser<'a> {
    fn syntax(&self, reason: String) -> SelectorError {
        SelectorError::Syntax {
            selector: self.src.into(),
            reason,
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (negated, key) = match self.lx.next() {
            Tok::Not => match self.lx.next() {
                Tok::Ident(k) => (true, k),
                t => return Err(self.syntax(format!("found '{t}', expected: identifier after '!'"))),
            },
            Tok::Ident(k) => (false, k),
            t => return Err(self.syntax(format!("found '{t}', expected: !, identifier"))),
        };
        if let Tok::End | Tok::Comma = self.lx.peek() {
            let op = if negated {
                Operator::DoesNotExist
            } else {
                Operator::Exists
            };
            return Requirement::new(key, op, []);
        }
        if negated {
            let t = self.lx.peek();
            return Err(self.syntax(format!("found '{t}', expected: ',' or end of string after '!{key}'")));
        }
        let (op, values) = match self.lx.next() {
            t @ (Tok::Eq | Tok::DoubleEq | Tok::NotEq) => {
                // `a=` selects the empty value, as in Kubernetes.
                let value = match self.lx.peek() {
                    Tok::Ident(v) => {
                        self.lx.next();
                        v
                    }
                    Tok::End | Tok::Comma => "",
                    t => return Err(self.syntax(format!("found '{t}', expected: value for '{key}'"))),
                };
                (
                    if t == Tok::NotEq {
                        Operator::NotEquals
                    } else {
                        Operator::Equals
                    },
                    vec![value.to_string()],
                )
            }
            t @ (Tok::Gt | Tok::Lt) => match self.lx.next() {
                Tok::Ident(v) => (
                    if t == Tok::Gt {
                        Operator::GreaterThan
                    } else {
                        Operator::LessThan
                    },
                    vec![v.into()],
                ),
                t => return Err(self.syntax(format!("found '{t}', expected: integer value for '{key}'"))),
            },
            Tok::Ident(word @ ("in" | "notin")) => (
                if word == "in" { Operator::In } else { Operator::NotIn },
                self.value_set(key)?,
            ),
            t => return Err(self.syntax(format!("found '{t}', expected: in, notin, =, ==, !=, >, <"))),
        };
        Requirement::new(key, op, values)
    }

    /// `(a, b)`; empty entries are empty values, so `()` is the set `{""}` as in Kubernetes.
    fn value_set(&mut self, key: &str) -> Result<Vec<String>, SelectorError> {
        match self.lx.next() {
            Tok::Open => {}
            t => return Err(self.syntax(format!("found '{t}', expected: '(' after '{key} in'"))),
        }
        let (mut values, mut current) = (vec![], None);
        loop {
            match self.lx.next() {
                Tok::Ident(v) if current.is_none() => current = Some(v.to_string()),
                Tok::Comma => values.push(current.take().unwrap_or_default()),
                Tok::Close => {
                    values.push(current.take().unwrap_or_default());
                    return Ok(values);
                }
                t => {
                    return Err(self.syntax(format!(
                        "found '{t}', expected: ',', ')' or value in the set for '{key}'"
                    )));
                }
            }
        }
    }
}

fn validate_key(key: &str) -> Result<(), SelectorError> {
    let bad = |reason: &str| {
        Err(SelectorError::InvalidKey {
            key: key.into(),
            reason: reason.into(),
        })
    };
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return bad("prefix part must be non-empty");
        }
        if !is_dns_subdomain(p) {
            return bad(
                "prefix part must be a lowercase RFC 1123 subdomain of at most 253 characters: \
                 lowercase alphanumeric characters, '-' or '.', starting and ending with an alphanumeric character",
            );
        }
    }
    if name.is_empty() {
        return bad("name part must be non-empty");
    }
    if name.len() > 63 {
        return bad("name part must be no more than 63 characters");
    }
    if !is_name(name) {
        return bad(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end \
             with an alphanumeric character, with an optional DNS subdomain prefix and '/'",
        );
    }
    Ok(())
}

fn validate_value(key: &str, value: &str) -> Result<(), SelectorError> {
    let reason = if value.len() > 63 {
        "must be no more than 63 characters"
    } else if !value.is_empty() && !is_name(value) {
        "a valid label value must be empty or consist of alphanumeric characters, '-', '_' or '.', \
         and must start and end with an alphanumeric character"
    } else {
        return Ok(());
    };
    Err(SelectorError::InvalidValue {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    })
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldOperator {
    /// `f=v` or `f==v`
    Equals,
    /// `f!=v`
    NotEquals,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub op: FieldOperator,
    /// Unescaped.
    pub value: String,
}

/// A conjunction of `field=value` / `field!=value` terms. The default (and the empty
/// string) selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses the `fieldSelector` query syntax. In values, `\,`, `\=` and `\\` stand for
    /// the literal characters; unescaped `,` separates terms and unescaped `=` is an error.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut requirements = vec![];
        for term in split_unescaped(selector, ',') {
            if term.trim().is_empty() {
                continue;
            }
            let bad = |reason: &str| SelectorError::FieldSyntax {
                term: term.into(),
                reason: reason.into(),
            };
            let (field, op, rhs) =
                split_term(term).ok_or_else(|| bad("expected field=value, field==value or field!=value"))?;
            let field = field.trim();
            if field.is_empty() {
                return Err(bad("the field name is empty"));
            }
            let value = unescape(rhs).map_err(|reason| bad(&reason))?;
            requirements.push(FieldRequirement {
                field: field.into(),
                op,
                value,
            });
        }
        Ok(Self { requirements })
    }

    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Rejects fields `kind` cannot be selected by (a 400 in Kubernetes).
    pub fn validate_for(&self, kind: &str) -> Result<(), SelectorError> {
        match self
            .requirements
            .iter()
            .find(|r| !supported_fields(kind).any(|f| f == r.field))
        {
            Some(r) => Err(SelectorError::UnsupportedField { field: r.field.clone() }),
            None => Ok(()),
        }
    }

    /// Matches a field set from [`object_fields`]; a field missing from it counts as `""`.
    pub fn matches(&self, fields: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| {
            let v = fields.get(&r.field).map_or("", String::as_str);
            (v == r.value) == (r.op == FieldOperator::Equals)
        })
    }

    pub fn matches_object(&self, kind: &str, obj: &Value) -> bool {
        self.is_empty() || self.matches(&object_fields(kind, obj))
    }

    /// The value of the first `field=value` term for `field`: lets `metadata.name=x` be
    /// served as a point read.
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && r.op == FieldOperator::Equals)
            .map(|r| r.value.as_str())
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            let op = if r.op == FieldOperator::Equals { "=" } else { "!=" };
            let value = r.value.replace('\\', r"\\").replace(',', r"\,").replace('=', r"\=");
            write!(f, "{}{}{op}{value}", if i > 0 { "," } else { "" }, r.field)?;
        }
        Ok(())
    }
}

fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let (mut parts, mut start, mut escaped) = (vec![], 0, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == sep => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Splits at the first unescaped operator, trying `!=`, `==`, `=` at each position.
fn split_term(term: &str) -> Option<(&str, FieldOperator, &str)> {
    let mut escaped = false;
    for (i, c) in term.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
            continue;
        }
        let rest = &term[i..];
        for (op, len, kind) in [
            ("!=", 2, FieldOperator::NotEquals),
            ("==", 2, FieldOperator::Equals),
            ("=", 1, FieldOperator::Equals),
        ] {
            if rest.starts_with(op) {
                return Some((&term[..i], kind, &term[i + len..]));
            }
        }
    }
    None
}

fn unescape(s: &str) -> Result<String, String> {
    let (mut out, mut chars) = (String::with_capacity(s.len()), s.chars());
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                Some(e) => return Err(format!("invalid escape sequence '\\{e}' in the value")),
                None => return Err("the value ends in a lone '\\'".into()),
            },
            '=' | ',' => return Err(format!("unescaped '{c}' in the value")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Selectable fields beyond `metadata.name` and `metadata.namespace`, each read from the
/// first JSON pointer that holds a non-empty value, else the default. The sets are
/// Kubernetes' (`ToSelectableFields` of each registry strategy).
const KIND_FIELDS: &[(&str, &str, &[&str], &str)] = &[
    ("Pod", "spec.nodeName", &["/spec/nodeName"], ""),
    ("Pod", "spec.restartPolicy", &["/spec/restartPolicy"], ""),
    ("Pod", "spec.schedulerName", &["/spec/schedulerName"], ""),
    ("Pod", "spec.serviceAccountName", &["/spec/serviceAccountName"], ""),
    ("Pod", "spec.hostNetwork", &["/spec/hostNetwork"], "false"),
    ("Pod", "status.phase", &["/status/phase"], ""),
    ("Pod", "status.podIP", &["/status/podIPs/0/ip", "/status/podIP"], ""),
    ("Pod", "status.nominatedNodeName", &["/status/nominatedNodeName"], ""),
    // events.k8s.io/v1 spells involvedObject `regarding` and source `deprecatedSource`.
    (
        "Event",
        "involvedObject.kind",
        &["/involvedObject/kind", "/regarding/kind"],
        "",
    ),
    (
        "Event",
        "involvedObject.namespace",
        &["/involvedObject/namespace", "/regarding/namespace"],
        "",
    ),
    (
        "Event",
        "involvedObject.name",
        &["/involvedObject/name", "/regarding/name"],
        "",
    ),
    (
        "Event",
        "involvedObject.uid",
        &["/involvedObject/uid", "/regarding/uid"],
        "",
    ),
    (
        "Event",
        "involvedObject.apiVersion",
        &["/involvedObject/apiVersion", "/regarding/apiVersion"],
        "",
    ),
    (
        "Event",
        "involvedObject.resourceVersion",
        &["/involvedObject/resourceVersion", "/regarding/resourceVersion"],
        "",
    ),
    (
        "Event",
        "involvedObject.fieldPath",
        &["/involvedObject/fieldPath", "/regarding/fieldPath"],
        "",
    ),
    ("Event", "reason", &["/reason"], ""),
    (
        "Event",
        "reportingComponent",
        &["/reportingComponent", "/reportingController"],
        "",
    ),
    (
        "Event",
        "source",
        &[
            "/source/component",
            "/deprecatedSource/component",
            "/reportingComponent",
            "/reportingController",
        ],
        "",
    ),
    ("Event", "type", &["/type"], ""),
    ("Secret", "type", &["/type"], ""),
    ("Node", "spec.unschedulable", &["/spec/unschedulable"], "false"),
    ("Namespace", "status.phase", &["/status/phase"], ""),
    ("ReplicaSet", "status.replicas", &["/status/replicas"], "0"),
    ("ReplicationController", "status.replicas", &["/status/replicas"], "0"),
    ("Job", "status.successful", &["/status/succeeded"], "0"),
    (
        "CertificateSigningRequest",
        "spec.signerName",
        &["/spec/signerName"],
        "",
    ),
];

/// The field names `kind` can be selected by.
pub fn supported_fields(kind: &str) -> impl Iterator<Item = &'static str> + '_ {
    ["metadata.name", "metadata.namespace"]
        .into_iter()
        .chain(KIND_FIELDS.iter().filter(move |f| f.0 == kind).map(|f| f.1))
}

/// The selectable fields of an object of `kind`, missing ones as `""` (or `"false"`/`"0"`
/// for booleans and counts), so `spec.nodeName=` matches unscheduled Pods.
pub fn object_fields(kind: &str, obj: &Value) -> BTreeMap<String, String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        _ => String::new(),
    };
    let mut out = BTreeMap::new();
    out.insert("metadata.name".to_string(), text(&obj["metadata"]["name"]));
    out.insert("metadata.namespace".to_string(), text(&obj["metadata"]["namespace"]));
    for (_, field, pointers, default) in KIND_FIELDS.iter().filter(|f| f.0 == kind) {
        let value = pointers
            .iter()
            .filter_map(|p| obj.pointer(p).map(text))
            .find(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string());
        out.insert(field.to_string(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_selector_matching_table() {
        let l = labels(&[("app", "web"), ("tier", "frontend"), ("env", ""), ("rev", "7")]);
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("   ", true),
            ("app=web", true),
            ("app==web", true),
            ("app = web", true),
            ("app=db", false),
            ("app!=db", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("missing=x", false),
            ("app in (web,db)", true),
            ("app in (db, cache)", false),
            ("app notin (db,cache)", true),
            ("app notin (web)", false),
            ("missing notin (a)", true),
            ("missing in (a)", false),
            ("app", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            (" ! app", false),
            ("env=", true),
            ("env in ()", true),
            ("env in (,x)", true),
            ("env", true),
            ("app=web,tier=frontend", true),
            ("app=web, tier=backend", false),
            ("app=web,!missing,tier in (frontend,backend),env", true),
            ("rev>5", true),
            ("rev>7", false),
            ("rev<8", true),
            ("app>1", false),
            ("missing<1", false),
            ("app in(web)", true),
            ("app=web,app=web", true),
        ];
        for (s, want) in cases {
            let sel = LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert_eq!(sel.matches(&l), *want, "selector {s:?}");
            let obj = json!({"metadata": {"labels": l}});
            assert_eq!(sel.matches_object(&obj), *want, "selector {s:?} on object");
        }
    }

    #[test]
    fn label_selector_syntax_errors() {
        for s in [
            "app=web,",
            ",app",
            "app in web",
            "app in (web",
            "app in (a b)",
            "app notin",
            "app=web=x",
            "!app=web",
            "!",
            "app==",
            "=web",
            "app web",
            "app>",
            "app>x",
            "app<1.5",
            "(app)",
            "app=(x)",
        ] {
            // `app==` parses as the empty value in Kubernetes too; only the others fail.
            let r = LabelSelector::parse(s);
            if s == "app==" {
                assert!(r.is_ok());
                continue;
            }
            assert!(r.is_err(), "{s:?} should not parse, got {r:?}");
        }
        let e = LabelSelector::parse("app in web").unwrap_err().to_string();
        assert!(e.contains("'('") && e.contains("app in web"), "{e}");
    }

    #[test]
    fn label_key_and_value_validation() {
        for key in [
            "app",
            "app.kubernetes.io/name",
            "a",
            "A_b-c.d",
            "example.com/x",
            "1x",
            &"a".repeat(63),
            &format!("{}/x", "a".repeat(253)),
        ] {
            LabelSelector::parse(&format!("{key}=v")).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        for key in [
            "-app",
            "app-",
            "a b",
            "/app",
            "example.com/",
            "Example.com/x",
            "ex_ample.com/x",
            "a/b/c",
            "a..b.com/x",
            &"a".repeat(64),
            &format!("{}/x", "a".repeat(254)),
            "app$",
        ] {
            let e = LabelSelector::parse(&format!("{key}=v")).unwrap_err();
            assert!(
                matches!(e, SelectorError::InvalidKey { .. } | SelectorError::Syntax { .. }),
                "{key}: {e:?}"
            );
        }
        for value in ["-v", "v-", "v$", "a/b", &"v".repeat(64)] {
            let e = LabelSelector::parse(&format!("app in (x,{value})")).unwrap_err();
            assert!(matches!(e, SelectorError::InvalidValue { .. }), "{value}: {e:?}");
            assert!(e.to_string().contains(value), "{e}");
        }
        let e = LabelSelector::parse("app=-bad").unwrap_err();
        assert!(
            matches!(&e, SelectorError::InvalidValue { key, value, .. } if key == "app" && value == "-bad"),
            "{e:?}"
        );
    }

    #[test]
    fn label_selector_display_is_canonical_and_round_trips() {
        let sel = LabelSelector::parse("tier in (b,a,b), app=web, !gone, x, env!=prod, n>3, m<2, k notin (z)").unwrap();
        let s = sel.to_string();
        assert_eq!(s, "app=web,env!=prod,!gone,k notin (z),m<2,n>3,tier in (a,b),x");
        assert_eq!(LabelSelector::parse(&s).unwrap(), sel);
        assert_eq!(sel.requirements()[6].values(), ["a", "b"]);
        assert_eq!(sel.requirements()[6].operator(), Operator::In);
    }

    #[test]
    fn everything_and_nothing() {
        let l = labels(&[("a", "b")]);
        assert!(LabelSelector::parse("").unwrap().is_everything());
        assert!(LabelSelector::everything().matches(&l));
        assert!(LabelSelector::everything().matches(&BTreeMap::new()));
        assert!(!LabelSelector::nothing().matches(&l));
        assert!(!LabelSelector::nothing().matches_object(&json!({})));
        assert!(LabelSelector::nothing().is_nothing());
        assert!(LabelSelector::everything().matches_object(&json!({"metadata": {}})));
        assert!(
            LabelSelector::parse("!a")
                .unwrap()
                .matches_object(&json!({"metadata": {"labels": null}}))
        );
        assert!(
            !LabelSelector::parse("a")
                .unwrap()
                .matches_object(&json!("not an object"))
        );
        // Non-string label values are ignored rather than panicking.
        assert!(
            !LabelSelector::parse("a=1")
                .unwrap()
                .matches_object(&json!({"metadata": {"labels": {"a": 1}}}))
        );
    }

    #[test]
    fn from_map_is_an_equality_conjunction() {
        let sel = LabelSelector::from_map(&labels(&[("app", "web"), ("tier", "fe")]));
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "fe"), ("x", "y")])));
        assert!(!sel.matches(&labels(&[("app", "web")])));
        assert_eq!(sel.to_string(), "app=web,tier=fe");
        assert!(LabelSelector::from_map(&BTreeMap::new()).is_everything());
    }

    #[test]
    fn from_label_selector_json() {
        let sel = LabelSelector::from_label_selector_json(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["fe", "be"]},
                {"key": "env", "operator": "NotIn", "values": ["prod"]},
                {"key": "track", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist", "values": []},
            ],
        }))
        .unwrap();
        assert_eq!(
            sel.to_string(),
            "app=web,env notin (prod),!legacy,tier in (be,fe),track"
        );
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "fe"), ("track", "")])));
        assert!(!sel.matches(&labels(&[
            ("app", "web"),
            ("tier", "fe"),
            ("track", ""),
            ("legacy", "1")
        ])));
        assert!(!sel.matches(&labels(&[
            ("app", "web"),
            ("tier", "fe"),
            ("track", ""),
            ("env", "prod")
        ])));

        assert!(
            LabelSelector::from_label_selector_json(&json!(null))
                .unwrap()
                .is_nothing()
        );
        assert!(
            LabelSelector::from_label_selector_json(&json!({}))
                .unwrap()
                .is_everything()
        );
        assert!(
            LabelSelector::from_label_selector_json(&json!({"matchLabels": null}))
                .unwrap()
                .is_everything()
        );

        let err = |v: Value| LabelSelector::from_label_selector_json(&v).unwrap_err().to_string();
        assert_eq!(err(json!([])), "selector: must be an object");
        assert_eq!(err(json!({"matchLabels": []})), "matchLabels: must be an object");
        assert_eq!(err(json!({"matchLabels": {"a": 1}})), "matchLabels.a: must be a string");
        assert!(err(json!({"matchLabels": {"-a": "b"}})).contains("\"-a\""));
        assert!(err(json!({"matchLabels": {"a": "b c"}})).contains("\"b c\""));
        assert_eq!(err(json!({"matchExpressions": {}})), "matchExpressions: must be a list");
        assert_eq!(
            err(json!({"matchExpressions": [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Has"}]})),
            "matchExpressions[1].operator: \"Has\" is not a valid label selector operator"
        );
        assert_eq!(
            err(json!({"matchExpressions": [{"key": "a", "operator": "In"}]})),
            "matchExpressions[0].values: must be specified when `operator` is 'In' or 'NotIn'"
        );
        assert_eq!(
            err(json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})),
            "matchExpressions[0].values: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
        );
        assert_eq!(
            err(json!({"matchExpressions": [{"operator": "Exists"}]})),
            "matchExpressions[0].key: must be a string"
        );
        assert_eq!(
            err(json!({"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]})),
            "matchExpressions[0].values: must be strings"
        );
        assert_eq!(
            err(json!({"matchExpressions": [{"key": "a"}]})),
            "matchExpressions[0].operator: must be a string"
        );
    }

    #[test]
    fn requirement_new_checks_value_counts() {
        let e = Requirement::new("a", Operator::In, []).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid requirement on label \"a\": for 'in', 'notin' operators, values set can't be empty"
        );
        assert!(Requirement::new("a", Operator::Equals, ["x".to_string(), "y".to_string()]).is_err());
        assert!(Requirement::new("a", Operator::Exists, ["x".to_string()]).is_err());
        assert!(Requirement::new("a", Operator::GreaterThan, ["x".to_string()]).is_err());
        assert!(Requirement::new("a", Operator::LessThan, ["-3".to_string()]).is_ok());
    }

    #[test]
    fn field_selector_parsing_and_matching() {
        let f = labels(&[
            ("metadata.name", "a,b=c\\d"),
            ("spec.nodeName", ""),
            ("status.phase", "Running"),
        ]);
        let cases: &[(&str, bool)] = &[
            ("", true),
            (",", true),
            ("status.phase=Running", true),
            ("status.phase==Running", true),
            ("status.phase!=Running", false),
            ("status.phase!=Pending", true),
            ("spec.nodeName=", true),
            ("spec.nodeName!=", false),
            ("spec.nodeName=n1", false),
            ("missing=", true),
            ("missing!=x", true),
            (r"metadata.name=a\,b\=c\\d", true),
            (r"metadata.name=a\,b\=c\\d,status.phase=Running", true),
            (r"metadata.name=a\,b\=c\\d,status.phase=Pending", false),
            ("status.phase=Running,", true),
            (" status.phase=Running", true),
        ];
        for (s, want) in cases {
            let sel = FieldSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert_eq!(sel.matches(&f), *want, "{s:?}");
        }
        let sel = FieldSelector::parse(r"metadata.name=a\,b\=c\\d,spec.nodeName!=x").unwrap();
        assert_eq!(sel.requirements()[0].value, "a,b=c\\d");
        assert_eq!(sel.requirements()[1].op, FieldOperator::NotEquals);
        assert_eq!(FieldSelector::parse(&sel.to_string()).unwrap(), sel);
        assert_eq!(sel.to_string(), r"metadata.name=a\,b\=c\\d,spec.nodeName!=x");
    }

    #[test]
    fn field_selector_errors() {
        for (s, needle) in [
            ("status.phase", "expected field=value"),
            ("=Running", "field name is empty"),
            ("a=b=c", "unescaped '='"),
            (r"a=b\x", r"invalid escape sequence '\x'"),
            (r"a=b\", r"lone '\'"),
            ("a=b,c", "\"c\""),
        ] {
            let e = FieldSelector::parse(s).unwrap_err().to_string();
            assert!(e.contains(needle), "{s:?}: {e}");
        }
    }

    #[test]
    fn validate_for_kinds() {
        let ok = |kind: &str, s: &str| FieldSelector::parse(s).unwrap().validate_for(kind);
        assert!(
            ok(
                "Pod",
                "spec.nodeName=n1,status.phase!=Succeeded,metadata.name=x,metadata.namespace=d"
            )
            .is_ok()
        );
        assert!(
            ok(
                "Event",
                "involvedObject.uid=1,involvedObject.kind=Pod,reason=x,source=kubelet,type=Normal"
            )
            .is_ok()
        );
        assert!(ok("Secret", "type=kubernetes.io/service-account-token").is_ok());
        assert!(ok("Node", "spec.unschedulable=false").is_ok());
        assert!(ok("Namespace", "status.phase=Active").is_ok());
        assert!(ok("ConfigMap", "metadata.name=x").is_ok());
        assert!(ok("ReplicaSet", "status.replicas=0").is_ok());
        assert_eq!(
            ok("Pod", "spec.foo=x").unwrap_err().to_string(),
            "field label not supported: spec.foo"
        );
        assert_eq!(
            ok("Service", "spec.nodeName=x").unwrap_err(),
            SelectorError::UnsupportedField {
                field: "spec.nodeName".into()
            }
        );
        assert!(ok("Secret", "status.phase=x").is_err());
        assert!(ok("Pod", "").is_ok());
    }

    #[test]
    fn pod_fields() {
        let pod = json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"restartPolicy": "Always", "serviceAccountName": "sa", "hostNetwork": true},
            "status": {"phase": "Pending", "podIPs": [{"ip": "10.0.0.5"}], "podIP": "10.0.0.9"},
        });
        let f = object_fields("Pod", &pod);
        assert_eq!(f["metadata.name"], "p");
        assert_eq!(f["metadata.namespace"], "ns");
        assert_eq!(f["spec.nodeName"], "");
        assert_eq!(f["spec.restartPolicy"], "Always");
        assert_eq!(f["spec.schedulerName"], "");
        assert_eq!(f["spec.serviceAccountName"], "sa");
        assert_eq!(f["spec.hostNetwork"], "true");
        assert_eq!(f["status.phase"], "Pending");
        assert_eq!(f["status.podIP"], "10.0.0.5");
        assert_eq!(f["status.nominatedNodeName"], "");
        assert_eq!(f.len(), 10);
        let unscheduled = FieldSelector::parse("spec.nodeName=").unwrap();
        assert!(unscheduled.matches_object("Pod", &pod));
        assert!(
            !FieldSelector::parse("spec.nodeName=n1")
                .unwrap()
                .matches_object("Pod", &pod)
        );
        let only_pod_ip = json!({"status": {"podIP": "10.0.0.9"}});
        assert_eq!(object_fields("Pod", &only_pod_ip)["status.podIP"], "10.0.0.9");
        assert_eq!(object_fields("Pod", &json!({}))["spec.hostNetwork"], "false");
        // Garbage shapes are read as missing, never a panic.
        assert_eq!(
            object_fields("Pod", &json!({"metadata": 3, "status": {"podIPs": "x"}}))["status.podIP"],
            ""
        );
        assert_eq!(object_fields("Pod", &json!(null))["metadata.name"], "");
    }

    #[test]
    fn event_node_secret_namespace_fields() {
        let ev = json!({
            "metadata": {"name": "e", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default", "uid": "u1",
                "apiVersion": "v1", "resourceVersion": "42", "fieldPath": "spec.containers{c}"},
            "reason": "Scheduled", "source": {"component": "default-scheduler"}, "type": "Normal",
            "reportingComponent": "rudder-scheduler",
        });
        let f = object_fields("Event", &ev);
        assert_eq!(f["involvedObject.kind"], "Pod");
        assert_eq!(f["involvedObject.name"], "p");
        assert_eq!(f["involvedObject.namespace"], "default");
        assert_eq!(f["involvedObject.uid"], "u1");
        assert_eq!(f["involvedObject.apiVersion"], "v1");
        assert_eq!(f["involvedObject.resourceVersion"], "42");
        assert_eq!(f["involvedObject.fieldPath"], "spec.containers{c}");
        assert_eq!(f["reason"], "Scheduled");
        assert_eq!(f["source"], "default-scheduler");
        assert_eq!(f["reportingComponent"], "rudder-scheduler");
        assert_eq!(f["type"], "Normal");
        let sel = FieldSelector::parse("involvedObject.kind=Pod,involvedObject.name=p,type!=Warning").unwrap();
        assert!(sel.matches_object("Event", &ev));
        // events.k8s.io/v1 shape; the source falls back to the reporting controller.
        let ev2 = json!({"regarding": {"kind": "Node", "name": "n"}, "reportingController": "kubelet"});
        let f = object_fields("Event", &ev2);
        assert_eq!(
            (f["involvedObject.kind"].as_str(), f["source"].as_str()),
            ("Node", "kubelet")
        );
        assert_eq!(f["reportingComponent"], "kubelet");

        assert_eq!(
            object_fields("Node", &json!({"spec": {"unschedulable": true}}))["spec.unschedulable"],
            "true"
        );
        assert_eq!(
            object_fields("Node", &json!({"spec": {}}))["spec.unschedulable"],
            "false"
        );
        assert_eq!(object_fields("Secret", &json!({"type": "Opaque"}))["type"], "Opaque");
        assert_eq!(
            object_fields("Namespace", &json!({"status": {"phase": "Terminating"}}))["status.phase"],
            "Terminating"
        );
        assert_eq!(
            object_fields("ReplicaSet", &json!({"status": {"replicas": 3}}))["status.replicas"],
            "3"
        );
        assert_eq!(object_fields("ReplicaSet", &json!({}))["status.replicas"], "0");
        assert_eq!(object_fields("ConfigMap", &json!({"metadata": {"name": "c"}})).len(), 2);
        assert_eq!(
            object_fields("Node", &json!({"metadata": {"name": "n"}}))["metadata.namespace"],
            ""
        );
    }

    #[test]
    fn exact_match() {
        let sel = FieldSelector::parse("metadata.namespace!=x,metadata.name=web,metadata.name=other").unwrap();
        assert_eq!(sel.exact("metadata.name"), Some("web"));
        assert_eq!(sel.exact("metadata.namespace"), None);
        assert_eq!(sel.exact("spec.nodeName"), None);
        assert_eq!(
            FieldSelector::parse(r"metadata.name=a\,b")
                .unwrap()
                .exact("metadata.name"),
            Some("a,b")
        );
        assert_eq!(
            FieldSelector::parse("metadata.name=").unwrap().exact("metadata.name"),
            Some("")
        );
    }

    #[test]
    fn never_panics_on_odd_input() {
        for s in [
            "é=ü",
            "a=é",
            "\u{0}",
            "!é",
            "a in (é)",
            "((",
            "))",
            "!!",
            "a!",
            "a!b",
            "a=\\",
            "ä,ö",
            "\t",
            "a in (,,)",
        ] {
            let _ = LabelSelector::parse(s);
            let _ = FieldSelector::parse(s);
        }
        assert!(
            LabelSelector::parse("a in (,,)")
                .unwrap()
                .matches(&labels(&[("a", "")]))
        );
    }
}
