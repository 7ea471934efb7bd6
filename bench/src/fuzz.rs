//! `ws-kit-bench fuzz`: any bytes, any JSON, and mutations of valid frames, through the real
//! per-message path (`ws_kit::__bench`: envelope, the one-pass decoder, the full path, derived
//! messages with nested payloads and meta fields, validation, handlers, error replies).
//!
//! For every input it checks that nothing panics; that whatever the one-pass decoder accepts,
//! the full path accepts alike (the same message and meta); that every frame the server answers
//! with is a JSON object with a string `type`; and that error replies stay small (at most
//! `MAX_ERROR_FRAME` bytes) whatever the input. Inputs come from a seeded generator, so a failure
//! is reproduced with the same `--seed`, and the failing input is printed.
//!
//! ```text
//! ws-kit-bench fuzz [--secs 10] [--inputs N] [--seed 1]
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use ws_kit::__bench::{Conn, decode_both};
use ws_kit::tungstenite::Message as WsMessage;
use ws_kit::{Ctx, Message, Payload, Router, WsError, handler, routes};

/// The largest error frame any input may cause.
const MAX_ERROR_FRAME: usize = 8 * 1024;

#[derive(Payload, Debug, PartialEq)]
struct Item {
    #[validate(length(max = 8))]
    name: String,
    n: Option<u8>,
    tags: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Color {
    Red,
    Blue,
}

/// A field of every kind the decoders read: the scanner's own (strings, integers, floats,
/// booleans, options), serde's (nested payloads, enums, arrays, any value), and a meta field.
#[derive(Message, Debug, PartialEq)]
struct Mixed {
    #[validate(length(min = 1, max = 16))]
    s: String,
    b: bool,
    #[validate(range(max = 1000))]
    n: u16,
    i: i64,
    f: f64,
    o: Option<String>,
    items: Vec<Item>,
    color: Color,
    any: Value,
    #[message(meta)]
    trace: Option<String>,
}

#[derive(Message, Debug, PartialEq)]
#[rpc(response = Pong)]
struct Ping {
    #[validate(length(max = 5))]
    text: String,
}

#[derive(Message, Debug, PartialEq)]
struct Pong {
    reply: String,
}

#[derive(Message, Debug, PartialEq)]
struct Empty;

#[handler]
async fn mixed(ctx: Ctx<Mixed>) {
    let _ = &ctx.payload;
}

#[handler]
async fn ping(ctx: Ctx<Ping>) -> Result<Pong, WsError> {
    Ok(Pong {
        reply: ctx.payload.text.clone(),
    })
}

#[handler]
async fn empty(ctx: Ctx<Empty>) {
    let _ = ctx.message_type();
}

/// Valid frames the mutations start from.
const SEEDS: &[&str] = &[
    r#"{"type":"MIXED","payload":{"s":"hi","b":true,"n":7,"i":-3,"f":1.5,"o":null,"items":[{"name":"a","n":1,"tags":["x"]}],"color":"red","any":{"k":[1,"y"]}},"meta":{"correlationId":"c1","trace":"t"}}"#,
    r#"{"type":"MIXED","meta":{"timestamp":1},"payload":{"any":null,"color":"blue","items":[],"o":"é","f":0,"i":0,"n":0,"b":false,"s":"z"}}"#,
    r#"{"type":"PING","payload":{"text":"hey"},"meta":{"correlationId":"p1","timeoutMs":50}}"#,
    r#"{"type":"EMPTY"}"#,
    r#"{"type":"__heartbeat","meta":{"timestamp":5}}"#,
    r#"{"type":"$ws:abort","meta":{"correlationId":"p1"}}"#,
];

/// Keys the JSON generator prefers: the envelope's, the messages', and nonsense.
const KEYS: &[&str] = &[
    "type",
    "payload",
    "meta",
    "correlationId",
    "timeoutMs",
    "timestamp",
    "idempotencyKey",
    "clientId",
    "receivedAt",
    "s",
    "b",
    "n",
    "i",
    "f",
    "o",
    "items",
    "color",
    "any",
    "name",
    "tags",
    "text",
    "trace",
    "",
    "x",
    "\u{0}",
    "é",
];

/// Type tags the generator prefers.
const TYPES: &[&str] = &[
    "MIXED",
    "PING",
    "EMPTY",
    "PONG",
    "__heartbeat",
    "$ws:abort",
    "ERROR",
    "X",
];

/// A small, fast, seeded generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn string(&mut self) -> String {
        match self.below(10) {
            0 => String::new(),
            // Long enough to test the size of error replies.
            1 => "k".repeat(1 + self.below(20_000)),
            2 => (0..self.below(8))
                .map(|_| char::from_u32(self.next() as u32 % 0x11_0000).unwrap_or('\u{fffd}'))
                .collect(),
            3 => self.pick(KEYS).to_string(),
            _ => (0..self.below(12))
                .map(|_| char::from(b'a' + self.below(26) as u8))
                .collect(),
        }
    }

    fn number(&mut self) -> Value {
        match self.below(6) {
            0 => json!(self.next() as i64),
            1 => json!(self.below(300) as i64 - 20),
            2 => json!(f64::from_bits(self.next()) % 1e6),
            3 => json!(u64::MAX),
            4 => json!(-0.5),
            _ => json!(self.below(2000)),
        }
    }

    /// Any JSON value, nesting at most `depth` levels.
    fn value(&mut self, depth: usize) -> Value {
        match self.below(if depth == 0 { 4 } else { 7 }) {
            0 => Value::Null,
            1 => Value::Bool(self.below(2) == 0),
            2 => self.number(),
            3 => Value::String(self.string()),
            4 => Value::Array((0..self.below(4)).map(|_| self.value(depth - 1)).collect()),
            _ => {
                let mut map = serde_json::Map::new();
                for _ in 0..self.below(6) {
                    let key = if self.below(4) == 0 {
                        self.string()
                    } else {
                        self.pick(KEYS).to_string()
                    };
                    map.insert(key, self.value(depth - 1));
                }
                Value::Object(map)
            }
        }
    }

    /// An envelope-shaped frame with random parts.
    fn envelope(&mut self) -> Value {
        let mut frame = serde_json::Map::new();
        if self.below(10) > 0 {
            let ty = if self.below(5) == 0 {
                self.value(1)
            } else {
                Value::String(self.pick(TYPES).to_string())
            };
            frame.insert("type".into(), ty);
        }
        if self.below(4) > 0 {
            frame.insert("payload".into(), self.value(3));
        }
        if self.below(2) == 0 {
            frame.insert("meta".into(), self.value(2));
        }
        if self.below(8) == 0 {
            frame.insert(self.string(), self.value(1));
        }
        Value::Object(frame)
    }

    /// A valid frame with one to three characters inserted, replaced or removed.
    fn mutation(&mut self) -> String {
        const ALPHABET: &[char] = &[
            '{', '}', '[', ']', '"', ',', ':', '0', '1', '9', '-', '.', 'e', 'E', '+', 'n', 't',
            'r', 'u', 'f', 'a', 'l', 's', 'x', ' ', '\t', '\n', 'é', '\u{1}', '\\',
        ];
        let mut chars: Vec<char> = self.pick(SEEDS).chars().collect();
        for _ in 0..1 + self.below(3) {
            let at = self.below(chars.len());
            match self.below(3) {
                0 => chars[at] = *self.pick(ALPHABET),
                1 => chars.insert(at, *self.pick(ALPHABET)),
                _ => {
                    chars.remove(at);
                }
            }
        }
        chars.into_iter().collect()
    }

    /// The next input: any bytes (read as UTF-8, lossily), any JSON, an envelope, a mutation.
    fn input(&mut self) -> String {
        match self.below(8) {
            0 => {
                let bytes: Vec<u8> = (0..self.below(64)).map(|_| self.next() as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            1 => self.value(4).to_string(),
            2 | 3 => self.envelope().to_string(),
            _ => self.mutation(),
        }
    }
}

/// What the inputs did, to show the run reached the paths it checks.
#[derive(Default)]
struct Tally {
    /// Frames the one-pass decoder accepted (and the full path alike).
    fast: u64,
    /// Frames only the full path accepted.
    full_only: u64,
    /// Error replies, and the largest one.
    errors: u64,
    largest_error: usize,
}

/// Checks one input; `Err` says what went wrong.
fn check(conn: &mut Conn, input: &str, tally: &mut Tally) -> Result<(), String> {
    let (fast, full) = decode_both::<Mixed>(input);
    match (&fast, &full) {
        (Some(_), _) => tally.fast += 1,
        (None, Some(_)) => tally.full_only += 1,
        (None, None) => {}
    }
    if let Some(fast) = fast {
        match full {
            Some(full) if full == fast => {}
            other => {
                return Err(format!(
                    "the one-pass decoder accepted {fast:?}; the full path: {other:?}"
                ));
            }
        }
    }
    let (fast, full) = decode_both::<Ping>(input);
    if fast.is_some() && fast != full {
        return Err(format!(
            "the one-pass decoder accepted {fast:?}; the full path: {full:?}"
        ));
    }
    conn.dispatch(input);
    for frame in conn.drain() {
        let WsMessage::Text(text) = frame else {
            continue;
        };
        let value: Value = serde_json::from_str(text.as_str())
            .map_err(|e| format!("the server wrote a frame that is not JSON ({e}): {text}"))?;
        let Some(ty) = value["type"].as_str() else {
            return Err(format!("the server wrote a frame without a type: {text}"));
        };
        if ty == "ERROR" || ty == "RPC_ERROR" {
            tally.errors += 1;
            tally.largest_error = tally.largest_error.max(text.len());
            if text.len() > MAX_ERROR_FRAME {
                return Err(format!(
                    "an error reply of {} bytes (at most {MAX_ERROR_FRAME})",
                    text.len()
                ));
            }
        }
    }
    Ok(())
}

/// Runs the fuzzer for `secs` seconds or `inputs` inputs, whichever ends first.
pub(crate) fn run(secs: f64, inputs: u64, seed: u64) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _entered = runtime.enter();
    let router = Router::new().routes(routes![mixed, ping, empty]);
    let mut conn = Conn::new(router, ()).expect("the router builds");
    let mut rng = Rng(seed.max(1));
    let started = Instant::now();
    let limit = Duration::from_secs_f64(secs.max(0.0));
    let mut done = 0u64;
    let mut tally = Tally::default();
    while done < inputs && started.elapsed() < limit {
        let input = rng.input();
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| check(&mut conn, &input, &mut tally)));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some("panicked".to_string()),
        };
        if let Some(failure) = failure {
            eprintln!("fuzz: input {done} (seed {seed}): {failure}");
            eprintln!("fuzz: the input, as JSON text: {}", Value::String(input));
            return ExitCode::FAILURE;
        }
        done += 1;
    }
    let took = started.elapsed();
    println!(
        "{}",
        json!({
            "mode": "fuzz", "inputs": done, "secs": took.as_secs_f64(), "seed": seed,
            "failures": 0, "fast_path_accepted": tally.fast,
            "full_path_only": tally.full_only, "error_replies": tally.errors,
            "largest_error_reply": tally.largest_error,
        })
    );
    println!(
        "# fuzz: {done} inputs in {:.1} s ({:.0}/s), seed {seed}, no failure; {} read by the \
         one-pass decoder, {} by the full path only, {} error replies (largest {} bytes)",
        took.as_secs_f64(),
        done as f64 / took.as_secs_f64().max(1e-9),
        tally.fast,
        tally.full_only,
        tally.errors,
        tally.largest_error
    );
    // A run that never reached the decoders would prove nothing.
    if done > 10_000 && (tally.fast == 0 || tally.errors == 0) {
        eprintln!("fuzz: the inputs never reached the decoders");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
