//! Chat datasets: `{"messages": [{"role": ..., "content": ...}, ...]}` (or ShareGPT's `conversations`, read in
//! `sharegpt.rs`) rendered with the model's Jinja chat template (minijinja, configured as transformers
//! configures jinja2: `trim_blocks`, `lstrip_blocks`, Python string methods), and the byte spans of the assistant
//! turns in the rendered text.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use minijinja::{context, Environment, ErrorKind};
use serde::Serialize;
use serde_json::{Map, Value};

use super::records::Record;
use super::render_budget::{self, Exceeded, Failure, RenderLimits};
use super::render_filters;
use super::sharegpt;
use super::template_guard;
use crate::error::{Error, Result};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `system`, `user`, `assistant` (or any role the template knows).
    pub role: String,
    /// The text.
    pub content: String,
    /// Whether an assistant message is learned under [`super::TrainOn::Responses`]: false when the record gives it
    /// `"weight": 0`. Other roles are never learned under `Responses`. The template does not see it.
    #[serde(skip)]
    pub learn: bool,
}

impl Message {
    /// A message that is learned when it is an assistant message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            learn: true,
        }
    }
}

/// The key names of one chat record shape.
pub(super) struct Shape {
    /// The record's list of turns.
    pub list: &'static str,
    /// The turn's role key.
    pub role: &'static str,
    /// The turn's text key.
    pub content: &'static str,
    /// How errors name a turn.
    pub turn: &'static str,
}

/// OpenAI-style `messages: [{role, content}]`.
const MESSAGES: Shape = Shape {
    list: "messages",
    role: "role",
    content: "content",
    turn: "message",
};

/// The conversation of a chat record: its `messages`, or its ShareGPT `conversations` with the roles mapped
/// (`human`/`user` -> `user`; `gpt`/`assistant`/`chatgpt`/`bing`/`bard`/`model` -> `assistant`; `system`;
/// `tool`/`function`/`observation` -> `tool`; case-insensitive) after the record's top-level `system` string when
/// it is not blank. A `weight` of 0 on a message or turn clears [`Message::learn`]. Errors name the record and the
/// message or turn: both lists, a missing or non-string role or text, an unknown ShareGPT role, a `weight` other
/// than 0 or 1.
pub fn messages_of(rec: &Record, dataset: &Path) -> Result<Vec<Message>> {
    let err = |m: String| Error::dataset(dataset, format!("{}: {m}", rec.location()));
    match (
        rec.fields.contains_key(MESSAGES.list),
        rec.fields.contains_key(sharegpt::SHAPE.list),
    ) {
        (true, true) => Err(err(
            "has both `messages` and `conversations`: a chat record holds one conversation, keep one of them"
                .into(),
        )),
        (false, true) => sharegpt::messages(rec, &err),
        (true, false) => turns(rec, &MESSAGES, &err)?
            .into_iter()
            .map(|(role, content, learn)| {
                Ok(Message {
                    role,
                    content,
                    learn,
                })
            })
            .collect(),
        (false, false) => Err(err(format!(
            "has no `messages` list nor ShareGPT `conversations` (keys: {}): a chat dataset needs one per record; \
             for instruction data give a format file (--format)",
            rec.keys()
        ))),
    }
}

/// The (role, text, learn) of every turn of `shape`'s list in `rec`, checked: a non-empty list of objects with
/// string role and text, and an optional `weight` of 0 or 1.
pub(super) fn turns(
    rec: &Record,
    shape: &Shape,
    err: &dyn Fn(String) -> Error,
) -> Result<Vec<(String, String, bool)>> {
    let list = match rec.fields.get(shape.list) {
        Some(Value::Array(l)) => l,
        Some(_) => return Err(err(format!("`{}` is not a list", shape.list))),
        None => return Err(err(format!("has no `{}` list", shape.list))),
    };
    if list.is_empty() {
        return Err(err(format!("`{}` is empty", shape.list)));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let what = format!("{} {}", shape.turn, i + 1);
            let Value::Object(m) = m else {
                return Err(err(format!("{what} is not an object")));
            };
            let field = |name: &str| match m.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(err(format!("{what} has a `{name}` that is not a string"))),
                None => Err(err(format!(
                    "{what} has no `{name}` (keys: {}): every {} needs a string `{}` and `{}`",
                    keys(m),
                    shape.turn,
                    shape.role,
                    shape.content
                ))),
            };
            let learn = match m.get("weight").map(|w| (w, w.as_f64())) {
                None | Some((_, Some(1.0))) => true,
                Some((_, Some(0.0))) => false,
                Some((w, _)) => {
                    let todo = "give 0 (do not learn this turn) or 1 (learn it)";
                    return Err(err(format!("{what} has `weight` {w}: {todo}")));
                }
            };
            Ok((field(shape.role)?, field(shape.content)?, learn))
        })
        .collect()
}

fn keys(m: &Map<String, Value>) -> String {
    let mut k: Vec<&str> = m.keys().map(String::as_str).collect();
    k.sort_unstable();
    format!("{{{}}}", k.join(", "))
}

/// A compiled chat template with the special-token strings it may use. Every render runs within limits sized
/// from the conversation (instructions, rendered text, values built; see docs/datasets.md, "Render limits"), so
/// a hostile or broken template ends in an error naming the limit instead of running for ever or exhausting
/// memory.
pub struct ChatTemplate {
    env: Box<Mutex<Environment<'static>>>,
    origin: PathBuf,
    bos_token: String,
    eos_token: String,
    longest_literal: usize,
    scale: u64,
    renders: AtomicUsize,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`. `origin` names where it came from in errors (a file, or the model);
    /// `bos_token` / `eos_token` are the strings the template sees as `bos_token` / `eos_token`.
    pub fn new(source: &str, origin: &Path, bos_token: &str, eos_token: &str) -> Result<Self> {
        let guarded = template_guard::guard(source).map_err(|problem| {
            Error::dataset(
                origin,
                format!("refused chat template: {problem}; give another with --chat-template FILE"),
            )
        })?;
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        render_filters::install(&mut env);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned(NAME, guarded.source).map_err(|e| {
            Error::dataset(origin, format!("not a valid chat template: {}", detail(&e)))
        })?;
        Ok(Self {
            env: Box::new(Mutex::new(env)),
            origin: origin.to_path_buf(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            longest_literal: guarded.longest_literal,
            scale: 1,
            renders: AtomicUsize::new(0),
        })
    }

    /// Multiplies every render limit by `factor` (at least 1), for a real template that needs more than the
    /// defaults.
    pub fn scale_limits(&mut self, factor: u64) {
        self.scale = factor.max(1);
    }

    /// The limits a render of `messages` runs within.
    pub fn limits(&self, messages: &[Message]) -> RenderLimits {
        let text = messages
            .iter()
            .map(|m| RenderLimits::PER_MESSAGE + m.role.len() + m.content.len())
            .sum::<usize>()
            + self.bos_token.len()
            + self.eos_token.len();
        RenderLimits::new(text, self.longest_literal, self.scale)
    }

    /// How many times this template has rendered a conversation (or a prefix of one).
    pub fn renders(&self) -> usize {
        self.renders.load(Ordering::Relaxed)
    }

    /// Renders a conversation, as transformers' `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)` does, within the limits of [`ChatTemplate::limits`].
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.renders.fetch_add(1, Ordering::Relaxed);
        let limits = self.limits(messages);
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        render_budget::render(&self.env, NAME, ctx, &limits)
            .0
            .map_err(|f| match f {
                Failure::Template(e) => Error::dataset(
                    &self.origin,
                    format!("cannot render the chat template: {}", detail(&e)),
                ),
                Failure::Exceeded(what) => Error::dataset(&self.origin, exceeded(what, &limits)),
            })
    }

    /// The rendered conversation and the byte spans of its learned assistant turns (those without `"weight": 0`).
    /// Turn `i` spans from the end of the conversation up to it rendered with the generation prompt, to the end of
    /// the conversation up to and including it rendered without, trailing whitespace excluded: the reply and its
    /// end-of-turn token(s).
    /// Fails when the template does not render prefixes of a conversation as prefixes of its rendering.
    pub fn assistant_spans(&self, messages: &[Message]) -> Result<(String, Vec<Range<usize>>)> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" || !m.learn {
                continue;
            }
            let start = self.render(&messages[..i], true)?;
            let upto = self.render(&messages[..=i], false)?;
            if !(full.starts_with(&upto) && upto.starts_with(&start)) {
                return Err(Error::dataset(
                    &self.origin,
                    format!(
                        "the chat template does not render the conversation up to message {} as a prefix of the \
                         whole conversation, so the assistant turns cannot be located: use --train-on all",
                        i + 1
                    ),
                ));
            }
            let end = start.len() + upto[start.len()..].trim_end().len();
            if end > start.len() {
                spans.push(start.len()..end);
            }
        }
        Ok((full, spans))
    }
}

/// The error of a render that ran into a limit: which, its value, and what to do.
fn exceeded(what: Exceeded, l: &RenderLimits) -> String {
    let did = match what {
        Exceeded::Fuel if l.fuel_for_literal => format!(
            "ran more than {} instructions (lowered for its longest literal text: literal text written into a \
             block is kept in memory unchecked)",
            l.fuel
        ),
        Exceeded::Fuel => format!("ran more than {} instructions", l.fuel),
        Exceeded::Output => format!("wrote more than {} bytes of text", l.output),
        Exceeded::Value(Some(n)) => format!(
            "built a value of {n} bytes, over the limit of {} bytes for one value",
            l.output
        ),
        Exceeded::Value(None) => format!(
            "built a value of more than {} bytes (the limit for one value), or one nested without end",
            l.output
        ),
        Exceeded::Built => format!("built more than {} bytes in all", l.built),
        Exceeded::Cycle => {
            "set a namespace attribute to a value that holds the namespace itself (which has no end when \
             written out)"
                .to_string()
        }
    };
    format!(
        "the chat template {did}, a render limit sized from this conversation: real chat templates stay far \
         below these limits, so this template is broken or hostile; give another with --chat-template FILE, or \
         raise every limit by a factor with the environment variable TRAINER_TEMPLATE_LIMITS (e.g. =4)"
    )
}

#[cfg(test)]
#[path = "chat_limits_tests.rs"]
mod limits_tests;

fn detail(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}\
                          {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    fn msgs(list: &[(&str, &str)]) -> Vec<Message> {
        list.iter().map(|(r, c)| Message::new(*r, *c)).collect()
    }

    #[test]
    fn spans_cover_each_reply_and_its_end_token() {
        let t = ChatTemplate::new(CHATML, Path::new("t.jinja"), "<s>", "</s>").unwrap();
        let m = msgs(&[
            ("user", "Hi"),
            ("assistant", "Hello!"),
            ("user", "Bye"),
            ("assistant", "Bye."),
        ]);
        let (text, spans) = t.assistant_spans(&m).unwrap();
        let parts: Vec<&str> = spans.iter().map(|s| &text[s.clone()]).collect();
        assert_eq!(parts, ["Hello!<|im_end|>", "Bye.<|im_end|>"]);
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}\
                   {{ messages[0]['content'].strip().upper() }}{{ bos_token }}";
        let t = ChatTemplate::new(src, Path::new("t.jinja"), "<s>", "</s>").unwrap();
        assert_eq!(
            t.render(&msgs(&[("user", " hi ")]), false).unwrap(),
            "HI<s>"
        );
        let e = t
            .render(&msgs(&[("system", "x")]), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("first must be user") && e.contains("t.jinja"),
            "{e}"
        );
    }

    #[test]
    fn bad_templates_and_messages_are_named() {
        let e = ChatTemplate::new("{% for %}", Path::new("t.jinja"), "", "").unwrap_err();
        assert!(e.to_string().contains("t.jinja"), "{e}");
        let recs = crate::dataset::records::parse_records(
            "{\"messages\":[{\"role\":\"user\"}]}\n{\"text\":\"x\"}\n",
            Path::new("c.jsonl"),
        )
        .unwrap();
        let e = messages_of(&recs[0], Path::new("c.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("record 1 (line 1): message 1 has no `content`"),
            "{e}"
        );
        let e = messages_of(&recs[1], Path::new("c.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("record 2 (line 2)") && e.contains("--format"),
            "{e}"
        );
    }
}
