//! `bulkhead review privileges`: grants never exercised (T16).
