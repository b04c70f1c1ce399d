//! What Bulkhead can say about an app from what is deployed: its threat
//! model (inventory, data-flow diagram, STRIDE per element, each threat
//! tied to a T-ID and marked mitigated, open or accepted), its personal-data
//! inventory (T20) and its privilege review (T16). Everything is derived
//! from the manifest, the components' imports and Bulkhead's own records;
//! nothing is written by hand, so the model changes when the app does (T21).

pub mod privileges;
