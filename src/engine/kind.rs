//! What makes a transaction type: one [`Kind`] per type, each in its own file (`saga.rs`, `msg.rs`,
//! `tcc.rs`, `xa.rs`, `workflow.rs`), holding the type's creation rules (its `custom_data`, the branches it
//! is created with or registers, how a client's abort and a submit apply) and its processing pass. The
//! engine and the driver ask [`of`] instead of matching on the type.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::driver::{Pass, Step};
use super::{Engine, Error, Result, TxnRequest};
use crate::model::{Branch, BranchId, Gid, GlobalStatus, GlobalTxn, Millis, TransType};

/// The rules and the state machine of one transaction type.
#[async_trait]
pub(crate) trait Kind: Send + Sync {
    /// Checks the type's `custom_data` for a transaction of `steps` steps; the message names the problem.
    fn check_custom_data(
        &self,
        _custom_data: &str,
        _steps: usize,
    ) -> std::result::Result<(), String> {
        Ok(())
    }

    /// The branches a new transaction is created with (saga and msg: from its steps).
    async fn initial_branches(
        &self,
        _engine: &Engine,
        _req: &TxnRequest,
        _now: Millis,
    ) -> Result<Vec<Branch>> {
        Ok(Vec::new())
    }

    /// The branch rows `registerBranch` adds for `branch_id` (TCC, XA, workflow); a type that registers
    /// no branches refuses.
    fn registered_branches(
        &self,
        _gid: &Gid,
        _branch_id: &BranchId,
        _data: Vec<u8>,
        _fields: &BTreeMap<String, String>,
        _now: Millis,
    ) -> Result<Vec<Branch>> {
        Err(Error::BadRequest(
            "registerBranch applies to tcc, xa and workflow transactions only".to_owned(),
        ))
    }

    /// Whether a prepared transaction of this type is looked at when its timeout passes (not a workflow,
    /// which its client drives).
    fn wakes_at_timeout(&self) -> bool {
        true
    }

    /// Whether a submit normally follows a prepare (TCC, XA): the submit then reads the stored row instead
    /// of trying an insert that can only conflict.
    fn submit_follows_prepare(&self) -> bool {
        false
    }

    /// Whether a client's `abort` rolls a transaction in `status` back (TCC and XA while prepared or
    /// aborting).
    fn rolls_back_on_abort(&self, _status: GlobalStatus) -> bool {
        false
    }

    /// Whether a client's `abort` fails a transaction in `status` at once, without calling anything (a
    /// prepared msg).
    fn fails_on_abort(&self, _status: GlobalStatus) -> bool {
        false
    }

    /// Whether the first pass of this new transaction can run without calling any branch (so its outcome
    /// can go into the insert).
    fn calls_nothing(&self, _txn: &GlobalTxn, _branches: &[Branch]) -> bool {
        false
    }

    /// One processing pass (spec §7): every await is a pass boundary (see the driver's module docs).
    async fn process(&self, pass: &mut Pass<'_>) -> Step;
}

/// The body of each step of a saga or msg: its payload, else the legacy `data` entry of its step.
pub(crate) fn step_bodies(req: &TxnRequest) -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = req.payloads.clone();
    bodies.extend(
        req.steps
            .iter()
            .filter_map(|s| s.get("data"))
            .filter(|d| !d.is_empty())
            .map(|d| d.as_bytes().to_vec()),
    );
    bodies
}

/// The [`Kind`] of a transaction type.
pub(crate) fn of(trans_type: TransType) -> &'static dyn Kind {
    match trans_type {
        TransType::Saga => &super::saga::Saga,
        TransType::Msg => &super::msg::Msg,
        TransType::Tcc => &super::tcc::Tcc,
        TransType::Xa => &super::xa::Xa,
        TransType::Workflow => &super::workflow::Workflow,
    }
}
