//! A catalog change in progress: the in-memory catalog is changed as the store change is built,
//! and put back as it was unless [`CatalogChange::keep`] is called after the store applied it.
//!
//! The write lock is taken only when the change first touches the catalog, so run changes that
//! leave the catalog alone (most of them) never contend for it.

use std::sync::{RwLock, RwLockWriteGuard};

use crate::core::catalog::{Catalog, CatalogError, Entity};
use crate::core::ids::{BlueprintId, EntityId};
use crate::store::Change;

type Key = (BlueprintId, EntityId);

pub struct CatalogChange<'a> {
    lock: &'a RwLock<Catalog>,
    guard: Option<RwLockWriteGuard<'a, Catalog>>,
    /// What each touched entity was before, oldest first.
    undo: Vec<(Key, Option<Entity>)>,
}

impl<'a> CatalogChange<'a> {
    pub fn begin(lock: &'a RwLock<Catalog>) -> Self {
        CatalogChange {
            lock,
            guard: None,
            undo: Vec::new(),
        }
    }

    fn catalog(&mut self) -> &mut Catalog {
        let lock = self.lock;
        self.guard
            .get_or_insert_with(|| lock.write().expect("catalog lock poisoned"))
    }

    /// Whether the change has touched the catalog (and so holds its write lock).
    pub fn touched(&self) -> bool {
        self.guard.is_some()
    }

    /// The catalog as this change has left it so far.
    pub fn view(&mut self) -> &Catalog {
        self.catalog()
    }

    fn put(&mut self, entity: Entity, change: &mut Change) {
        let key = (entity.blueprint.clone(), entity.identifier.clone());
        let before = self.catalog().entity(&key.0, &key.1).cloned();
        self.undo.push((key, before));
        change.put_entity(&entity);
        self.catalog().insert(entity);
    }

    /// Upserts an entity (see [`Catalog::plan_upsert`]) and returns what is now stored.
    pub fn upsert(
        &mut self,
        entity: Entity,
        merge: bool,
        change: &mut Change,
    ) -> Result<Entity, CatalogError> {
        let result = self.catalog().plan_upsert(entity, merge)?;
        self.put(result.clone(), change);
        Ok(result)
    }

    /// Deletes an entity and removes optional references to it.
    pub fn delete(
        &mut self,
        blueprint: &BlueprintId,
        id: &EntityId,
        change: &mut Change,
    ) -> Result<(), CatalogError> {
        let cleaned = self.catalog().plan_delete(blueprint, id)?;
        for entity in cleaned {
            self.put(entity, change);
        }
        let removed = self.catalog().remove(blueprint, id);
        self.undo.push(((blueprint.clone(), id.clone()), removed));
        change.remove_entity(blueprint, id);
        Ok(())
    }

    /// Puts every touched entity back as it was.
    pub fn rollback(&mut self) {
        while let Some(((bp, id), before)) = self.undo.pop() {
            let catalog = self.catalog();
            match before {
                Some(entity) => catalog.insert(entity),
                None => {
                    catalog.remove(&bp, &id);
                }
            }
        }
    }

    /// The store applied the change: keep the catalog as it is now.
    pub fn keep(mut self) {
        self.undo.clear();
    }
}

impl Drop for CatalogChange<'_> {
    fn drop(&mut self) {
        if !self.undo.is_empty() {
            self.rollback();
        }
    }
}
