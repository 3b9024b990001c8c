//! The server's objects, as an API server keeps them: one table per resource, a resource
//! version counter shared by all of them, and the history of changes that watches are served
//! from.
//!
//! Every change bumps the counter, stamps the object's `metadata.resourceVersion` with it and
//! appends a watch event to the history. The history is bounded ([`Store::history`]): a watch
//! that asks to resume from a version older than what it still holds gets `410 Gone`, as a real
//! API server does once etcd compacted that version away, and its client must list again.

use std::collections::{BTreeMap, VecDeque};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::{Metadata, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::selector::Selector;

/// Watch events kept by default: enough for any test's watch to resume, small enough that a
/// long benchmark shows what a client does with `410 Gone`.
pub const DEFAULT_HISTORY: usize = 10_000;

/// `(namespace, name)`.
pub type Key = (String, String);

/// The resources this server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Job,
    Pod,
    Secret,
}

impl Kind {
    /// The plural name in URLs and in `Status` details.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Job => "jobs",
            Kind::Pod => "pods",
            Kind::Secret => "secrets",
        }
    }

    /// The API group (`""` for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::Job => "batch",
            Kind::Pod | Kind::Secret => "",
        }
    }

    /// How messages name it: `jobs.batch`, `pods`.
    pub fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            g => format!("{}.{g}", self.plural()),
        }
    }
}

/// A resource type this store keeps.
pub trait Object:
    Resource + Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned + Clone + Send + Sync + 'static
{
    /// Which of the server's resources it is.
    const RESOURCE: Kind;
    const LIST_KIND: &'static str;
    fn table(store: &Store) -> &BTreeMap<Key, Self>;
    fn table_mut(store: &mut Store) -> &mut BTreeMap<Key, Self>;
}

impl Object for Job {
    const RESOURCE: Kind = Kind::Job;
    const LIST_KIND: &'static str = "JobList";
    fn table(store: &Store) -> &BTreeMap<Key, Self> {
        &store.jobs
    }
    fn table_mut(store: &mut Store) -> &mut BTreeMap<Key, Self> {
        &mut store.jobs
    }
}

impl Object for Pod {
    const RESOURCE: Kind = Kind::Pod;
    const LIST_KIND: &'static str = "PodList";
    fn table(store: &Store) -> &BTreeMap<Key, Self> {
        &store.pods
    }
    fn table_mut(store: &mut Store) -> &mut BTreeMap<Key, Self> {
        &mut store.pods
    }
}

impl Object for Secret {
    const RESOURCE: Kind = Kind::Secret;
    const LIST_KIND: &'static str = "SecretList";
    fn table(store: &Store) -> &BTreeMap<Key, Self> {
        &store.secrets
    }
    fn table_mut(store: &mut Store) -> &mut BTreeMap<Key, Self> {
        &mut store.secrets
    }
}

/// One change, as a watch sends it.
#[derive(Debug, Clone)]
pub struct Change {
    pub version: u64,
    pub kind: Kind,
    pub namespace: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub event: &'static str,
    pub labels: BTreeMap<String, String>,
    /// The object after the change (before it, for `DELETED`), as JSON.
    pub object: Value,
}

/// All objects and their history.
#[derive(Debug)]
pub struct Store {
    version: u64,
    jobs: BTreeMap<Key, Job>,
    pods: BTreeMap<Key, Pod>,
    secrets: BTreeMap<Key, Secret>,
    history: VecDeque<Change>,
    /// Most changes kept in `history`.
    capacity: usize,
    /// The oldest version a watch may resume from: every change after it is in `history`.
    oldest: u64,
}

pub fn now() -> Time {
    let ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    Time(
        k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(ns))
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

fn key_of(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl Store {
    pub fn new(capacity: usize) -> Store {
        Store {
            version: 1,
            jobs: BTreeMap::new(),
            pods: BTreeMap::new(),
            secrets: BTreeMap::new(),
            history: VecDeque::new(),
            capacity: capacity.max(1),
            oldest: 1,
        }
    }

    /// The current resource version: lists are stamped with it.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn oldest(&self) -> u64 {
        self.oldest
    }

    pub fn get<T: Object>(&self, namespace: &str, name: &str) -> Option<&T> {
        T::table(self).get(&(namespace.to_string(), name.to_string()))
    }

    /// The objects of a namespace (every namespace for `None`) whose labels match.
    pub fn list<T: Object>(&self, namespace: Option<&str>, selector: &Selector) -> Vec<T> {
        T::table(self)
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .filter(|(_, o)| selector.matches(o.metadata().labels.as_ref()))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Stores a new object: uid, creation time and resource version are set here.
    pub fn insert<T: Object>(&mut self, mut object: T) -> T {
        let meta = object.metadata_mut();
        meta.uid.get_or_insert_with(|| uuid::Uuid::new_v4().to_string());
        meta.creation_timestamp = Some(now());
        meta.generation = Some(1);
        self.put(object, "ADDED")
    }

    /// Stores a change to an object that exists.
    pub fn update<T: Object>(&mut self, object: T) -> T {
        self.put(object, "MODIFIED")
    }

    /// Changes an object in place, if it exists; returns it as stored.
    pub fn modify<T: Object>(
        &mut self,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut T),
    ) -> Option<T> {
        let mut object = self.get::<T>(namespace, name)?.clone();
        let before = serde_json::to_value(&object).ok();
        change(&mut object);
        if serde_json::to_value(&object).ok() == before {
            return Some(object);
        }
        Some(self.update(object))
    }

    pub fn remove<T: Object>(&mut self, namespace: &str, name: &str) -> Option<T> {
        let mut object = T::table_mut(self).remove(&(namespace.to_string(), name.to_string()))?;
        self.version += 1;
        object.metadata_mut().resource_version = Some(self.version.to_string());
        self.record(&object, "DELETED");
        Some(object)
    }

    fn put<T: Object>(&mut self, mut object: T, event: &'static str) -> T {
        self.version += 1;
        object.metadata_mut().resource_version = Some(self.version.to_string());
        let key = key_of(object.metadata());
        T::table_mut(self).insert(key, object.clone());
        self.record(&object, event);
        object
    }

    fn record<T: Object>(&mut self, object: &T, event: &'static str) {
        let meta = object.metadata();
        self.history.push_back(Change {
            version: self.version,
            kind: T::RESOURCE,
            namespace: meta.namespace.clone().unwrap_or_default(),
            event,
            labels: meta.labels.clone().unwrap_or_default(),
            object: serde_json::to_value(object).unwrap_or(Value::Null),
        });
        while self.history.len() > self.capacity {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest = dropped.version;
            }
        }
    }

    /// The changes after version `after` to objects of `kind` in `namespace` (all for `None`)
    /// whose labels match, oldest first. `None` when `after` is older than the history holds.
    pub fn changes_after(
        &self,
        after: u64,
        kind: Kind,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Option<Vec<Change>> {
        if after < self.oldest {
            return None;
        }
        let start = self.history.partition_point(|c| c.version <= after);
        Some(
            self.history
                .iter()
                .skip(start)
                .filter(|c| {
                    c.kind == kind
                        && namespace.is_none_or(|n| n == c.namespace)
                        && selector.matches(Some(&c.labels))
                })
                .cloned()
                .collect(),
        )
    }

    /// The objects owned by the object with this uid.
    pub fn owned<T: Object>(&self, namespace: &str, owner_uid: &str) -> Vec<T> {
        T::table(self)
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .filter(|(_, o)| {
                o.metadata()
                    .owner_references
                    .as_ref()
                    .is_some_and(|refs| refs.iter().any(|r| r.uid == owner_uid))
            })
            .map(|(_, o)| o.clone())
            .collect()
    }
}
