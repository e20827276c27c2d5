use std::process::ExitStatus;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum HarnessError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {output}")]
    Command {
        command: String,
        status: ExitStatus,
        output: String,
    },
    #[error("{what}: {source}")]
    Sql {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Other(String),
}

impl HarnessError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> HarnessError {
        HarnessError::Io {
            what: what.into(),
            source,
        }
    }

    pub fn sql(what: impl Into<String>, source: tokio_postgres::Error) -> HarnessError {
        HarnessError::Sql {
            what: what.into(),
            source,
        }
    }
}
