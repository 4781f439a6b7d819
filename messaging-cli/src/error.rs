//! Why a command failed, and the exit code it maps to.

/// Why a command failed; the variant decides the exit code.
#[derive(Debug)]
pub enum CliError {
    /// The operation failed (1).
    Failed(String),
    /// Bad usage, configuration or input (2).
    Input(String),
    /// The broker is unreachable or refused the connection (3).
    Unreachable(String),
    /// Timed out (4).
    Timeout(String),
    /// `dlq depth` above the threshold (5).
    Alert(String),
}

impl CliError {
    /// The process exit code.
    pub fn code(&self) -> u8 {
        match self {
            Self::Failed(_) => 1,
            Self::Input(_) => 2,
            Self::Unreachable(_) => 3,
            Self::Timeout(_) => 4,
            Self::Alert(_) => 5,
        }
    }

    pub(crate) fn message(&self) -> &str {
        match self {
            Self::Failed(m)
            | Self::Input(m)
            | Self::Unreachable(m)
            | Self::Timeout(m)
            | Self::Alert(m) => m,
        }
    }
}

pub(crate) fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}
