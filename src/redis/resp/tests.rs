//! Byte-literal vectors for every RESP2 type and the RESP3 types, and the round-trip
//! property: encode arbitrary values, split the bytes at random points, feed them back.

use super::*;
use proptest::prelude::*;
use redis::{ErrorKind, PushKind, Value, VerbatimFormat};

fn one(bytes: &[u8]) -> Value {
    match decode(bytes, &Limits::default()) {
        Ok(Some((value, used))) => {
            assert_eq!(used, bytes.len(), "reply must use every byte of {bytes:?}");
            value
        }
        other => panic!("{bytes:?} gave {other:?}"),
    }
}

fn error_of(bytes: &[u8]) -> RespError {
    match decode(bytes, &Limits::default()) {
        Err(error) => error,
        other => panic!("{bytes:?} should fail, gave {other:?}"),
    }
}

/// Every strict prefix of a complete reply is "need more bytes", never an error.
fn assert_prefixes_incomplete(bytes: &[u8]) {
    for end in 0..bytes.len() {
        assert_eq!(
            decode(&bytes[..end], &Limits::default()),
            Ok(None),
            "prefix {:?}",
            &bytes[..end]
        );
    }
}

const RESP2_VECTORS: &[&[u8]] = &[
    b"+OK\r\n",
    b"+PONG\r\n",
    b"-ERR unknown command 'FOO'\r\n",
    b":0\r\n",
    b":-42\r\n",
    b"$5\r\nhello\r\n",
    b"$0\r\n\r\n",
    b"$-1\r\n",
    b"*-1\r\n",
    b"*0\r\n",
    b"*3\r\n:1\r\n$3\r\nfoo\r\n*1\r\n+bar\r\n",
];

const RESP3_VECTORS: &[&[u8]] = &[
    b"_\r\n",
    b"#t\r\n",
    b"#f\r\n",
    b",3.25\r\n",
    b",-inf\r\n",
    b"(3492890328409238509324850943850943825024385\r\n",
    b"!21\r\nSYNTAX invalid syntax\r\n",
    b"=15\r\ntxt:Some string\r\n",
    b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n",
    b"~2\r\n+orange\r\n+apple\r\n",
    b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.1923\r\n*2\r\n:2039123\r\n:9543892\r\n",
    b">3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$5\r\nhello\r\n",
];

#[test]
fn resp2_types() {
    assert_eq!(one(b"+OK\r\n"), Value::Okay);
    assert_eq!(one(b"+PONG\r\n"), Value::SimpleString("PONG".into()));
    assert_eq!(one(b":0\r\n"), Value::Int(0));
    assert_eq!(one(b":-42\r\n"), Value::Int(-42));
    assert_eq!(
        one(b"$5\r\nhello\r\n"),
        Value::BulkString(b"hello".to_vec())
    );
    assert_eq!(one(b"$0\r\n\r\n"), Value::BulkString(Vec::new()));
    assert_eq!(one(b"$-1\r\n"), Value::Nil);
    assert_eq!(one(b"*-1\r\n"), Value::Nil);
    assert_eq!(one(b"*0\r\n"), Value::Array(Vec::new()));
    assert_eq!(
        one(b"*3\r\n:1\r\n$3\r\nfoo\r\n*1\r\n+bar\r\n"),
        Value::Array(vec![
            Value::Int(1),
            Value::BulkString(b"foo".to_vec()),
            Value::Array(vec![Value::SimpleString("bar".into())]),
        ])
    );
    // Binary-safe bulk: CRLF inside the payload is data.
    assert_eq!(
        one(b"$4\r\n\r\n\r\n\r\n"),
        Value::BulkString(b"\r\n\r\n".to_vec())
    );
}

#[test]
fn server_errors_keep_code_and_detail() {
    let Value::ServerError(error) = one(b"-NOSCRIPT No matching script.\r\n") else {
        panic!("not an error");
    };
    assert_eq!(error.code(), "NOSCRIPT");
    assert_eq!(error.details(), Some("No matching script."));
    let error: redis::RedisError = error.into();
    assert_eq!(error.kind(), ErrorKind::NoScriptError);

    let Value::ServerError(error) = one(b"!21\r\nSYNTAX invalid syntax\r\n") else {
        panic!("not an error");
    };
    assert_eq!(error.code(), "SYNTAX");
    assert_eq!(error.details(), Some("invalid syntax"));
}

#[test]
fn resp3_types() {
    assert_eq!(one(b"_\r\n"), Value::Nil);
    assert_eq!(one(b"#t\r\n"), Value::Boolean(true));
    assert_eq!(one(b"#f\r\n"), Value::Boolean(false));
    assert_eq!(one(b",3.25\r\n"), Value::Double(3.25));
    assert_eq!(one(b",-inf\r\n"), Value::Double(f64::NEG_INFINITY));
    assert!(matches!(one(b",nan\r\n"), Value::Double(x) if x.is_nan()));
    let Value::BigNumber(n) = one(b"(3492890328409238509324850943850943825024385\r\n") else {
        panic!("not a big number");
    };
    assert_eq!(n.to_string(), "3492890328409238509324850943850943825024385");
    assert_eq!(
        one(b"=15\r\ntxt:Some string\r\n"),
        Value::VerbatimString {
            format: VerbatimFormat::Text,
            text: "Some string".into()
        }
    );
    assert_eq!(
        one(b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n"),
        Value::Map(vec![
            (Value::SimpleString("first".into()), Value::Int(1)),
            (Value::SimpleString("second".into()), Value::Int(2)),
        ])
    );
    assert_eq!(
        one(b"~2\r\n+orange\r\n+apple\r\n"),
        Value::Set(vec![
            Value::SimpleString("orange".into()),
            Value::SimpleString("apple".into()),
        ])
    );
    assert_eq!(
        one(b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n"),
        Value::Attribute {
            data: Box::new(Value::BulkString(b"v".to_vec())),
            attributes: vec![(Value::SimpleString("ttl".into()), Value::Int(3))],
        }
    );
    assert_eq!(
        one(b">3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$5\r\nhello\r\n"),
        Value::Push {
            kind: PushKind::Message,
            data: vec![
                Value::BulkString(b"room".to_vec()),
                Value::BulkString(b"hello".to_vec()),
            ],
        }
    );
}

#[test]
fn vectors_agree_with_the_crate_parser() {
    for bytes in RESP2_VECTORS.iter().chain(RESP3_VECTORS) {
        let ours = one(bytes);
        let theirs = redis::parse_redis_value(bytes).expect("crate parses the vector");
        assert_eq!(ours, theirs, "{bytes:?}");
    }
}

#[test]
fn incomplete_input_is_none() {
    for bytes in RESP2_VECTORS.iter().chain(RESP3_VECTORS) {
        assert_prefixes_incomplete(bytes);
    }
}

#[test]
fn decode_reports_the_bytes_of_the_first_reply_only() {
    let bytes = b":1\r\n:2\r\n";
    assert_eq!(
        decode(bytes, &Limits::default()),
        Ok(Some((Value::Int(1), 4)))
    );
}

#[test]
fn broken_input_names_the_rule() {
    assert_eq!(error_of(b"?x\r\n"), RespError::UnknownType(b'?'));
    assert_eq!(error_of(b":12\n"), RespError::BadLineEnding);
    assert_eq!(error_of(b":\n"), RespError::BadLineEnding);
    assert_eq!(error_of(b"$3\r\nabcXY"), RespError::BadLineEnding);
    assert_eq!(error_of(b":12a\r\n"), RespError::BadNumber);
    assert_eq!(error_of(b":99999999999999999999\r\n"), RespError::BadNumber);
    assert_eq!(error_of(b"$-2\r\n"), RespError::NegativeLength { len: -2 });
    assert_eq!(error_of(b"%-1\r\n"), RespError::NegativeLength { len: -1 });
    assert_eq!(error_of(b"#x\r\n"), RespError::BadBoolean);
    assert_eq!(error_of(b",abc\r\n"), RespError::BadDouble);
    assert_eq!(error_of(b"=3\r\ntxt\r\n"), RespError::BadVerbatim);
    assert_eq!(error_of(b"+\xff\r\n"), RespError::InvalidUtf8);
    assert_eq!(error_of(b">1\r\n:1\r\n"), RespError::BadPush);
    assert_eq!(error_of(b"(12x\r\n"), RespError::BadLeaf);
}

#[test]
fn limits_are_enforced_before_allocation() {
    let limits = Limits {
        max_bulk_bytes: 4,
        max_depth: 3,
        max_line_bytes: 8,
    };
    assert_eq!(
        decode(b"$5\r\n", &limits),
        Err(RespError::BulkTooLong { len: 5, max: 4 })
    );
    assert_eq!(
        decode(b"*1\r\n*1\r\n*1\r\n*1\r\n", &limits),
        Err(RespError::TooDeep { max: 3 })
    );
    assert_eq!(
        decode(b"*1\r\n*1\r\n*0\r\n", &limits).map(|r| r.is_some()),
        Ok(true)
    );
    assert_eq!(
        decode(b"+123456789", &limits),
        Err(RespError::LineTooLong { max: 8 })
    );
    // A huge declared count with few bytes behind it is simply incomplete.
    assert_eq!(
        decode(b"*4000000000\r\n:1\r\n", &Limits::default()),
        Ok(None)
    );
}

#[test]
fn encode_writes_resp2_forms_where_they_exist() {
    let mut out = Vec::new();
    encode(&Value::Nil, &mut out);
    encode(&Value::Okay, &mut out);
    encode(&Value::Array(vec![Value::Int(7)]), &mut out);
    assert_eq!(out, b"$-1\r\n+OK\r\n*1\r\n:7\r\n");
}

// --- property tests ---------------------------------------------------------------

fn crate_leaf(bytes: String) -> Value {
    redis::parse_redis_value(bytes.as_bytes()).expect("valid leaf")
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Nil),
        Just(Value::Okay),
        any::<i64>().prop_map(Value::Int),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::BulkString),
        "[a-zA-Z0-9 :.-]{0,20}"
            .prop_filter("OK decodes as Okay", |s| s != "OK")
            .prop_map(Value::SimpleString),
        prop_oneof![
            any::<f64>().prop_filter("NaN is not equal to itself", |x| !x.is_nan()),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
        ]
        .prop_map(Value::Double),
        any::<bool>().prop_map(Value::Boolean),
        (
            prop_oneof![
                Just(VerbatimFormat::Text),
                Just(VerbatimFormat::Markdown),
                "[a-z]{3}"
                    .prop_filter("known formats", |f| f != "txt" && f != "mkd")
                    .prop_map(VerbatimFormat::Unknown),
            ],
            ".{0,20}"
        )
            .prop_map(|(format, text)| Value::VerbatimString { format, text }),
        "-?[1-9][0-9]{0,40}".prop_map(|digits| crate_leaf(format!("({digits}\r\n"))),
        (
            "ERR|NOSCRIPT|WRONGTYPE|BUSY|EXECABORT",
            proptest::option::of("[a-z ]{0,20}")
        )
            .prop_map(|(code, detail)| match detail {
                Some(detail) => crate_leaf(format!("-{code} {detail}\r\n")),
                None => crate_leaf(format!("-{code}\r\n")),
            }),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 64, 6, |inner| {
        let pairs = proptest::collection::vec((inner.clone(), inner.clone()), 0..4);
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Set),
            pairs.clone().prop_map(Value::Map),
            (pairs, inner.clone()).prop_map(|(attributes, data)| Value::Attribute {
                data: Box::new(data),
                attributes,
            }),
            (
                "message|pmessage|subscribe|invalidate|custom",
                proptest::collection::vec(inner, 0..5)
            )
                .prop_map(|(kind, data)| Value::Push {
                    kind: push_kind(kind),
                    data,
                }),
        ]
    })
}

proptest! {
    #[test]
    fn round_trip_through_random_splits(
        values in proptest::collection::vec(value(), 1..5),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut bytes = Vec::new();
        values.iter().for_each(|v| encode(v, &mut bytes));
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();

        let mut buffer = Vec::new();
        let mut decoded = Vec::new();
        let mut fed = 0;
        for cut in cuts {
            buffer.extend_from_slice(&bytes[fed..cut]);
            fed = cut;
            while let Some((value, used)) = decode(&buffer, &Limits::default())? {
                prop_assert!(used > 0 && used <= buffer.len());
                buffer.drain(..used);
                decoded.push(value);
            }
        }
        prop_assert!(buffer.is_empty());
        prop_assert_eq!(decoded, values);
    }

    #[test]
    fn every_prefix_is_incomplete_and_the_crate_agrees(value in value()) {
        let mut bytes = Vec::new();
        encode(&value, &mut bytes);
        for end in 0..bytes.len() {
            prop_assert_eq!(decode(&bytes[..end], &Limits::default()), Ok(None));
        }
        let theirs = redis::parse_redis_value(&bytes);
        prop_assert_eq!(theirs.ok(), Some(value));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode(&bytes, &Limits::default());
    }
}
