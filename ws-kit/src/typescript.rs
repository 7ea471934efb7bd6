//! TypeScript front ends: one module of zod schemas and WS-Kit definitions generated from the
//! Rust messages, with validators that accept and reject what the server does.
//!
//! ```
//! use ws_kit::{handler, routes, Ctx, Message, Router, WsError};
//! use ws_kit::typescript::TypeScript;
//!
//! #[derive(Message)]
//! struct JoinRoom {
//!     #[validate(length(min = 1, max = 20))]
//!     username: String,
//! }
//!
//! #[derive(Message)]
//! struct UserJoined { username: String }
//!
//! #[handler]
//! async fn join_room(ctx: Ctx<JoinRoom>) -> Result<(), WsError> { Ok(()) }
//!
//! let router = Router::new().routes(routes![join_room]);
//! let module = TypeScript::new()
//!     .router(&router)            // what the server receives, and the replies of its requests
//!     .message::<UserJoined>()    // what it sends on its own (pushes, publications)
//!     .render();
//! assert!(module.source.contains(r#"export const JoinRoom = message("JOIN_ROOM", JoinRoomPayload);"#));
//! assert!(module.warnings.is_empty());
//! ```
//!
//! The module imports `z`, `message` and `rpc` from `@ws-kit/zod` (0.10, zod 4) and exports,
//! per message, its payload schema (`JoinRoomPayload`, and its type), its WS-Kit definition
//! (`JoinRoom`: `message(..)`, or `rpc(..)` for a request with its response; declared meta fields
//! in the object form's `meta`), and `MessageTypes`, the type tags. What cannot be mirrored is
//! marked by a comment in the output at the field and listed in [`Module::warnings`].
//!
//! # Mapping
//!
//! | Rust | zod | note |
//! |---|---|---|
//! | struct fields | `z.object({..}).strict()` | unknown keys refused, as the server does; wire names as the derive renames them |
//! | a message without fields | `message("TAG")` | no `payload` key at all |
//! | `String`, `Box<str>`, `Arc<str>` | `z.string()` | |
//! | `char` | `z.string()` + exactly one character | |
//! | `bool` | `z.boolean()` | |
//! | `i8` … `u32` | `z.number().int().gte(MIN).lte(MAX)` | the Rust type's own range |
//! | `i64`, `u64`, `isize`, `usize` | the same, clipped to ±(2^53 − 1) | a JS number holds no more exactly; a comment says so |
//! | `f32`, `f64` | `z.number()` | finite, as JSON |
//! | `uuid::Uuid` | a string in the forms `Uuid::parse_str` reads | simple, hyphenated, braced, URN; any case |
//! | `serde_json::Value` | `z.json()` | present, any JSON |
//! | `Option<T>` | `T.nullish()` | absent or `null`, as the server reads it; rules apply to the value |
//! | `Vec<T>`, `VecDeque<T>`, sets | `z.array(T)` | |
//! | maps with string keys | `z.record(z.string(), T)` | |
//! | `#[derive(Payload)]` struct | an exported `z.object({..}).strict()` constant | once per struct; a struct that contains itself goes through `z.lazy` |
//! | any other serde type (an enum) | `z.unknown()` | **not mirrored**: its serde impl is invisible to the derive; warned |
//! | `length(min, max, equal)` | a refinement on characters (Unicode scalar values, `[...v].length`), items or keys | zod's own `.min()` counts UTF-16 units, which is not what the server counts |
//! | `range(min, max, exclusive_*)` | a refinement with the same bounds | |
//! | `email` | the `validator` crate's check, in JS | user part, domain labels, IP literals; IDN domains through `new URL` (WHATWG's UTS 46, like the `idna` crate) |
//! | `url` | `new URL(v)` succeeds | both sides implement the WHATWG URL standard |
//! | `contains`, `does_not_contain` | `includes` (strings), `Object.hasOwn` (maps) | |
//! | `non_control_character` | no `\p{Cc}` | |
//! | `regex(path)` | the pattern translated to a JS `u` regex | Perl classes (`\d`, `\w`, `\s`) become their Unicode meaning, `.` stops at `\n`, `(?P<..>` becomes `(?<..>`, scripts become `Script=..`; `\b`, inline flags mid-pattern, multi-line mode and class set operations are **not mirrored**: warned |
//! | `custom(function)` | nothing | **not mirrored**: it runs only on the server; warned |
//!
//! Every rule's refinement carries the server's own message for that rule, so a front end shows
//! the words the server would answer with. The parity test (`tests/tests/typescript.rs`) runs
//! some 2,900 payloads through the generated zod schemas under Node and through the server's
//! decoder ([`MessageSchema::check_payload`]) and requires the same verdict on every one.

use crate::message::Message;
use crate::router::Router;
use crate::schema::{FieldSchema, MessageSchema, ObjectSchema, Rule, RuleSchema, TypeSchema};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

/// Collects messages, then renders them as one TypeScript module.
#[derive(Debug, Default)]
pub struct TypeScript {
    title: Option<String>,
    /// Each message once, by tag, in the order they were added.
    messages: Vec<(MessageSchema, Direction)>,
}

/// Which way a message travels, for the module's comments.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Direction {
    /// The server receives it (a route).
    In,
    /// The server sends it (a response, a push, a publication).
    Out,
}

/// A rendered module.
#[derive(Clone, Debug)]
pub struct Module {
    /// The TypeScript text.
    pub source: String,
    /// What the zod schemas cannot mirror of the Rust rules, one line each (also written as a
    /// comment at the field in `source`).
    pub warnings: Vec<String>,
}

impl TypeScript {
    /// An empty module.
    pub fn new() -> Self {
        Self::default()
    }

    /// A line for the module's header comment (the app's name, say).
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Every message `router` dispatches, and the response of each request among them.
    pub fn router<D: Send + Sync + 'static, S: Send + Sync + 'static>(
        mut self,
        router: &Router<D, S>,
    ) -> Self {
        for schema in router.message_schemas() {
            self.add(schema, Direction::In);
        }
        self
    }

    /// A message the server sends (a push, a publication), or any message to include.
    pub fn message<M: Message>(mut self) -> Self {
        self.add(MessageSchema::of::<M>(), Direction::Out);
        self
    }

    fn add(&mut self, schema: MessageSchema, direction: Direction) {
        let response = schema.response.clone();
        if !self.messages.iter().any(|(m, _)| m.tag == schema.tag) {
            self.messages.push((schema, direction));
        }
        if let Some(response) = response {
            self.add(*response, Direction::Out);
        }
    }

    /// The schemas of the messages collected so far, each once, in the module's order.
    pub fn schemas(&self) -> impl Iterator<Item = &MessageSchema> {
        self.messages.iter().map(|(schema, _)| schema)
    }

    /// Renders the module.
    pub fn render(&self) -> Module {
        Renderer::default().module(self)
    }

    /// Renders the module into `path`; returns its warnings.
    pub fn write(&self, path: impl AsRef<Path>) -> std::io::Result<Vec<String>> {
        let module = self.render();
        std::fs::write(path, &module.source)?;
        Ok(module.warnings)
    }
}

/// The constants of one message.
struct Parts {
    /// Its definition's.
    name: String,
    /// Its payload schema's, when it has a payload.
    payload: Option<String>,
    /// Its meta shape, inline, when it declares meta fields.
    meta: Option<String>,
}

/// Names the zod code uses besides the module's own.
const TAKEN: [&str; 4] = ["z", "message", "rpc", "MessageTypes"];

#[derive(Default)]
struct Renderer {
    /// Constants already used, so no two collide.
    names: BTreeSet<String>,
    /// Nested structs by path: their constant's name.
    objects: HashMap<&'static str, String>,
    /// Nested structs whose definition is complete (one met again before that contains
    /// itself).
    defined: BTreeSet<&'static str>,
    /// Definitions of nested structs, in dependency order.
    object_defs: String,
    /// Helpers the module needs, by name.
    helpers: BTreeSet<&'static str>,
    /// Regex constants: (name, JS literal).
    regexes: Vec<(String, String)>,
    warnings: Vec<String>,
}

impl Renderer {
    fn module(mut self, ts: &TypeScript) -> Module {
        for name in TAKEN {
            self.names.insert(name.to_string());
        }
        // First every payload (and meta) shape, so a request's definition can name its
        // response's payload whatever their order.
        let mut payloads = String::new();
        let mut parts: HashMap<&str, Parts> = HashMap::new();
        for (schema, _) in &ts.messages {
            let name = self.name(schema.rust_name);
            let payload = schema.has_payload.then(|| {
                let payload_name = self.name(&format!("{name}Payload"));
                let shape = self.object(&schema.payload, &format!("{}.payload", schema.rust_name));
                let _ = writeln!(
                    payloads,
                    "/** The payload of `{}`. */\nexport const {payload_name} = {shape};\nexport type {payload_name} = z.infer<typeof {payload_name}>;\n",
                    schema.rust_name
                );
                payload_name
            });
            let meta = (!schema.meta.is_empty())
                .then(|| self.shape(&schema.meta, &format!("{}.meta", schema.rust_name)));
            parts.insert(
                schema.tag,
                Parts {
                    name,
                    payload,
                    meta,
                },
            );
        }
        let mut body = String::new();
        let mut tags = Vec::new();
        for (schema, direction) in &ts.messages {
            let own = &parts[schema.tag];
            let name = &own.name;
            tags.push((name.clone(), schema.tag));
            let what = match (direction, &schema.response) {
                (Direction::In, Some(_)) => "a request the server answers",
                (Direction::In, None) => "an event the server receives",
                (Direction::Out, Some(_)) => "a request",
                (Direction::Out, None) => "sent by the server",
            };
            let _ = writeln!(body, "/** `{}` ({what}). */", schema.rust_name);
            let payload_key = own
                .payload
                .as_ref()
                .map(|p| format!(", payload: {p}"))
                .unwrap_or_default();
            let meta_key = own
                .meta
                .as_ref()
                .map(|m| format!(", meta: {m}"))
                .unwrap_or_default();
            let definition = match &schema.response {
                Some(response) => {
                    let reply = &parts[response.tag];
                    if own.meta.is_some() || reply.meta.is_some() {
                        format!(
                            "rpc({{ req: {{ type: {}{payload_key}{meta_key} }}, res: {{ type: {}{}{} }} }})",
                            js_string(schema.tag),
                            js_string(response.tag),
                            reply
                                .payload
                                .as_ref()
                                .map(|p| format!(", payload: {p}"))
                                .unwrap_or_default(),
                            reply
                                .meta
                                .as_ref()
                                .map(|m| format!(", meta: {m}"))
                                .unwrap_or_default(),
                        )
                    } else {
                        format!(
                            "rpc({}, {}, {}, {})",
                            js_string(schema.tag),
                            own.payload.as_deref().unwrap_or("undefined"),
                            js_string(response.tag),
                            reply.payload.as_deref().unwrap_or("undefined"),
                        )
                    }
                }
                None if own.meta.is_some() => {
                    format!(
                        "message({{ type: {}{payload_key}{meta_key} }})",
                        js_string(schema.tag)
                    )
                }
                None => match &own.payload {
                    Some(payload) => format!("message({}, {payload})", js_string(schema.tag)),
                    None => format!("message({})", js_string(schema.tag)),
                },
            };
            let _ = writeln!(body, "export const {name} = {definition};");
            let _ = writeln!(body, "export type {name} = z.infer<typeof {name}>;\n");
        }

        let mut out = String::new();
        out.push_str("// Generated by ws-kit from the Rust messages");
        if let Some(title) = &ts.title {
            let _ = write!(out, " of {}", title.replace('\n', " "));
        }
        out.push_str(". Do not edit: regenerate it.\n");
        out.push_str(
            "// The validators mirror the server's decoding and `#[validate]` rules: what they accept, the\n\
             // server accepts. Where a rule cannot be mirrored, a comment at the field says so.\n",
        );
        for warning in &self.warnings {
            let _ = writeln!(out, "// - {}", warning.replace('\n', " "));
        }
        out.push_str("import { z, message, rpc } from \"@ws-kit/zod\";\n\n");
        for helper in &self.helpers {
            out.push_str(helper_source(helper));
            out.push('\n');
        }
        for (name, literal) in &self.regexes {
            let _ = writeln!(out, "const {name} = {literal};");
        }
        if !self.regexes.is_empty() {
            out.push('\n');
        }
        out.push_str(&self.object_defs);
        out.push_str(&payloads);
        out.push_str(&body);
        out.push_str("/** Every message's type tag. */\nexport const MessageTypes = {\n");
        for (name, tag) in &tags {
            let _ = writeln!(out, "  {name}: {},", js_string(tag));
        }
        out.push_str("} as const;\n");
        out.push_str(
            "export type MessageType = (typeof MessageTypes)[keyof typeof MessageTypes];\n",
        );
        Module {
            source: out,
            warnings: self.warnings,
        }
    }

    /// A fresh constant name based on `wanted`.
    fn name(&mut self, wanted: &str) -> String {
        let mut name = wanted.to_string();
        let mut n = 2;
        while !self.names.insert(name.clone()) {
            name = format!("{wanted}{n}");
            n += 1;
        }
        name
    }

    /// `z.object({..}).strict()` of `fields`.
    fn object(&mut self, fields: &[FieldSchema], at: &str) -> String {
        format!("z.object({}).strict()", self.shape(fields, at))
    }

    /// `{ key: schema, .. }` of `fields`.
    fn shape(&mut self, fields: &[FieldSchema], at: &str) -> String {
        if fields.is_empty() {
            return "{}".to_string();
        }
        let mut out = String::from("{\n");
        for field in fields {
            let at = format!("{at}.{}", field.wire_name);
            let mut notes = Vec::new();
            if at.contains(".meta.") && !matches!(field.ty, TypeSchema::Optional(_)) {
                self.note(
                    &mut notes,
                    &at,
                    "a required meta field: WS-Kit's definitions take a frame without `meta` (they default it to {} unchecked), the server refuses it".into(),
                );
            }
            let schema = self.field(&field.ty, &field.rules, &at, &mut notes);
            for note in &notes {
                let _ = writeln!(out, "  // {note}");
            }
            let _ = writeln!(out, "  {}: {schema},", js_key(field.wire_name));
        }
        out.push('}');
        out
    }

    /// A field's schema: its type with its rules applied to the value inside any `Option`.
    fn field(
        &mut self,
        ty: &TypeSchema,
        rules: &[RuleSchema],
        at: &str,
        notes: &mut Vec<String>,
    ) -> String {
        if let TypeSchema::Optional(inner) = ty {
            return format!("{}.nullish()", self.field(inner, rules, at, notes));
        }
        let mut schema = self.ty(ty, at, notes);
        for rule in rules {
            match self.rule(ty, rule) {
                Ok(check) => {
                    let _ = write!(
                        schema,
                        ".refine({check}, {{ message: {} }})",
                        js_string(&rule.message)
                    );
                }
                Err(why) => self.note(notes, at, why),
            }
        }
        schema
    }

    fn note(&mut self, notes: &mut Vec<String>, at: &str, why: String) {
        notes.push(why.clone());
        self.warnings.push(format!("{at}: {why}"));
    }

    /// The schema of a type, without rules.
    fn ty(&mut self, ty: &TypeSchema, at: &str, notes: &mut Vec<String>) -> String {
        match ty {
            TypeSchema::String { one_char: false } => "z.string()".into(),
            TypeSchema::String { one_char: true } => {
                self.helpers.insert("chars");
                "z.string().refine((v) => __wsKitChars(v) === 1, { message: \"must be one character\" })".into()
            }
            TypeSchema::Bool => "z.boolean()".into(),
            TypeSchema::Integer { rust, min, max } => {
                const SAFE: i128 = (1 << 53) - 1;
                if *min < -SAFE || *max > SAFE {
                    notes.push(format!(
                        "{rust}: a JS number holds integers exactly up to 2^53 - 1; larger ones are refused here"
                    ));
                }
                let (lo, hi) = ((*min).max(-SAFE), (*max).min(SAFE));
                format!("z.number().int().gte({lo}).lte({hi})")
            }
            TypeSchema::Float { .. } => "z.number()".into(),
            TypeSchema::Uuid => {
                self.helpers.insert("uuid");
                "z.string().regex(__wsKitUuid, { message: \"must be a UUID\" })".into()
            }
            TypeSchema::Json => "z.json()".into(),
            TypeSchema::Optional(inner) => format!("{}.nullish()", self.ty(inner, at, notes)),
            TypeSchema::List(item) => {
                format!("z.array({})", self.ty(item, &format!("{at}[]"), notes))
            }
            TypeSchema::Map(value) => format!(
                "z.record(z.string(), {})",
                self.ty(value, &format!("{at}{{}}"), notes)
            ),
            TypeSchema::Object(object) => self.nested(object),
            TypeSchema::Other { rust } => {
                self.note(
                    notes,
                    at,
                    format!("`{rust}` is decoded by its own serde impl, which the schema cannot see: any value passes here, the server decides"),
                );
                "z.unknown()".into()
            }
        }
    }

    /// The constant of a nested struct, defined (once) before the messages that use it.
    fn nested(&mut self, object: &ObjectSchema) -> String {
        if let Some(name) = self.objects.get(object.path) {
            if !self.defined.contains(object.path) {
                // A struct that contains itself: refer to it lazily.
                self.warnings.push(format!(
                    "{}: contains itself; its TypeScript type is `unknown` inside itself",
                    object.rust_name
                ));
                return format!("z.lazy((): z.ZodType => {name})");
            }
            return name.clone();
        }
        let name = self.name(object.rust_name);
        self.objects.insert(object.path, name.clone());
        let shape = self.object(&(object.fields)(), object.rust_name);
        self.defined.insert(object.path);
        let _ = writeln!(
            self.object_defs,
            "/** `{}` (nested). */\nexport const {name} = {shape};\nexport type {name} = z.infer<typeof {name}>;\n",
            object.rust_name
        );
        name
    }

    /// The JS predicate of a rule on a value of type `ty`, or why it cannot be mirrored.
    fn rule(&mut self, ty: &TypeSchema, rule: &RuleSchema) -> Result<String, String> {
        let size = match ty {
            TypeSchema::String { .. } => {
                self.helpers.insert("chars");
                Some("__wsKitChars(v)")
            }
            TypeSchema::List(_) => Some("v.length"),
            TypeSchema::Map(_) => Some("Object.keys(v).length"),
            _ => None,
        };
        let string = matches!(ty, TypeSchema::String { .. });
        let number = matches!(ty, TypeSchema::Integer { .. } | TypeSchema::Float { .. });
        let not_here = |name: &str| {
            Err(format!(
                "`{name}` on this type is not mirrored; the server checks it"
            ))
        };
        Ok(match &rule.rule {
            Rule::Length { min, max, equal } => {
                let Some(size) = size else {
                    return not_here("length");
                };
                let mut parts = Vec::new();
                if let Some(n) = equal {
                    parts.push(format!("{size} === {n}"));
                }
                if let Some(n) = min {
                    parts.push(format!("{size} >= {n}"));
                }
                if let Some(n) = max {
                    parts.push(format!("{size} <= {n}"));
                }
                format!("(v) => {}", parts.join(" && "))
            }
            Rule::Range {
                min,
                max,
                exclusive_min,
                exclusive_max,
            } => {
                if !number {
                    return not_here("range");
                }
                let mut parts = Vec::new();
                for (bound, op) in [
                    (min, ">="),
                    (exclusive_min, ">"),
                    (max, "<="),
                    (exclusive_max, "<"),
                ] {
                    if let Some(b) = bound {
                        parts.push(format!("v {op} {}", js_number(*b)));
                    }
                }
                format!("(v) => {}", parts.join(" && "))
            }
            Rule::Email if string => {
                self.helpers.insert("email");
                "__wsKitEmail".into()
            }
            Rule::Url if string => {
                self.helpers.insert("url");
                "__wsKitUrl".into()
            }
            Rule::NonControlCharacter if string => "(v) => !/\\p{Cc}/u.test(v)".into(),
            Rule::Contains(p) if string => format!("(v) => v.includes({})", js_string(p)),
            Rule::DoesNotContain(p) if string => format!("(v) => !v.includes({})", js_string(p)),
            Rule::Contains(p) if matches!(ty, TypeSchema::Map(_)) => {
                format!("(v) => Object.hasOwn(v, {})", js_string(p))
            }
            Rule::DoesNotContain(p) if matches!(ty, TypeSchema::Map(_)) => {
                format!("(v) => !Object.hasOwn(v, {})", js_string(p))
            }
            Rule::Regex(pattern) if string => {
                let literal = js_regex(pattern).map_err(|why| {
                    format!("regex `{pattern}` is not mirrored ({why}); the server checks it")
                })?;
                let name = format!("__wsKitRe{}", self.regexes.len());
                self.regexes.push((name.clone(), literal));
                format!("(v) => {name}.test(v)")
            }
            Rule::Custom(function) => {
                return Err(format!("`custom({function})` runs only on the server"));
            }
            Rule::Email => return not_here("email"),
            Rule::Url => return not_here("url"),
            Rule::NonControlCharacter => return not_here("non_control_character"),
            Rule::Contains(_) => return not_here("contains"),
            Rule::DoesNotContain(_) => return not_here("does_not_contain"),
            Rule::Regex(_) => return not_here("regex"),
        })
    }
}

/// The TypeScript of a helper.
fn helper_source(name: &str) -> &'static str {
    match name {
        "chars" => {
            "/** A string's length as Rust counts it: Unicode scalar values, not UTF-16 units. */\n\
const __wsKitChars = (v: string): number => [...v].length;\n"
        }
        "uuid" => {
            "/** What `uuid::Uuid::parse_str` reads: simple, hyphenated, braced or URN. */\n\
const __wsKitUuid =\n  /^(?:[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|\\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\\}|urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$/;\n"
        }
        "url" => {
            "/** What `url::Url::parse` accepts: the WHATWG URL standard, as `new URL` reads it. */\n\
const __wsKitUrl = (v: string): boolean => {\n  try {\n    new URL(v);\n    return true;\n  } catch {\n    return false;\n  }\n};\n"
        }
        "email" => {
            "/** The `validator` crate's email check: user part, then domain, IP literal or IDN. */\n\
const __wsKitEmail = (v: string): boolean => {\n  const at = v.lastIndexOf(\"@\");\n  if (at < 0) return false;\n  const user = v.slice(0, at);\n  const domain = v.slice(at + 1);\n  if ([...user].length > 64 || [...domain].length > 255) return false;\n  if (!/^[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+$/.test(user)) return false;\n  const label = \"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\";\n  const host = (d: string): boolean => {\n    if (new RegExp(`^${label}(?:\\\\.${label})*$`).test(d)) return true;\n    const literal = /\\[([a-fA-F0-9:.]+)\\]$/.exec(d);\n    if (!literal) return false;\n    const ip = literal[1];\n    if (/^(?:(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)\\.){3}(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)$/.test(ip)) return true;\n    if (!ip.includes(\":\")) return false;\n    try {\n      new URL(`http://[${ip}]/`);\n      return true;\n    } catch {\n      return false;\n    }\n  };\n  if (host(domain)) return true;\n  try {\n    const ascii = new URL(`http://${domain}/`).hostname;\n    return ascii !== domain && host(ascii);\n  } catch {\n    return false;\n  }\n};\n"
        }
        _ => "",
    }
}

/// A JS string literal (JSON's escapes are JS's).
fn js_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// An object key: bare when it is an identifier, quoted otherwise.
fn js_key(key: &str) -> String {
    let mut chars = key.chars();
    let ident = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if ident {
        key.to_string()
    } else {
        js_string(key)
    }
}

/// A number literal: integers without a fraction.
fn js_number(n: f64) -> String {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 1e21 {
        format!("{n:.0}")
    } else {
        format!("{n:?}")
    }
}

/// The Unicode classes of the `regex` crate's Perl classes (Unicode-aware by default).
const WORD: &str = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}";

/// A JS regex literal (`u` flag) that matches what `pattern` matches in the `regex` crate, or why
/// it cannot be translated.
pub(crate) fn js_regex(pattern: &str) -> Result<String, String> {
    let mut flags = String::from("u");
    let mut rest = pattern;
    // Leading flags: `(?i)`, `(?s)`, `(?m)`, `(?is)`...
    if let Some(after) = rest.strip_prefix("(?")
        && let Some(end) = after.find(')')
        && after[..end].chars().all(|c| matches!(c, 'i' | 'm' | 's'))
        && end > 0
    {
        for c in after[..end].chars() {
            if !flags.contains(c) {
                flags.push(c);
            }
        }
        rest = &after[end + 1..];
    }
    if flags.contains('m') {
        return Err("multi-line mode ends lines differently in JS".into());
    }
    let dot_all = flags.contains('s');
    let mut out = String::new();
    let chars: Vec<char> = rest.chars().collect();
    let mut i = 0;
    let mut in_class = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                let Some(&e) = chars.get(i + 1) else {
                    return Err("a trailing backslash".into());
                };
                i += 2;
                match e {
                    'd' => out.push_str("\\p{Nd}"),
                    'D' if !in_class => out.push_str("\\P{Nd}"),
                    's' => out.push_str("\\p{White_Space}"),
                    'S' if !in_class => out.push_str("\\P{White_Space}"),
                    'w' if in_class => out.push_str(WORD),
                    'w' => {
                        let _ = write!(out, "[{WORD}]");
                    }
                    'W' if !in_class => {
                        let _ = write!(out, "[^{WORD}]");
                    }
                    'A' if !in_class => out.push('^'),
                    'z' if !in_class => out.push('$'),
                    'p' | 'P' => {
                        let (name, used) = if chars.get(i) == Some(&'{') {
                            let end = chars[i..]
                                .iter()
                                .position(|&c| c == '}')
                                .ok_or("an unclosed `\\p{`")?;
                            (chars[i + 1..i + end].iter().collect::<String>(), end + 1)
                        } else {
                            (chars.get(i).map(|c| c.to_string()).unwrap_or_default(), 1)
                        };
                        i += used;
                        let _ = write!(out, "\\{e}{{{}}}", unicode_property(&name)?);
                    }
                    'x' => {
                        if chars.get(i) == Some(&'{') {
                            let end = chars[i..]
                                .iter()
                                .position(|&c| c == '}')
                                .ok_or("an unclosed `\\x{`")?;
                            let hex: String = chars[i + 1..i + end].iter().collect();
                            i += end + 1;
                            let _ = write!(out, "\\u{{{hex}}}");
                        } else {
                            out.push_str("\\x");
                        }
                    }
                    'n' | 't' | 'r' | 'f' | 'v' | 'u' => {
                        out.push('\\');
                        out.push(e);
                    }
                    'a' => out.push_str("\\x07"),
                    'e' => out.push_str("\\x1B"),
                    '0'..='9' | 'b' | 'B' | 'Q' | 'E' | 'D' | 'S' | 'W' | 'A' | 'z' | 'c' | 'k' => {
                        return Err(format!("`\\{e}` has no exact JS counterpart here"));
                    }
                    e if "^$\\.*+?()[]{}|/".contains(e) || (in_class && e == '-') => {
                        out.push('\\');
                        out.push(e);
                    }
                    e if e.is_ascii_alphanumeric() => {
                        return Err(format!("unknown escape `\\{e}`"));
                    }
                    e => {
                        let _ = write!(out, "\\u{{{:X}}}", e as u32);
                    }
                }
                continue;
            }
            '[' if in_class => {
                if chars.get(i + 1) == Some(&':') {
                    let end = chars[i..]
                        .windows(2)
                        .position(|w| w == [':', ']'])
                        .ok_or("an unclosed POSIX class")?;
                    let name: String = chars[i + 2..i + end].iter().collect();
                    out.push_str(posix_class(&name)?);
                    i += end + 2;
                    continue;
                }
                return Err("nested character classes".into());
            }
            '[' => {
                in_class = true;
                out.push('[');
                i += 1;
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                // A `]` first in a class is a literal in the regex crate.
                if chars.get(i) == Some(&']') {
                    out.push_str("\\]");
                    i += 1;
                }
                continue;
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '&' | '-' | '~' if in_class && chars.get(i + 1) == Some(&c) => {
                return Err("class set operations".into());
            }
            '/' => out.push_str("\\/"),
            '.' if !in_class && !dot_all => out.push_str("[^\\n]"),
            '(' if !in_class && chars.get(i + 1) == Some(&'?') => {
                let tail: String = chars[i..chars.len().min(i + 4)].iter().collect();
                if tail.starts_with("(?:") {
                    out.push_str("(?:");
                    i += 3;
                } else if tail.starts_with("(?P<") {
                    out.push_str("(?<");
                    i += 4;
                } else if tail.starts_with("(?<") {
                    out.push_str("(?<");
                    i += 3;
                } else {
                    return Err("inline flags inside the pattern".into());
                }
                continue;
            }
            '{' if !in_class && chars.get(i + 1) == Some(&',') => out.push_str("{0"),
            c => out.push(c),
        }
        i += 1;
    }
    if in_class {
        return Err("an unclosed class".into());
    }
    // Validate-free: JS rejects a bad pattern when the module loads, which the tests run.
    Ok(format!("/{out}/{flags}"))
}

/// A `\p{..}` name in JS's spelling: general categories and binary properties as they are,
/// scripts as `Script=..`.
fn unicode_property(name: &str) -> Result<String, String> {
    const KEEP: [&str; 20] = [
        "Alphabetic",
        "White_Space",
        "Uppercase",
        "Lowercase",
        "Emoji",
        "Any",
        "ASCII",
        "Assigned",
        "Letter",
        "Mark",
        "Number",
        "Punctuation",
        "Symbol",
        "Separator",
        "Other",
        "Decimal_Number",
        "Uppercase_Letter",
        "Lowercase_Letter",
        "Math",
        "Dash",
    ];
    if name.contains('=') || name.contains(':') {
        return Ok(name.replace(':', "="));
    }
    let category = name.len() <= 2 && name.chars().next().is_some_and(|c| "LMNPSZC".contains(c));
    if category || KEEP.contains(&name) {
        Ok(name.to_string())
    } else if name.chars().all(|c| c.is_ascii_alphabetic() || c == '_') {
        Ok(format!("Script={name}"))
    } else {
        Err(format!("unknown property `{name}`"))
    }
}

/// The ASCII members of a POSIX class, for inside a JS class.
fn posix_class(name: &str) -> Result<&'static str, String> {
    Ok(match name {
        "alnum" => "0-9A-Za-z",
        "alpha" => "A-Za-z",
        "ascii" => "\\x00-\\x7F",
        "blank" => "\\t ",
        "cntrl" => "\\x00-\\x1F\\x7F",
        "digit" => "0-9",
        "lower" => "a-z",
        "space" => "\\t\\n\\v\\f\\r ",
        "upper" => "A-Z",
        "word" => "0-9A-Za-z_",
        "xdigit" => "0-9A-Fa-f",
        other => return Err(format!("POSIX class `{other}`")),
    })
}

#[cfg(test)]
mod tests {
    use super::js_regex;

    #[test]
    fn regexes_translate_to_their_unicode_meaning() {
        assert_eq!(
            js_regex(r"^[a-z0-9_]{3,16}$").unwrap(),
            r"/^[a-z0-9_]{3,16}$/u"
        );
        assert_eq!(js_regex(r"^\d+$").unwrap(), r"/^\p{Nd}+$/u");
        assert_eq!(js_regex(r"(?i)^ab.c$").unwrap(), r"/^ab[^\n]c$/ui");
        assert_eq!(js_regex(r"(?P<x>a)\pL").unwrap(), r"/(?<x>a)\p{L}/u");
        assert_eq!(js_regex(r"\p{Greek}").unwrap(), r"/\p{Script=Greek}/u");
        assert_eq!(js_regex(r"[[:digit:]x]").unwrap(), r"/[0-9x]/u");
        assert_eq!(js_regex(r"a{,3}").unwrap(), r"/a{0,3}/u");
        assert_eq!(js_regex(r"a/b\#").unwrap(), r"/a\/b\u{23}/u");
        assert!(js_regex(r"\bword\b").is_err());
        assert!(js_regex(r"(?m)^a$").is_err());
        assert!(js_regex(r"a(?i)b").is_err());
        assert!(js_regex(r"[a-z&&[^x]]").is_err());
    }
}
