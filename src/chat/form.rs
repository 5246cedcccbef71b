//! The form for missing inputs (CONTRACT §3), the same on every platform: one field per missing
//! input, in the kind that fits its type (number with its range, a choice for an enum, several
//! choices for a list of enum values, text otherwise), labelled with the input's title and
//! prefilled with the given value, the `default` or, for DAY-2, the entity's current value.
//!
//! What the command already said is kept in the store under a random key that the platform's
//! form carries, so a restart between opening and submitting loses nothing. On submit the
//! command's inputs and the form's are checked again as one request.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::app::{App, AppError, CheckedRun, Received, RunRequest};
use crate::core::action::{RawInputs, RequestError};
use crate::core::ids::{EntityId, Identity};
use crate::core::run::Run;
use crate::core::schema::{plain_text, ValueKind, ValueSchema};

/// What a form remembers between opening and submitting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FormState {
    /// Who asked; only they may submit it.
    pub user: Identity,
    pub origin: String,
    pub channel: String,
    pub action: String,
    pub entity: Option<String>,
    /// The inputs the command gave, as typed.
    pub given: Vec<(String, String)>,
    /// The inputs the form asks for.
    pub missing: Vec<String>,
}

/// What came of a submitted form.
pub enum Submitted {
    Created(Box<Run>),
    /// The form is unknown (used, or never made) or belongs to someone else.
    Expired,
    /// Problems, each under the input it concerns.
    Problems(Vec<(String, String)>),
    Refused(String),
}

impl FormState {
    /// The form's template data (action, entity, fields), without storing anything: a platform
    /// whose form must open at once (Slack's `trigger_id`) renders first and saves after.
    pub fn data(&self, app: &App, key: &str) -> Result<Value, AppError> {
        let action = app.action(&self.action)?;
        let current = self
            .entity
            .as_deref()
            .and_then(|id| EntityId::try_from(id).ok())
            .and_then(|id| {
                app.catalog()
                    .entity(&action.blueprint, &id)
                    .map(|e| e.properties.clone())
            })
            .unwrap_or_default();
        let given: Map<String, Value> = self
            .given
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        let fields: Vec<Value> = self
            .missing
            .iter()
            .filter_map(|name| {
                let schema = action.input(name)?;
                let initial = given
                    .get(name)
                    .or(current.get(name))
                    .or(schema.default.as_ref());
                Some(field(name, schema, initial))
            })
            .collect();
        Ok(json!({
            "key": key,
            "action": action.title,
            "entity": self.entity,
            "fields": fields,
        }))
    }

    /// Stores the form under a new random key and returns its template data (which carries
    /// the key).
    pub async fn open(&self, app: &App) -> Result<Value, AppError> {
        let key = new_key();
        let data = self.data(app, &key)?;
        self.save(app, &key).await?;
        Ok(data)
    }

    /// Stores the form under `key`.
    pub async fn save(&self, app: &App, key: &str) -> Result<(), AppError> {
        let saved = serde_json::to_value(self).expect("form state serialises");
        app.save_form(key, Some(&saved)).await
    }
}

/// A new random key for a form (it is all a submission carries to find the form).
pub fn new_key() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A submitted form: the command's inputs plus the form's (`submitted`, by input name),
/// checked as one request; the form is dropped once its run exists.
pub async fn submit(
    app: &App,
    key: &str,
    who: &Identity,
    submitted: Vec<(String, String)>,
) -> Submitted {
    match check(app, key, who, submitted) {
        Ok(checked) => create(app, checked).await,
        Err(outcome) => outcome,
    }
}

/// The first half of [`submit`], which waits for nothing: the run the form asks for, or why
/// there is none (so a platform can show the problems in the form at once).
pub fn check(
    app: &App,
    key: &str,
    who: &Identity,
    submitted: Vec<(String, String)>,
) -> Result<CheckedRun, Submitted> {
    let asked = match app.form(key) {
        Ok(Some(saved)) => serde_json::from_value::<FormState>(saved).ok(),
        _ => None,
    };
    let Some(asked) = asked.filter(|a| a.user == *who) else {
        return Err(Submitted::Expired);
    };
    let mut inputs: Vec<(String, String)> = asked
        .given
        .into_iter()
        .filter(|(name, _)| !submitted.iter().any(|(n, _)| n == name))
        .collect();
    inputs.extend(submitted);
    app.check_run(RunRequest {
        who,
        action: &asked.action,
        entity: asked.entity.as_deref(),
        inputs: RawInputs::Text(inputs),
        origin: &asked.origin,
        channel: Some(&asked.channel),
        received: Some(Received::Form(key)),
    })
    .map_err(refusal)
}

/// The second half of [`submit`]: the checked run is created, and its form dropped in the same
/// change (so a form submitted twice, or again after a restart, makes one run).
pub async fn create(app: &App, checked: CheckedRun) -> Submitted {
    match app.create_run(checked).await {
        Ok(run) => Submitted::Created(Box::new(run)),
        Err(error) => refusal(error),
    }
}

/// Why a submitted form made no run: its problems by input, or the refusal.
fn refusal(error: AppError) -> Submitted {
    match error {
        AppError::Request(RequestError::Inputs(problems)) => {
            let mut listed: Vec<(String, String)> = problems
                .invalid
                .iter()
                .map(|v| (v.field.clone(), format!("{} {}", v.field, v.rule)))
                .collect();
            listed.extend(
                problems
                    .missing
                    .iter()
                    .map(|m| (m.clone(), format!("{m} is required"))),
            );
            Submitted::Problems(listed)
        }
        error => Submitted::Refused(error.to_string()),
    }
}

fn field(name: &str, schema: &ValueSchema, initial: Option<&Value>) -> Value {
    let enum_of = |s: &ValueSchema| {
        s.allowed
            .as_ref()
            .map(|a| a.iter().map(plain_text).collect::<Vec<_>>())
    };
    let (kind, options) = match &schema.kind {
        ValueKind::Number { .. } => ("number", None),
        ValueKind::Array { items: Some(items) } if items.allowed.is_some() => {
            ("checkboxes", enum_of(items))
        }
        _ if schema.allowed.is_some() => ("select", enum_of(schema)),
        _ => ("text", None),
    };
    let initial_options: Vec<String> = match initial {
        Some(Value::Array(items)) => items.iter().map(plain_text).collect(),
        Some(Value::String(listed)) if kind == "checkboxes" => listed
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    json!({
        "name": name,
        "label": schema.title.clone().unwrap_or_else(|| name.to_owned()),
        "hint": schema.description,
        "kind": kind,
        "decimal": matches!(schema.kind, ValueKind::Number { integer: false }),
        "min": schema.minimum.map(|m| m.to_string()),
        "max": schema.maximum.map(|m| m.to_string()),
        "options": options.map(|o| o.into_iter().take(100).collect::<Vec<_>>()),
        "initial": if kind == "checkboxes" { None } else { initial.map(plain_text) },
        "initial_options": initial_options,
    })
}
