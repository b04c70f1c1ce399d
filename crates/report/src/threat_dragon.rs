//! The model as an OWASP Threat Dragon v2 file.

use crate::model::ThreatModel;

pub fn threat_dragon(_model: &ThreatModel) -> String {
    String::new()
}
