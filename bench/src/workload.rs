//! What one global transaction of each workload sends, and how its success is judged.

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use serde_json::json;

use crate::client::{Conn, Reply};

/// The workloads of issue 7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// (a) DTM's `benchEmptyUrl`: a 2-step saga whose action and compensation URLs are empty, submitted with
    /// `wait_result: true`. Measures the transaction manager alone.
    Empty,
    /// (b) A 2-step saga (TransOut, TransIn, with their compensations) against the local business service,
    /// `wait_result: true`: two real branch calls per saga.
    Busi,
    /// (c) A 2-step msg (TransOut, TransIn actions on the business service), submitted with `wait_result`.
    Msg,
    /// (c) A 2-branch TCC: prepare, register two branches (the client calls their Try itself, as a TCC
    /// client does), then submit with `wait_result` (braid calls both Confirms).
    Tcc,
}

impl Workload {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "(a) saga, empty URLs",
            Self::Busi => "(b) saga, 2 HTTP branches",
            Self::Msg => "(c) msg, 2 HTTP branches",
            Self::Tcc => "(c) tcc, 2 HTTP branches",
        }
    }

    /// Whether it needs the business service.
    pub fn needs_busi(self) -> bool {
        !matches!(self, Self::Empty)
    }
}

const DTM: &str = "/api/dtmsvr";

/// The connections one load worker uses.
pub struct Worker {
    /// To braid.
    pub braid: Conn,
    /// To the business service (TCC Try calls), if the workload has one.
    pub busi: Option<Conn>,
    /// `http://addr/api/busi`.
    pub busi_url: String,
}

fn check(reply: &Reply, what: &str) -> anyhow::Result<()> {
    if reply.status.is_success() {
        return Ok(());
    }
    let body = String::from_utf8_lossy(&reply.body);
    let body: String = body.chars().take(300).collect();
    bail!("{what} answered {}: {body}", reply.status)
}

impl Worker {
    /// Runs one global transaction to its final state (every request answered 200), or says what failed.
    pub async fn run_one(&mut self, workload: Workload, gid: &str) -> anyhow::Result<()> {
        let busi = &self.busi_url;
        match workload {
            Workload::Empty => {
                let body = json!({
                    "gid": gid,
                    "trans_type": "saga",
                    "steps": [{"action": "", "compensate": ""}, {"action": "", "compensate": ""}],
                    "payloads": ["{}", "{}"],
                    "wait_result": true,
                });
                let reply = self
                    .braid
                    .post(&format!("{DTM}/submit"), body.to_string())
                    .await?;
                check(&reply, "submit")
            }
            Workload::Busi => {
                let body = json!({
                    "gid": gid,
                    "trans_type": "saga",
                    "steps": [
                        {"action": format!("{busi}/TransOut"), "compensate": format!("{busi}/TransOutRevert")},
                        {"action": format!("{busi}/TransIn"), "compensate": format!("{busi}/TransInRevert")},
                    ],
                    "payloads": [r#"{"amount":30}"#, r#"{"amount":30}"#],
                    "wait_result": true,
                });
                let reply = self
                    .braid
                    .post(&format!("{DTM}/submit"), body.to_string())
                    .await?;
                check(&reply, "submit")
            }
            Workload::Msg => {
                let body = json!({
                    "gid": gid,
                    "trans_type": "msg",
                    "steps": [{"action": format!("{busi}/TransOut")}, {"action": format!("{busi}/TransIn")}],
                    "payloads": [r#"{"amount":30}"#, r#"{"amount":30}"#],
                    "query_prepared": format!("{busi}/QueryPrepared"),
                    "wait_result": true,
                });
                let reply = self
                    .braid
                    .post(&format!("{DTM}/submit"), body.to_string())
                    .await?;
                check(&reply, "submit")
            }
            Workload::Tcc => {
                let prepare = json!({"gid": gid, "trans_type": "tcc"});
                let reply = self
                    .braid
                    .post(&format!("{DTM}/prepare"), prepare.to_string())
                    .await?;
                check(&reply, "prepare")?;
                for (branch, name) in [("01", "TransOut"), ("02", "TransIn")] {
                    let register = json!({
                        "gid": gid,
                        "branch_id": branch,
                        "trans_type": "tcc",
                        "status": "prepared",
                        "data": r#"{"amount":30}"#,
                        "confirm": format!("{busi}/{name}Confirm"),
                        "cancel": format!("{busi}/{name}Revert"),
                    });
                    let reply = self
                        .braid
                        .post(&format!("{DTM}/registerBranch"), register.to_string())
                        .await?;
                    check(&reply, "registerBranch")?;
                    let conn = self
                        .busi
                        .as_mut()
                        .context("tcc needs the business service")?;
                    let reply = conn
                        .post(
                            &format!(
                                "/api/busi/{name}?gid={gid}&trans_type=tcc&branch_id={branch}&op=try"
                            ),
                            r#"{"amount":30}"#,
                        )
                        .await?;
                    check(&reply, "try")?;
                }
                let submit = json!({"gid": gid, "trans_type": "tcc", "wait_result": true});
                let reply = self
                    .braid
                    .post(&format!("{DTM}/submit"), submit.to_string())
                    .await?;
                check(&reply, "submit")
            }
        }
    }
}
