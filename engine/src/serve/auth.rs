//! Bearer-token checks: a tonic interceptor in front of the services that need it.

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
}

impl Interceptor for Auth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else { return Ok(request) };
        let given = request.metadata().get("authorization").map(|v| v.as_bytes()).unwrap_or_default();
        if constant_time_eq(given, expected.as_bytes()) {
            Ok(request)
        } else if given.is_empty() {
            Err(Status::unauthenticated("missing bearer token: send metadata `authorization: Bearer <token>`"))
        } else {
            Err(Status::unauthenticated("wrong bearer token in metadata `authorization`"))
        }
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
