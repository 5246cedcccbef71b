//! Blueprints and entities: `/v1/blueprints/...`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::{ok, ApiError, ApiState, Body, Params, Segments};
use crate::core::catalog::Entity;
use crate::core::ids::{BlueprintId, EntityId, RunId};

type Reply = Result<Json<Value>, ApiError>;

fn blueprint_id(state: &ApiState, raw: &str) -> Result<BlueprintId, ApiError> {
    BlueprintId::try_from(raw)
        .ok()
        .filter(|bp| state.app.blueprint(bp).is_some())
        .ok_or_else(|| ApiError::not_found(format!("there is no blueprint `{raw}`")))
}

fn entity_id(raw: &str) -> Result<EntityId, ApiError> {
    EntityId::try_from(raw).map_err(|e| ApiError::not_found(e.to_string()))
}

pub async fn blueprints(State(state): State<ApiState>, _caller: Caller) -> Reply {
    let all: Vec<Value> = state
        .app
        .catalog()
        .blueprints()
        .map(|b| b.raw.clone())
        .collect();
    Ok(ok(json!({ "blueprints": all })))
}

pub async fn blueprint(
    State(state): State<ApiState>,
    _caller: Caller,
    Segments(bp): Segments<String>,
) -> Reply {
    let id = blueprint_id(&state, &bp)?;
    let raw = state.app.blueprint(&id).map(|b| b.raw).unwrap_or_default();
    Ok(ok(json!({ "blueprint": raw })))
}

pub async fn entities(
    State(state): State<ApiState>,
    _caller: Caller,
    Segments(bp): Segments<String>,
) -> Reply {
    let id = blueprint_id(&state, &bp)?;
    let all: Vec<Entity> = state.app.catalog().entities_of(&id).cloned().collect();
    Ok(ok(json!({ "entities": all })))
}

pub async fn entity(
    State(state): State<ApiState>,
    _caller: Caller,
    Segments((bp, id)): Segments<(String, String)>,
) -> Reply {
    let bp = blueprint_id(&state, &bp)?;
    let id = entity_id(&id)?;
    let found = state.app.catalog().entity(&bp, &id).cloned();
    match found {
        Some(entity) => Ok(ok(json!({ "entity": entity }))),
        None => Err(ApiError::not_found(format!(
            "there is no {bp} entity `{id}`"
        ))),
    }
}

#[derive(Deserialize)]
pub struct UpsertQuery {
    #[serde(default)]
    upsert: bool,
    #[serde(default)]
    merge: bool,
    run_id: Option<String>,
}

pub async fn upsert_entity(
    State(state): State<ApiState>,
    _caller: Caller,
    Segments(bp): Segments<String>,
    Params(q): Params<UpsertQuery>,
    Body(mut body): Body<Value>,
) -> Reply {
    let bp = blueprint_id(&state, &bp)?;
    if !body.is_object() {
        return Err(ApiError::bad_request("the body must be an entity object"));
    }
    body["blueprint"] = Value::from(bp.as_str());
    let entity: Entity = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("the entity is not valid: {e}")))?;
    let exists = state
        .app
        .catalog()
        .entity(&bp, &entity.identifier)
        .is_some();
    if exists && !q.upsert {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "entity_exists",
            format!(
                "{bp} `{}` exists; send upsert=true to change it",
                entity.identifier
            ),
        ));
    }
    let run = q
        .run_id
        .map(RunId::try_from)
        .transpose()
        .map_err(|e| ApiError::not_found(format!("there is no run {}", e.0)))?;
    let stored = state
        .app
        .upsert_entity(entity, q.merge, run.as_ref())
        .await?;
    Ok(ok(json!({ "entity": stored })))
}

pub async fn delete_entity(
    State(state): State<ApiState>,
    _caller: Caller,
    Segments((bp, id)): Segments<(String, String)>,
) -> Reply {
    let bp = blueprint_id(&state, &bp)?;
    state.app.delete_entity(&bp, &entity_id(&id)?).await?;
    Ok(ok(json!({})))
}
