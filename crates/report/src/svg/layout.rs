//! Where everything of the diagram goes. Zones sit in columns (internet,
//! gateway, sandboxes, state; operator, collector and outbound under the
//! zone they talk to); the tallest column is stacked top down and every
//! other element moves level with what it talks to, so arrows run short
//! and flat. A lone element facing a column of many (the gateway facing
//! fifty functions) stretches along it and meets each one head on.
//!
//! Integer pixels throughout, ties broken by model order: the same
//! diagram gives the same picture.

use std::collections::BTreeMap;

use crate::model::{Diagram, Element};

pub(super) const MARGIN: i32 = 24;
/// Room between columns: where the flow labels go.
pub(super) const COL_GAP: i32 = 200;
const ZONE_PAD: i32 = 16;
const ZONE_HEAD: i32 = 30;
const ZONE_GAP: i32 = 48;
const ELEM_GAP: i32 = 16;
pub(super) const ELEM_H: i32 = 46;
/// Vertical room per arrow on an element's side: busy elements grow.
const PORT_PITCH: i32 = 10;
const LANE_PITCH: i32 = 20;
/// From this many arrows to one column, a lone element stretches along it.
const STRETCH_FROM: usize = 4;
pub(super) const NAME_SIZE: i32 = 13;
pub(super) const ZONE_SIZE: i32 = 12;

/// Where each known zone goes: (column, place in the column).
const PLACES: &[(&str, usize, usize)] = &[
    ("internet", 0, 0),
    ("operator", 0, 1),
    ("gateway", 1, 0),
    ("collector", 1, 1),
    ("sandbox", 2, 0),
    ("state", 3, 0),
    ("outside", 3, 1),
];

/// A generous width estimate of `chars` characters of a sans-serif font:
/// texts are cut to fit it rather than measured.
pub(super) fn text_width(chars: usize, size: i32) -> i32 {
    i32::try_from(chars).unwrap_or(i32::MAX / 64) * size * 58 / 100
}

/// How many characters fit in `width` pixels at `size`.
pub(super) fn chars_in(width: i32, size: i32) -> usize {
    usize::try_from(width * 100 / (size * 58))
        .unwrap_or(1)
        .max(4)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX / 64)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Rect {
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
}

impl Rect {
    pub fn overlaps(&self, o: &Rect) -> bool {
        self.x < o.x + o.w && o.x < self.x + self.w && self.y < o.y + o.h && o.y < self.y + self.h
    }
    pub fn cx(&self) -> i32 {
        self.x + self.w / 2
    }
    pub fn cy(&self) -> i32 {
        self.y + self.h / 2
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Side {
    Left,
    Right,
    Top,
    Bottom,
}

/// How a flow is drawn, from the columns of its two ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// To the next column, right or left: an S-curve.
    Across,
    /// Within one column, down or up: an S-curve.
    Vertical,
    /// Past a column: up out of its top to its lane above every zone,
    /// along it, down beside the target's column and in at its side.
    Lane(i32),
}

/// A zone that holds elements, and where it goes.
pub(super) struct Placed<'a> {
    pub name: &'a str,
    pub col: usize,
    order: usize,
    members: Vec<usize>,
    pub rect: Rect,
}

/// A flow whose two ends are drawn.
pub(super) struct Edge {
    pub flow: usize,
    pub from: usize,
    pub to: usize,
    pub route: Route,
    sides: (Side, Side),
    pub start: (i32, i32),
    pub end: (i32, i32),
    /// Lanes only: its height and where it drops.
    lane: (i32, i32),
}

/// Where a label may go: its anchor point and whether it is centred on it
/// (else it starts there).
pub(super) struct Spot {
    pub x: i32,
    pub y: i32,
    pub centred: bool,
}

impl Edge {
    /// The path's `d`.
    pub fn path(&self) -> String {
        let ((x0, y0), (x1, y1)) = (self.start, self.end);
        match self.route {
            Route::Across => {
                let d = (x1 - x0) / 2;
                format!("M{x0},{y0} C{},{y0} {},{y1} {x1},{y1}", x0 + d, x1 - d)
            }
            Route::Vertical => {
                let d = (y1 - y0) / 2;
                format!("M{x0},{y0} C{x0},{} {x1},{} {x1},{y1}", y0 + d, y1 - d)
            }
            Route::Lane(_) => {
                let (lane_y, drop) = self.lane;
                format!("M{x0},{y0} V{lane_y} H{drop} V{y1} H{x1}")
            }
        }
    }

    /// Places for the label, best first: along the curve from its middle
    /// outwards; on a lane, above its middle only.
    pub fn spots(&self) -> Vec<Spot> {
        let ((x0, y0), (x1, y1)) = (self.start, self.end);
        if let Route::Lane(_) = self.route {
            let (lane_y, drop) = self.lane;
            return vec![Spot {
                x: (x0 + drop) / 2,
                y: lane_y - 5,
                centred: true,
            }];
        }
        // The cubic from `path`, at t = n/20.
        let at = |n: i32| {
            let t = f64::from(n) / 20.0;
            let (a, b, c, d) = (
                (1.0 - t).powi(3),
                3.0 * (1.0 - t).powi(2) * t,
                3.0 * (1.0 - t) * t * t,
                t.powi(3),
            );
            let (p1, p2) = match self.route {
                Route::Vertical => {
                    let h = f64::from(y1 - y0) / 2.0;
                    (
                        (f64::from(x0), f64::from(y0) + h),
                        (f64::from(x1), f64::from(y1) - h),
                    )
                }
                _ => {
                    let w = f64::from(x1 - x0) / 2.0;
                    (
                        (f64::from(x0) + w, f64::from(y0)),
                        (f64::from(x1) - w, f64::from(y1)),
                    )
                }
            };
            let x = a * f64::from(x0) + b * p1.0 + c * p2.0 + d * f64::from(x1);
            let y = a * f64::from(y0) + b * p1.1 + c * p2.1 + d * f64::from(y1);
            // Pixels: far inside i32.
            (x.round() as i32, y.round() as i32)
        };
        [10, 8, 12, 6, 14, 5, 15]
            .into_iter()
            .map(|n| {
                let (x, y) = at(n);
                match self.route {
                    Route::Vertical => Spot {
                        x: x + 8,
                        y,
                        centred: false,
                    },
                    _ => Spot {
                        x,
                        y,
                        centred: true,
                    },
                }
            })
            .collect()
    }
}

pub(super) struct Layout<'a> {
    pub zones: Vec<Placed<'a>>,
    /// Each element's box, by element index.
    pub rects: Vec<Rect>,
    pub edges: Vec<Edge>,
    /// Right and bottom edges of everything drawn.
    pub right: i32,
    pub bottom: i32,
}

pub(super) fn layout(diagram: &Diagram) -> Layout<'_> {
    let elements = &diagram.elements;
    let mut zones = place_zones(diagram);
    // Element → (zone, column).
    let mut home = vec![(0usize, 0usize); elements.len()];
    for (zi, z) in zones.iter().enumerate() {
        for &e in &z.members {
            home[e] = (zi, z.col);
        }
    }
    let mut edges = route(diagram, &zones, &home);
    let mut heights = port_heights(&edges, elements.len());
    let widths = column_widths(elements, &zones);
    let lanes = count(
        edges
            .iter()
            .filter(|e| matches!(e.route, Route::Lane(_)))
            .count(),
    );
    let top = MARGIN
        + if lanes == 0 {
            0
        } else {
            lanes * LANE_PITCH + 14
        };

    // First everything stacked; the column with the most elements (the
    // functions, usually) stays so, and the others line up with it.
    let mut rects = place(
        &mut zones,
        &widths,
        &heights,
        &vec![None; elements.len()],
        top,
    );
    let anchor = (0..widths.len())
        .max_by_key(|&c| {
            let held: usize = zones
                .iter()
                .filter(|z| z.col == c)
                .map(|z| z.members.len())
                .sum();
            (held, std::cmp::Reverse(c))
        })
        .unwrap_or(0);
    let lone = |e: usize| zones[home[e].0].members.len() == 1;
    let (mut wish, stretched) = stretch(&edges, &rects, &home, anchor, &lone, &mut heights);
    // Then every other element level with the middle of its neighbours,
    // twice: the second pass sees where the first put them.
    for _ in 0..2 {
        for (e, wished) in level_with_neighbours(&edges, &rects, &stretched, &heights)
            .into_iter()
            .enumerate()
        {
            if home[e].1 != anchor && !stretched[e] && wished.is_some() {
                wish[e] = wished;
            }
        }
        rects = place(&mut zones, &widths, &heights, &wish, top);
    }

    route_lanes(&mut edges, &rects, &zones, &home, top, lanes);
    assign_ports(&mut edges, &rects);
    let right = zones.iter().map(|z| z.rect.x + z.rect.w).max().unwrap_or(0);
    let bottom = zones
        .iter()
        .map(|z| z.rect.y + z.rect.h)
        .max()
        .unwrap_or(top);
    Layout {
        zones,
        rects,
        edges,
        right,
        bottom,
    }
}

/// Each element's height: enough room for the arrows on its busiest side.
fn port_heights(edges: &[Edge], elements: usize) -> Vec<i32> {
    let mut ports: BTreeMap<(usize, Side), usize> = BTreeMap::new();
    for e in edges {
        *ports.entry((e.from, e.sides.0)).or_default() += 1;
        *ports.entry((e.to, e.sides.1)).or_default() += 1;
    }
    (0..elements)
        .map(|e| {
            let side = |s| count(ports.get(&(e, s)).copied().unwrap_or(0));
            ELEM_H.max((side(Side::Left).max(side(Side::Right)) + 1) * PORT_PITCH)
        })
        .collect()
}

/// The elements an element has a flow to or from in a next column.
fn neighbours(edges: &[Edge], e: usize) -> impl Iterator<Item = usize> + '_ {
    edges
        .iter()
        .filter(|x| x.route == Route::Across)
        .filter_map(move |x| match (x.from == e, x.to == e) {
            (true, _) => Some(x.to),
            (_, true) => Some(x.from),
            _ => None,
        })
}

/// A lone element facing many of the anchor column stretches from the
/// first of them to the last: it wishes its top there and grows. Returns
/// each element's wish and whether it stretched.
fn stretch(
    edges: &[Edge],
    rects: &[Rect],
    home: &[(usize, usize)],
    anchor: usize,
    lone: &dyn Fn(usize) -> bool,
    heights: &mut [i32],
) -> (Vec<Option<i32>>, Vec<bool>) {
    let mut wish = vec![None; rects.len()];
    let mut stretched = vec![false; rects.len()];
    for e in 0..rects.len() {
        if home[e].1 == anchor || !lone(e) {
            continue;
        }
        let facing: Vec<i32> = neighbours(edges, e)
            .filter(|&n| home[n].1 == anchor)
            .map(|n| rects[n].cy())
            .collect();
        if let (true, Some(lo), Some(hi)) = (
            facing.len() >= STRETCH_FROM,
            facing.iter().min(),
            facing.iter().max(),
        ) {
            heights[e] = heights[e].max(hi - lo + 2 * PORT_PITCH);
            wish[e] = Some(lo - PORT_PITCH);
            stretched[e] = true;
        }
    }
    (wish, stretched)
}

/// Where each element would put its top to sit level with the middle of
/// its neighbours (a stretched one counts at its top, where its own other
/// arrows go); `None` for an element with none.
fn level_with_neighbours(
    edges: &[Edge],
    rects: &[Rect],
    stretched: &[bool],
    heights: &[i32],
) -> Vec<Option<i32>> {
    (0..rects.len())
        .map(|e| {
            let ys: Vec<i64> = neighbours(edges, e)
                .map(|n| {
                    let r = rects[n];
                    i64::from(if stretched[n] {
                        r.y + ELEM_H / 2
                    } else {
                        r.cy()
                    })
                })
                .collect();
            let mean = ys
                .iter()
                .sum::<i64>()
                .checked_div(i64::try_from(ys.len()).ok()?)?;
            Some(i32::try_from(mean).ok()? - heights[e] / 2)
        })
        .collect()
}

/// The zones that hold elements, in drawing order, with their places.
fn place_zones(diagram: &Diagram) -> Vec<Placed<'_>> {
    // The zones the diagram lists, then any an element names without a
    // zone entry (drawn under its bare id rather than dropped).
    let listed = diagram
        .zones
        .iter()
        .map(|z| (z.id.as_str(), z.name.as_str()));
    let unlisted = diagram
        .elements
        .iter()
        .map(|e| (e.zone.as_str(), e.zone.as_str()));
    let mut seen: Vec<&str> = Vec::new();
    let mut zones: Vec<Placed<'_>> = Vec::new();
    for (id, name) in listed.chain(unlisted) {
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        let members: Vec<usize> = diagram
            .elements
            .iter()
            .enumerate()
            .filter(|(_, e)| e.zone == id)
            .map(|(i, _)| i)
            .collect();
        if members.is_empty() {
            continue;
        }
        let (col, order) = PLACES
            .iter()
            .find(|(z, _, _)| *z == id)
            .map_or((PLACES.len() + seen.len(), 0), |&(_, col, order)| {
                (col, order)
            });
        zones.push(Placed {
            name,
            col,
            order,
            members,
            rect: Rect::default(),
        });
    }
    // Columns without a zone close up, so neighbours stay neighbours.
    let mut cols: Vec<usize> = zones.iter().map(|z| z.col).collect();
    cols.sort_unstable();
    cols.dedup();
    for z in &mut zones {
        z.col = cols.iter().position(|&c| c == z.col).unwrap_or(0);
    }
    zones.sort_by_key(|z| (z.col, z.order));
    zones
}

/// How each flow is drawn and which sides of its ends it uses.
fn route(diagram: &Diagram, zones: &[Placed<'_>], home: &[(usize, usize)]) -> Vec<Edge> {
    let index: BTreeMap<&str, usize> = diagram
        .elements
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.as_str(), i))
        .collect();
    // Rank down a column: the zone's place, then model order.
    let rank = |e: usize| (zones[home[e].0].order, e);
    let mut edges = Vec::new();
    for (fi, flow) in diagram.flows.iter().enumerate() {
        let (Some(&from), Some(&to)) = (index.get(flow.from.as_str()), index.get(flow.to.as_str()))
        else {
            continue;
        };
        if from == to {
            continue;
        }
        let (cf, ct) = (home[from].1, home[to].1);
        let (route, sides) = if cf == ct {
            if rank(to) > rank(from) {
                (Route::Vertical, (Side::Bottom, Side::Top))
            } else {
                (Route::Vertical, (Side::Top, Side::Bottom))
            }
        } else {
            let sides = if ct > cf {
                (Side::Right, Side::Left)
            } else {
                (Side::Left, Side::Right)
            };
            if cf.abs_diff(ct) == 1 {
                (Route::Across, sides)
            } else {
                (Route::Lane(0), (Side::Top, sides.1))
            }
        };
        edges.push(Edge {
            flow: fi,
            from,
            to,
            route,
            sides,
            start: (0, 0),
            end: (0, 0),
            lane: (0, 0),
        });
    }
    edges
}

/// Lanes: the flow reaching lowest takes the lowest lane and drops
/// furthest from the target's column, so lanes nest, not cross.
fn route_lanes(
    edges: &mut [Edge],
    rects: &[Rect],
    zones: &[Placed<'_>],
    home: &[(usize, usize)],
    top: i32,
    lanes: i32,
) {
    let span = |col: usize| {
        zones
            .iter()
            .filter(|z| z.col == col)
            .fold((i32::MAX, 0), |(l, r), z| {
                (l.min(z.rect.x), r.max(z.rect.x + z.rect.w))
            })
    };
    let mut order: Vec<usize> = (0..edges.len())
        .filter(|&i| matches!(edges[i].route, Route::Lane(_)))
        .collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(rects[edges[i].to].cy()), i));
    for (lane, i) in order.into_iter().enumerate() {
        let lane = count(lane);
        let e = &mut edges[i];
        let (to_left, to_right) = span(home[e.to].1);
        let nest = lanes - 1 - lane;
        let drop = if e.sides.1 == Side::Left {
            to_left - 14 - nest * 10
        } else {
            to_right + 14 + nest * 10
        };
        e.route = Route::Lane(lane);
        e.lane = (top - 12 - lane * LANE_PITCH, drop);
    }
}

/// Element width per column: the longest name or zone title, within bounds.
fn column_widths(elements: &[Element], zones: &[Placed<'_>]) -> Vec<i32> {
    let cols = zones.iter().map(|z| z.col + 1).max().unwrap_or(0);
    let mut widths = vec![170; cols];
    for z in zones {
        let names = z
            .members
            .iter()
            .map(|&e| text_width(elements[e].name.chars().count(), NAME_SIZE) + 28);
        let title = text_width(z.name.chars().count(), ZONE_SIZE) - 8;
        let widest = names.chain([title]).max().unwrap_or(0);
        widths[z.col] = widths[z.col].max(widest.min(250));
    }
    widths
}

/// Zones and their elements, column by column, top down; an element goes
/// where it wishes (its top) when that is below the one before it.
fn place(
    zones: &mut [Placed<'_>],
    widths: &[i32],
    heights: &[i32],
    wish: &[Option<i32>],
    top: i32,
) -> Vec<Rect> {
    let mut rects = vec![Rect::default(); heights.len()];
    let mut x = MARGIN;
    for (col, &w) in widths.iter().enumerate() {
        let mut floor = top;
        for z in zones.iter_mut().filter(|z| z.col == col) {
            // Those without a wish first (they hang from the top), then by
            // wish, then in model order.
            z.members.sort_by_key(|&e| (wish[e].is_some(), wish[e], e));
            let mut y = floor + ZONE_HEAD;
            let mut first = None;
            for &e in &z.members {
                let ey = wish[e].map_or(y, |want| want.max(y));
                first.get_or_insert(ey);
                rects[e] = Rect {
                    x: x + ZONE_PAD,
                    y: ey,
                    w,
                    h: heights[e],
                };
                y = ey + heights[e] + ELEM_GAP;
            }
            let zone_top = first.unwrap_or(floor + ZONE_HEAD) - ZONE_HEAD;
            z.rect = Rect {
                x,
                y: zone_top,
                w: w + 2 * ZONE_PAD,
                h: y - ELEM_GAP + ZONE_PAD - zone_top,
            };
            floor = z.rect.y + z.rect.h + ZONE_GAP;
        }
        x += w + 2 * ZONE_PAD + COL_GAP;
    }
    rects
}

/// Where on `me` an arrow to `other` would like to end: level with the
/// middle of the smaller of the two when both reach that high (a flat
/// arrow), else level with `other`.
fn level(me: Rect, other: Rect) -> i32 {
    let y = if me.h <= other.h { me.cy() } else { other.cy() };
    let reaches = |r: Rect| y >= r.y + PORT_PITCH / 2 && y <= r.y + r.h - PORT_PITCH / 2;
    if reaches(me) && reaches(other) {
        y
    } else {
        other.cy()
    }
}

/// The ends of each arrow on its elements' sides: level with the other
/// end where there is room (flat arrows), at least a pitch apart and in
/// the order of the other ends (fans do not cross); lanes at the top.
fn assign_ports(edges: &mut [Edge], rects: &[Rect]) {
    /// One arrow's end on one side of an element.
    struct End {
        wish: i32,
        edge: usize,
        start: bool,
    }
    let mut sides: BTreeMap<(usize, Side), Vec<End>> = BTreeMap::new();
    for (i, e) in edges.iter().enumerate() {
        let wish = |me: usize, other: usize, side: Side| match (e.route, side) {
            // Leaving the top, the highest lane leftmost; arriving at a
            // side, above the flat arrows.
            (Route::Lane(lane), Side::Top) => -lane,
            (Route::Lane(lane), _) => rects[me].y - 1000 - lane,
            (_, Side::Left | Side::Right) => level(rects[me], rects[other]),
            _ => rects[other].cx(),
        };
        sides.entry((e.from, e.sides.0)).or_default().push(End {
            wish: wish(e.from, e.to, e.sides.0),
            edge: i,
            start: true,
        });
        sides.entry((e.to, e.sides.1)).or_default().push(End {
            wish: wish(e.to, e.from, e.sides.1),
            edge: i,
            start: false,
        });
    }
    for ((element, side), mut ends) in sides {
        ends.sort_by_key(|end| (end.wish, end.edge));
        let r = rects[element];
        let n = count(ends.len());
        let points: Vec<(i32, i32)> = match side {
            Side::Left | Side::Right => {
                let x = if side == Side::Left { r.x } else { r.x + r.w };
                let (lo, hi) = (r.y + PORT_PITCH / 2, r.y + r.h - PORT_PITCH / 2);
                let mut ys: Vec<i32> = ends.iter().map(|end| end.wish.clamp(lo, hi)).collect();
                for k in 1..ys.len() {
                    ys[k] = ys[k].max(ys[k - 1] + PORT_PITCH);
                }
                let mut ceiling = hi;
                for y in ys.iter_mut().rev() {
                    *y = (*y).min(ceiling);
                    ceiling = *y - PORT_PITCH;
                }
                ys.into_iter().map(|y| (x, y)).collect()
            }
            Side::Top | Side::Bottom => {
                // Packed at the right end, clear of the zone's title.
                let y = if side == Side::Top { r.y } else { r.y + r.h };
                (0..n)
                    .map(|k| (r.x + r.w - 16 - (n - 1 - k) * PORT_PITCH, y))
                    .collect()
            }
        };
        for (end, point) in ends.into_iter().zip(points) {
            if end.start {
                edges[end.edge].start = point;
            } else {
                edges[end.edge].end = point;
            }
        }
    }
}
