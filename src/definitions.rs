//! Loads and checks everything a deployment defines: teams, blueprints, entities, actions and
//! message templates. Every problem is reported with its file and field, all at once, so
//! `portbot check` and `portbot serve` can say everything that is wrong in one go.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::core::access::Directory;
use crate::core::action::{Action, DefinitionContext, Invocation};
use crate::core::catalog::{Blueprint, Catalog, CatalogError, Entity};
use crate::core::gitops::Provider;
use crate::core::iac::{self, Language};
use crate::core::ids::ActionId;

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.message
            )
        }
    }
}

/// An entity from a catalog file, with a hash of its definition so a later start can tell
/// whether the file changed.
pub struct FileEntity {
    pub entity: Entity,
    pub hash: u64,
}

/// Everything loaded and checked.
pub struct Definitions {
    pub blueprints: Vec<Blueprint>,
    pub entities: Vec<FileEntity>,
    pub actions: BTreeMap<ActionId, Action>,
    pub directory: Directory,
}

/// Loads the definitions named by the settings; on any problem returns all of them.
pub fn load(settings: &Settings) -> Result<Definitions, Vec<Problem>> {
    let mut problems = Vec::new();
    let root = &settings.catalog.path;
    let directory = settings.directory().unwrap_or_else(|message| {
        problems.push(Problem {
            file: PathBuf::from("configuration"),
            field: "teams".into(),
            message,
        });
        Directory::default()
    });

    let mut blueprints: Vec<Blueprint> = Vec::new();
    for (file, value) in json_documents(&root.join("blueprints"), &mut problems) {
        match Blueprint::parse(value) {
            Ok(bp) if blueprints.iter().any(|b| b.identifier == bp.identifier) => {
                problems.push(problem(
                    &file,
                    "identifier",
                    format!("blueprint `{}` is defined twice", bp.identifier),
                ));
            }
            Ok(bp) => blueprints.push(bp),
            Err(inner) => problems.extend(
                inner
                    .into_iter()
                    .map(|p| problem(&file, &p.field, p.message)),
            ),
        }
    }
    for bp in &blueprints {
        for (name, rel) in &bp.relations {
            if !blueprints.iter().any(|b| b.identifier == rel.target) {
                problems.push(Problem {
                    file: root.join("blueprints"),
                    field: format!("{}.relations.{name}.target", bp.identifier),
                    message: format!("there is no blueprint `{}`", rel.target),
                });
            }
        }
    }

    let mut catalog = Catalog::new(blueprints.clone());
    let mut entities = Vec::new();
    let mut entity_files = BTreeMap::new();
    let entity_root = root.join("entities");
    for (file, mut value) in json_documents(&entity_root, &mut problems) {
        // Port's entity JSON may leave out `blueprint`: then the folder it is in names it.
        if value.get("blueprint").is_none() {
            if let Some(folder) = file
                .parent()
                .filter(|p| *p != entity_root)
                .and_then(Path::file_name)
            {
                value["blueprint"] = Value::from(folder.to_string_lossy().into_owned());
            }
        }
        let hash = stable_hash(&value);
        match serde_json::from_value::<Entity>(value) {
            Ok(entity) if catalog.blueprint(&entity.blueprint).is_none() => problems.push(problem(
                &file,
                "blueprint",
                format!("there is no blueprint `{}`", entity.blueprint),
            )),
            Ok(entity) => {
                let key = (entity.blueprint.clone(), entity.identifier.clone());
                if let Some(other) = entity_files.insert(key, file.clone()) {
                    problems.push(problem(
                        &file,
                        "identifier",
                        format!("{} `{}` is also defined in {}", entity.blueprint, entity.identifier, other.display()),
                    ));
                }
                catalog.insert(entity.clone());
                entities.push(FileEntity { entity, hash });
            }
            Err(e) => problems.push(problem(
                &file,
                "",
                format!("{e} (an entity needs `identifier`, and `blueprint` unless its folder is named after the blueprint)"),
            )),
        }
    }
    for (entity, error) in catalog.check_all() {
        let file = &entity_files[&(entity.blueprint.clone(), entity.identifier.clone())];
        match error {
            CatalogError::Invalid(violations) => {
                for v in violations.0 {
                    problems.push(problem(
                        file,
                        &v.field,
                        format!("`{}` {}", entity.identifier, v.rule),
                    ));
                }
            }
            other => problems.push(problem(file, "", other.to_string())),
        }
    }

    let mut actions = BTreeMap::new();
    let ctx = DefinitionContext {
        catalog: &catalog,
        directory: &directory,
    };
    for (file, value) in json_documents(&root.join("actions"), &mut problems) {
        match Action::parse(value, &ctx) {
            Ok(action) => {
                check_iac_templates(&settings.iac.templates_path, &action, &file, &mut problems);
                check_github_token(settings, &action, &file, &mut problems);
                if actions.contains_key(&action.identifier) {
                    problems.push(problem(
                        &file,
                        "identifier",
                        format!("action `{}` is defined twice", action.identifier),
                    ));
                }
                actions.insert(action.identifier.clone(), action);
            }
            Err(inner) => problems.extend(
                inner
                    .into_iter()
                    .map(|p| problem(&file, &p.field, p.message)),
            ),
        }
    }

    check_message_templates(&settings.templates.path, &mut problems);

    if problems.is_empty() {
        Ok(Definitions {
            blueprints,
            entities,
            actions,
            directory,
        })
    } else {
        Err(problems)
    }
}

fn problem(file: &Path, field: &str, message: String) -> Problem {
    Problem {
        file: file.to_owned(),
        field: field.to_owned(),
        message,
    }
}

/// A hash of a JSON document that does not depend on key order or formatting.
pub fn stable_hash(value: &Value) -> u64 {
    fn canonical(v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                let sorted: BTreeMap<_, _> =
                    map.iter().map(|(k, v)| (k.clone(), canonical(v))).collect();
                Value::Object(sorted.into_iter().collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
            other => other.clone(),
        }
    }
    let digest = Sha256::digest(canonical(value).to_string().as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"))
}

/// Every JSON document under `dir` (recursively, sorted): a file holds one object or an array.
fn json_documents(dir: &Path, problems: &mut Vec<Problem>) -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    collect_files(dir, "json", &mut files, problems);
    let mut out = Vec::new();
    for file in files {
        let parsed = std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Value>(&text).map_err(|e| e.to_string()));
        match parsed {
            Ok(Value::Array(items)) => out.extend(items.into_iter().map(|v| (file.clone(), v))),
            Ok(value) => out.push((file, value)),
            Err(e) => problems.push(problem(&file, "", format!("not valid JSON: {e}"))),
        }
    }
    out
}

fn collect_files(dir: &Path, extension: &str, out: &mut Vec<PathBuf>, problems: &mut Vec<Problem>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            problems.push(problem(dir, "", format!("cannot read the folder: {e}")));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            collect_files(&path, extension, out, problems);
        } else if path.extension().is_some_and(|e| e == extension) {
            out.push(path);
        }
    }
}

/// A GITOPS action's file templates must exist under `iac.templates_path` and pass the IaC
/// rules for the language of the file they become (see `core::iac`).
fn check_iac_templates(root: &Path, action: &Action, file: &Path, problems: &mut Vec<Problem>) {
    let Invocation::Gitops(gitops) = &action.invocation else {
        return;
    };
    for (i, iac_file) in gitops.files.iter().enumerate() {
        let field = format!("invocationMethod.files[{i}].template");
        let Some(language) = Language::of(&iac_file.path) else {
            continue; // reported with the path
        };
        let template = root.join(&iac_file.template);
        match std::fs::read_to_string(&template) {
            Ok(text) => {
                if let Err(found) = iac::check(language, &text) {
                    problems.extend(found.into_iter().map(|message| {
                        problem(file, &field, format!("{}: {message}", template.display()))
                    }));
                }
            }
            Err(e) => problems.push(problem(
                file,
                &field,
                format!("cannot read {}: {e}", template.display()),
            )),
        }
    }
}

/// An action that calls GitHub needs `github.token`: without it every run would fail.
fn check_github_token(
    settings: &Settings,
    action: &Action,
    file: &Path,
    problems: &mut Vec<Problem>,
) {
    let uses_github = match &action.invocation {
        Invocation::Gitops(gitops) => matches!(gitops.provider, Provider::GitHub { .. }),
        Invocation::GithubWorkflow(_) => true,
        _ => false,
    };
    if uses_github && settings.github.token.is_none() {
        problems.push(problem(
            file,
            "invocationMethod",
            "calls GitHub, but github.token is not set (PORTBOT__GITHUB__TOKEN)".into(),
        ));
    }
}

/// Message templates must compile; chat adapters render them.
fn check_message_templates(dir: &Path, problems: &mut Vec<Problem>) {
    if !dir.is_dir() {
        problems.push(problem(
            dir,
            "",
            "the message templates folder (templates.path) does not exist".into(),
        ));
        return;
    }
    let mut files = Vec::new();
    collect_files(dir, "hbs", &mut files, problems);
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                if let Err(e) = crate::core::template::check_syntax(&text) {
                    problems.push(problem(&file, "", e.reason));
                }
            }
            Err(e) => problems.push(problem(&file, "", e.to_string())),
        }
    }
}
