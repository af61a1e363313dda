/// Everything that can go wrong building, signing or reading a certificate.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("not a valid certificate signing request: {0}")]
    BadRequest(String),
    #[error("not a valid certificate: {0}")]
    BadCertificate(String),
    #[error("not a valid private key: {0}")]
    BadKey(String),
    #[error("{0}")]
    BadIdentity(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

pub type Result<T, E = PkiError> = std::result::Result<T, E>;
