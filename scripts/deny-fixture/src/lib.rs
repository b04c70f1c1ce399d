//! Nothing: only the dependency graph matters.
