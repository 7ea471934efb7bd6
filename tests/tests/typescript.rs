//! Generated TypeScript against the server: the modules the examples write with
//! `--emit-typescript` (and one of every mapped type and rule) type-check with `tsc --strict`,
//! and their zod schemas, run by `node` through `@ws-kit/zod`, accept and reject exactly the
//! payloads the server's own decoder does.
//!
//! Needs `node` and the npm packages of `tests/ts` (`npm ci --prefix tests/ts`); without them each
//! test prints `<test>: skipped: <why>` and returns (`.ci/run` installs them and fails on a skip).

#![allow(dead_code)]

mod support;

#[path = "../../examples/chat.rs"]
mod chat;
#[path = "../../examples/guarded.rs"]
mod guarded;
#[path = "../../examples/rpc.rs"]
mod rpc;

use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{LazyLock, Mutex, MutexGuard};
use ws_kit::schema::{FieldSchema, MessageSchema, Rule, TypeSchema};
use ws_kit::typescript::TypeScript;
use ws_kit::{Message, Payload};

/// `tests/ts`: the npm project, its `generated/` modules and tsc's `out/`.
fn ts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ts")
}

/// Why the TypeScript tests cannot run here, if they cannot.
fn missing_parts() -> Option<String> {
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => return Some("node not found".into()),
    }
    for package in ["typescript", "zod", "@ws-kit/zod"] {
        if !ts_dir().join("node_modules").join(package).exists() {
            return Some(format!(
                "npm package {package} not installed (run `npm ci --prefix tests/ts`)"
            ));
        }
    }
    None
}

/// The tests share `tests/ts/generated` and `out`: one at a time.
static TS: Mutex<()> = Mutex::new(());

/// For `test`: the lock on `tests/ts` and its emptied `generated/` directory, or `None` after
/// printing why the test is skipped.
fn fresh_generated_dir(test: &str) -> Option<(MutexGuard<'static, ()>, PathBuf)> {
    if let Some(why) = missing_parts() {
        eprintln!("{test}: skipped: {why}");
        return None;
    }
    let one = TS.lock().unwrap_or_else(|e| e.into_inner());
    let generated = ts_dir().join("generated");
    let _ = std::fs::remove_dir_all(&generated);
    let _ = std::fs::remove_dir_all(ts_dir().join("out"));
    std::fs::create_dir_all(&generated).unwrap();
    Some((one, generated))
}

// ---- One of every mapped type and rule ---------------------------------------------------------

static HANDLE: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^[a-z0-9_]{3,12}$|^\d{4}$").unwrap());

#[derive(Payload)]
struct Address {
    #[validate(length(min = 2, max = 5))]
    city: String,
    zip: Option<u32>,
}

#[derive(Message)]
#[rpc(response = ShowcaseOk)]
struct Showcase {
    #[validate(length(min = 1, max = 3))]
    name: String,
    #[validate(email)]
    email: Option<String>,
    #[validate(regex(path = *HANDLE))]
    handle: Option<String>,
    #[validate(url)]
    homepage: Option<String>,
    #[validate(
        non_control_character,
        contains(pattern = "a"),
        does_not_contain(pattern = "zz")
    )]
    motto: String,
    id: Option<uuid::Uuid>,
    small: Option<i8>,
    count: Option<u32>,
    #[validate(range(min = -1.5, exclusive_max = 10.0))]
    ratio: Option<f64>,
    flag: Option<bool>,
    initial: Option<char>,
    #[validate(length(max = 2))]
    tags: Option<Vec<String>>,
    scores: Option<HashMap<String, u8>>,
    home: Option<Address>,
    places: Option<Vec<Address>>,
    extra: Option<Value>,
}

#[derive(Message)]
struct ShowcaseOk {
    total: u64,
}

#[derive(Message)]
struct Ping2 {}

/// Declared meta, in both of WS-Kit's object forms (`message({..})`, `rpc({req, res})`).
#[derive(Message)]
struct Traced {
    text: String,
    #[message(meta)]
    trace_id: Option<String>,
}

#[derive(Message)]
#[rpc(response = ShowcaseOk)]
struct TracedCall {
    #[validate(range(min = 1))]
    n: u16,
    #[message(meta)]
    trace_id: Option<String>,
}

/// A struct that contains itself.
#[derive(Payload)]
struct Tree {
    label: String,
    children: Vec<Tree>,
}

#[derive(Message)]
struct Forest {
    trees: Vec<Tree>,
}

#[derive(Message)]
struct RequiredMeta {
    #[message(meta)]
    trace_id: String,
}

/// A message with a rule no front end can run, and a type the derive cannot see into.
#[derive(Message)]
struct Opaque {
    #[validate(custom(function = "even"))]
    n: u32,
    mode: Mode,
}

fn even(n: &u32) -> Result<(), &'static str> {
    if n.is_multiple_of(2) {
        Ok(())
    } else {
        Err("must be even")
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
enum Mode {
    Fast,
    Slow,
}

fn showcase() -> TypeScript {
    TypeScript::new()
        .title("the parity test")
        .message::<Showcase>()
        .message::<Ping2>()
        .message::<Traced>()
        .message::<TracedCall>()
}

// ---- Tests ---------------------------------------------------------------------------------------

#[test]
fn examples_emit_modules_that_type_check_and_agree_with_the_server() {
    let Some((_one, generated)) =
        fresh_generated_dir("examples_emit_modules_that_type_check_and_agree_with_the_server")
    else {
        return;
    };

    // The examples' own flag writes the modules; the in-process render must be the same text.
    let mut modules: Vec<(&str, TypeScript)> = vec![
        ("rpc", rpc::typescript()),
        ("chat", chat::typescript()),
        ("guarded", guarded::typescript()),
    ];
    for (name, ts) in &modules {
        let path = generated.join(format!("{name}.ts"));
        let binary = support::binary::example_binary(name, &[]);
        let out = Command::new(&binary)
            .arg("--emit-typescript")
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .expect("run the example");
        assert!(out.status.success(), "{name} --emit-typescript: {out:?}");
        let written = std::fs::read_to_string(&path).expect("the module was written");
        assert_eq!(
            written,
            ts.render().source,
            "{name}: the flag writes the router's module"
        );
    }
    // A hand-written front end's use of the modules (WS-Kit's typed router over them) must
    // type-check too.
    std::fs::copy(ts_dir().join("usage.ts"), generated.join("usage.ts")).unwrap();
    let showcase_module = showcase().render();
    assert!(
        showcase_module.warnings.is_empty(),
        "{:?}",
        showcase_module.warnings
    );
    std::fs::write(generated.join("showcase.ts"), &showcase_module.source).unwrap();
    modules.push(("showcase", showcase()));

    tsc();

    // Every payload of the corpus, through zod (node) and through the server's decoder.
    let mut cases = Vec::new();
    for (module, ts) in &modules {
        for schema in ts.schemas() {
            for payload in corpus(schema) {
                let mut case = json!({"module": module, "type": schema.tag});
                if let Some(payload) = payload {
                    case["payload"] = payload;
                }
                cases.push(case);
            }
        }
    }
    let verdicts = node_verdicts(&cases);
    assert_eq!(verdicts.len(), cases.len());
    let mut mismatches = Vec::new();
    let mut seen: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (case, verdict) in cases.iter().zip(&verdicts) {
        let (module, tag) = (
            case["module"].as_str().unwrap(),
            case["type"].as_str().unwrap(),
        );
        let schema = modules
            .iter()
            .find(|(m, _)| *m == module)
            .and_then(|(_, ts)| ts.schemas().find(|s| s.tag == tag))
            .unwrap();
        // The text zod saw, as `JSON.stringify` wrote it: what a front end would send.
        let text = verdict["canonical"].as_str();
        let server = schema.check_payload(text);
        let zod = verdict["ok"].as_bool().unwrap();
        let entry = seen.entry(format!("{module} {tag}")).or_default();
        if server.is_ok() {
            entry.0 += 1
        } else {
            entry.1 += 1
        }
        if server.is_ok() != zod {
            mismatches.push(format!(
                "{module} {tag} payload {}: server {}, zod {}",
                text.unwrap_or("(none)"),
                match &server {
                    Ok(()) => "accepts".to_string(),
                    Err(issues) => format!("rejects ({})", issues[0].message),
                },
                if zod {
                    "accepts".to_string()
                } else {
                    format!("rejects ({})", verdict["error"])
                },
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases disagree:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    // A corpus that only ever accepts (or rejects) would prove nothing.
    for (message, (accepted, rejected)) in &seen {
        assert!(
            *accepted > 0 && *rejected > 0,
            "{message}: {accepted} accepted, {rejected} rejected"
        );
    }
    eprintln!(
        "{} payloads, {} messages: zod and the server agree on every one",
        cases.len(),
        seen.len()
    );
}

#[test]
fn what_cannot_be_mirrored_is_said_in_the_module_and_the_warnings() {
    let module = TypeScript::new()
        .message::<Opaque>()
        .message::<RequiredMeta>()
        .message::<Forest>()
        .render();
    assert_eq!(module.warnings.len(), 4, "{:?}", module.warnings);
    assert!(
        module.warnings[3].starts_with("Tree: contains itself"),
        "{:?}",
        module.warnings
    );
    assert!(
        module.warnings[2].starts_with("RequiredMeta.meta.traceId: a required meta field"),
        "{:?}",
        module.warnings
    );
    assert!(
        module.warnings[0].contains("custom(even)"),
        "{:?}",
        module.warnings
    );
    assert!(module.warnings[1].contains("Mode"), "{:?}", module.warnings);
    assert!(
        module
            .source
            .contains("// `custom(even)` runs only on the server"),
        "{}",
        module.source
    );
    assert!(
        module.source.contains("mode: z.unknown(),"),
        "{}",
        module.source
    );

    // Still valid TypeScript, and the rule it can mirror (an integer) still runs.
    let Some((_one, generated)) =
        fresh_generated_dir("what_cannot_be_mirrored_is_said_in_the_module_and_the_warnings")
    else {
        return;
    };
    std::fs::write(generated.join("opaque.ts"), &module.source).unwrap();
    tsc();
    let verdicts = node_verdicts(&[
        json!({"module": "opaque", "type": "OPAQUE", "payload": {"n": 3, "mode": "Fast"}}),
        json!({"module": "opaque", "type": "OPAQUE", "payload": {"n": -1, "mode": "Fast"}}),
    ]);
    assert_eq!(
        verdicts[0]["ok"], true,
        "an odd n passes zod: only the server knows `even`"
    );
    assert_eq!(
        verdicts[1]["ok"], false,
        "a negative u32 is refused before sending"
    );
    let tree = |leaf_label: Value| {
        json!({"module": "opaque", "type": "FOREST", "payload": {"trees": [
            {"label": "a", "children": [{"label": leaf_label, "children": []}]}
        ]}})
    };
    let verdicts = node_verdicts(&[tree(json!("b")), tree(json!(1))]);
    assert_eq!(verdicts[0]["ok"], true, "a tree two levels deep");
    assert_eq!(verdicts[1]["ok"], false, "a wrong type two levels deep");
}

// ---- Running TypeScript --------------------------------------------------------------------------

/// `tsc --strict` over `generated/` (tsconfig.json), emitting `out/`; fails the test on an error.
fn tsc() {
    let out = Command::new("node")
        .arg(ts_dir().join("node_modules/typescript/bin/tsc"))
        .arg("-p")
        .arg(ts_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run tsc");
    assert!(
        out.status.success(),
        "tsc --strict failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cases` (`{module, type, payload?}`) through the compiled modules' WS-Kit definitions:
/// per case `{ok, canonical, error}`, `canonical` being `JSON.stringify` of the payload.
fn node_verdicts(cases: &[Value]) -> Vec<Value> {
    let mut child = Command::new("node")
        .arg(ts_dir().join("parity.mjs"))
        .current_dir(ts_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let input = serde_json::to_vec(cases).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let out = child.wait_with_output().expect("node");
    writer.join().unwrap().expect("write the cases");
    assert!(
        out.status.success(),
        "parity.mjs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parity.mjs answers JSON")
}

// ---- The corpus ----------------------------------------------------------------------------------

/// Payloads for `schema`: no payload, non-objects, then a valid base object and, per field, the
/// base with that field missing, extra, and set to every probe value its type and rules make
/// interesting (edge lengths in ASCII and in astral characters, integer limits, emails, URLs,
/// UUID forms, wrong types).
fn corpus(schema: &MessageSchema) -> Vec<Option<Value>> {
    let mut out = vec![
        None,
        Some(json!(null)),
        Some(json!([])),
        Some(json!("x")),
        Some(json!({})),
    ];
    if !schema.has_payload {
        out.push(Some(json!({"extra": 1})));
        return out;
    }
    let issues = |v: &Value| issue_paths(schema.check_payload(Some(&v.to_string())));
    let base = base_object(&schema.payload, &issues, "payload.");
    out.extend(variants(&schema.payload, &base).into_iter().map(Some));
    out
}

fn issue_paths(result: Result<(), Vec<ws_kit::Issue>>) -> Vec<String> {
    result
        .err()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.path)
        .collect()
}

/// The object mutated per field, each field in turn.
fn variants(fields: &[FieldSchema], base: &serde_json::Map<String, Value>) -> Vec<Value> {
    let mut out = vec![Value::Object(base.clone())];
    let mut extra = base.clone();
    extra.insert("unexpected".into(), json!(1));
    out.push(Value::Object(extra));
    for field in fields {
        let mut missing = base.clone();
        missing.remove(field.wire_name);
        out.push(Value::Object(missing));
        for probe in probes(&field.ty, &field.rules) {
            let mut changed = base.clone();
            changed.insert(field.wire_name.to_string(), probe);
            out.push(Value::Object(changed));
        }
    }
    out
}

/// An object the server accepts: every required field set to the first of its probes that
/// draws no issue at the field's path (`prefix` + wire name), optional fields left out.
fn base_object(
    fields: &[FieldSchema],
    issues: &dyn Fn(&Value) -> Vec<String>,
    prefix: &str,
) -> serde_json::Map<String, Value> {
    let required: Vec<&FieldSchema> = fields
        .iter()
        .filter(|f| !matches!(f.ty, TypeSchema::Optional(_)))
        .collect();
    let mut base = serde_json::Map::new();
    for field in &required {
        let first = probes(&field.ty, &field.rules)
            .into_iter()
            .next()
            .unwrap_or(Value::Null);
        base.insert(field.wire_name.into(), first);
    }
    // Twice: a field's rules run only once every field decodes.
    for _ in 0..2 {
        for field in &required {
            let at = format!("{prefix}{}", field.wire_name);
            let hit = |p: &String| {
                p == &at || p.starts_with(&format!("{at}.")) || p.starts_with(&format!("{at}["))
            };
            if let Some(good) = probes(&field.ty, &field.rules).into_iter().find(|p| {
                let mut trial = base.clone();
                trial.insert(field.wire_name.into(), p.clone());
                !issues(&Value::Object(trial)).iter().any(hit)
            }) {
                base.insert(field.wire_name.into(), good);
            }
        }
    }
    base
}

/// Values worth trying for a field of type `ty` with `rules`: valid ones first.
fn probes(ty: &TypeSchema, rules: &[ws_kit::schema::RuleSchema]) -> Vec<Value> {
    let mut out = Vec::new();
    let lengths: Vec<u64> = rules
        .iter()
        .flat_map(|r| match r.rule {
            Rule::Length { min, max, equal } => [min, max, equal]
                .into_iter()
                .flatten()
                .flat_map(|n| [n.saturating_sub(1), n, n + 1])
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    match ty {
        TypeSchema::Optional(inner) => {
            out.extend(probes(inner, rules));
            out.push(Value::Null);
        }
        TypeSchema::String { .. } => {
            for s in [
                "a", "hi", "abc_123", "", "A", "ab a", "a\u{7}b", "a\u{85}b", "zz a", "١٢٣", "😀",
            ] {
                out.push(json!(s));
            }
            for n in lengths {
                out.push(json!("a".repeat(n as usize)));
                out.push(json!("😀".repeat(n as usize)));
            }
            for s in [
                "someone@example.com",
                "a@b",
                "a.b+c@sub.example.co",
                "@example.com",
                "a@",
                "a@@b.c",
                "a b@c.d",
                "a@-bad.com",
                "a@[127.0.0.1]",
                "a@[::1]",
                "a@[300.1.1.1]",
                "a@bücher.de",
                "a@x_y.com",
                &format!("{}@x.com", "u".repeat(65)),
                "https://example.com/a?b#c",
                "http://localhost:3000",
                "mailto:a@b.c",
                "example.com",
                "http://",
                "http://exa mple.com",
                "https://[::1]/",
                "file:///tmp/x",
                "  https://x.y  ",
                "01890a5d-ac96-774b-bcce-b302099a8057",
                "01890A5DAC96774BBCCEB302099A8057",
                "urn:uuid:01890A5D-AC96-774B-BCCE-B302099A8057",
                "URN:UUID:01890a5d-ac96-774b-bcce-b302099a8057",
                "{01890A5D-AC96-774B-BCCE-B302099A8057}",
                "{01890a5dac96774bbcceb302099a8057}",
                "١٢٣٤",
                "1234",
                "{01890a5d-ac96-774b-bcce-b302099a8057}",
                "urn:uuid:01890a5d-ac96-774b-bcce-b302099a8057",
                "01890a5d-ac96-774b-bcce-b302099a805",
                "01890a5dac96-774b-bcce-b302099a8057x",
            ] {
                out.push(json!(s));
            }
            out.extend([json!(1), json!(true), json!(["a"]), json!({"a": 1})]);
        }
        TypeSchema::Bool => out.extend([json!(true), json!(false), json!(0), json!("true")]),
        TypeSchema::Integer { .. } | TypeSchema::Float { .. } => {
            let mut numbers = vec![
                json!(1),
                json!(0),
                json!(-1),
                json!(1.5),
                json!(-1.5),
                json!(2),
                json!(100),
                json!(101),
                json!(127),
                json!(128),
                json!(-128),
                json!(-129),
                json!(255),
                json!(256),
                json!(10000),
                json!(10001),
                json!(2147483647),
                json!(2147483648_i64),
                json!(4294967295_i64),
                json!(4294967296_i64),
                json!(-2147483649_i64),
                json!(9007199254740991_i64),
                json!(-9007199254740991_i64),
                json!(1e300),
                json!(9.99),
                json!(10),
                json!(10.0001),
                json!("1"),
                json!(true),
            ];
            for r in rules {
                if let Rule::Range {
                    min,
                    max,
                    exclusive_min,
                    exclusive_max,
                } = r.rule
                {
                    for b in [min, max, exclusive_min, exclusive_max]
                        .into_iter()
                        .flatten()
                    {
                        numbers.extend([
                            json!(b),
                            json!(b - 1.0),
                            json!(b + 1.0),
                            json!(b - 0.5),
                            json!(b + 0.5),
                        ]);
                    }
                }
            }
            out.extend(numbers);
        }
        TypeSchema::Uuid => {
            return probes(&TypeSchema::String { one_char: false }, &[]);
        }
        TypeSchema::Json => {
            out.extend([json!({"any": [1, "x"]}), json!(null), json!(3), json!("s")])
        }
        TypeSchema::List(item) => {
            let items = probes(item, &[]);
            let first = items.first().cloned().unwrap_or(Value::Null);
            out.push(json!([]));
            for n in lengths.iter().chain(&[1, 3]) {
                out.push(Value::Array(vec![first.clone(); *n as usize]));
            }
            for item in items.into_iter().take(12) {
                out.push(json!([item]));
            }
            out.extend([json!("a"), json!({})]);
        }
        TypeSchema::Map(value) => {
            let values = probes(value, &[]);
            out.push(json!({}));
            for v in values.into_iter().take(12) {
                out.push(json!({ "k": v }));
            }
            out.extend([json!([]), json!("a")]);
        }
        TypeSchema::Object(object) => {
            // Judged inside the showcase's `home`, the one nested struct of this test.
            let fields = (object.fields)();
            let issues = |v: &Value| {
                let payload = json!({"name": "a", "motto": "a", "home": v});
                issue_paths(
                    MessageSchema::of::<Showcase>().check_payload(Some(&payload.to_string())),
                )
            };
            let base = base_object(&fields, &issues, "payload.home.");
            out.extend(variants(&fields, &base));
            out.extend([json!([]), json!("a")]);
        }
        TypeSchema::Other { .. } => out.extend([json!("Fast"), json!(1), json!(null)]),
    }
    out
}

#[test]
fn the_corpus_is_not_trivial() {
    // The showcase alone must give hundreds of payloads, with both verdicts on the server side.
    let schema = MessageSchema::of::<Showcase>();
    let cases = corpus(&schema);
    let accepted = cases
        .iter()
        .filter(|c| {
            schema
                .check_payload(c.as_ref().map(|v| v.to_string()).as_deref())
                .is_ok()
        })
        .count();
    assert!(cases.len() > 500, "{} cases", cases.len());
    assert!(
        accepted > 100 && accepted < cases.len() - 100,
        "{accepted} of {} accepted",
        cases.len()
    );
}
