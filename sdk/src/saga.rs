//! Saga (spec §7.1): a list of steps, each an action and its compensation. The server runs the actions in
//! order (or concurrently, subject to [`Saga::add_branch_order`]) and, when one fails with FAILURE, runs the
//! compensations of every step that may have run, in reverse order.
//!
//! ```no_run
//! # async fn run() -> braid_client::Result<()> {
//! use braid_client::{DtmClient, Saga};
//! let dtm = DtmClient::http("http://localhost:36789/api/dtmsvr");
//! let req = serde_json::json!({"amount": 30});
//! Saga::new(&dtm, dtm.new_gid().await?)
//!     .add_json("http://bank1/api/TransOut", "http://bank1/api/TransOutCompensate", &req)
//!     .add_json("http://bank2/api/TransIn", "http://bank2/api/TransInCompensate", &req)
//!     .submit()
//!     .await
//! # }
//! ```

use std::collections::BTreeMap;

use serde::Serialize;

use crate::client::DtmClient;
use crate::error::{Error, Result};
use crate::model::{SAGA, TransRequest, option_setters, to_json_bytes};

/// A saga under construction. Build it with the chainable methods, then [`Saga::submit`].
#[derive(Debug, Clone)]
pub struct Saga {
    client: DtmClient,
    req: TransRequest,
    concurrent: bool,
    orders: BTreeMap<usize, Vec<usize>>,
    /// The first error met while building (an unserializable payload); reported by `submit`.
    deferred: Option<String>,
}

option_setters!(Saga);

impl Saga {
    /// A new saga with id `gid`.
    pub fn new(client: &DtmClient, gid: impl Into<String>) -> Self {
        Self {
            client: client.clone(),
            req: TransRequest {
                gid: gid.into(),
                trans_type: SAGA,
                ..TransRequest::default()
            },
            concurrent: false,
            orders: BTreeMap::new(),
            deferred: None,
        }
    }

    /// Adds a step: `action` and `compensate` are branch URLs (HTTP, or gRPC `host:port/pkg.Svc/Method`),
    /// `payload` the body both receive. An empty URL is a no-op step half.
    #[must_use]
    pub fn add(
        mut self,
        action: impl Into<String>,
        compensate: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        self.req.steps.push(BTreeMap::from([
            ("action".to_owned(), action.into()),
            ("compensate".to_owned(), compensate.into()),
        ]));
        self.req.payloads.push(payload.into());
        self
    }

    /// Adds a step whose payload is `payload` as JSON.
    #[must_use]
    pub fn add_json<T: Serialize + ?Sized>(
        self,
        action: impl Into<String>,
        compensate: impl Into<String>,
        payload: &T,
    ) -> Self {
        let step = self.req.steps.len();
        match to_json_bytes(&format!("the payload of step {step}"), payload) {
            Ok(bytes) => self.add(action, compensate, bytes),
            Err(e) => {
                let mut s = self.add(action, compensate, Vec::new());
                s.deferred.get_or_insert(e.to_string());
                s
            }
        }
    }

    /// Lets the server run the actions concurrently (subject to [`Saga::add_branch_order`]).
    #[must_use]
    pub fn concurrent(mut self, concurrent: bool) -> Self {
        self.concurrent = concurrent;
        self
    }

    /// In a concurrent saga, step `step` (0-based) runs only after the steps in `prerequisites` succeeded,
    /// and is compensated before them.
    #[must_use]
    pub fn add_branch_order(mut self, step: usize, prerequisites: &[usize]) -> Self {
        self.orders
            .entry(step)
            .or_default()
            .extend_from_slice(prerequisites);
        self
    }

    /// The most in-pass retries of a failing action before the saga aborts.
    #[must_use]
    pub fn retry_limit(mut self, limit: i64) -> Self {
        self.req.options.retry_limit = limit;
        self
    }

    /// Custom data stored with the transaction (a JSON object). A concurrent saga adds its `orders` and
    /// `concurrent` keys to it.
    #[must_use]
    pub fn custom_data(mut self, json: impl Into<String>) -> Self {
        self.req.custom_data = json.into();
        self
    }

    fn build(&self) -> Result<TransRequest> {
        if let Some(e) = &self.deferred {
            return Err(Error::InvalidArgument(e.clone()));
        }
        if self.req.gid.is_empty() {
            return Err(Error::InvalidArgument("the saga has no gid".to_owned()));
        }
        let mut req = self.req.clone();
        if self.concurrent {
            let mut custom = if req.custom_data.trim().is_empty() {
                serde_json::Map::new()
            } else {
                serde_json::from_str(&req.custom_data)
                    .map_err(|e| Error::json("custom data of a concurrent saga", e))?
            };
            let orders: serde_json::Map<String, serde_json::Value> = self
                .orders
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                .collect();
            custom.insert("orders".to_owned(), orders.into());
            custom.insert("concurrent".to_owned(), true.into());
            req.custom_data = serde_json::Value::Object(custom).to_string();
        }
        Ok(req)
    }

    /// Submits the saga. With `wait_result`, waits for its outcome: a rollback is an [`Error::Failure`]
    /// carrying the rollback reason.
    pub async fn submit(&self) -> Result<()> {
        let req = self.build()?;
        self.client.trans_call("submit", &req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Unserializable;

    impl Serialize for Unserializable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no"))
        }
    }

    #[test]
    fn concurrent_saga_merges_orders_into_custom_data() {
        let client = DtmClient::http("http://127.0.0.1:1/api/dtmsvr");
        let saga = Saga::new(&client, "g1")
            .add("http://a", "http://ac", "{}")
            .add("http://b", "http://bc", "{}")
            .concurrent(true)
            .add_branch_order(1, &[0])
            .custom_data(r#"{"k":1}"#);
        let req = saga.build().unwrap();
        let custom: serde_json::Value = serde_json::from_str(&req.custom_data).unwrap();
        assert_eq!(
            custom,
            serde_json::json!({"k": 1, "concurrent": true, "orders": {"1": [0]}})
        );
        assert_eq!(req.steps.len(), 2);
    }

    #[test]
    fn unserializable_payload_is_reported_by_submit() {
        let client = DtmClient::http("http://127.0.0.1:1/api/dtmsvr");
        let saga = Saga::new(&client, "g1").add_json("http://a", "", &Unserializable);
        let err = saga.build().unwrap_err();
        assert!(err.to_string().contains("payload of step 0"), "{err}");
    }
}
