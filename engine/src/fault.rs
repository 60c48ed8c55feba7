//! Named fault points for crash tests, as TiKV does with the `fail` crate.
//!
//! In a normal build [`point`] compiles to nothing. Test builds enable the `fail/failpoints`
//! feature (the engine's dev-dependencies do), and a `quiver` process then reads its fault
//! configuration from the `FAILPOINTS` environment variable (`name=action;name=action`, see
//! the `fail` crate): `sleep(ms)` slows a step down, `panic` fails it, and `return` kills the
//! process on the spot (`abort`: no destructor, flush or fsync runs), as `kill -9` would.
//!
//! Every point is named `<module>::<step>`; the crash tests in `engine/tests/engine/` list them.

/// A step where a crash test may stop, slow down or kill the process.
#[inline]
pub fn point(name: &'static str) {
    // Without the `failpoints` feature the macro below expands to nothing.
    let _ = name;
    fail::fail_point!(name, |_| {
        eprintln!("fault point {name}: killing the process");
        std::process::abort()
    });
}

/// Reads `FAILPOINTS` when fault points are compiled in; a no-op otherwise. Held by `main` for
/// the life of the process.
pub fn setup() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}
