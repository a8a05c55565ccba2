//! Search filters on item attributes: the JSON a query gives, checked against the attributes
//! the consumers file declares, and how a filter matches an item's attributes.
//!
//! The JSON form:
//! - `{"attribute": "section", "eq": "utils"}`: equality;
//! - `{"attribute": "section", "in": ["utils", "devel"]}`: one of a set;
//! - `{"attribute": "installed_size", "gte": 10, "lt": 500}`: a numeric range, any of `gt`,
//!   `gte`, `lt`, `lte` (at most one lower and one upper bound);
//! - `{"and": [F, ...]}`, `{"or": [F, ...]}`: every one / at least one of the filters.
//!
//! Rules: every attribute a filter names must be declared (`[attributes]` in the consumers
//! file): a `keyword` attribute compares as text (`eq`/`in` take strings), a `number`
//! attribute as a number (`eq`/`in` take numbers, ranges apply). An item without the attribute
//! does not match; nor does an item whose value of a `number` attribute is not a finite
//! number. A filter is refused with a kind and a message naming where it is wrong:
//! `undeclared_attribute` (the message lists the declared ones) or `invalid_filter`.
//! Bounded: at most [`MAX_DEPTH`] levels, [`MAX_CONDITIONS`] conditions and
//! [`MAX_VALUES`] values in all.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How an attribute is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttributeKind {
    /// Text, compared for equality.
    Keyword,
    /// A number (the value parsed as a 64-bit float), compared for equality and by range.
    Number,
}

/// The attributes filters may name, by name.
pub type Declared = BTreeMap<String, AttributeKind>;

/// The deepest nesting of `and`/`or`.
pub const MAX_DEPTH: usize = 8;
/// The most conditions (`eq`, `in`, ranges) in one filter.
pub const MAX_CONDITIONS: usize = 64;
/// The most values in all `eq`/`in` of one filter.
pub const MAX_VALUES: usize = 1024;

/// A checked filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every one matches.
    And(Vec<Filter>),
    /// At least one matches.
    Or(Vec<Filter>),
    /// A keyword attribute equal to one of the values.
    Keyword {
        /// The attribute.
        attribute: String,
        /// The values, sorted and without duplicates.
        values: Vec<String>,
    },
    /// A number attribute equal to one of the values.
    Number {
        /// The attribute.
        attribute: String,
        /// The values, sorted and without duplicates.
        values: Vec<f64>,
    },
    /// A number attribute within bounds.
    Range {
        /// The attribute.
        attribute: String,
        /// Lower bound.
        min: Bound<f64>,
        /// Upper bound.
        max: Bound<f64>,
    },
}

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FilterError {
    /// `undeclared_attribute` or `invalid_filter`.
    pub kind: &'static str,
    /// For people, naming the place in the filter.
    pub message: String,
}

fn invalid(at: &str, message: impl std::fmt::Display) -> FilterError {
    FilterError {
        kind: "invalid_filter",
        message: format!("filter{at}: {message}"),
    }
}

/// Checks a filter's JSON against the declared attributes.
pub fn parse(json: &Value, declared: &Declared) -> Result<Filter, FilterError> {
    let mut budget = Budget {
        conditions: 0,
        values: 0,
    };
    parse_at(json, declared, "", 0, &mut budget)
}

struct Budget {
    conditions: usize,
    values: usize,
}

fn parse_at(
    json: &Value,
    declared: &Declared,
    at: &str,
    depth: usize,
    budget: &mut Budget,
) -> Result<Filter, FilterError> {
    let Value::Object(fields) = json else {
        return Err(invalid(at, "a filter is a JSON object"));
    };
    for combinator in ["and", "or"] {
        let Some(list) = fields.get(combinator) else {
            continue;
        };
        if fields.len() != 1 {
            return Err(invalid(
                at,
                format!("\"{combinator}\" stands alone in its object"),
            ));
        }
        if depth >= MAX_DEPTH {
            return Err(invalid(
                at,
                format!("nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let Some(items) = list.as_array().filter(|a| !a.is_empty()) else {
            return Err(invalid(
                at,
                format!("\"{combinator}\" takes a non-empty array of filters"),
            ));
        };
        let parts = items
            .iter()
            .enumerate()
            .map(|(i, f)| {
                parse_at(
                    f,
                    declared,
                    &format!("{at}.{combinator}[{i}]"),
                    depth + 1,
                    budget,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(if combinator == "and" {
            Filter::And(parts)
        } else {
            Filter::Or(parts)
        });
    }
    let Some(name) = fields.get("attribute") else {
        return Err(invalid(
            at,
            "give \"attribute\" with \"eq\", \"in\" or a range (\"gt\", \"gte\", \"lt\", \"lte\"), or \"and\"/\"or\"",
        ));
    };
    let Some(name) = name.as_str() else {
        return Err(invalid(at, "\"attribute\" is a name (a string)"));
    };
    let Some(&kind) = declared.get(name) else {
        let known = if declared.is_empty() {
            "none are declared (the consumers file's [attributes] table)".to_owned()
        } else {
            format!(
                "declared: {}",
                declared
                    .iter()
                    .map(|(n, k)| format!("{n} ({})", kind_name(*k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(FilterError {
            kind: "undeclared_attribute",
            message: format!("filter{at}: attribute {name:?} is not declared; {known}"),
        });
    };
    budget.conditions += 1;
    if budget.conditions > MAX_CONDITIONS {
        return Err(invalid(
            at,
            format!("more than {MAX_CONDITIONS} conditions"),
        ));
    }
    let ops: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "attribute")
        .collect();
    if let Some(bad) = ops
        .iter()
        .find(|k| !matches!(**k, "eq" | "in" | "gt" | "gte" | "lt" | "lte"))
    {
        return Err(invalid(
            at,
            format!("unknown operator {bad:?} (eq, in, gt, gte, lt, lte)"),
        ));
    }
    let ranged = ops
        .iter()
        .any(|k| matches!(*k, "gt" | "gte" | "lt" | "lte"));
    let equal = ops.iter().filter(|k| matches!(**k, "eq" | "in")).count();
    match (equal, ranged) {
        (0, false) => Err(invalid(
            at,
            format!("no condition on {name:?}: give \"eq\", \"in\" or a range"),
        )),
        (1, false) => {
            let (op, value) = if let Some(v) = fields.get("eq") {
                ("eq", std::slice::from_ref(v))
            } else {
                let list = fields["in"].as_array().filter(|a| !a.is_empty());
                let Some(list) = list else {
                    return Err(invalid(at, "\"in\" takes a non-empty array of values"));
                };
                ("in", list.as_slice())
            };
            budget.values += value.len();
            if budget.values > MAX_VALUES {
                return Err(invalid(at, format!("more than {MAX_VALUES} values")));
            }
            match kind {
                AttributeKind::Keyword => {
                    let mut values = value
                        .iter()
                        .map(|v| {
                            v.as_str().map(str::to_owned).ok_or_else(|| {
                                invalid(
                                    at,
                                    format!("{name:?} is a keyword attribute: \"{op}\" takes strings, not {v}"),
                                )
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    values.sort();
                    values.dedup();
                    Ok(Filter::Keyword {
                        attribute: name.to_owned(),
                        values,
                    })
                }
                AttributeKind::Number => {
                    let mut values = value
                        .iter()
                        .map(|v| number(v, name, op, at))
                        .collect::<Result<Vec<_>, _>>()?;
                    values.sort_by(f64::total_cmp);
                    values.dedup();
                    Ok(Filter::Number {
                        attribute: name.to_owned(),
                        values,
                    })
                }
            }
        }
        (_, false) => Err(invalid(at, "give one of \"eq\" and \"in\", not both")),
        (_, true) if equal > 0 => Err(invalid(
            at,
            "a condition is an equality or a range, not both",
        )),
        (_, true) => {
            if kind != AttributeKind::Number {
                return Err(invalid(
                    at,
                    format!("{name:?} is a keyword attribute: ranges apply to number attributes"),
                ));
            }
            let bound = |op: &str| fields.get(op).map(|v| number(v, name, op, at)).transpose();
            let (gt, gte, lt, lte) = (bound("gt")?, bound("gte")?, bound("lt")?, bound("lte")?);
            if gt.is_some() && gte.is_some() || lt.is_some() && lte.is_some() {
                return Err(invalid(
                    at,
                    "at most one lower bound (gt or gte) and one upper bound (lt or lte)",
                ));
            }
            let min = match (gt, gte) {
                (Some(v), _) => Bound::Excluded(v),
                (_, Some(v)) => Bound::Included(v),
                _ => Bound::Unbounded,
            };
            let max = match (lt, lte) {
                (Some(v), _) => Bound::Excluded(v),
                (_, Some(v)) => Bound::Included(v),
                _ => Bound::Unbounded,
            };
            Ok(Filter::Range {
                attribute: name.to_owned(),
                min,
                max,
            })
        }
    }
}

fn kind_name(kind: AttributeKind) -> &'static str {
    match kind {
        AttributeKind::Keyword => "keyword",
        AttributeKind::Number => "number",
    }
}

fn number(v: &Value, name: &str, op: &str, at: &str) -> Result<f64, FilterError> {
    v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
        invalid(
            at,
            format!("{name:?} is a number attribute: \"{op}\" takes numbers, not {v}"),
        )
    })
}

/// A number attribute's value, or `None` when it is not a finite number.
pub fn number_value(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|x| x.is_finite())
}

impl Filter {
    /// Whether an item with these attributes (`get` looks one up by name) matches.
    pub fn matches<'a>(&self, get: &impl Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Self::And(parts) => parts.iter().all(|f| f.matches(get)),
            Self::Or(parts) => parts.iter().any(|f| f.matches(get)),
            Self::Keyword { attribute, values } => get(attribute)
                .is_some_and(|v| values.binary_search_by(|x| x.as_str().cmp(v)).is_ok()),
            Self::Number { attribute, values } => get(attribute)
                .and_then(number_value)
                .is_some_and(|v| values.contains(&v)),
            Self::Range {
                attribute,
                min,
                max,
            } => get(attribute)
                .and_then(number_value)
                .is_some_and(|v| in_range(v, *min, *max)),
        }
    }
}

/// Whether `v` lies within the bounds.
pub fn in_range(v: f64, min: Bound<f64>, max: Bound<f64>) -> bool {
    let above = match min {
        Bound::Included(m) => v >= m,
        Bound::Excluded(m) => v > m,
        Bound::Unbounded => true,
    };
    let below = match max {
        Bound::Included(m) => v <= m,
        Bound::Excluded(m) => v < m,
        Bound::Unbounded => true,
    };
    above && below
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declared() -> Declared {
        Declared::from([
            ("section".to_owned(), AttributeKind::Keyword),
            ("size".to_owned(), AttributeKind::Number),
        ])
    }

    fn item<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    #[test]
    fn filters_match_as_documented() {
        let d = declared();
        let f = parse(
            &json!({"and": [
                {"attribute": "section", "in": ["utils", "devel"]},
                {"or": [{"attribute": "size", "gte": 10, "lt": 100}, {"attribute": "size", "eq": 500}]}
            ]}),
            &d,
        )
        .unwrap();
        assert!(f.matches(&item(&[("section", "utils"), ("size", "10")])));
        assert!(f.matches(&item(&[("section", "devel"), ("size", "500.0")])));
        assert!(!f.matches(&item(&[("section", "devel"), ("size", "100")])));
        assert!(!f.matches(&item(&[("section", "games"), ("size", "50")])));
        assert!(
            !f.matches(&item(&[("section", "utils")])),
            "missing attribute"
        );
        assert!(!f.matches(&item(&[("section", "utils"), ("size", "big")])));
        let eq = parse(&json!({"attribute": "section", "eq": "utils"}), &d).unwrap();
        assert!(eq.matches(&item(&[("section", "utils")])));
        assert!(!eq.matches(&item(&[("section", "Utils")])));
    }

    #[test]
    fn bad_filters_are_refused_with_their_kind_and_place() {
        let d = declared();
        for (filter, kind, says) in [
            (
                json!({"attribute": "color", "eq": "red"}),
                "undeclared_attribute",
                "\"color\" is not declared; declared: section (keyword), size (number)",
            ),
            (
                json!({"and": [{"attribute": "section", "eq": 3}]}),
                "invalid_filter",
                "filter.and[0]: \"section\" is a keyword attribute",
            ),
            (
                json!({"attribute": "size", "eq": "3"}),
                "invalid_filter",
                "takes numbers",
            ),
            (
                json!({"attribute": "section", "gt": 3}),
                "invalid_filter",
                "ranges apply to number attributes",
            ),
            (
                json!({"attribute": "size", "gt": 3, "gte": 4}),
                "invalid_filter",
                "at most one lower bound",
            ),
            (
                json!({"attribute": "size", "eq": 3, "lt": 4}),
                "invalid_filter",
                "not both",
            ),
            (
                json!({"attribute": "size", "like": 3}),
                "invalid_filter",
                "unknown operator \"like\"",
            ),
            (
                json!({"attribute": "size"}),
                "invalid_filter",
                "no condition",
            ),
            (
                json!({"attribute": "size", "in": []}),
                "invalid_filter",
                "non-empty array",
            ),
            (json!({"or": []}), "invalid_filter", "non-empty array"),
            (
                json!({"and": [], "or": []}),
                "invalid_filter",
                "stands alone",
            ),
            (json!(["section"]), "invalid_filter", "a JSON object"),
            (json!({}), "invalid_filter", "give \"attribute\""),
        ] {
            let e = parse(&filter, &d).unwrap_err();
            assert_eq!(e.kind, kind, "{filter}");
            assert!(e.message.contains(says), "{filter}: {}", e.message);
        }
        let e = parse(&json!({"attribute": "a", "eq": "b"}), &Declared::new()).unwrap_err();
        assert!(e.message.contains("none are declared"), "{}", e.message);
        let mut deep = json!({"attribute": "size", "eq": 1});
        for _ in 0..=MAX_DEPTH {
            deep = json!({"and": [deep]});
        }
        assert!(parse(&deep, &d).unwrap_err().message.contains("deeper"));
        let many: Vec<Value> = (0..=MAX_VALUES).map(|i| json!(i)).collect();
        let e = parse(&json!({"attribute": "size", "in": many}), &d).unwrap_err();
        assert!(e.message.contains("values"), "{}", e.message);
    }
}
