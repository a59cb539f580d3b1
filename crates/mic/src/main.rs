//! The `mic` binary; all wiring lives in the library's `run`.

fn main() {}
