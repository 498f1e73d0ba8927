//! Request-path step "inspect" (after classify, before policy): reads the JSON
//! request body once, without building a DOM, and extracts what policy needs
//! (model, output-token limit, streaming, thinking / reasoning settings, prompt
//! text and its token estimate); also rewrites a body for degraded service
//! ([`rewrite_degrade`]).
//!
//! # What is read
//!
//! | field | Anthropic `/v1/messages` | OpenAI chat `/v1/chat/completions` | OpenAI `/v1/responses` |
//! |---|---|---|---|
//! | `model` | `model` | `model` | `model` |
//! | `max_output_tokens` | `max_tokens` | `max_completion_tokens`, else `max_tokens` | `max_output_tokens` |
//! | `stream` | `stream` | `stream` | `stream` |
//! | `thinking` | `thinking` `{type, budget_tokens}` | – | – |
//! | `reasoning_effort` | – | `reasoning_effort` | `reasoning.effort` |
//! | `prompt` | `system`, `messages[].content` | `messages[].content` | `instructions`, `input` |
//!
//! [`ApiKind::Other`] reads the union of all of these.
//!
//! Prompt text is collected from a string, or from an array of parts /
//! blocks / message items, recursively: a part contributes its `text`
//! string, its `content` (as above: Anthropic `tool_result`, Responses
//! message items) and its `output` (Responses `function_call_output`).
//! Everything else is skipped: images, documents, audio, `tool_use` inputs,
//! function-call arguments, tool definitions. Pieces are joined with `'\n'`;
//! `system` / `instructions` come first even if they follow `messages` in the
//! body. Its tokens are estimated by the prompt step (`crate::prompt`), which
//! keeps a conversation's history's count with its other walks.
//!
//! # Leniency and limits
//!
//! A body that is not a JSON object (syntax error, trailing garbage, a
//! top-level array, nesting deeper than `serde_json`'s limit of 128) is
//! [`Inspection::NotJson`]. Members that are not read are still checked as
//! `serde_json::Value` would check them (nesting, UTF-8, lone surrogate
//! escapes, numbers out of range), so a body is `Parsed` exactly when
//! [`rewrite_degrade`] can rewrite it. Inside a valid object, a field of an unexpected
//! type reads as absent (`None` / `false`) instead of failing the whole body.
//! Token counts: integers above `u32::MAX` (and integral floats such as
//! `1e30`) saturate to `u32::MAX`; negative or fractional numbers read as
//! `None`.

use super::ApiKind;
use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Result of [`inspect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    /// The body is a JSON object; what was read from it.
    Parsed(RequestInfo),
    /// The body is not a JSON object: forward it unchanged, count it by size.
    NotJson {
        /// Body length in bytes.
        len: usize,
    },
}

/// What policy needs to know about a request (see the module docs for which
/// JSON fields feed each member).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestInfo {
    /// Requested model name.
    pub model: Option<String>,
    /// Requested output-token limit.
    pub max_output_tokens: Option<u32>,
    /// OpenAI chat `n`: how many choices are generated (each up to the
    /// output limit), when a valid count.
    pub choices: Option<u32>,
    /// `stream: true` was requested.
    pub stream: bool,
    /// Anthropic extended-thinking settings, when a `thinking` object is present.
    pub thinking: Option<Thinking>,
    /// OpenAI reasoning effort (`reasoning_effort` or `reasoning.effort`).
    pub reasoning_effort: Option<String>,
    /// All user-visible prompt text, pieces joined with `'\n'`.
    pub prompt: String,
    /// Where the last few of those joins are in `prompt`: a conversation's
    /// next request holds its last one's text up to such a join, where the
    /// prompt cache finds it (`crate::prompt::PromptCache`).
    pub prompt_cuts: PromptCuts,
}

/// Offsets of the last [`PromptCuts::MAX`] line breaks that join pieces of
/// a prompt, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PromptCuts {
    at: [u32; PromptCuts::MAX],
    n: u8,
}

impl PromptCuts {
    /// Joins kept: a conversation's next request usually adds two pieces
    /// (the answer and the next question; an agent's tool call and its
    /// result), and sometimes a few more.
    pub const MAX: usize = 4;

    /// The offsets, in increasing order.
    pub fn offsets(&self) -> impl Iterator<Item = usize> + '_ {
        self.at[..usize::from(self.n)].iter().map(|&c| c as usize)
    }

    /// Adds a join after every one held (the oldest goes when full).
    fn push(&mut self, at: usize) {
        let Ok(at) = u32::try_from(at) else {
            return;
        };
        if usize::from(self.n) == Self::MAX {
            self.at.copy_within(1.., 0);
            self.n -= 1;
        }
        self.at[usize::from(self.n)] = at;
        self.n += 1;
    }
}

/// Prompt text being collected: pieces joined with `'\n'`, and where the
/// last joins are.
#[derive(Default)]
struct Collected {
    text: String,
    cuts: PromptCuts,
}

impl Collected {
    /// `head`, a join, then `self` (`system` text found after the messages).
    fn after(self, head: Collected) -> Collected {
        let mut text = head.text;
        let mut cuts = head.cuts;
        cuts.push(text.len());
        text.push('\n');
        let shift = text.len();
        for c in self.cuts.offsets() {
            cuts.push(shift + c);
        }
        text.push_str(&self.text);
        Collected { text, cuts }
    }
}

/// Anthropic `thinking` request parameter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Thinking {
    /// The `type` member (`"enabled"`, `"disabled"`, …); empty when missing.
    pub kind: String,
    /// `budget_tokens`, when a valid count.
    pub budget_tokens: Option<u32>,
}

impl Thinking {
    /// True unless `type` is `"disabled"`.
    pub fn is_enabled(&self) -> bool {
        self.kind != "disabled"
    }
}

/// Inspects a request body of the given API (see the module docs). Never panics.
pub fn inspect(kind: ApiKind, body: &[u8]) -> Inspection {
    let mut de = serde_json::Deserializer::from_slice(body);
    let reserve = body.len().min(64 * 1024);
    let parsed = TopSeed { kind, reserve }
        .deserialize(&mut de)
        .and_then(|info| de.end().map(|()| info));
    match parsed {
        Ok(info) => Inspection::Parsed(info),
        Err(_) => Inspection::NotJson { len: body.len() },
    }
}

// ---------------------------------------------------------------------------
// Lenient leaf visitors.

/// Implements the listed `Visitor` methods as "ignore, return default".
macro_rules! ignore {
    (scalars) => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (str) => {
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (seq) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<Skip>()?.is_some() {}
            Ok(Default::default())
        }
    };
    (map) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<Skip, Skip>()?.is_some() {}
            Ok(Default::default())
        }
    };
}

/// A value that is not read, checked as [`serde_json::Value`] would check
/// it: strings valid UTF-8 without a lone surrogate escape, numbers in
/// range, nesting within serde_json's limit of 128. `serde::de::IgnoredAny`
/// checks none of these (serde_json skips it without recursion or
/// decoding), so an unread field could make a body that [`inspect`] reads
/// but [`rewrite_degrade`] cannot parse, and a degraded request would then
/// go upstream unchanged.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    ignore!(scalars);
    ignore!(str);
    ignore!(seq);
    ignore!(map);
}

impl Default for Skip {
    fn default() -> Skip {
        Skip
    }
}

/// Token count: non-negative integer, saturating; anything else is `None`.
pub(crate) struct LenientU32;

impl<'de> DeserializeSeed<'de> for LenientU32 {
    type Value = Option<u32>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LenientU32 {
    type Value = Option<u32>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a token count")
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(u32::try_from(v).unwrap_or(u32::MAX)))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(v)
            .ok()
            .map(|v| u32::try_from(v).unwrap_or(u32::MAX)))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        if v >= 0.0 && v.fract() == 0.0 {
            // `as` saturates for floats above u32::MAX.
            Ok(Some(v as u32))
        } else {
            Ok(None)
        }
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    ignore!(str);
    ignore!(seq);
    ignore!(map);
}

/// A boolean; anything else is `false`.
struct LenientBool;

impl<'de> DeserializeSeed<'de> for LenientBool {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LenientBool {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a boolean")
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v)
    }
    ignore!(str);
    ignore!(seq);
    ignore!(map);
}

/// A string; anything else is `None`.
struct LenientString;

impl<'de> DeserializeSeed<'de> for LenientString {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LenientString {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.to_owned()))
    }
    ignore!(scalars);
    ignore!(seq);
    ignore!(map);
}

/// Anthropic `thinking` object; anything else is `None`.
struct ThinkingSeed;

impl<'de> DeserializeSeed<'de> for ThinkingSeed {
    type Value = Option<Thinking>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ThinkingSeed {
    type Value = Option<Thinking>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a thinking object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut t = Thinking::default();
        while let Some(key) = map.next_key_seed(KeySeed(key_thinking))? {
            match key {
                Key::Type => t.kind = map.next_value_seed(LenientString)?.unwrap_or_default(),
                Key::Budget => t.budget_tokens = map.next_value_seed(LenientU32)?,
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Some(t))
    }
    ignore!(scalars);
    ignore!(str);
    ignore!(seq);
}

/// OpenAI Responses `reasoning` object: its `effort`.
struct ReasoningSeed;

impl<'de> DeserializeSeed<'de> for ReasoningSeed {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ReasoningSeed {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reasoning object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut effort = None;
        while let Some(key) = map.next_key_seed(KeySeed(key_reasoning))? {
            match key {
                Key::Effort => effort = map.next_value_seed(LenientString)?,
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(effort)
    }
    ignore!(scalars);
    ignore!(str);
    ignore!(seq);
}

// ---------------------------------------------------------------------------
// Prompt text collection.

/// Appends one piece of prompt text, separated by `'\n'`.
fn append(out: &mut Collected, piece: &str) {
    if piece.is_empty() {
        return;
    }
    if !out.text.is_empty() {
        out.cuts.push(out.text.len());
        out.text.push('\n');
    }
    out.text.push_str(piece);
}

/// Prompt content: a string, an array of parts, or one part object.
struct TextSeed<'a> {
    out: &'a mut Collected,
}

impl<'de> DeserializeSeed<'de> for TextSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TextSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("prompt content")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        append(self.out, v);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(TextSeed {
                out: &mut *self.out,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed(key_part))? {
            match key {
                Key::Text => map.next_value_seed(StrSeed {
                    out: &mut *self.out,
                })?,
                Key::Content | Key::Output => map.next_value_seed(TextSeed {
                    out: &mut *self.out,
                })?,
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(())
    }
    ignore!(scalars);
}

/// A string appended to the prompt; anything else is skipped.
struct StrSeed<'a> {
    out: &'a mut Collected,
}

impl<'de> DeserializeSeed<'de> for StrSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        append(self.out, v);
        Ok(())
    }
    ignore!(scalars);
    ignore!(seq);
    ignore!(map);
}

// ---------------------------------------------------------------------------
// Keys.

/// Object keys that matter somewhere; everything else is `Other`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Key {
    Model,
    /// The API's primary output-token field.
    MaxOut,
    /// OpenAI chat's legacy `max_tokens` (used when the primary is absent).
    MaxOutLegacy,
    /// OpenAI chat `n` (choices).
    Choices,
    Stream,
    Thinking,
    ReasoningEffort,
    Reasoning,
    /// `system` / `instructions`: prompt text that goes first.
    PromptHead,
    /// `messages` / `input`.
    Prompt,
    Type,
    Budget,
    Effort,
    Text,
    Content,
    Output,
    Other,
}

/// Deserializes a map key through a classifier function.
struct KeySeed(fn(&str) -> Key);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
        Ok((self.0)(v))
    }
}

fn key_anthropic(k: &str) -> Key {
    match k {
        "model" => Key::Model,
        "max_tokens" => Key::MaxOut,
        "stream" => Key::Stream,
        "thinking" => Key::Thinking,
        "system" => Key::PromptHead,
        "messages" => Key::Prompt,
        _ => Key::Other,
    }
}

fn key_chat(k: &str) -> Key {
    match k {
        "model" => Key::Model,
        "max_completion_tokens" => Key::MaxOut,
        "max_tokens" => Key::MaxOutLegacy,
        "n" => Key::Choices,
        "stream" => Key::Stream,
        "reasoning_effort" => Key::ReasoningEffort,
        "messages" => Key::Prompt,
        _ => Key::Other,
    }
}

fn key_responses(k: &str) -> Key {
    match k {
        "model" => Key::Model,
        "max_output_tokens" => Key::MaxOut,
        "stream" => Key::Stream,
        "reasoning" => Key::Reasoning,
        "instructions" => Key::PromptHead,
        "input" => Key::Prompt,
        _ => Key::Other,
    }
}

fn key_other(k: &str) -> Key {
    match k {
        "model" => Key::Model,
        "max_tokens" => Key::MaxOutLegacy,
        "max_completion_tokens" | "max_output_tokens" => Key::MaxOut,
        "n" => Key::Choices,
        "stream" => Key::Stream,
        "thinking" => Key::Thinking,
        "reasoning_effort" => Key::ReasoningEffort,
        "reasoning" => Key::Reasoning,
        "system" | "instructions" => Key::PromptHead,
        "messages" | "input" => Key::Prompt,
        _ => Key::Other,
    }
}

fn key_thinking(k: &str) -> Key {
    match k {
        "type" => Key::Type,
        "budget_tokens" => Key::Budget,
        _ => Key::Other,
    }
}

fn key_reasoning(k: &str) -> Key {
    match k {
        "effort" => Key::Effort,
        _ => Key::Other,
    }
}

fn key_part(k: &str) -> Key {
    match k {
        "text" => Key::Text,
        "content" => Key::Content,
        "output" => Key::Output,
        _ => Key::Other,
    }
}

// ---------------------------------------------------------------------------
// Top level.

struct TopSeed {
    kind: ApiKind,
    /// Initial prompt capacity (the body length, capped).
    reserve: usize,
}

impl<'de> DeserializeSeed<'de> for TopSeed {
    type Value = RequestInfo;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RequestInfo, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed {
    type Value = RequestInfo;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RequestInfo, A::Error> {
        let classify: fn(&str) -> Key = match self.kind {
            ApiKind::Anthropic => key_anthropic,
            ApiKind::OpenAiChat => key_chat,
            ApiKind::OpenAiResponses => key_responses,
            ApiKind::Other => key_other,
        };
        let mut info = RequestInfo::default();
        let mut prompt = Collected {
            text: String::with_capacity(self.reserve),
            ..Collected::default()
        };
        let mut legacy_max = None;
        let mut head = Collected::default();
        while let Some(key) = map.next_key_seed(KeySeed(classify))? {
            match key {
                Key::Model => info.model = map.next_value_seed(LenientString)?,
                Key::MaxOut => info.max_output_tokens = map.next_value_seed(LenientU32)?,
                Key::MaxOutLegacy => legacy_max = map.next_value_seed(LenientU32)?,
                Key::Choices => info.choices = map.next_value_seed(LenientU32)?,
                Key::Stream => info.stream = map.next_value_seed(LenientBool)?,
                Key::Thinking => info.thinking = map.next_value_seed(ThinkingSeed)?,
                Key::ReasoningEffort => {
                    info.reasoning_effort = map.next_value_seed(LenientString)?
                }
                Key::Reasoning => info.reasoning_effort = map.next_value_seed(ReasoningSeed)?,
                Key::PromptHead => {
                    // Usually first in the body: write straight into the prompt.
                    let out = if prompt.text.is_empty() {
                        &mut prompt
                    } else {
                        &mut head
                    };
                    map.next_value_seed(TextSeed { out })?
                }
                Key::Prompt => map.next_value_seed(TextSeed { out: &mut prompt })?,
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        if info.max_output_tokens.is_none() {
            info.max_output_tokens = legacy_max;
        }
        if !head.text.is_empty() {
            prompt = prompt.after(head);
        }
        info.prompt = prompt.text;
        info.prompt_cuts = prompt.cuts;
        Ok(info)
    }
}

// ---------------------------------------------------------------------------
// Degrade rewrite.

/// Rewrites a request body for degraded service: the output-token limit is
/// clamped to at most `max_output_tokens` (at least 1), and the thinking /
/// reasoning parameters (`thinking`, `reasoning_effort`, `reasoning`) are
/// removed so the upstream's default (no extended thinking for Anthropic,
/// the model's default effort for OpenAI) applies. Other members keep their
/// order and values (`serde_json` `preserve_order`); number formatting and
/// whitespace are normalised.
///
/// The limit field per API: Anthropic `max_tokens` (set to the cap when
/// missing or not a valid count); OpenAI chat `max_completion_tokens` and
/// `max_tokens`, each clamped when present, `max_completion_tokens` added
/// when neither is; Responses `max_output_tokens` (clamped or added);
/// [`ApiKind::Other`] clamps whichever of the three is present and adds none.
///
/// Returns `None` when the body is not a JSON object. Never panics.
pub fn rewrite_degrade(kind: ApiKind, body: &[u8], max_output_tokens: u32) -> Option<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    let obj = value.as_object_mut()?;
    let cap = max_output_tokens.max(1);
    for k in ["thinking", "reasoning_effort", "reasoning"] {
        obj.shift_remove(k);
    }
    match kind {
        ApiKind::Anthropic => {
            clamp_field(obj, "max_tokens", cap, true);
        }
        ApiKind::OpenAiChat => {
            let a = clamp_field(obj, "max_completion_tokens", cap, false);
            let b = clamp_field(obj, "max_tokens", cap, false);
            if !a && !b {
                clamp_field(obj, "max_completion_tokens", cap, true);
            }
        }
        ApiKind::OpenAiResponses => {
            clamp_field(obj, "max_output_tokens", cap, true);
        }
        ApiKind::Other => {
            for k in ["max_tokens", "max_completion_tokens", "max_output_tokens"] {
                clamp_field(obj, k, cap, false);
            }
        }
    }
    serde_json::to_vec(&value).ok()
}

/// Clamps `obj[key]` to `cap`. A present but invalid value is replaced by
/// `cap`; a missing one is inserted only when `insert`. Returns whether the
/// key was present.
fn clamp_field(obj: &mut Map<String, Value>, key: &str, cap: u32, insert: bool) -> bool {
    match obj.get_mut(key) {
        Some(v) => {
            let current = v.as_u64().or_else(|| {
                v.as_f64()
                    .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                    .map(|f| f as u64)
            });
            let new = match current {
                Some(c) if c <= u64::from(cap) => c,
                _ => u64::from(cap),
            };
            *v = Value::from(new);
            true
        }
        None => {
            if insert {
                obj.insert(key.to_owned(), Value::from(cap));
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parsed(kind: ApiKind, body: &str) -> RequestInfo {
        match inspect(kind, body.as_bytes()) {
            Inspection::Parsed(i) => i,
            Inspection::NotJson { len } => panic!("not json ({len} bytes): {body}"),
        }
    }

    const ANTHROPIC: &str = r#"{
      "model": "claude-sonnet-4-5",
      "max_tokens": 2048,
      "system": [
        {"type": "text", "text": "You are a careful assistant.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Answer briefly."}
      ],
      "thinking": {"type": "enabled", "budget_tokens": 1024},
      "stream": true,
      "tools": [{"name": "get_weather", "description": "Get the weather", "input_schema": {"type": "object"}}],
      "messages": [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [
          {"type": "thinking", "thinking": "secret", "signature": "sig"},
          {"type": "text", "text": "Let me check."},
          {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris", "text": "not prompt"}}
        ]},
        {"role": "user", "content": [
          {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "18C, sunny"}]},
          {"type": "tool_result", "tool_use_id": "toolu_02", "content": "plain result"},
          {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
          {"type": "text", "text": "And \"tomorrow\"?\nThanks"}
        ]}
      ]
    }"#;

    #[test]
    fn anthropic_body() {
        let i = parsed(ApiKind::Anthropic, ANTHROPIC);
        assert_eq!(i.model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(i.max_output_tokens, Some(2048));
        assert!(i.stream);
        assert_eq!(
            i.thinking,
            Some(Thinking {
                kind: "enabled".into(),
                budget_tokens: Some(1024)
            })
        );
        assert!(i.thinking.as_ref().is_some_and(Thinking::is_enabled));
        assert_eq!(i.reasoning_effort, None);
        assert_eq!(
            i.prompt,
            "You are a careful assistant.\nAnswer briefly.\nWhat is the weather in Paris?\n\
             Let me check.\n18C, sunny\nplain result\nAnd \"tomorrow\"?\nThanks"
        );
    }

    /// The joins between pieces, the last four, where a conversation's
    /// earlier request ends: with `system` first or after the messages.
    #[test]
    fn prompt_cuts_are_the_last_joins_between_pieces() {
        let cuts = |i: &RequestInfo| i.prompt_cuts.offsets().collect::<Vec<_>>();
        let i = parsed(
            ApiKind::Anthropic,
            r#"{"system":"sys","messages":[{"role":"user","content":"q1"},
                {"role":"assistant","content":[{"type":"text","text":"a1"}]},
                {"role":"user","content":"q2"}]}"#,
        );
        assert_eq!(i.prompt, "sys\nq1\na1\nq2");
        assert_eq!(cuts(&i), [3, 6, 9]);
        let i = parsed(
            ApiKind::Anthropic,
            r#"{"messages":[{"role":"user","content":"q1"},{"role":"user","content":"q2"}],
                "system":"be nice"}"#,
        );
        assert_eq!(i.prompt, "be nice\nq1\nq2");
        assert_eq!(cuts(&i), [7, 10]);
        let i = parsed(
            ApiKind::OpenAiChat,
            r#"{"messages":[{"role":"user","content":"1"},{"role":"user","content":"22"},
                {"role":"user","content":""},{"role":"user","content":"333"},
                {"role":"user","content":"4"},{"role":"user","content":"55"},
                {"role":"user","content":"6"}]}"#,
        );
        assert_eq!(i.prompt, "1\n22\n333\n4\n55\n6");
        assert_eq!(
            cuts(&i),
            [4, 8, 10, 13],
            "the last four; empty pieces join nothing"
        );
        for c in cuts(&i) {
            assert_eq!(i.prompt.as_bytes()[c], b'\n');
        }
        assert!(cuts(&parsed(
            ApiKind::Anthropic,
            r#"{"messages":[{"role":"user","content":"q"}]}"#
        ))
        .is_empty());
    }

    #[test]
    fn anthropic_system_string_after_messages() {
        let i = parsed(
            ApiKind::Anthropic,
            r#"{"messages":[{"role":"user","content":"hi"}],"system":"be nice","max_tokens":5,
                "thinking":{"type":"disabled"}}"#,
        );
        assert_eq!(i.prompt, "be nice\nhi");
        assert!(!i.stream);
        assert_eq!(
            i.thinking,
            Some(Thinking {
                kind: "disabled".into(),
                budget_tokens: None
            })
        );
        assert!(!i.thinking.as_ref().is_some_and(Thinking::is_enabled));
    }

    const CHAT: &str = r#"{
      "model": "gpt-4o",
      "messages": [
        {"role": "developer", "content": "You are terse."},
        {"role": "user", "content": [
          {"type": "text", "text": "Describe this image"},
          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
        ]},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "result text"}
      ],
      "max_tokens": 100,
      "max_completion_tokens": 300,
      "reasoning_effort": "high",
      "stream": true,
      "stream_options": {"include_usage": true}
    }"#;

    #[test]
    fn chat_body() {
        let i = parsed(ApiKind::OpenAiChat, CHAT);
        assert_eq!(i.model.as_deref(), Some("gpt-4o"));
        assert_eq!(i.max_output_tokens, Some(300));
        assert!(i.stream);
        assert_eq!(i.reasoning_effort.as_deref(), Some("high"));
        assert_eq!(i.thinking, None);
        assert_eq!(i.prompt, "You are terse.\nDescribe this image\nresult text");
        // Legacy max_tokens alone.
        let i = parsed(
            ApiKind::OpenAiChat,
            r#"{"model":"m","max_tokens":77,"messages":[]}"#,
        );
        assert_eq!(i.max_output_tokens, Some(77));
        // Anthropic's field names mean nothing to chat.
        let i = parsed(
            ApiKind::OpenAiChat,
            r#"{"system":"x","thinking":{"type":"enabled"},"max_output_tokens":5}"#,
        );
        assert_eq!(i, RequestInfo::default());
    }

    const RESPONSES: &str = r#"{
      "model": "o4-mini",
      "instructions": "Talk like a pirate.",
      "input": [
        {"role": "user", "content": "Are semicolons optional in JavaScript?"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Arr, mostly."}]},
        {"type": "message", "role": "user", "content": [
          {"type": "input_text", "text": "Why?"},
          {"type": "input_image", "image_url": "https://example.com/x.png"}
        ]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "42"}
      ],
      "reasoning": {"effort": "low", "summary": "auto"},
      "max_output_tokens": 500,
      "text": {"format": {"type": "text"}}
    }"#;

    #[test]
    fn responses_body() {
        let i = parsed(ApiKind::OpenAiResponses, RESPONSES);
        assert_eq!(i.model.as_deref(), Some("o4-mini"));
        assert_eq!(i.max_output_tokens, Some(500));
        assert!(!i.stream);
        assert_eq!(i.reasoning_effort.as_deref(), Some("low"));
        assert_eq!(
            i.prompt,
            "Talk like a pirate.\nAre semicolons optional in JavaScript?\nArr, mostly.\nWhy?\n42"
        );
        let i = parsed(
            ApiKind::OpenAiResponses,
            r#"{"input":"Tell me a joke","stream":true,"reasoning":{"summary":"auto"}}"#,
        );
        assert_eq!(i.prompt, "Tell me a joke");
        assert!(i.stream);
        assert_eq!(i.reasoning_effort, None);
    }

    #[test]
    fn other_reads_union() {
        let i = parsed(
            ApiKind::Other,
            r#"{"model":"x","max_tokens":9,"input":"a","system":"s","reasoning_effort":"low"}"#,
        );
        assert_eq!(i.max_output_tokens, Some(9));
        assert_eq!(i.prompt, "s\na");
        assert_eq!(i.reasoning_effort.as_deref(), Some("low"));
    }

    #[test]
    fn not_json() {
        for body in [
            &b""[..],
            b"   ",
            b"garbage",
            b"[1,2,3]",
            b"\"str\"",
            b"42",
            b"null",
            b"{\"model\":",
            b"{\"model\":\"x\"} trailing",
            b"{\"a\":1,}",
            b"\xef\xbb\xbf{}",
            b"{\"model\":\"\xff\xfe\"}",
        ] {
            assert_eq!(
                inspect(ApiKind::Anthropic, body),
                Inspection::NotJson { len: body.len() },
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let deep = format!("{{\"messages\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            inspect(ApiKind::Anthropic, deep.as_bytes()),
            Inspection::NotJson { len: deep.len() }
        );
        assert_eq!(parsed(ApiKind::Anthropic, "{}"), RequestInfo::default());
    }

    #[test]
    fn number_limits_and_wrong_types() {
        let max = |kind, body: &str| parsed(kind, body).max_output_tokens;
        let a = ApiKind::Anthropic;
        assert_eq!(max(a, r#"{"max_tokens":4294967295}"#), Some(u32::MAX));
        assert_eq!(max(a, r#"{"max_tokens":4294967296}"#), Some(u32::MAX));
        assert_eq!(
            max(a, r#"{"max_tokens":18446744073709551615}"#),
            Some(u32::MAX)
        );
        assert_eq!(
            max(a, r#"{"max_tokens":99999999999999999999999}"#),
            Some(u32::MAX)
        );
        assert_eq!(max(a, r#"{"max_tokens":1e30}"#), Some(u32::MAX));
        assert_eq!(max(a, r#"{"max_tokens":1024.0}"#), Some(1024));
        assert_eq!(max(a, r#"{"max_tokens":0}"#), Some(0));
        assert_eq!(max(a, r#"{"max_tokens":-1}"#), None);
        assert_eq!(max(a, r#"{"max_tokens":-9223372036854775808}"#), None);
        assert_eq!(max(a, r#"{"max_tokens":1.5}"#), None);
        assert_eq!(max(a, r#"{"max_tokens":"100"}"#), None);
        assert_eq!(max(a, r#"{"max_tokens":null}"#), None);
        assert_eq!(max(a, r#"{"max_tokens":[1]}"#), None);
        assert_eq!(max(a, r#"{"max_tokens":{"a":1}}"#), None);
        // 1e400 is not a valid f64: serde_json rejects the body.
        assert_eq!(
            inspect(a, br#"{"max_tokens":1e400}"#),
            Inspection::NotJson { len: 20 }
        );
        let i = parsed(
            a,
            r#"{"model":5,"stream":"yes","thinking":"on","system":{"text":"obj"},
                "messages":[7,null,true,"bare",[{"text":"nested"}],{"content":{"text":"inner"}}]}"#,
        );
        assert_eq!(i.model, None);
        assert!(!i.stream);
        assert_eq!(i.thinking, None);
        assert_eq!(i.prompt, "obj\nbare\nnested\ninner");
        let i = parsed(a, r#"{"thinking":{"type":"enabled","budget_tokens":-5}}"#);
        assert_eq!(
            i.thinking,
            Some(Thinking {
                kind: "enabled".into(),
                budget_tokens: None
            })
        );
        let i = parsed(a, r#"{"thinking":{"budget_tokens":1e12,"type":3}}"#);
        assert_eq!(
            i.thinking,
            Some(Thinking {
                kind: String::new(),
                budget_tokens: Some(u32::MAX)
            })
        );
        // Escaped keys and values still match.
        let i = parsed(a, r#"{"mod\u0065l":"cl\u00e9","max_tokens":3}"#);
        assert_eq!(i.model.as_deref(), Some("clé"));
    }

    #[test]
    fn degrade_anthropic() {
        let out = rewrite_degrade(ApiKind::Anthropic, ANTHROPIC.as_bytes(), 256);
        let v: Value = serde_json::from_slice(&out.unwrap_or_default()).unwrap_or(Value::Null);
        assert_eq!(v["max_tokens"], 256);
        assert!(v.get("thinking").is_none());
        assert_eq!(v["model"], "claude-sonnet-4-5");
        assert_eq!(v["stream"], true);
        assert_eq!(v["messages"].as_array().map(Vec::len), Some(3));
        let keys: Vec<&str> = v
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            [
                "model",
                "max_tokens",
                "system",
                "stream",
                "tools",
                "messages"
            ]
        );
        // Re-inspection agrees.
        let body =
            rewrite_degrade(ApiKind::Anthropic, ANTHROPIC.as_bytes(), 256).unwrap_or_default();
        let i = parsed(ApiKind::Anthropic, std::str::from_utf8(&body).unwrap_or(""));
        assert_eq!(i.max_output_tokens, Some(256));
        assert_eq!(i.thinking, None);
        // Lower limits stay; missing / invalid ones become the cap.
        let get = |body: &str, cap| -> Value {
            let out = rewrite_degrade(ApiKind::Anthropic, body.as_bytes(), cap).unwrap_or_default();
            serde_json::from_slice(&out).unwrap_or(Value::Null)
        };
        assert_eq!(get(r#"{"max_tokens":100}"#, 256)["max_tokens"], 100);
        assert_eq!(get(r#"{"model":"m"}"#, 256)["max_tokens"], 256);
        assert_eq!(get(r#"{"max_tokens":-3}"#, 256)["max_tokens"], 256);
        assert_eq!(get(r#"{"max_tokens":"x"}"#, 256)["max_tokens"], 256);
        assert_eq!(get(r#"{"max_tokens":1e30}"#, 256)["max_tokens"], 256);
        assert_eq!(get(r#"{"max_tokens":100}"#, 0)["max_tokens"], 1);
    }

    #[test]
    fn degrade_openai() {
        let out = rewrite_degrade(ApiKind::OpenAiChat, CHAT.as_bytes(), 50).unwrap_or_default();
        let v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
        assert_eq!(v["max_completion_tokens"], 50);
        assert_eq!(v["max_tokens"], 50);
        assert!(v.get("reasoning_effort").is_none());
        assert_eq!(v["stream_options"]["include_usage"], true);
        let out = rewrite_degrade(ApiKind::OpenAiChat, br#"{"model":"m","messages":[]}"#, 64)
            .unwrap_or_default();
        assert_eq!(
            std::str::from_utf8(&out).unwrap_or(""),
            r#"{"model":"m","messages":[],"max_completion_tokens":64}"#
        );
        let out =
            rewrite_degrade(ApiKind::OpenAiChat, br#"{"max_tokens":10}"#, 64).unwrap_or_default();
        assert_eq!(
            std::str::from_utf8(&out).unwrap_or(""),
            r#"{"max_tokens":10}"#
        );

        let out = rewrite_degrade(ApiKind::OpenAiResponses, RESPONSES.as_bytes(), 100)
            .unwrap_or_default();
        let v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
        assert_eq!(v["max_output_tokens"], 100);
        assert!(v.get("reasoning").is_none());
        assert_eq!(v["text"]["format"]["type"], "text");
        let out =
            rewrite_degrade(ApiKind::OpenAiResponses, br#"{"input":"x"}"#, 7).unwrap_or_default();
        assert_eq!(
            std::str::from_utf8(&out).unwrap_or(""),
            r#"{"input":"x","max_output_tokens":7}"#
        );
        let out =
            rewrite_degrade(ApiKind::Other, br#"{"a":1,"max_tokens":90}"#, 7).unwrap_or_default();
        assert_eq!(
            std::str::from_utf8(&out).unwrap_or(""),
            r#"{"a":1,"max_tokens":7}"#
        );
        let out = rewrite_degrade(ApiKind::Other, br#"{"a":1}"#, 7).unwrap_or_default();
        assert_eq!(std::str::from_utf8(&out).unwrap_or(""), r#"{"a":1}"#);
    }

    /// Found by the `request_inspect` fuzz target: an unread member nested
    /// past serde_json's limit made the body `Parsed` (its `max_tokens`
    /// read) while `rewrite_degrade` could not parse it, so a degraded
    /// request went upstream unchanged. Lone surrogates, invalid UTF-8 and
    /// out-of-range numbers in unread members did the same.
    #[test]
    fn unread_members_are_checked_as_the_rewrite_checks_them() {
        let deep = format!(
            r#"{{"model":"m","max_tokens":100000,"metadata":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        // The fuzzer's reproducer: an Anthropic body of 130 nested objects.
        let fuzzed = format!("{}1{}", r#"{"a":"#.repeat(130), "}".repeat(130));
        let bodies: [&[u8]; 5] = [
            fuzzed.as_bytes(),
            deep.as_bytes(),
            br#"{"model":"m","max_tokens":100000,"metadata":"\ud800"}"#,
            b"{\"model\":\"m\",\"max_tokens\":100000,\"metadata\":\"\xff\"}",
            br#"{"model":"m","max_tokens":100000,"metadata":1e400}"#,
        ];
        for body in bodies {
            for kind in [
                ApiKind::Anthropic,
                ApiKind::OpenAiChat,
                ApiKind::OpenAiResponses,
                ApiKind::Other,
            ] {
                assert_eq!(
                    inspect(kind, body),
                    Inspection::NotJson { len: body.len() },
                    "{kind:?} {}",
                    String::from_utf8_lossy(body)
                );
                assert_eq!(rewrite_degrade(kind, body, 16), None);
            }
        }
        // Within the limit, an unread member is still skipped.
        let ok = format!(
            r#"{{"max_tokens":9,"metadata":{}{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert_eq!(parsed(ApiKind::Anthropic, &ok).max_output_tokens, Some(9));
        assert!(rewrite_degrade(ApiKind::Anthropic, ok.as_bytes(), 4).is_some());
    }

    #[test]
    fn degrade_rejects_non_objects() {
        for body in [&b"[]"[..], b"1", b"garbage", b"", b"{\"a\":"] {
            assert_eq!(rewrite_degrade(ApiKind::Anthropic, body, 10), None);
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            for kind in [ApiKind::Anthropic, ApiKind::OpenAiChat, ApiKind::OpenAiResponses, ApiKind::Other] {
                let _ = inspect(kind, &body);
                let _ = rewrite_degrade(kind, &body, 10);
            }
        }

        #[test]
        fn never_panics_on_json_like(body in "[\\[\\]{}\":,a-z0-9 .e\\-\\\\]{0,300}") {
            for kind in [ApiKind::Anthropic, ApiKind::OpenAiChat, ApiKind::OpenAiResponses, ApiKind::Other] {
                let _ = inspect(kind, body.as_bytes());
                if let Some(out) = rewrite_degrade(kind, body.as_bytes(), 10) {
                    prop_assert!(matches!(inspect(kind, &out), Inspection::Parsed(_)));
                }
            }
        }

        #[test]
        fn prompt_roundtrip(texts in proptest::collection::vec("\\PC{1,40}", 1..6), max in any::<u64>()) {
            let messages: Vec<Value> = texts
                .iter()
                .map(|t| serde_json::json!({"role": "user", "content": [{"type": "text", "text": t}]}))
                .collect();
            let body = serde_json::json!({"model": "m", "max_tokens": max, "messages": messages});
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            let Inspection::Parsed(i) = inspect(ApiKind::Anthropic, &bytes) else {
                return Err(TestCaseError::fail("not parsed"));
            };
            prop_assert_eq!(i.max_output_tokens, Some(u32::try_from(max).unwrap_or(u32::MAX)));
            let want: Vec<&str> = texts.iter().map(String::as_str).collect();
            prop_assert_eq!(i.prompt, want.join("\n"));
            let out = rewrite_degrade(ApiKind::Anthropic, &bytes, 1000).unwrap_or_default();
            let Inspection::Parsed(j) = inspect(ApiKind::Anthropic, &out) else {
                return Err(TestCaseError::fail("rewrite not parsed"));
            };
            prop_assert_eq!(j.max_output_tokens, Some(u32::try_from(max.min(1000)).unwrap_or(1000)));
        }
    }
}
