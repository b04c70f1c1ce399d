//! Depended on with a wildcard.
