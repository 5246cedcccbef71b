//! Value rules in Port's JSON-schema dialect, shared by blueprint properties and action inputs.
//!
//! A [`ValueSchema`] is compiled once from the definition JSON (regexes compiled, keywords typed)
//! and then turns raw text (chat, CLI) or JSON (API) into checked JSON values. Every failure is a
//! [`Rule`] that says, in words a user understands, what the value broke.

use std::fmt;

use regex::Regex;
use serde_json::{Map, Value};

use super::ids::BlueprintId;

/// Answers whether an entity exists, for `format: entity` values. The catalog implements it.
pub trait EntityLookup {
    fn entity_exists(&self, blueprint: &BlueprintId, identifier: &str) -> bool;
}

/// The JSON type of a value.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueKind {
    String,
    /// `integer` is JSON schema's whole-number type; Port itself only has `number`.
    Number {
        integer: bool,
    },
    Boolean,
    Array {
        items: Option<Box<ValueSchema>>,
    },
    Object,
}

/// String formats that change how a value is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Email,
    Url,
    DateTime,
    Ipv4,
    Ipv6,
    /// The value names an entity of this blueprint.
    Entity(BlueprintId),
    /// Formats that only change how Port's UI shows a string (`yaml`, `markdown`, `user`, ...).
    Display(String),
}

/// The compiled rules for one property or input.
#[derive(Debug, Clone)]
pub struct ValueSchema {
    pub kind: ValueKind,
    pub format: Option<Format>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub default: Option<Value>,
    pub allowed: Option<Vec<Value>>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub min_length: Option<usize>,
    pub max_length: Option<usize>,
    pub pattern: Option<Regex>,
}

impl PartialEq for ValueSchema {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.format == other.format
            && self.allowed == other.allowed
            && self.minimum == other.minimum
            && self.maximum == other.maximum
            && self.min_length == other.min_length
            && self.max_length == other.max_length
            && self.pattern.as_ref().map(Regex::as_str) == other.pattern.as_ref().map(Regex::as_str)
    }
}

/// A problem in a schema definition, with the keyword it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaProblem {
    pub field: String,
    pub message: String,
}

const DISPLAY_FORMATS: &[&str] = &[
    "yaml",
    "markdown",
    "multi-line",
    "user",
    "team",
    "proto",
    "timer",
    "json",
    "date",
];

impl ValueSchema {
    /// Compiles a property or input definition. Unknown keywords (`icon`, `enumColors`, ...) are
    /// kept by Port for its UI and ignored here.
    pub fn compile(raw: &Value) -> Result<Self, Vec<SchemaProblem>> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push(SchemaProblem {
                field: field.to_owned(),
                message,
            })
        };
        let Some(obj) = raw.as_object() else {
            return Err(vec![SchemaProblem {
                field: String::new(),
                message: "must be a JSON object".into(),
            }]);
        };
        let text = |key: &str| obj.get(key).and_then(Value::as_str).map(str::to_owned);
        let number = |key: &str| obj.get(key).and_then(Value::as_f64);
        let length = |key: &str| obj.get(key).and_then(Value::as_u64).map(|n| n as usize);

        let kind = match obj.get("type").and_then(Value::as_str).unwrap_or("string") {
            "string" => ValueKind::String,
            "number" => ValueKind::Number { integer: false },
            "integer" => ValueKind::Number { integer: true },
            "boolean" => ValueKind::Boolean,
            "object" => ValueKind::Object,
            "array" => match obj.get("items") {
                None => ValueKind::Array { items: None },
                Some(items) => match ValueSchema::compile(items) {
                    Ok(items) => ValueKind::Array {
                        items: Some(Box::new(items)),
                    },
                    Err(inner) => {
                        for p in inner {
                            problem(&join_field("items", &p.field), p.message);
                        }
                        ValueKind::Array { items: None }
                    }
                },
            },
            other => {
                problem(
                    "type",
                    format!(
                        "`{other}` is not one of string, number, integer, boolean, array, object"
                    ),
                );
                ValueKind::String
            }
        };

        let format = match text("format").as_deref() {
            None => None,
            Some("email") => Some(Format::Email),
            Some("url") => Some(Format::Url),
            Some("date-time") => Some(Format::DateTime),
            Some("ipv4") => Some(Format::Ipv4),
            Some("ipv6") => Some(Format::Ipv6),
            Some("entity") => match text("blueprint").map(BlueprintId::try_from) {
                Some(Ok(bp)) => Some(Format::Entity(bp)),
                Some(Err(e)) => {
                    problem("blueprint", e.to_string());
                    None
                }
                None => {
                    problem(
                        "blueprint",
                        "`format: entity` needs `blueprint`, the blueprint the entity belongs to"
                            .into(),
                    );
                    None
                }
            },
            Some(f) if DISPLAY_FORMATS.contains(&f) => Some(Format::Display(f.to_owned())),
            Some(other) => {
                problem("format", format!("unknown format `{other}`"));
                None
            }
        };

        let pattern = match text("pattern") {
            None => None,
            Some(p) => match Regex::new(&p) {
                Ok(r) => Some(r),
                Err(e) => {
                    problem("pattern", format!("is not a valid regular expression: {e}"));
                    None
                }
            },
        };

        let allowed = match obj.get("enum") {
            None => None,
            Some(Value::Array(values)) if !values.is_empty() => Some(values.clone()),
            Some(_) => {
                problem("enum", "must be a non-empty array".into());
                None
            }
        };

        let schema = ValueSchema {
            kind,
            format,
            title: text("title"),
            description: text("description"),
            default: obj.get("default").cloned(),
            allowed,
            minimum: number("minimum"),
            maximum: number("maximum"),
            min_length: length("minLength"),
            max_length: length("maxLength"),
            pattern,
        };
        if let (Some(min), Some(max)) = (schema.minimum, schema.maximum) {
            if min > max {
                problem("minimum", format!("{min} is greater than maximum {max}"));
            }
        }
        if let Some(default) = &schema.default {
            if let Err(rule) = schema.check_shape(default) {
                problem("default", format!("the default {rule}"));
            }
        }
        if problems.is_empty() {
            Ok(schema)
        } else {
            Err(problems)
        }
    }

    /// Turns text typed by a person (chat, CLI, a modal field) into a JSON value of this type.
    pub fn from_text(&self, text: &str) -> Result<Value, Rule> {
        match &self.kind {
            ValueKind::String => Ok(Value::String(text.to_owned())),
            ValueKind::Number { .. } => parse_number(text.trim()).ok_or(Rule::WrongType {
                expected: "a number",
            }),
            ValueKind::Boolean => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(Value::Bool(true)),
                "false" | "no" | "off" | "0" => Ok(Value::Bool(false)),
                _ => Err(Rule::WrongType {
                    expected: "true or false",
                }),
            },
            ValueKind::Array { items } => {
                let trimmed = text.trim();
                if trimmed.starts_with('[') {
                    return serde_json::from_str(trimmed).map_err(|_| Rule::WrongType {
                        expected: "a JSON array or a comma-separated list",
                    });
                }
                trimmed
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .enumerate()
                    .map(|(index, item)| match items {
                        Some(schema) => schema.from_text(item).map_err(|rule| Rule::Item {
                            index,
                            rule: Box::new(rule),
                        }),
                        None => Ok(Value::String(item.to_owned())),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array)
            }
            ValueKind::Object => match serde_json::from_str::<Value>(text) {
                Ok(v @ Value::Object(_)) => Ok(v),
                _ => Err(Rule::WrongType {
                    expected: "a JSON object",
                }),
            },
        }
    }

    /// Checks a value against every rule, including that named entities exist.
    pub fn check(&self, value: &Value, entities: &dyn EntityLookup) -> Result<(), Rule> {
        self.check_shape(value)?;
        match (&self.kind, value) {
            (ValueKind::Array { items: Some(items) }, Value::Array(values)) => {
                for (index, item) in values.iter().enumerate() {
                    items.check(item, entities).map_err(|rule| Rule::Item {
                        index,
                        rule: Box::new(rule),
                    })?;
                }
            }
            (_, Value::String(s)) => {
                if let Some(Format::Entity(bp)) = &self.format {
                    if !entities.entity_exists(bp, s) {
                        return Err(Rule::NoSuchEntity {
                            blueprint: bp.clone(),
                            identifier: s.clone(),
                        });
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Every rule that needs no catalog: type, enum, range, length, pattern, format.
    fn check_shape(&self, value: &Value) -> Result<(), Rule> {
        match (&self.kind, value) {
            (ValueKind::String, Value::String(s)) => self.check_string(s)?,
            (ValueKind::Number { integer }, Value::Number(n)) => {
                let n = n.as_f64().unwrap_or(f64::NAN);
                if *integer && n.fract() != 0.0 {
                    return Err(Rule::NotWhole { got: n });
                }
                if let Some(min) = self.minimum.filter(|min| n < *min) {
                    return Err(Rule::BelowMinimum {
                        minimum: min,
                        got: n,
                    });
                }
                if let Some(max) = self.maximum.filter(|max| n > *max) {
                    return Err(Rule::AboveMaximum {
                        maximum: max,
                        got: n,
                    });
                }
            }
            (ValueKind::Boolean, Value::Bool(_)) | (ValueKind::Object, Value::Object(_)) => {}
            (ValueKind::Array { items }, Value::Array(values)) => {
                if let Some(items) = items {
                    for (index, item) in values.iter().enumerate() {
                        items.check_shape(item).map_err(|rule| Rule::Item {
                            index,
                            rule: Box::new(rule),
                        })?;
                    }
                }
            }
            (kind, _) => {
                return Err(Rule::WrongType {
                    expected: kind_name(kind),
                })
            }
        }
        if let Some(allowed) = &self.allowed {
            if !allowed.iter().any(|a| same_value(a, value)) {
                return Err(Rule::NotAllowed {
                    allowed: allowed.iter().map(plain_text).collect(),
                });
            }
        }
        Ok(())
    }

    fn check_string(&self, s: &str) -> Result<(), Rule> {
        let len = s.chars().count();
        if let Some(min) = self.min_length.filter(|min| len < *min) {
            return Err(Rule::TooShort { min, got: len });
        }
        if let Some(max) = self.max_length.filter(|max| len > *max) {
            return Err(Rule::TooLong { max, got: len });
        }
        if let Some(pattern) = &self.pattern {
            if !pattern.is_match(s) {
                return Err(Rule::PatternMismatch {
                    pattern: pattern.as_str().to_owned(),
                });
            }
        }
        let format_ok = match &self.format {
            Some(Format::Email) => is_email(s),
            Some(Format::Url) => url::Url::parse(s).is_ok_and(|u| u.has_host()),
            Some(Format::DateTime) => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
            Some(Format::Ipv4) => s.parse::<std::net::Ipv4Addr>().is_ok(),
            Some(Format::Ipv6) => s.parse::<std::net::Ipv6Addr>().is_ok(),
            Some(Format::Entity(_)) | Some(Format::Display(_)) | None => true,
        };
        if format_ok {
            Ok(())
        } else {
            Err(Rule::BadFormat {
                format: match &self.format {
                    Some(Format::Email) => "an email address",
                    Some(Format::Url) => "a URL such as https://example.com",
                    Some(Format::DateTime) => "a date-time such as 2026-01-31T12:00:00Z",
                    Some(Format::Ipv4) => "an IPv4 address",
                    _ => "an IPv6 address",
                },
            })
        }
    }
}

fn join_field(prefix: &str, field: &str) -> String {
    if field.is_empty() {
        prefix.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

fn kind_name(kind: &ValueKind) -> &'static str {
    match kind {
        ValueKind::String => "text",
        ValueKind::Number { integer: false } => "a number",
        ValueKind::Number { integer: true } => "a whole number",
        ValueKind::Boolean => "true or false",
        ValueKind::Array { .. } => "a list",
        ValueKind::Object => "a JSON object",
    }
}

fn parse_number(text: &str) -> Option<Value> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Value::from(i));
    }
    let f = text.parse::<f64>().ok().filter(|f| f.is_finite())?;
    serde_json::Number::from_f64(f).map(Value::Number)
}

/// Enum members compare by meaning: `3` and `3.0` are the same number.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// A value as a person would type it: strings without quotes, everything else as JSON.
pub fn plain_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn is_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// What a value broke. Its `Display` completes a sentence that starts with the input's name.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Required,
    UnknownInput {
        known: Vec<String>,
    },
    WrongType {
        expected: &'static str,
    },
    NotAllowed {
        allowed: Vec<String>,
    },
    BelowMinimum {
        minimum: f64,
        got: f64,
    },
    AboveMaximum {
        maximum: f64,
        got: f64,
    },
    NotWhole {
        got: f64,
    },
    TooShort {
        min: usize,
        got: usize,
    },
    TooLong {
        max: usize,
        got: usize,
    },
    PatternMismatch {
        pattern: String,
    },
    BadFormat {
        format: &'static str,
    },
    NoSuchEntity {
        blueprint: BlueprintId,
        identifier: String,
    },
    Item {
        index: usize,
        rule: Box<Rule>,
    },
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Required => write!(f, "is required"),
            Rule::UnknownInput { known } if known.is_empty() => {
                write!(f, "is not an input of this action (it takes none)")
            }
            Rule::UnknownInput { known } => {
                write!(
                    f,
                    "is not an input of this action (inputs: {})",
                    known.join(", ")
                )
            }
            Rule::WrongType { expected } => write!(f, "must be {expected}"),
            Rule::NotAllowed { allowed } => write!(f, "must be one of: {}", allowed.join(", ")),
            Rule::BelowMinimum { minimum, got } => {
                write!(f, "must be at least {minimum} (got {got})")
            }
            Rule::AboveMaximum { maximum, got } => {
                write!(f, "must be at most {maximum} (got {got})")
            }
            Rule::NotWhole { got } => write!(f, "must be a whole number (got {got})"),
            Rule::TooShort { min, got } => {
                write!(f, "must be at least {min} characters long (got {got})")
            }
            Rule::TooLong { max, got } => {
                write!(f, "must be at most {max} characters long (got {got})")
            }
            Rule::PatternMismatch { pattern } => write!(f, "must match the pattern {pattern}"),
            Rule::BadFormat { format } => write!(f, "must be {format}"),
            Rule::NoSuchEntity {
                blueprint,
                identifier,
            } => write!(
                f,
                "must name an existing {blueprint} entity (there is no `{identifier}`)"
            ),
            Rule::Item { index, rule } => write!(f, "item {} {rule}", index + 1),
        }
    }
}

/// A named value that broke a rule: "`instances` must be at most 5 (got 7)".
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub field: String,
    pub rule: Rule,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.field, self.rule)
    }
}

/// Several violations, shown one per line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct Violations(pub Vec<Violation>);

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(Violation::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

/// An object of properties checked against a set of schemas (unknown keys refused).
pub fn check_object(
    values: &Map<String, Value>,
    schemas: &[(String, ValueSchema)],
    required: &[String],
    entities: &dyn EntityLookup,
) -> Result<(), Violations> {
    let mut violations = Vec::new();
    for (key, value) in values {
        match schemas.iter().find(|(name, _)| name == key) {
            Some((_, schema)) => {
                if let Err(rule) = schema.check(value, entities) {
                    violations.push(Violation {
                        field: key.clone(),
                        rule,
                    });
                }
            }
            None => violations.push(Violation {
                field: key.clone(),
                rule: Rule::UnknownInput {
                    known: schemas.iter().map(|(n, _)| n.clone()).collect(),
                },
            }),
        }
    }
    for key in required {
        if !values.contains_key(key) {
            violations.push(Violation {
                field: key.clone(),
                rule: Rule::Required,
            });
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Violations(violations))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::edge_input;

    struct NoEntities;
    impl EntityLookup for NoEntities {
        fn entity_exists(&self, _: &BlueprintId, id: &str) -> bool {
            id == "mailer"
        }
    }

    fn schema(v: Value) -> ValueSchema {
        ValueSchema::compile(&v).expect("valid schema")
    }

    #[test]
    fn numbers_enforce_range_and_say_so() {
        let s = schema(json!({"type": "number", "minimum": 1, "maximum": 5}));
        let v = s.from_text("7").unwrap();
        assert_eq!(
            s.check(&v, &NoEntities).unwrap_err().to_string(),
            "must be at most 5 (got 7)"
        );
        assert!(s.check(&json!(3), &NoEntities).is_ok());
        assert_eq!(
            s.from_text("three").unwrap_err().to_string(),
            "must be a number"
        );
    }

    #[test]
    fn strings_enforce_enum_length_pattern_and_format() {
        let s = schema(json!({"type": "string", "enum": ["a", "b"]}));
        assert_eq!(
            s.check(&json!("c"), &NoEntities).unwrap_err().to_string(),
            "must be one of: a, b"
        );
        let s = schema(json!({"type": "string", "minLength": 3, "pattern": "^[a-z]+$"}));
        assert!(matches!(
            s.check(&json!("ab"), &NoEntities),
            Err(Rule::TooShort { .. })
        ));
        assert!(matches!(
            s.check(&json!("ABC"), &NoEntities),
            Err(Rule::PatternMismatch { .. })
        ));
        let s = schema(json!({"type": "string", "format": "email"}));
        assert!(s.check(&json!("a@b.io"), &NoEntities).is_ok());
        assert!(s.check(&json!("not-an-email"), &NoEntities).is_err());
    }

    #[test]
    fn entity_format_needs_an_existing_entity() {
        let s = schema(json!({"type": "string", "format": "entity", "blueprint": "Component"}));
        assert!(s.check(&json!("mailer"), &NoEntities).is_ok());
        assert_eq!(
            s.check(&json!("nope"), &NoEntities)
                .unwrap_err()
                .to_string(),
            "must name an existing Component entity (there is no `nope`)"
        );
    }

    #[test]
    fn arrays_parse_from_comma_lists_and_check_items() {
        let s = schema(json!({"type": "array", "items": {"type": "string", "enum": ["x", "y"]}}));
        assert_eq!(s.from_text("x, y").unwrap(), json!(["x", "y"]));
        assert_eq!(
            s.check(&json!(["x", "z"]), &NoEntities)
                .unwrap_err()
                .to_string(),
            "item 2 must be one of: x, y"
        );
    }

    proptest! {
        /// Whatever a person types, typing and checking it answers; it never panics.
        #[test]
        fn any_text_gets_an_answer(text in prop_oneof![
            edge_input::text(),
            "[-+0-9.eE]{0,30}|\\[[-0-9, \\[\\]\"a]{0,20}|[0-9a-f:.]{0,40}",
        ]) {
            for s in every_kind() {
                if let Ok(value) = s.from_text(&text) {
                    let _ = s.check(&value, &NoEntities).map_err(|rule| rule.to_string());
                }
            }
        }
    }

    #[test]
    fn broken_definitions_name_the_keyword() {
        let problems = ValueSchema::compile(&json!({"type": "float", "pattern": "("})).unwrap_err();
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, vec!["type", "pattern"]);
        let problems = ValueSchema::compile(&json!({"type": "number", "maximum": 5, "default": 9}))
            .unwrap_err();
        assert_eq!(problems[0].field, "default");
    }

    /// One schema of each kind, with the rules that read the value.
    fn every_kind() -> Vec<ValueSchema> {
        [
            json!({"type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$"}),
            json!({"type": "string", "format": "url", "pattern": "^h", "maxLength": 10}),
            json!({"type": "string", "format": "email"}),
            json!({"type": "string", "format": "date-time"}),
            json!({"type": "string", "format": "ipv6"}),
            json!({"type": "string", "format": "entity", "blueprint": "Service"}),
            json!({"type": "number", "minimum": -1.5, "maximum": 1e300}),
            json!({"type": "integer"}),
            json!({"type": "integer", "enum": [1, 2, 3]}),
            json!({"type": "boolean"}),
            json!({"type": "array", "items": {"type": "integer", "maximum": 9}}),
            json!({"type": "array", "items": {"type": "number", "enum": [1, 2]}}),
            json!({"type": "array", "items": {"type": "string", "enum": ["a", "b"]}}),
            json!({"type": "object"}),
        ]
        .into_iter()
        .map(schema)
        .collect()
    }

    proptest! {
        /// API input: any JSON checked.
        #[test]
        fn any_value_is_checked(value in edge_input::json(&["a"], &["a", "mailer", "1"])) {
            for schema in every_kind() {
                let _ = schema.check(&value, &NoEntities);
            }
        }
    }
}
