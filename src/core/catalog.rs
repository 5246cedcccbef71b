//! The software catalog: blueprints (data models) and entities (their instances) in Port's JSON.
//!
//! [`Catalog`] is the in-memory picture the rules run against. It checks entity properties against
//! their blueprint's schema and relations against their targets, and plans upserts and deletes;
//! the store persists what it decides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ids::{BlueprintId, EntityId};
use super::schema::{
    check_object, EntityLookup, Rule, SchemaProblem, ValueSchema, Violation, Violations,
};

/// A relation a blueprint declares: `Component.system -> System`.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub target: BlueprintId,
    pub required: bool,
    pub many: bool,
}

/// A blueprint, compiled; `raw` is the definition as given, for the API to return.
#[derive(Debug, Clone)]
pub struct Blueprint {
    pub identifier: BlueprintId,
    pub title: String,
    pub properties: Vec<(String, ValueSchema)>,
    pub required: Vec<String>,
    pub relations: BTreeMap<String, Relation>,
    pub raw: Value,
}

#[derive(Deserialize)]
struct RawBlueprint {
    identifier: String,
    title: Option<String>,
    #[serde(default)]
    schema: RawBlueprintSchema,
    #[serde(default)]
    relations: BTreeMap<String, RawRelation>,
}

#[derive(Deserialize, Default)]
struct RawBlueprintSchema {
    #[serde(default)]
    properties: serde_json::Map<String, Value>,
    #[serde(default)]
    required: Vec<String>,
}

#[derive(Deserialize)]
struct RawRelation {
    target: String,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    many: bool,
}

impl Blueprint {
    /// Compiles a blueprint; every problem names its field.
    pub fn parse(raw: Value) -> Result<Self, Vec<SchemaProblem>> {
        let parsed: RawBlueprint = serde_json::from_value(raw.clone()).map_err(|e| {
            vec![SchemaProblem {
                field: String::new(),
                message: e.to_string(),
            }]
        })?;
        let mut problems = Vec::new();
        let identifier = BlueprintId::try_from(parsed.identifier).unwrap_or_else(|e| {
            problems.push(problem("identifier", e.to_string()));
            BlueprintId::try_from("invalid").expect("valid literal")
        });
        let mut properties = Vec::new();
        for (name, def) in &parsed.schema.properties {
            match ValueSchema::compile(def) {
                Ok(schema) => properties.push((name.clone(), schema)),
                Err(inner) => problems.extend(inner.into_iter().map(|p| {
                    problem(
                        &join(&format!("schema.properties.{name}"), &p.field),
                        p.message,
                    )
                })),
            }
        }
        for name in &parsed.schema.required {
            if !parsed.schema.properties.contains_key(name) {
                problems.push(problem(
                    "schema.required",
                    format!("`{name}` is not a property of this blueprint"),
                ));
            }
        }
        let mut relations = BTreeMap::new();
        for (name, rel) in parsed.relations {
            match BlueprintId::try_from(rel.target) {
                Ok(target) => {
                    relations.insert(
                        name,
                        Relation {
                            target,
                            required: rel.required,
                            many: rel.many,
                        },
                    );
                }
                Err(e) => {
                    problems.push(problem(&format!("relations.{name}.target"), e.to_string()))
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Blueprint {
            title: parsed.title.unwrap_or_else(|| identifier.to_string()),
            identifier,
            properties,
            required: parsed.schema.required,
            relations,
            raw,
        })
    }
}

fn problem(field: &str, message: String) -> SchemaProblem {
    SchemaProblem {
        field: field.to_owned(),
        message,
    }
}

fn join(prefix: &str, field: &str) -> String {
    if field.is_empty() {
        prefix.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

/// An entity in Port's JSON. Keys Port shows but portbot does not interpret (`icon`, `team`)
/// are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    pub identifier: EntityId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub blueprint: BlueprintId,
    #[serde(default)]
    pub properties: Map<String, Value>,
    #[serde(default)]
    pub relations: Map<String, Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Entity {
    /// The identifiers an entity's relation points at (one for single relations).
    pub fn related(&self, relation: &str) -> Vec<&str> {
        match self.relations.get(relation) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

/// Why a catalog change was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CatalogError {
    #[error("there is no blueprint `{0}`")]
    UnknownBlueprint(BlueprintId),
    #[error("there is no {blueprint} entity `{identifier}`")]
    NotFound {
        blueprint: BlueprintId,
        identifier: EntityId,
    },
    #[error("the entity is invalid:\n{0}")]
    Invalid(Violations),
    #[error("{blueprint} `{identifier}` is still required by {}", .required_by.join(", "))]
    InUse {
        blueprint: BlueprintId,
        identifier: EntityId,
        required_by: Vec<String>,
    },
}

/// Blueprints and entities, indexed for the rules.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    blueprints: BTreeMap<BlueprintId, Blueprint>,
    entities: BTreeMap<(BlueprintId, EntityId), Entity>,
}

impl EntityLookup for Catalog {
    fn entity_exists(&self, blueprint: &BlueprintId, identifier: &str) -> bool {
        EntityId::try_from(identifier)
            .is_ok_and(|id| self.entities.contains_key(&(blueprint.clone(), id)))
    }
}

impl Catalog {
    pub fn new(blueprints: impl IntoIterator<Item = Blueprint>) -> Self {
        Catalog {
            blueprints: blueprints
                .into_iter()
                .map(|b| (b.identifier.clone(), b))
                .collect(),
            entities: BTreeMap::new(),
        }
    }

    pub fn blueprints(&self) -> impl Iterator<Item = &Blueprint> {
        self.blueprints.values()
    }

    pub fn blueprint(&self, id: &BlueprintId) -> Option<&Blueprint> {
        self.blueprints.get(id)
    }

    pub fn entity(&self, blueprint: &BlueprintId, id: &EntityId) -> Option<&Entity> {
        self.entities.get(&(blueprint.clone(), id.clone()))
    }

    pub fn entities_of<'a>(
        &'a self,
        blueprint: &'a BlueprintId,
    ) -> impl Iterator<Item = &'a Entity> {
        self.entities
            .range((blueprint.clone(), min_entity_id())..)
            .take_while(move |((bp, _), _)| bp == blueprint)
            .map(|(_, e)| e)
    }

    /// Puts an entity in place without checks: for loading a stored catalog, which was checked
    /// when it was written. Use [`Catalog::check_all`] after a bulk load from files.
    pub fn insert(&mut self, entity: Entity) {
        self.entities.insert(
            (entity.blueprint.clone(), entity.identifier.clone()),
            entity,
        );
    }

    pub fn remove(&mut self, blueprint: &BlueprintId, id: &EntityId) -> Option<Entity> {
        self.entities.remove(&(blueprint.clone(), id.clone()))
    }

    /// Checks an entity against its blueprint: properties and relations (targets must exist).
    pub fn check_entity(&self, entity: &Entity) -> Result<(), CatalogError> {
        let bp = self
            .blueprints
            .get(&entity.blueprint)
            .ok_or_else(|| CatalogError::UnknownBlueprint(entity.blueprint.clone()))?;
        let mut violations =
            match check_object(&entity.properties, &bp.properties, &bp.required, self) {
                Ok(()) => Vec::new(),
                Err(Violations(v)) => v
                    .into_iter()
                    .map(|v| Violation {
                        field: format!("properties.{}", v.field),
                        rule: v.rule,
                    })
                    .collect(),
            };
        for (name, value) in &entity.relations {
            let field = format!("relations.{name}");
            let Some(rel) = bp.relations.get(name) else {
                violations.push(Violation {
                    field,
                    rule: Rule::UnknownInput {
                        known: bp.relations.keys().cloned().collect(),
                    },
                });
                continue;
            };
            let targets: Vec<&str> = match (rel.many, value) {
                (_, Value::Null) => Vec::new(),
                (false, Value::String(s)) => vec![s],
                (true, Value::Array(items)) if items.iter().all(Value::is_string) => {
                    items.iter().filter_map(Value::as_str).collect()
                }
                (many, _) => {
                    violations.push(Violation {
                        field,
                        rule: Rule::WrongType {
                            expected: if many {
                                "a list of entity identifiers"
                            } else {
                                "one entity identifier"
                            },
                        },
                    });
                    continue;
                }
            };
            for target in targets {
                if !self.entity_exists(&rel.target, target) {
                    violations.push(Violation {
                        field: field.clone(),
                        rule: Rule::NoSuchEntity {
                            blueprint: rel.target.clone(),
                            identifier: target.to_owned(),
                        },
                    });
                }
            }
        }
        for (name, rel) in &bp.relations {
            if rel.required && entity.related(name).is_empty() {
                violations.push(Violation {
                    field: format!("relations.{name}"),
                    rule: Rule::Required,
                });
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(CatalogError::Invalid(Violations(violations)))
        }
    }

    /// Every entity that breaks a rule, after a bulk load.
    pub fn check_all(&self) -> Vec<(&Entity, CatalogError)> {
        self.entities
            .values()
            .filter_map(|e| self.check_entity(e).err().map(|err| (e, err)))
            .collect()
    }

    /// The entity an upsert would leave. With `merge`, given properties replace existing ones
    /// key by key and many-relations gain the given targets; without it the entity is replaced.
    pub fn plan_upsert(&self, incoming: Entity, merge: bool) -> Result<Entity, CatalogError> {
        let existing = self.entity(&incoming.blueprint, &incoming.identifier);
        let result = match (existing, merge) {
            (Some(old), true) => {
                let mut merged = old.clone();
                merged.properties.extend(incoming.properties);
                let bp = self.blueprints.get(&incoming.blueprint);
                for (name, value) in incoming.relations {
                    let many = bp
                        .and_then(|b| b.relations.get(&name))
                        .is_some_and(|r| r.many);
                    match (many, merged.relations.get_mut(&name), value) {
                        (true, Some(Value::Array(have)), Value::Array(add)) => {
                            // A set of what is there, so a long list costs its length, not its
                            // square (the catalog is locked meanwhile).
                            let mut there: std::collections::HashSet<String> =
                                have.iter().map(Value::to_string).collect();
                            for v in add {
                                if there.insert(v.to_string()) {
                                    have.push(v);
                                }
                            }
                        }
                        (_, _, value) => {
                            merged.relations.insert(name, value);
                        }
                    }
                }
                if incoming.title.is_some() {
                    merged.title = incoming.title;
                }
                merged.extra.extend(incoming.extra);
                merged
            }
            _ => incoming,
        };
        self.check_entity(&result)?;
        Ok(result)
    }

    /// What deleting an entity does to the others: entities whose optional relations pointed at
    /// it, with those references removed. Refused while a required relation points at it.
    pub fn plan_delete(
        &self,
        blueprint: &BlueprintId,
        id: &EntityId,
    ) -> Result<Vec<Entity>, CatalogError> {
        if self.entity(blueprint, id).is_none() {
            return Err(CatalogError::NotFound {
                blueprint: blueprint.clone(),
                identifier: id.clone(),
            });
        }
        let mut cleaned = Vec::new();
        let mut required_by = Vec::new();
        for other in self.entities.values() {
            let Some(bp) = self.blueprints.get(&other.blueprint) else {
                continue;
            };
            let mut changed = other.clone();
            for (name, rel) in &bp.relations {
                if &rel.target != blueprint || !other.related(name).contains(&id.as_str()) {
                    continue;
                }
                let remaining: Vec<Value> = other
                    .related(name)
                    .into_iter()
                    .filter(|t| *t != id.as_str())
                    .map(Value::from)
                    .collect();
                if rel.required && remaining.is_empty() {
                    required_by.push(format!(
                        "{} `{}` ({name})",
                        other.blueprint, other.identifier
                    ));
                }
                let value = if rel.many {
                    Value::Array(remaining)
                } else {
                    Value::Null
                };
                changed.relations.insert(name.clone(), value);
            }
            if &changed != other {
                cleaned.push(changed);
            }
        }
        if !required_by.is_empty() {
            return Err(CatalogError::InUse {
                blueprint: blueprint.clone(),
                identifier: id.clone(),
                required_by,
            });
        }
        Ok(cleaned)
    }
}

fn min_entity_id() -> EntityId {
    // "-" is the smallest character an identifier may hold.
    EntityId::try_from("-").expect("valid literal")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> Catalog {
        let component = Blueprint::parse(json!({
            "identifier": "Component", "title": "Component",
            "schema": {"properties": {"type": {"type": "string", "enum": ["service", "library"]}}, "required": []},
            "relations": {
                "resources": {"target": "Resource", "required": false, "many": true},
                "system": {"target": "System", "required": true, "many": false}
            }
        }))
        .unwrap();
        let resource =
            Blueprint::parse(json!({"identifier": "Resource", "schema": {"properties": {}}}))
                .unwrap();
        let system = Blueprint::parse(json!({"identifier": "System"})).unwrap();
        let mut c = Catalog::new([component, resource, system]);
        for e in [
            json!({"identifier": "Cart", "blueprint": "System"}),
            json!({"identifier": "db", "blueprint": "Resource"}),
            json!({"identifier": "mailer", "blueprint": "Component", "properties": {"type": "service"},
                   "relations": {"system": "Cart", "resources": ["db"]}}),
        ] {
            c.insert(serde_json::from_value(e).unwrap());
        }
        c
    }

    fn entity(v: Value) -> Entity {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn relations_must_point_at_existing_entities() {
        let c = catalog();
        assert!(c.check_all().is_empty());
        let bad = entity(json!({"identifier": "x", "blueprint": "Component",
            "properties": {"type": "daemon"}, "relations": {"system": "Nope", "resources": "db"}}));
        let err = c.check_entity(&bad).unwrap_err().to_string();
        assert!(
            err.contains("`properties.type` must be one of: service, library"),
            "{err}"
        );
        assert!(
            err.contains("`relations.system` must name an existing System entity"),
            "{err}"
        );
        assert!(
            err.contains("`relations.resources` must be a list of entity identifiers"),
            "{err}"
        );
    }

    #[test]
    fn merge_adds_to_many_relations() {
        let mut c = catalog();
        c.insert(entity(
            json!({"identifier": "db2", "blueprint": "Resource"}),
        ));
        let merged = c
            .plan_upsert(
                entity(json!({"identifier": "mailer", "blueprint": "Component", "relations": {"resources": ["db2", "db", "db2"]}})),
                true,
            )
            .unwrap();
        assert_eq!(merged.relations["resources"], json!(["db", "db2"]));
        assert_eq!(merged.properties["type"], json!("service"));
    }

    #[test]
    fn delete_cleans_optional_references_and_refuses_required_ones() {
        let c = catalog();
        let cleaned = c
            .plan_delete(&"Resource".try_into().unwrap(), &"db".try_into().unwrap())
            .unwrap();
        assert_eq!(cleaned[0].relations["resources"], json!([]));
        let err = c
            .plan_delete(&"System".try_into().unwrap(), &"Cart".try_into().unwrap())
            .unwrap_err();
        assert!(matches!(err, CatalogError::InUse { .. }));
    }
}
