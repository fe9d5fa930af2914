//! What can go wrong talking to an outpost, each case saying what to do about it.

/// An error from one outpost (or from the client's own settings).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The outpost could not be reached (connect, TLS handshake, or the connection died).
    #[error("{url}: {message} (is the outpost running and the --url right?)")]
    Unreachable { url: String, message: String },
    /// The outpost answered with an error body.
    #[error("{url}: {status} {code}: {message}{}", hint(*status))]
    Api {
        url: String,
        status: u16,
        code: String,
        message: String,
        retry_after: Option<u64>,
        /// The live task's id, on `409 duplicate_issue`.
        id: Option<String>,
    },
    /// The outpost answered something that is not the contract.
    #[error("{url}: unexpected reply: {message}")]
    Protocol { url: String, message: String },
    /// A bad setting on this side (URL, token file, CA file).
    #[error("{0}")]
    Setup(String),
}

fn hint(status: u16) -> &'static str {
    match status {
        401 => " (pass the outpost's token with --token, --token-file or OUTPOST_TOKEN)",
        404 => " (check the task id with `outpost ls`)",
        _ => "",
    }
}

impl ClientError {
    /// Worth trying again later (or on another outpost): unreachable, 5xx, 429.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// The HTTP status, for an error the outpost answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}
