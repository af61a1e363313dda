//! The server's one error type, and its single mapping to gRPC status codes.

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Every configuration problem found, each as `source: field: message`.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Config(Vec<String>),
    #[error("storage: {0}")]
    Store(#[from] driftwatch_store::StoreError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

pub type Result<T, E = ServerError> = std::result::Result<T, E>;

impl From<ServerError> for tonic::Status {
    fn from(e: ServerError) -> Self {
        use tonic::Status;
        match e {
            ServerError::InvalidArgument(m) => Status::invalid_argument(m),
            ServerError::NotFound(m) => Status::not_found(m),
            ServerError::AlreadyExists(m) => Status::already_exists(m),
            ServerError::FailedPrecondition(m) => Status::failed_precondition(m),
            ServerError::PermissionDenied(m) => Status::permission_denied(m),
            ServerError::Unauthenticated(m) => Status::unauthenticated(m),
            ServerError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ServerError::Unavailable(m) => Status::unavailable(m),
            ServerError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            // Internal details stay in the server log; the client gets a stable message.
            e @ (ServerError::Store(_) | ServerError::Io(_) | ServerError::Transport(_) | ServerError::Config(_)) => {
                tracing::error!(error = %e, "internal error");
                Status::internal("internal error; see the server log")
            }
        }
    }
}
