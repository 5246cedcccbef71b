//! Arbitrary input for the property tests of the parsers at the edge (what Slack, Discord,
//! GitHub and API callers send). Random JSON alone seldom names a field a parser reads, so
//! these objects mostly use the parser's own field names, and their strings mostly the values
//! it looks for; the types of both are random, so every wrong type reaches every path.

use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// JSON values whose keys are mostly `names` and whose strings are mostly `words`, nested a
/// few levels deep.
pub fn json(
    names: &'static [&'static str],
    words: &'static [&'static str],
) -> BoxedStrategy<Value> {
    let key =
        prop_oneof![4 => prop::sample::select(names).prop_map(str::to_owned), 1 => any::<String>()];
    leaf(words)
        .prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
            ]
        })
        .boxed()
}

/// Scalars, heavy in the ends of each type's range and in `words`.
fn leaf(words: &'static [&'static str]) -> impl Strategy<Value = Value> + Clone {
    let number = prop_oneof![
        any::<i64>().prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        prop::sample::select(vec![0, 1, 2, 3, 4, 5, 9, 18, u64::MAX]).prop_map(Number::from),
        any::<f64>().prop_filter_map("JSON numbers are finite", Number::from_f64),
    ];
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => number.prop_map(Value::Number),
        3 => prop::sample::select(words).prop_map(Value::from),
        2 => text().prop_map(Value::String),
    ]
}

/// Text of every kind: any characters, or the ones parsers split and trim on.
pub fn text() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        any::<String>(),
        "[ :=,&%_./a-z0-9\"'\\\\\u{e9}\u{3000}\u{1f600}]{0,24}",
    ]
}

/// A form body (`application/x-www-form-urlencoded`) of `names` with any values; or with
/// raw escapes (`%FF` decodes to no UTF-8); or any bytes.
pub fn form(
    names: &'static [&'static str],
    values: BoxedStrategy<String>,
) -> BoxedStrategy<Vec<u8>> {
    let key = prop_oneof![4 => prop::sample::select(names).prop_map(str::to_owned), 1 => text()];
    let encoded = prop::collection::vec((key, values), 0..8).prop_map(|pairs| {
        serde_urlencoded::to_string(pairs)
            .expect("pairs of strings encode")
            .into_bytes()
    });
    let raw = prop::collection::vec(
        (
            prop::sample::select(names),
            "(%[0-9A-Fa-f]{2}|%|[a-z+=&;])*",
        ),
        0..6,
    )
    .prop_map(|pairs| {
        let pairs: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.join("&").into_bytes()
    });
    prop_oneof![3 => encoded, 1 => raw, 1 => any::<Vec<u8>>()].boxed()
}
