//! Self-service action definitions in Port's JSON, compiled, and the checks a run request must
//! pass: the entity, the permission to execute, and every input against its guardrails.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::access::{Audience, Directory, Permissions};
use super::catalog::{Catalog, Entity};
use super::gitops::{self, GitopsInvocation, WorkflowInvocation};
use super::ids::{ActionId, BlueprintId, EntityId, Identity};
use super::schema::{plain_text, Rule, SchemaProblem, ValueSchema, Violation};
use super::template;

/// What an action does to its blueprint's entities (Port's `trigger.operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Operation {
    #[serde(rename = "CREATE")]
    Create,
    #[serde(rename = "DAY-2")]
    Day2,
    #[serde(rename = "DELETE")]
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Day2 => "DAY-2",
            Operation::Delete => "DELETE",
        }
    }

    /// DAY-2 and DELETE act on an existing entity; CREATE makes a new one.
    pub fn needs_entity(self) -> bool {
        !matches!(self, Operation::Create)
    }
}

/// How many approvals a run needs before it starts (Port's `requiredApproval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ApprovalPolicy {
    /// One approval from any permitted approver.
    Any,
    /// One approval from each listed approver user and from a member of each listed team.
    All,
}

/// Where an entity change's values come from: Port's `{blueprintIdentifier, mapping}`, whose
/// strings are templates over the run context.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityMapping {
    pub blueprint: BlueprintId,
    pub mapping: Value,
}

/// An entity to delete when a run succeeds; `identifier` is a template.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityDeletion {
    pub blueprint: BlueprintId,
    pub identifier: String,
}

/// portbot's `onSuccess`: catalog changes applied once when a run ends SUCCESS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OnSuccess {
    pub upsert: Vec<EntityMapping>,
    pub delete: Vec<EntityDeletion>,
}

/// A `WEBHOOK` invocation. `url`, header values and `body` strings are templates.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookInvocation {
    pub url: HookUrl,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
    pub synchronized: bool,
    pub client_id: Option<String>,
}

/// Where a webhook goes. A URL without templates is parsed once, when the action loads, so a
/// bad one is reported by `portbot check` and a run does not parse it again (the parse was a
/// twentieth of a webhook run's instructions).
#[derive(Debug, Clone, PartialEq)]
pub enum HookUrl {
    Fixed(url::Url),
    /// Rendered over each run's context, then parsed.
    Template(String),
}

impl HookUrl {
    fn parse(text: String) -> Result<HookUrl, String> {
        if template::is_template(&text) {
            return template::check_syntax(&text)
                .map(|()| HookUrl::Template(text))
                .map_err(|e| e.to_string());
        }
        absolute_url(&text).map(HookUrl::Fixed)
    }
}

/// An `http` or `https` URL with a host, or why `text` is not one.
pub fn absolute_url(text: &str) -> Result<url::Url, String> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(url),
        Ok(_) => Err(format!("`{text}` is not an http or https URL")),
        Err(error) => Err(format!("`{text}` is not a URL: {error}")),
    }
}

/// A `COMMAND` invocation: a program and its arguments (templates), run without a shell.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandInvocation {
    pub command: Vec<String>,
    pub working_dir: Option<String>,
    pub timeout: Duration,
}

/// The backend an action invokes once its run may start.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    Webhook(WebhookInvocation),
    Command(CommandInvocation),
    UpsertEntity(EntityMapping),
    Gitops(GitopsInvocation),
    GithubWorkflow(WorkflowInvocation),
}

impl Invocation {
    pub fn kind(&self) -> &'static str {
        match self {
            Invocation::Webhook(_) => "WEBHOOK",
            Invocation::Command(_) => "COMMAND",
            Invocation::UpsertEntity(_) => "UPSERT_ENTITY",
            Invocation::Gitops(_) => "GITOPS",
            Invocation::GithubWorkflow(_) => "GITHUB",
        }
    }
}

/// A compiled action. `raw` is the definition as written, for `GET /v1/actions`.
#[derive(Debug, Clone)]
pub struct Action {
    pub identifier: ActionId,
    pub title: String,
    pub description: Option<String>,
    pub operation: Operation,
    pub blueprint: BlueprintId,
    /// Inputs in display order (`userInputs.order`, then definition order).
    pub inputs: Vec<(String, ValueSchema)>,
    pub required: Vec<String>,
    pub invocation: Invocation,
    pub approval: Option<ApprovalPolicy>,
    pub permissions: Permissions,
    pub allow_self_approval: bool,
    pub on_success: OnSuccess,
    pub raw: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAction {
    identifier: String,
    title: Option<String>,
    description: Option<String>,
    trigger: RawTrigger,
    invocation_method: Value,
    #[serde(default)]
    required_approval: RawApproval,
    #[serde(default)]
    permissions: RawPermissions,
    #[serde(default)]
    on_success: RawOnSuccess,
    #[serde(default)]
    allow_self_approval: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTrigger {
    #[serde(rename = "type")]
    kind: String,
    operation: String,
    blueprint_identifier: String,
    #[serde(default)]
    user_inputs: RawUserInputs,
}

#[derive(Deserialize, Default)]
struct RawUserInputs {
    #[serde(default)]
    properties: Map<String, Value>,
    #[serde(default)]
    required: Vec<String>,
    #[serde(default)]
    order: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawApproval {
    Flag(bool),
    Policy {
        #[serde(rename = "type")]
        kind: ApprovalPolicy,
    },
}

impl Default for RawApproval {
    fn default() -> Self {
        RawApproval::Flag(false)
    }
}

#[derive(Deserialize, Default)]
struct RawPermissions {
    execute: Option<RawAudience>,
    approve: Option<RawAudience>,
}

#[derive(Deserialize)]
struct RawAudience {
    #[serde(flatten)]
    audience: Audience,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawOnSuccess {
    #[serde(default)]
    upsert_entities: Vec<RawMapping>,
    #[serde(default)]
    delete_entities: Vec<RawDeletion>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMapping {
    blueprint_identifier: String,
    mapping: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDeletion {
    blueprint_identifier: String,
    identifier: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawWebhook {
    url: String,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default)]
    headers: Map<String, Value>,
    body: Option<Value>,
    #[serde(default)]
    synchronized: bool,
    client_id: Option<String>,
}

fn default_method() -> String {
    "POST".to_owned()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCommand {
    command: Vec<String>,
    working_dir: Option<String>,
    #[serde(default = "default_timeout")]
    timeout_seconds: u64,
}

fn default_timeout() -> u64 {
    300
}

/// Everything the definition of an action is checked against.
pub struct DefinitionContext<'a> {
    pub catalog: &'a Catalog,
    pub directory: &'a Directory,
}

pub(super) fn problem(field: impl Into<String>, message: impl Into<String>) -> SchemaProblem {
    SchemaProblem {
        field: field.into(),
        message: message.into(),
    }
}

pub(super) fn deserialize<T: serde::de::DeserializeOwned>(
    value: &Value,
    prefix: &str,
) -> Result<T, SchemaProblem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = match (prefix.is_empty(), path.as_str()) {
            (_, ".") => prefix.to_owned(),
            (true, _) => path,
            (false, _) => format!("{prefix}.{path}"),
        };
        problem(field, e.into_inner().to_string())
    })
}

impl Action {
    /// Compiles an action definition. Every problem names the field it is about.
    pub fn parse(raw: Value, ctx: &DefinitionContext) -> Result<Self, Vec<SchemaProblem>> {
        let parsed: RawAction = deserialize(&raw, "").map_err(|p| vec![p])?;
        let mut problems = Vec::new();

        let identifier = ActionId::try_from(parsed.identifier.as_str())
            .map_err(|e| problems.push(problem("identifier", e.to_string())))
            .ok();
        if parsed.trigger.kind != "self-service" {
            problems.push(problem(
                "trigger.type",
                format!(
                    "`{}` is not supported; use `self-service`",
                    parsed.trigger.kind
                ),
            ));
        }
        let operation = match parsed.trigger.operation.as_str() {
            "CREATE" => Operation::Create,
            "DAY-2" => Operation::Day2,
            "DELETE" => Operation::Delete,
            other => {
                problems.push(problem(
                    "trigger.operation",
                    format!("`{other}` is not one of CREATE, DAY-2, DELETE"),
                ));
                Operation::Create
            }
        };
        let blueprint = match BlueprintId::try_from(parsed.trigger.blueprint_identifier.as_str()) {
            Ok(bp) if ctx.catalog.blueprint(&bp).is_some() => Some(bp),
            Ok(bp) => {
                problems.push(problem(
                    "trigger.blueprintIdentifier",
                    format!("there is no blueprint `{bp}`"),
                ));
                None
            }
            Err(e) => {
                problems.push(problem("trigger.blueprintIdentifier", e.to_string()));
                None
            }
        };

        let inputs = compile_inputs(&parsed.trigger.user_inputs, ctx, &mut problems);
        let invocation = compile_invocation(&parsed.invocation_method, ctx, &mut problems);
        let on_success = compile_on_success(parsed.on_success, ctx, &mut problems);

        let approval = match parsed.required_approval {
            RawApproval::Flag(false) => None,
            RawApproval::Flag(true) => Some(ApprovalPolicy::Any),
            RawApproval::Policy { kind } => Some(kind),
        };
        let mut audience = |raw: Option<RawAudience>, field: &str| {
            raw.map(|r| {
                if !r.roles.is_empty() {
                    problems.push(problem(
                        format!("permissions.{field}.roles"),
                        "roles are not supported; name users or teams",
                    ));
                }
                for team in &r.audience.teams {
                    if !ctx.directory.has_team(team) {
                        problems.push(problem(
                            format!("permissions.{field}.teams"),
                            format!("there is no team `{team}` in the `teams` configuration"),
                        ));
                    }
                }
                r.audience
            })
        };
        let permissions = Permissions {
            execute: audience(parsed.permissions.execute, "execute"),
            approve: audience(parsed.permissions.approve, "approve").unwrap_or_default(),
        };
        if approval.is_some() && permissions.approve.is_empty() {
            problems.push(problem(
                "permissions.approve",
                "the action requires approval but names no approvers (users or teams)",
            ));
        }

        match (identifier, blueprint, inputs, invocation) {
            (Some(identifier), Some(blueprint), Some((inputs, required)), Some(invocation))
                if problems.is_empty() =>
            {
                Ok(Action {
                    title: parsed.title.unwrap_or_else(|| identifier.to_string()),
                    identifier,
                    description: parsed.description,
                    operation,
                    blueprint,
                    inputs,
                    required,
                    invocation,
                    approval,
                    permissions,
                    allow_self_approval: parsed.allow_self_approval,
                    on_success,
                    raw,
                })
            }
            _ => Err(problems),
        }
    }

    pub fn input(&self, name: &str) -> Option<&ValueSchema> {
        self.inputs.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }

    /// Checks who runs it, on what, with which inputs. Inputs given as text (chat, CLI) are
    /// typed by their schema; missing optional inputs take their `default`.
    pub fn check_request<'c>(
        &self,
        who: &Identity,
        entity: Option<&str>,
        inputs: RawInputs,
        catalog: &'c Catalog,
        directory: &Directory,
    ) -> Result<CheckedRequest<'c>, RequestError> {
        if !self.permissions.may_execute(who, directory) {
            return Err(RequestError::NotPermitted {
                action: self.identifier.clone(),
                who: who.clone(),
            });
        }
        let entity = self.resolve_entity(entity, catalog)?;
        let mut values = Map::new();
        let mut violations = Vec::new();
        let mut given = |name: String, parsed: Result<Value, Rule>| match parsed {
            Ok(value) => {
                values.insert(name, value);
            }
            Err(rule) => violations.push(Violation { field: name, rule }),
        };
        let unknown = || Rule::UnknownInput {
            known: self.inputs.iter().map(|(n, _)| n.clone()).collect(),
        };
        match inputs {
            RawInputs::Text(pairs) => {
                for (name, text) in pairs {
                    let parsed = self
                        .input(&name)
                        .ok_or_else(unknown)
                        .and_then(|schema| schema.from_text(&text));
                    given(name, parsed);
                }
            }
            RawInputs::Json(map) => {
                for (name, value) in map {
                    let parsed = match self.input(&name) {
                        Some(_) => Ok(value),
                        None => Err(unknown()),
                    };
                    given(name, parsed);
                }
            }
        }
        let mut missing = Vec::new();
        for (name, schema) in &self.inputs {
            if values.contains_key(name) || violations.iter().any(|v| &v.field == name) {
                continue;
            }
            match &schema.default {
                Some(default) => {
                    values.insert(name.clone(), default.clone());
                }
                None if self.required.contains(name) => missing.push(name.clone()),
                None => {}
            }
        }
        for (name, value) in &values {
            if let Some(schema) = self.input(name) {
                if let Err(rule) = schema.check(value, catalog) {
                    violations.push(Violation {
                        field: name.clone(),
                        rule,
                    });
                }
            }
        }
        if !violations.is_empty() || !missing.is_empty() {
            return Err(RequestError::Inputs(InputProblems {
                invalid: violations,
                missing,
                given: values,
            }));
        }
        Ok(CheckedRequest {
            entity,
            inputs: values,
        })
    }

    fn resolve_entity<'c>(
        &self,
        given: Option<&str>,
        catalog: &'c Catalog,
    ) -> Result<Option<&'c Entity>, RequestError> {
        match (self.operation.needs_entity(), given) {
            (false, None) => Ok(None),
            (false, Some(_)) => Err(RequestError::EntityNotExpected {
                action: self.identifier.clone(),
            }),
            (true, None) => Err(RequestError::EntityRequired {
                action: self.identifier.clone(),
                operation: self.operation,
                blueprint: self.blueprint.clone(),
                suggestions: suggest(
                    "",
                    catalog
                        .entities_of(&self.blueprint)
                        .map(|e| e.identifier.as_str()),
                ),
            }),
            (true, Some(raw)) => {
                let found = EntityId::try_from(raw)
                    .ok()
                    .and_then(|id| catalog.entity(&self.blueprint, &id));
                match found {
                    Some(entity) => Ok(Some(entity)),
                    None => Err(RequestError::UnknownEntity {
                        blueprint: self.blueprint.clone(),
                        given: raw.to_owned(),
                        suggestions: suggest(
                            raw,
                            catalog
                                .entities_of(&self.blueprint)
                                .map(|e| e.identifier.as_str()),
                        ),
                    }),
                }
            }
        }
    }
}

/// Inputs or properties with their rules, in order.
type NamedSchemas = Vec<(String, ValueSchema)>;

fn compile_inputs(
    raw: &RawUserInputs,
    ctx: &DefinitionContext,
    problems: &mut Vec<SchemaProblem>,
) -> Option<(NamedSchemas, Vec<String>)> {
    let before = problems.len();
    let mut inputs = Vec::new();
    let mut names: Vec<&String> = raw
        .order
        .iter()
        .filter(|n| raw.properties.contains_key(*n))
        .collect();
    names.extend(raw.properties.keys().filter(|k| !raw.order.contains(k)));
    for name in names {
        let field = format!("trigger.userInputs.properties.{name}");
        match ValueSchema::compile(&raw.properties[name]) {
            Ok(schema) => {
                if let Some(super::schema::Format::Entity(bp)) = &schema.format {
                    if ctx.catalog.blueprint(bp).is_none() {
                        problems.push(problem(
                            format!("{field}.blueprint"),
                            format!("there is no blueprint `{bp}`"),
                        ));
                    }
                }
                inputs.push((name.clone(), schema));
            }
            Err(inner) => problems.extend(inner.into_iter().map(|p| {
                problem(
                    if p.field.is_empty() {
                        field.clone()
                    } else {
                        format!("{field}.{}", p.field)
                    },
                    p.message,
                )
            })),
        }
    }
    for name in raw.order.iter().chain(&raw.required) {
        if !raw.properties.contains_key(name) {
            problems.push(problem(
                "trigger.userInputs",
                format!("`{name}` is listed but not defined in properties"),
            ));
        }
    }
    (problems.len() == before).then(|| (inputs, raw.required.clone()))
}

fn compile_mapping(
    raw: RawMapping,
    field: &str,
    ctx: &DefinitionContext,
    problems: &mut Vec<SchemaProblem>,
) -> Option<EntityMapping> {
    let blueprint = match BlueprintId::try_from(raw.blueprint_identifier.as_str()) {
        Ok(bp) if ctx.catalog.blueprint(&bp).is_some() => Some(bp),
        _ => {
            problems.push(problem(
                format!("{field}.blueprintIdentifier"),
                format!("there is no blueprint `{}`", raw.blueprint_identifier),
            ));
            None
        }
    };
    if raw
        .mapping
        .get("identifier")
        .and_then(Value::as_str)
        .is_none()
    {
        problems.push(problem(
            format!("{field}.mapping.identifier"),
            "is required (a template for the entity's identifier)",
        ));
    }
    if let Err(e) = template::check_value_syntax(&raw.mapping) {
        problems.push(problem(format!("{field}.mapping"), e.to_string()));
    }
    Some(EntityMapping {
        blueprint: blueprint?,
        mapping: raw.mapping,
    })
}

fn compile_invocation(
    raw: &Value,
    ctx: &DefinitionContext,
    problems: &mut Vec<SchemaProblem>,
) -> Option<Invocation> {
    let field = "invocationMethod";
    let kind = raw.get("type").and_then(Value::as_str).unwrap_or_default();
    let checked = |problems: &mut Vec<SchemaProblem>,
                   result: Result<(), template::TemplateError>| {
        if let Err(e) = result {
            problems.push(problem(field, e.to_string()));
        }
    };
    match kind {
        "WEBHOOK" => {
            let hook: RawWebhook = deserialize(raw, field).map_err(|p| problems.push(p)).ok()?;
            let url = HookUrl::parse(hook.url)
                .map_err(|e| problems.push(problem(format!("{field}.url"), e)))
                .ok();
            checked(
                problems,
                template::check_value_syntax(&Value::Object(hook.headers.clone())),
            );
            if let Some(body) = &hook.body {
                checked(problems, template::check_value_syntax(body));
            }
            let method = hook.method.to_ascii_uppercase();
            if !matches!(method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE" | "GET") {
                problems.push(problem(
                    format!("{field}.method"),
                    format!("`{method}` is not one of POST, PUT, PATCH, DELETE, GET"),
                ));
            }
            let headers = hook
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), plain_text(v)))
                .collect();
            Some(Invocation::Webhook(WebhookInvocation {
                url: url?,
                method,
                headers,
                body: hook.body,
                synchronized: hook.synchronized,
                client_id: hook.client_id,
            }))
        }
        "COMMAND" => {
            let cmd: RawCommand = deserialize(raw, field).map_err(|p| problems.push(p)).ok()?;
            if cmd.command.is_empty() {
                problems.push(problem(
                    format!("{field}.command"),
                    "must name a program: [program, args...]",
                ));
            }
            for part in &cmd.command {
                checked(problems, template::check_syntax(part));
            }
            if cmd.timeout_seconds == 0 {
                problems.push(problem(
                    format!("{field}.timeoutSeconds"),
                    "must be at least 1",
                ));
            }
            Some(Invocation::Command(CommandInvocation {
                command: cmd.command,
                working_dir: cmd.working_dir,
                timeout: Duration::from_secs(cmd.timeout_seconds),
            }))
        }
        "UPSERT_ENTITY" => {
            let mapping: RawMapping = deserialize(raw, field).map_err(|p| problems.push(p)).ok()?;
            compile_mapping(mapping, field, ctx, problems).map(Invocation::UpsertEntity)
        }
        "GITOPS" => gitops::compile_gitops(raw, field, problems).map(Invocation::Gitops),
        "GITHUB" => gitops::compile_workflow(raw, field, problems).map(Invocation::GithubWorkflow),
        other => {
            problems.push(problem(
                format!("{field}.type"),
                format!("`{other}` is not one of WEBHOOK, COMMAND, UPSERT_ENTITY, GITOPS, GITHUB"),
            ));
            None
        }
    }
}

fn compile_on_success(
    raw: RawOnSuccess,
    ctx: &DefinitionContext,
    problems: &mut Vec<SchemaProblem>,
) -> OnSuccess {
    let upsert = raw
        .upsert_entities
        .into_iter()
        .enumerate()
        .filter_map(|(i, m)| {
            compile_mapping(m, &format!("onSuccess.upsertEntities[{i}]"), ctx, problems)
        })
        .collect();
    let delete = raw
        .delete_entities
        .into_iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let field = format!("onSuccess.deleteEntities[{i}]");
            if let Err(e) = template::check_syntax(&d.identifier) {
                problems.push(problem(format!("{field}.identifier"), e.to_string()));
            }
            match BlueprintId::try_from(d.blueprint_identifier.as_str()) {
                Ok(bp) if ctx.catalog.blueprint(&bp).is_some() => Some(EntityDeletion {
                    blueprint: bp,
                    identifier: d.identifier,
                }),
                _ => {
                    problems.push(problem(
                        format!("{field}.blueprintIdentifier"),
                        format!("there is no blueprint `{}`", d.blueprint_identifier),
                    ));
                    None
                }
            }
        })
        .collect();
    OnSuccess { upsert, delete }
}

/// Up to three known names closest to what was typed, best first. Nothing is close to a name
/// longer than [`SUGGEST_UP_TO`] characters (and comparing one with every name would be slow).
pub fn suggest<'a>(given: &str, known: impl Iterator<Item = &'a str>) -> Vec<String> {
    if given.chars().count() > SUGGEST_UP_TO {
        return Vec::new();
    }
    let given = given.to_lowercase();
    let mut scored: Vec<(f64, &str)> = known
        .map(|k| {
            let k_lower = k.to_lowercase();
            let mut score = strsim::jaro_winkler(&given, &k_lower);
            if !given.is_empty() && k_lower.contains(&given) {
                score += 1.0;
            }
            (score, k)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored
        .into_iter()
        .take(3)
        .map(|(_, k)| k.to_owned())
        .collect()
}

/// The longest typed name [`suggest`] finds names close to.
const SUGGEST_UP_TO: usize = 200;

/// Inputs as they arrive: text pairs from chat and the CLI, or JSON from the API.
#[derive(Debug, Clone)]
pub enum RawInputs {
    Text(Vec<(String, String)>),
    Json(Map<String, Value>),
}

/// A request that passed every check.
#[derive(Debug, Clone)]
pub struct CheckedRequest<'c> {
    /// In the catalog the request was checked against.
    pub entity: Option<&'c Entity>,
    pub inputs: Map<String, Value>,
}

/// Inputs that were invalid or missing; `given` holds what was valid, for prefilling a form.
#[derive(Debug, Clone, PartialEq)]
pub struct InputProblems {
    pub invalid: Vec<Violation>,
    pub missing: Vec<String>,
    pub given: Map<String, Value>,
}

impl std::fmt::Display for InputProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self
            .invalid
            .iter()
            .map(Violation::to_string)
            .chain(
                self.missing
                    .iter()
                    .map(|m| format!("`{m}` {}", Rule::Required)),
            )
            .collect();
        f.write_str(&lines.join("\n"))
    }
}

/// Why a run request was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("there is no action `{given}`{}", did_you_mean(.suggestions))]
    UnknownAction {
        given: String,
        suggestions: Vec<String>,
    },
    #[error("{who} may not run `{action}`")]
    NotPermitted { action: ActionId, who: Identity },
    #[error("`{action}` is a {} action on {blueprint}: name the {blueprint} entity to run it on{}", .operation.as_str(), did_you_mean(.suggestions))]
    EntityRequired {
        action: ActionId,
        operation: Operation,
        blueprint: BlueprintId,
        suggestions: Vec<String>,
    },
    #[error("there is no {blueprint} entity `{given}`{}", did_you_mean(.suggestions))]
    UnknownEntity {
        blueprint: BlueprintId,
        given: String,
        suggestions: Vec<String>,
    },
    #[error("`{action}` creates a new entity: give no entity, only inputs")]
    EntityNotExpected { action: ActionId },
    #[error("{0}")]
    Inputs(InputProblems),
    /// Another active run changes the same file (GITOPS), as Atlantis locks a project.
    #[error("`{resource}` is being changed by run {holder}, which has not ended yet; try again when it has (or cancel it)")]
    Locked {
        resource: String,
        holder: super::ids::RunId,
    },
}

fn did_you_mean(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!(" (did you mean: {}?)", suggestions.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::catalog::Blueprint;
    use serde_json::json;

    #[test]
    fn names_close_to_a_typed_one_are_suggested_unless_it_is_very_long() {
        let known = ["mailer", "cart", "Mail-Relay"];
        assert_eq!(
            suggest("MAILR", known.into_iter()),
            ["mailer", "Mail-Relay", "cart"]
        );
        assert!(suggest(&"m".repeat(201), known.into_iter()).is_empty());
    }

    fn fixture() -> (Catalog, Directory) {
        let bp = Blueprint::parse(json!({"identifier": "Component"})).unwrap();
        let mut catalog = Catalog::new([bp]);
        catalog.insert(
            serde_json::from_value(json!({"identifier": "mailer", "blueprint": "Component"}))
                .unwrap(),
        );
        let dir = Directory::new([(
            "devops".to_owned(),
            [Identity::try_from("ops@x.io").unwrap()].into(),
        )]);
        (catalog, dir)
    }

    fn action(catalog: &Catalog, dir: &Directory) -> Action {
        Action::parse(
            json!({
                "identifier": "add-documentdb",
                "trigger": {"type": "self-service", "operation": "DAY-2", "blueprintIdentifier": "Component",
                    "userInputs": {"properties": {
                        "instances": {"type": "number", "minimum": 1, "maximum": 5},
                        "engine": {"type": "string", "enum": ["5.0", "4.0"], "default": "5.0"}
                    }, "required": ["instances"]}},
                "invocationMethod": {"type": "WEBHOOK", "url": "http://127.0.0.1:1/hook"},
                "requiredApproval": {"type": "ANY"},
                "permissions": {"approve": {"teams": ["devops"]}}
            }),
            &DefinitionContext { catalog, directory: dir },
        )
        .unwrap()
    }

    #[test]
    fn a_valid_request_gets_typed_inputs_and_defaults() {
        let (catalog, dir) = fixture();
        let a = action(&catalog, &dir);
        let who = Identity::try_from("dev@x.io").unwrap();
        let ok = a
            .check_request(
                &who,
                Some("mailer"),
                RawInputs::Text(vec![("instances".into(), "3".into())]),
                &catalog,
                &dir,
            )
            .unwrap();
        assert_eq!(
            Value::Object(ok.inputs),
            json!({"instances": 3, "engine": "5.0"})
        );
    }

    #[test]
    fn guardrails_name_the_input_and_rule() {
        let (catalog, dir) = fixture();
        let a = action(&catalog, &dir);
        let who = Identity::try_from("dev@x.io").unwrap();
        let err = a
            .check_request(
                &who,
                Some("mailer"),
                RawInputs::Json(
                    json!({"instances": 9, "color": "red"})
                        .as_object()
                        .unwrap()
                        .clone(),
                ),
                &catalog,
                &dir,
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`instances` must be at most 5 (got 9)"),
            "{err}"
        );
        assert!(
            err.contains("`color` is not an input of this action"),
            "{err}"
        );
        let err = a
            .check_request(&who, Some("mailr"), RawInputs::Text(vec![]), &catalog, &dir)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "there is no Component entity `mailr` (did you mean: mailer?)"
        );
        let err = a
            .check_request(
                &who,
                Some("mailer"),
                RawInputs::Text(vec![]),
                &catalog,
                &dir,
            )
            .unwrap_err();
        assert!(
            matches!(err, RequestError::Inputs(ref p) if p.missing == vec!["instances".to_owned()])
        );
    }

    #[test]
    fn definition_problems_name_their_field() {
        let (catalog, dir) = fixture();
        let problems = Action::parse(
            json!({"identifier": "x", "trigger": {"type": "self-service", "operation": "DAY-3", "blueprintIdentifier": "Nope",
                "userInputs": {"properties": {"n": {"type": "number", "minimum": 9, "maximum": 1}}, "required": ["m"]}},
                "invocationMethod": {"type": "COMMAND", "command": []}, "requiredApproval": true}),
            &DefinitionContext { catalog: &catalog, directory: &dir },
        )
        .unwrap_err();
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "trigger.operation",
                "trigger.blueprintIdentifier",
                "trigger.userInputs.properties.n.minimum",
                "trigger.userInputs",
                "invocationMethod.command",
                "permissions.approve"
            ]
        );
    }

    #[test]
    fn a_webhook_url_is_parsed_when_the_action_loads() {
        let (catalog, dir) = fixture();
        let parse = |url: &str| {
            Action::parse(
                json!({"identifier": "x", "trigger": {"type": "self-service", "operation": "DAY-2", "blueprintIdentifier": "Component"},
                    "invocationMethod": {"type": "WEBHOOK", "url": url}}),
                &DefinitionContext { catalog: &catalog, directory: &dir },
            )
            .map(|action| action.invocation)
        };
        let problem = |url: &str| {
            let problems = parse(url).unwrap_err();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].field, "invocationMethod.url");
            problems[0].message.clone()
        };
        assert_eq!(
            problem("hooks.example.com/run"),
            "`hooks.example.com/run` is not a URL: relative URL without a base"
        );
        assert_eq!(
            problem("ftp://hooks.example.com/run"),
            "`ftp://hooks.example.com/run` is not an http or https URL"
        );
        assert!(!problem("https://hooks.example.com/{{#if run}}").is_empty());
        let Ok(Invocation::Webhook(hook)) = parse("https://hooks.example.com/run") else {
            panic!("a plain URL loads");
        };
        assert_eq!(
            hook.url,
            HookUrl::Fixed("https://hooks.example.com/run".parse().unwrap())
        );
        let Ok(Invocation::Webhook(hook)) = parse("https://hooks.example.com/{{run.id}}") else {
            panic!("a URL template loads");
        };
        assert_eq!(
            hook.url,
            HookUrl::Template("https://hooks.example.com/{{run.id}}".into())
        );
    }
}
