//! The SDK's one error type and the DTM result conventions (spec §2): every call between the roles ends in
//! SUCCESS, FAILURE (a definite business failure that triggers a rollback), ONGOING (not finished yet, retry
//! later), or some other error (temporary, retried with backoff).

/// How a call ended, in DTM's four-way classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// A definite business failure: HTTP 409, gRPC `Aborted`, or a body containing `FAILURE`.
    Failure,
    /// Not finished yet: HTTP 425, gRPC `FailedPrecondition`, or a body containing `ONGOING`.
    Ongoing,
    /// Anything else: a temporary fault, retried with backoff.
    Error,
}

/// Errors of the SDK. Business code returns them too: [`Error::failure`] for a definite failure (the
/// transaction rolls back), [`Error::ongoing`] for "not yet", anything else is retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A definite business failure (HTTP 409 / gRPC `Aborted`). The message ends in `FAILURE` on the wire.
    #[error("{0} FAILURE")]
    Failure(String),
    /// The work is not finished yet (HTTP 425 / gRPC `FailedPrecondition`).
    #[error("{0} ONGOING")]
    Ongoing(String),
    /// The msg barrier found its row already present: the back-check ran first, so the business must not.
    #[error(
        "barrier of {gid}: the msg back-check already ran, the business is not executed (DUPLICATED)"
    )]
    Duplicated {
        /// The global transaction.
        gid: String,
    },
    /// The transaction manager answered `call` with an error that is neither FAILURE nor ONGOING.
    #[error("transaction manager {call}: HTTP {status}: {body}")]
    Dtm {
        /// The API called (`submit`, `registerBranch`, ...).
        call: &'static str,
        /// The HTTP status.
        status: u16,
        /// The response body.
        body: String,
    },
    /// A branch answered with an error that is neither FAILURE nor ONGOING.
    #[error("branch {url}: HTTP {status}: {body}")]
    Branch {
        /// The branch URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The response body.
        body: String,
    },
    /// An HTTP request could not be made or its answer could not be read.
    #[error("{what}: {source}")]
    Http {
        /// What was being done.
        what: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// A gRPC call failed with a status that is neither FAILURE nor ONGOING.
    #[cfg(feature = "grpc")]
    #[error("{what}: {source}")]
    Grpc {
        /// What was being done.
        what: String,
        /// The gRPC status.
        #[source]
        source: Box<tonic::Status>,
    },
    /// A database error (barrier, query_prepared, XA).
    #[cfg(any(feature = "mysql", feature = "postgres"))]
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// A Redis error (Redis barrier).
    #[cfg(feature = "redis")]
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// JSON could not be encoded or decoded.
    #[error("{what}: {source}")]
    Json {
        /// What was being encoded or decoded.
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The SDK was used in a way that cannot work (a missing gid, a query without barrier parameters...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Any other error from business code (retried by the transaction manager).
    #[error("{0}")]
    Other(String),
}

/// `Result` of the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A definite business failure: the global transaction rolls back.
    pub fn failure(message: impl Into<String>) -> Self {
        Self::Failure(message.into())
    }

    /// Not finished: the transaction manager retries at its fixed interval.
    pub fn ongoing(message: impl Into<String>) -> Self {
        Self::Ongoing(message.into())
    }

    /// Some other (temporary) error: the transaction manager retries with backoff.
    pub fn other(message: impl Into<String>) -> Self {
        Self::Other(message.into())
    }

    /// The DTM classification of this error.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Failure(_) => Outcome::Failure,
            Self::Ongoing(_) => Outcome::Ongoing,
            _ => Outcome::Error,
        }
    }

    /// Whether this is a definite business failure.
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failure(_))
    }

    /// Whether this is ONGOING.
    pub fn is_ongoing(&self) -> bool {
        matches!(self, Self::Ongoing(_))
    }

    /// Whether this is the msg barrier's DUPLICATED.
    pub fn is_duplicated(&self) -> bool {
        matches!(self, Self::Duplicated { .. })
    }

    /// A fixed label per variant, for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Failure(_) => "failure",
            Self::Ongoing(_) => "ongoing",
            Self::Duplicated { .. } => "duplicated",
            Self::Dtm { .. } => "dtm",
            Self::Branch { .. } => "branch",
            Self::Http { .. } => "http",
            #[cfg(feature = "grpc")]
            Self::Grpc { .. } => "grpc",
            #[cfg(any(feature = "mysql", feature = "postgres"))]
            Self::Sql(_) => "sql",
            #[cfg(feature = "redis")]
            Self::Redis(_) => "redis",
            Self::Json { .. } => "json",
            Self::InvalidArgument(_) => "invalid_argument",
            Self::Other(_) => "other",
        }
    }

    pub(crate) fn http(what: impl Into<String>, source: reqwest::Error) -> Self {
        Self::Http {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn json(what: impl Into<String>, source: serde_json::Error) -> Self {
        Self::Json {
            what: what.into(),
            source,
        }
    }

    /// The error text without the trailing `FAILURE`/`ONGOING` marker.
    pub fn message(&self) -> String {
        match self {
            Self::Failure(m) | Self::Ongoing(m) | Self::Other(m) => m.clone(),
            other => other.to_string(),
        }
    }
}

/// How a branch's HTTP answer is read (spec §2.2): ONGOING first (425 or the word in the body), then
/// FAILURE (409 or the word), then any other non-200 status is an error.
pub fn outcome_of_http(status: u16, body: &str) -> Outcome {
    if status == 425 || body.contains("ONGOING") {
        Outcome::Ongoing
    } else if status == 409 || body.contains("FAILURE") {
        Outcome::Failure
    } else if status != 200 {
        Outcome::Error
    } else {
        Outcome::Success
    }
}

/// The result of a branch's HTTP answer.
pub(crate) fn branch_result(url: &str, status: u16, body: String) -> Result<Vec<u8>> {
    match outcome_of_http(status, &body) {
        Outcome::Success => Ok(body.into_bytes()),
        Outcome::Failure => Err(Error::Failure(body)),
        Outcome::Ongoing => Err(Error::Ongoing(body)),
        Outcome::Error => Err(Error::Branch {
            url: url.to_owned(),
            status,
            body,
        }),
    }
}

#[cfg(feature = "grpc")]
impl Error {
    /// Reads a gRPC status as DTM does (spec §2.2): `Aborted` is FAILURE (except the legacy message
    /// `ONGOING`), `FailedPrecondition` is ONGOING, anything else an error.
    pub fn from_grpc_status(what: impl Into<String>, status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Aborted if status.message() == "ONGOING" => {
                Self::Ongoing(status.message().to_owned())
            }
            tonic::Code::Aborted => Self::Failure(status.message().to_owned()),
            tonic::Code::FailedPrecondition => Self::Ongoing(status.message().to_owned()),
            _ => Self::Grpc {
                what: what.into(),
                source: Box::new(status),
            },
        }
    }
}

/// For gRPC branch handlers: FAILURE is `Aborted`, ONGOING is `FailedPrecondition`, anything else
/// `Internal`, so the transaction manager reads the answer as DTM does.
#[cfg(feature = "grpc")]
impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Failure(m) => Self::aborted(m),
            Error::Ongoing(m) => Self::failed_precondition(m),
            other => Self::internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_are_classified_in_dtm_order() {
        let cases = [
            (200, "null", Outcome::Success),
            (200, r#"{"dtm_result":"FAILURE"}"#, Outcome::Failure),
            (200, r#"{"dtm_result":"ONGOING"}"#, Outcome::Ongoing),
            (409, "", Outcome::Failure),
            (425, "", Outcome::Ongoing),
            (409, "ONGOING", Outcome::Ongoing),
            (500, "boom", Outcome::Error),
            (500, "x FAILURE", Outcome::Failure),
        ];
        for (i, (status, body, want)) in cases.into_iter().enumerate() {
            assert_eq!(outcome_of_http(status, body), want, "case {i}");
        }
    }

    #[test]
    fn failure_display_carries_the_marker() {
        let e = Error::failure("insufficient balance");
        assert_eq!(e.to_string(), "insufficient balance FAILURE");
        assert_eq!(e.message(), "insufficient balance");
        assert_eq!(e.outcome(), Outcome::Failure);
        assert_eq!(Error::other("x").outcome(), Outcome::Error);
    }
}
