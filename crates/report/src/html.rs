//! The threat model as one self-contained HTML page, with the data-flow
//! diagram as inline SVG drawn by Bulkhead (no script, no CDN).

use crate::model::ThreatModel;

pub fn html(model: &ThreatModel) -> String {
    // Filled in by the HTML renderer.
    let _ = crate::svg::svg(&model.diagram);
    String::new()
}
