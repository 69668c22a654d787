//! Topics of 2-phase messages (spec §4.8): the subscriber list of each topic, stored as one KV row
//! (category `topics`) whose version guards every change. Reads (a msg step `topic://name` expands to one
//! branch per subscriber) and writes (subscribe, unsubscribe, delete) live here together with the lock that
//! serialises this replica's changes.

use std::sync::Arc;

use super::{Engine, Error, Result};
use crate::model::{Subscriber, TOPICS_CAT, limits};

/// Serialises topic changes on this replica. Without it, concurrent subscribes to one topic race for its
/// KV version and a request can lose every retry (20 at once did); with it, only other replicas can race,
/// and the version check plus the retries of [`Engine::update_topic`] handle those.
#[derive(Clone, Default)]
pub(crate) struct TopicLock(Arc<tokio::sync::Mutex<()>>);

impl Engine {
    /// The subscribers of a topic (none when it does not exist).
    pub async fn subscribers(&self, topic: &str) -> Result<Vec<Subscriber>> {
        let Some(kv) = self.inner.store.kv_find(TOPICS_CAT, topic).await? else {
            return Ok(Vec::new());
        };
        serde_json::from_str(&kv.v).map_err(|e| {
            Error::Pass(format!(
                "stored subscribers of topic '{topic}' are corrupt: {e}"
            ))
        })
    }

    /// Adds `url` to `topic` (creating the topic); a duplicate url is a FAILURE, a full topic a bad
    /// request. The caller has validated the input.
    pub async fn subscribe(&self, topic: &str, url: &str, remark: &str) -> Result<()> {
        self.inner
            .opts
            .branch_allow
            .check([("url".to_owned(), url)])?;
        self.update_topic(topic, |subs| {
            let mut subs = subs.unwrap_or_default();
            if subs.len() >= limits::MAX_SUBSCRIBERS {
                return Err(Error::BadRequest(format!(
                    "field 'topic' has {} subscribers, the most a topic can have",
                    limits::MAX_SUBSCRIBERS
                )));
            }
            if subs.iter().any(|x| x.url == url) {
                return Err(Error::Failure(format!(
                    "this url exists: '{url}' already subscribes to topic '{topic}'"
                )));
            }
            subs.push(Subscriber {
                url: url.to_owned(),
                remark: remark.to_owned(),
            });
            Ok(subs)
        })
        .await
    }

    /// Removes `url` from `topic`.
    pub async fn unsubscribe(&self, topic: &str, url: &str) -> Result<()> {
        self.update_topic(topic, |subs| {
            let Some(mut subs) = subs else {
                return Err(Error::NotFound(format!("topic '{topic}' not found")));
            };
            let before = subs.len();
            subs.retain(|x| x.url != url);
            if subs.len() == before {
                return Err(Error::NotFound(format!(
                    "url '{url}' does not subscribe to topic '{topic}'"
                )));
            }
            Ok(subs)
        })
        .await
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        let _serialised = self.inner.topic_lock.0.lock().await;
        if !self.inner.store.kv_delete(TOPICS_CAT, topic).await? {
            return Err(Error::NotFound(format!("topic '{topic}' not found")));
        }
        Ok(())
    }

    /// Read-modify-write of a topic's subscriber list with the KV version as the guard; retried on lost
    /// races with other replicas.
    async fn update_topic(
        &self,
        topic: &str,
        change: impl Fn(Option<Vec<Subscriber>>) -> Result<Vec<Subscriber>>,
    ) -> Result<()> {
        let _serialised = self.inner.topic_lock.0.lock().await;
        let store = &self.inner.store;
        for _ in 0..10 {
            let now = self.inner.clock.now();
            let current = store.kv_find(TOPICS_CAT, topic).await?;
            let subscribers = match &current {
                Some(kv) => {
                    Some(serde_json::from_str::<Vec<Subscriber>>(&kv.v).map_err(|e| {
                        Error::Pass(format!("stored topic '{topic}' is corrupt: {e}"))
                    })?)
                }
                None => None,
            };
            let next = change(subscribers)?;
            let text = serde_json::to_string(&next).map_err(|e| Error::Pass(e.to_string()))?;
            let done = match &current {
                Some(kv) => {
                    store
                        .kv_update(TOPICS_CAT, topic, &text, kv.version, now)
                        .await?
                }
                None => store.kv_create(TOPICS_CAT, topic, &text, now).await?,
            };
            if done {
                return Ok(());
            }
        }
        Err(Error::Ongoing(format!(
            "topic '{topic}' is changing concurrently; retry"
        )))
    }
}
