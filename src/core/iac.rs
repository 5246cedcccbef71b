//! Infrastructure-as-code files rendered from handlebars templates for `GITOPS` runs, escaped
//! for the language of the file they become, so that no input value can end a string, start
//! an interpolation or add a resource.
//!
//! The language comes from the output path: HCL for `.tf`, `.hcl` and `.tfvars`, JSON for
//! `.json` (including `*.auto.tfvars.json`), YAML for `.yaml` and `.yml`.
//!
//! - JSON templates are JSON documents whose strings are templates (as in action definitions):
//!   the values are put in by serde_json, and a string that is exactly one `{{path}}` keeps the
//!   value's JSON type, so `"instances": "{{inputs.instances}}"` renders the number 3.
//! - HCL and YAML templates are text. Every value (`{{path}}`) must stand inside a
//!   double-quoted string; it is escaped for that string (HCL: `\\ \" \n \r \t`, control
//!   characters as `\uNNNN`, `${` → `$${`, `%{` → `%%{`; YAML: the double-quoted scalar's
//!   escapes). Terraform converts `"3"` to a number where one is expected, so numbers go in
//!   quotes too. `{{{triple}}}` and `{{&x}}` (unescaped) are refused, and so are values outside
//!   quotes, inside heredocs or single-quoted YAML scalars.
//!
//! Every rendered file is parsed before it is used; one that does not parse is an error.

use std::sync::OnceLock;

use handlebars::Handlebars;
use serde_json::Value;

use super::template;

/// The language of an IaC file, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Hcl,
    Json,
    Yaml,
}

impl Language {
    /// The language of a file at `path` (which may itself be a template ending in a literal
    /// extension, e.g. `db/{{entity.identifier}}.tf`).
    pub fn of(path: &str) -> Option<Language> {
        let name = path.rsplit('/').next().unwrap_or(path);
        let extension = name.rsplit_once('.').map(|(_, e)| e)?;
        match extension {
            "tf" | "hcl" | "tfvars" => Some(Language::Hcl),
            "json" => Some(Language::Json),
            "yaml" | "yml" => Some(Language::Yaml),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Language::Hcl => "HCL",
            Language::Json => "JSON",
            Language::Yaml => "YAML",
        }
    }
}

/// The extensions [`Language::of`] knows, for messages.
pub const KNOWN_EXTENSIONS: &str = ".tf, .hcl, .tfvars, .json, .yaml or .yml";

/// Why a template is refused or a file could not be rendered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct IacError(pub String);

/// Checks a template for `language` without rendering it: syntax, no unescaped output, and
/// (HCL, YAML) every value inside a double-quoted string. Returns every problem.
pub fn check(language: Language, text: &str) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    for (line, marker) in unescaped_outputs(text) {
        problems.push(format!(
            "line {line}: `{marker}` would put a value in without escaping; use `{{{{path}}}}`"
        ));
    }
    match language {
        Language::Json => match serde_json::from_str::<Value>(text) {
            Ok(value) => {
                if let Err(e) = template::check_value_syntax(&value) {
                    problems.push(e.to_string());
                }
            }
            Err(e) => problems.push(format!(
                "a JSON template must be a JSON document whose strings are templates: {e}"
            )),
        },
        Language::Hcl | Language::Yaml => {
            if let Err(e) = handlebars::Template::compile(text) {
                problems.push(e.to_string());
            }
            problems.extend(misplaced_values(language, text));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Renders a template for `language` over a run's context and parses the result.
pub fn render(language: Language, text: &str, context: &Value) -> Result<String, IacError> {
    check(language, text).map_err(|problems| IacError(problems.join("; ")))?;
    let rendered = match language {
        Language::Json => {
            let document: Value = serde_json::from_str(text).expect("checked above");
            let value =
                template::render_value(&document, context).map_err(|e| IacError(e.reason))?;
            let mut out = serde_json::to_string_pretty(&value).expect("JSON values serialise");
            out.push('\n');
            out
        }
        Language::Hcl | Language::Yaml => registry(language)
            .render_template(text, context)
            .map_err(|e| IacError(e.reason().to_string()))?,
    };
    parses(language, &rendered)?;
    Ok(rendered)
}

/// Whether `text` is a well-formed file of `language`.
pub fn parses(language: Language, text: &str) -> Result<(), IacError> {
    let error = match language {
        Language::Hcl => hcl::parse(text).err().map(|e| e.to_string()),
        Language::Json => serde_json::from_str::<Value>(text)
            .err()
            .map(|e| e.to_string()),
        Language::Yaml => yaml_rust2::YamlLoader::load_from_str(text)
            .err()
            .map(|e| e.to_string()),
    };
    match error {
        Some(e) => Err(IacError(format!(
            "the rendered file is not valid {}: {e}",
            language.name()
        ))),
        None => Ok(()),
    }
}

/// The strict registry whose escape function fits `language`.
fn registry(language: Language) -> &'static Handlebars<'static> {
    static HCL: OnceLock<Handlebars<'static>> = OnceLock::new();
    static YAML: OnceLock<Handlebars<'static>> = OnceLock::new();
    // JSON templates are rendered as JSON values (see `render`), never as text.
    let (cell, escape): (_, fn(&str) -> String) = match language {
        Language::Hcl => (&HCL, escape_hcl),
        Language::Yaml | Language::Json => (&YAML, escape_yaml),
    };
    cell.get_or_init(|| {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(escape);
        hb
    })
}

/// Escapes text for the inside of an HCL quoted string (a template literal).
pub fn escape_hcl(value: &str) -> String {
    escape_quoted(value, true)
}

/// Escapes text for the inside of a YAML double-quoted scalar.
pub fn escape_yaml(value: &str) -> String {
    escape_quoted(value, false)
}

/// Both languages take `\\ \" \n \r \t` and `\uNNNN` in a double-quoted string. Control
/// characters, line separators and the non-characters YAML does not print become `\uNNNN`;
/// in HCL, `${` and `%{` become `$${` and `%%{` (literal text, not interpolation).
fn escape_quoted(value: &str, hcl: bool) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if hcl && chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c if c.is_control()
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ) =>
            {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// `{{{x}}}` and `{{&x}}`, with their line numbers.
fn unescaped_outputs(text: &str) -> Vec<(usize, String)> {
    mustaches(text)
        .into_iter()
        .filter(|m| m.body.starts_with('{') || m.body.trim_start_matches('~').starts_with('&'))
        .map(|m| (m.line, m.text.to_owned()))
        .collect()
}

/// One `{{...}}` in a template.
struct Mustache<'a> {
    start: usize,
    end: usize,
    line: usize,
    /// Between the braces.
    body: &'a str,
    text: &'a str,
}

impl Mustache<'_> {
    /// Whether it outputs a value (rather than a block, `else`, a comment or a partial).
    fn outputs_value(&self) -> bool {
        let body = self.body.trim_start_matches('~').trim_start();
        let control = body.starts_with(['#', '/', '^', '!', '>', '*'])
            || body.trim_end_matches('~').trim() == "else"
            || body.starts_with("else ");
        !control
    }
}

/// Every mustache in the text, in order. Comments `{{!-- ... --}}` may hold `}}`.
fn mustaches(text: &str) -> Vec<Mustache<'_>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find("{{") {
        let start = from + offset;
        let close = if text[start..].starts_with("{{!--") {
            "--}}"
        } else if text[start..].starts_with("{{{") {
            "}}}"
        } else {
            "}}"
        };
        let end = text[start + 2..]
            .find(close)
            .map_or(text.len(), |i| start + 2 + i + close.len());
        out.push(Mustache {
            start,
            end,
            line: text[..start].matches('\n').count() + 1,
            body: &text[start + 2..end.saturating_sub(2).max(start + 2)],
            text: &text[start..end],
        });
        from = end;
    }
    out
}

/// Where the scanner is in HCL or YAML text.
#[derive(Debug, Clone, PartialEq)]
enum Place {
    /// HCL code or YAML outside scalars; `depth` counts open braces (HCL interpolations end at
    /// their closing brace).
    Code {
        depth: usize,
        interpolation: bool,
    },
    DoubleQuoted,
    SingleQuoted,
    Heredoc(String),
}

/// Values that are not inside a double-quoted string, as problems.
fn misplaced_values(language: Language, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let marks = mustaches(text);
    let mut next_mark = marks.iter().peekable();
    let mut stack = vec![Place::Code {
        depth: 0,
        interpolation: false,
    }];
    let bytes = text.as_bytes();
    let mut i = 0;
    let at = |i: usize, s: &str| text[i..].starts_with(s);
    while i < bytes.len() {
        // Values in `#` and `//` comments were skipped with their line: an escaped value holds
        // no newline, so it cannot leave the comment.
        while next_mark.next_if(|m| m.start < i).is_some() {}
        if let Some(mark) = next_mark.next_if(|m| m.start == i) {
            let place = stack.last().expect("the stack keeps its root");
            if mark.outputs_value() {
                let problem = match place {
                    Place::DoubleQuoted if bytes.get(mark.end) == Some(&b'{') => Some(
                        "is followed by `{`, which could make an interpolation of its value",
                    ),
                    Place::DoubleQuoted => None,
                    Place::Heredoc(_) => Some("is inside a heredoc, where it cannot be escaped; use a quoted string"),
                    Place::SingleQuoted => Some("is inside a single-quoted scalar; use double quotes"),
                    Place::Code { .. } => Some(match language {
                        Language::Hcl => "is outside a quoted string: write `\"{{...}}\"` (Terraform converts \"3\" to a number where one is expected)",
                        _ => "is outside a quoted scalar: write `\"{{...}}\"`",
                    }),
                };
                if let Some(problem) = problem {
                    problems.push(format!("line {}: `{}` {problem}", mark.line, mark.text));
                }
            }
            i = mark.end;
            continue;
        }
        let c = bytes[i];
        let place = stack.last_mut().expect("the stack keeps its root");
        match place {
            Place::DoubleQuoted => match c {
                b'\\' => i += 1,
                b'"' => {
                    stack.pop();
                }
                b'$' | b'%' if language == Language::Hcl && (at(i, "$${") || at(i, "%%{")) => {
                    i += 2
                }
                b'$' | b'%' if language == Language::Hcl && bytes.get(i + 1) == Some(&b'{') => {
                    stack.push(Place::Code {
                        depth: 0,
                        interpolation: true,
                    });
                    i += 1;
                }
                _ => {}
            },
            Place::SingleQuoted => match c {
                b'\'' if bytes.get(i + 1) == Some(&b'\'') => i += 1,
                b'\'' => {
                    stack.pop();
                }
                _ => {}
            },
            Place::Heredoc(marker) => {
                if c == b'\n' {
                    let line = text[i + 1..].lines().next().unwrap_or_default();
                    if line.trim() == marker {
                        stack.pop();
                        i += line.len();
                    }
                }
            }
            Place::Code {
                depth,
                interpolation,
            } => match c {
                b'"' if language == Language::Hcl || starts_scalar(text, i) => {
                    stack.push(Place::DoubleQuoted)
                }
                b'\'' if language == Language::Yaml && starts_scalar(text, i) => {
                    stack.push(Place::SingleQuoted)
                }
                b'#' if language == Language::Hcl || starts_comment(text, i) => {
                    i = skip_line(text, i)
                }
                b'/' if language == Language::Hcl && at(i, "//") => i = skip_line(text, i),
                b'/' if language == Language::Hcl && at(i, "/*") => {
                    let end = text[i..].find("*/").map_or(text.len(), |e| i + e + 1);
                    // `*/` in a value would end the comment: values do not belong there.
                    while let Some(mark) = next_mark.next_if(|m| m.start < end) {
                        if mark.outputs_value() {
                            problems.push(format!(
                                "line {}: `{}` is inside a /* */ comment, which a value could end",
                                mark.line, mark.text
                            ));
                        }
                    }
                    i = end;
                }
                b'<' if language == Language::Hcl && at(i, "<<") => {
                    let rest = text[i + 2..].trim_start_matches('-');
                    let marker: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !marker.is_empty() {
                        i = skip_line(text, i);
                        stack.push(Place::Heredoc(marker));
                    }
                }
                b'{' => *depth += 1,
                b'}' if *depth == 0 && *interpolation => {
                    stack.pop();
                }
                b'}' => *depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        i += 1;
    }
    problems
}

/// Whether a YAML quote at `i` starts a quoted scalar: at the start of the line's content,
/// after `[`, `{` or `,`, or after `:`, `-` or `?` and a space (elsewhere it is part of a plain
/// scalar, like the apostrophe in `don't`).
fn starts_scalar(text: &str, i: usize) -> bool {
    let before = text[..i].trim_end_matches([' ', '\t']);
    let spaced = before.len() < i;
    match before.chars().last() {
        None | Some('\n' | '[' | '{' | ',') => true,
        Some(':' | '-' | '?') => spaced,
        Some(_) => false,
    }
}

/// Whether a YAML `#` at `i` starts a comment: at the start of a line or after a space.
fn starts_comment(text: &str, i: usize) -> bool {
    matches!(text[..i].chars().last(), None | Some(' ' | '\t' | '\n'))
}

/// The index of the newline ending the line at `i` (or the end).
fn skip_line(text: &str, i: usize) -> usize {
    text[i..].find('\n').map_or(text.len(), |e| i + e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOSTILE: &[&str] = &[
        "plain",
        "a \"quoted\" word",
        "${file(\"/etc/passwd\")}",
        "%{ if true }x%{ endif }",
        "line one\nline two\r\n\tend",
        "\"\n}\nresource \"aws_iam_user\" \"evil\" {\n  name = \"x",
        "<<EOF\nevil\nEOF",
        "back\\slash\\",
        "$${already} %%{escaped}",
        "unicode: ünïcødé ☃ 𝄞 \u{2028} \u{7f} \u{0}",
        "ends with $",
        "'single' # not a comment: [x] {y}",
    ];

    fn hcl_string(body: &hcl::Body, key: &str) -> String {
        let attribute = body.attributes().find(|a| a.key() == key).unwrap();
        match attribute.expr() {
            hcl::Expression::String(s) => s.clone(),
            other => panic!("`{key}` is not a plain string: {other:?}"),
        }
    }

    #[test]
    fn hostile_values_stay_inside_their_hcl_string() {
        let template = "name = \"{{inputs.name}}\"\ntag = \"x-{{inputs.name}}-y\"\n";
        for hostile in HOSTILE {
            let context = json!({"inputs": {"name": hostile}});
            let out = render(Language::Hcl, template, &context).unwrap();
            let body: hcl::Body = hcl::parse(&out).unwrap();
            assert_eq!(body.attributes().count(), 2, "{out}");
            assert_eq!(body.blocks().count(), 0, "{out}");
            assert_eq!(hcl_string(&body, "name"), *hostile, "{out}");
            assert_eq!(hcl_string(&body, "tag"), format!("x-{hostile}-y"), "{out}");
        }
    }

    #[test]
    fn hostile_values_stay_inside_their_yaml_scalar() {
        let template = "name: \"{{inputs.name}}\"\nlist:\n  - \"{{inputs.name}}\"\n";
        for hostile in HOSTILE {
            let context = json!({"inputs": {"name": hostile}});
            let out = render(Language::Yaml, template, &context).unwrap();
            let docs = yaml_rust2::YamlLoader::load_from_str(&out).unwrap();
            let doc = &docs[0];
            assert_eq!(doc["name"].as_str(), Some(*hostile), "{out}");
            assert_eq!(doc["list"][0].as_str(), Some(*hostile), "{out}");
            assert_eq!(doc.as_hash().unwrap().len(), 2, "{out}");
        }
    }

    #[test]
    fn json_keeps_types_and_escapes_strings() {
        let template = r#"{"name": "{{inputs.name}}", "instances": "{{inputs.n}}", "label": "db-{{inputs.name}}"}"#;
        for hostile in HOSTILE {
            let context = json!({"inputs": {"name": hostile, "n": 3}});
            let out = render(Language::Json, template, &context).unwrap();
            let value: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(
                value,
                json!({"name": hostile, "instances": 3, "label": format!("db-{hostile}")})
            );
        }
    }

    #[test]
    fn values_outside_quotes_and_unescaped_output_are_refused() {
        let problems = check(
            Language::Hcl,
            "a = {{inputs.n}}\nb = \"{{{inputs.x}}}\"\nc = <<EOT\n{{inputs.y}}\nEOT\nd = \"{{inputs.z}}{x}\"\n# {{inputs.in_comment}}\ne = \"${var.x == \"{{inputs.ok}}\" ? 1 : 2}\"\n{{#if inputs.flag}}f = \"{{inputs.ok}}\"{{/if}}\n/* {{inputs.c}} */\n",
        )
        .unwrap_err();
        let joined = problems.join("\n");
        assert!(
            joined.contains("line 1: `{{inputs.n}}` is outside a quoted string"),
            "{joined}"
        );
        assert!(
            joined.contains("line 2: `{{{inputs.x}}}` would put a value in without escaping"),
            "{joined}"
        );
        assert!(
            joined.contains("line 4: `{{inputs.y}}` is inside a heredoc"),
            "{joined}"
        );
        assert!(
            joined.contains("line 6: `{{inputs.z}}` is followed by `{`"),
            "{joined}"
        );
        assert!(
            joined.contains("line 10: `{{inputs.c}}` is inside a /* */ comment"),
            "{joined}"
        );
        assert_eq!(problems.len(), 5, "{joined}");

        let problems = check(
            Language::Yaml,
            "a: {{inputs.n}}\nb: '{{inputs.m}}'\nc: \"{{inputs.ok}}\"\nd: don't \"{{inputs.p}}\"\n",
        )
        .unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(check(Language::Json, r#"{"a": "{{{inputs.x}}}"}"#).is_err());
        assert!(check(Language::Json, "not json {{x}}").is_err());
    }

    #[test]
    fn languages_come_from_the_path() {
        assert_eq!(
            Language::of("db/{{entity.identifier}}.tf"),
            Some(Language::Hcl)
        );
        assert_eq!(Language::of("x.auto.tfvars.json"), Some(Language::Json));
        assert_eq!(Language::of("k8s/app.yml"), Some(Language::Yaml));
        assert_eq!(Language::of("README"), None);
        assert_eq!(Language::of("notes.md"), None);
    }
}
