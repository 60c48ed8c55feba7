//! Bearer-token checks: a tonic interceptor in front of the services that need it, and the same
//! check for the console's HTTP calls.

use std::sync::Arc;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Requires `authorization: Bearer <token>` when a token is configured; lets everything
/// through otherwise.
#[derive(Clone)]
pub struct Auth {
    expected: Option<Arc<str>>,
}

impl Auth {
    pub fn new(token: Option<String>) -> Auth {
        Auth { expected: token.map(|t| format!("Bearer {}", t.trim()).into()) }
    }

    /// Whether a token is required at all.
    pub fn is_required(&self) -> bool {
        self.expected.is_some()
    }

    /// Checks the value of an `authorization` header or metadata entry (empty when absent).
    pub fn check(&self, given: &[u8]) -> Result<(), Status> {
        let Some(expected) = &self.expected else { return Ok(()) };
        if constant_time_eq(given, expected.as_bytes()) {
            Ok(())
        } else if given.is_empty() {
            Err(Status::unauthenticated("missing bearer token: send `authorization: Bearer <token>`"))
        } else {
            Err(Status::unauthenticated("wrong bearer token in `authorization`"))
        }
    }
}

impl Interceptor for Auth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request.metadata().get("authorization").map(|v| v.as_bytes()).unwrap_or_default();
        self.check(given).map(|()| request)
    }
}

/// Compares without stopping at the first differing byte, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(header: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(h) = header {
            r.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        r
    }

    #[test]
    fn token_checks() {
        let mut open = Auth::new(None);
        assert!(open.call(with(None)).is_ok());
        let mut guarded = Auth::new(Some("s3cret\n".into()));
        assert!(guarded.call(with(Some("Bearer s3cret"))).is_ok());
        let missing = guarded.call(with(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("missing"));
        assert!(guarded.call(with(Some("Bearer s3creT"))).unwrap_err().message().contains("wrong"));
        assert!(guarded.call(with(Some("Bearer s3cret2"))).is_err());
    }
}
