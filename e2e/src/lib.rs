//! quiver-e2e: multi-process end-to-end tests of the `quiver` binary. Not built yet: see issue 3.
