//! A stand-in named like the banned crate.
