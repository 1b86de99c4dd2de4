//! What an adapter's error wraps: the underlying error kept whole (for
//! `source()`, and for a log line that shows it), cheap to clone, so that
//! errors handed to several waiters (a batch's messages, a shared read)
//! still say why.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

#[derive(Clone)]
pub struct Cause(Arc<dyn Error + Send + Sync>);

impl Cause {
    pub fn new(error: impl Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }

    /// A cause a library returned boxed.
    pub fn boxed(error: Box<dyn Error + Send + Sync>) -> Self {
        Self(Arc::from(error))
    }

    /// A cause known only as text (a condition this code found, not an
    /// error a library returned).
    pub fn text(text: impl Into<String>) -> Self {
        Self::boxed(Box::from(text.into()))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_cause_says_what_it_wraps_and_keeps_its_chain() {
        let io = std::io::Error::other("disk gone");
        let cause = Cause::new(Outer(io));
        assert_eq!(cause.to_string(), "outer");
        assert_eq!(
            cause.source().map(ToString::to_string),
            Some("disk gone".into())
        );
        assert_eq!(Cause::text("no leader").to_string(), "no leader");
        assert_eq!(cause.clone().to_string(), "outer");
    }
}
