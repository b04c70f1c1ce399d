//! The data-flow diagram as SVG: trust zones as dashed boxes, elements in
//! them, flows as arrows.

use crate::model::Diagram;

pub fn svg(_diagram: &Diagram) -> String {
    String::new()
}
