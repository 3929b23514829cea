//! The budget of one chat-template render: instructions (minijinja's fuel), the length of the rendered text, the
//! size of any one value the template builds and the bytes it builds in all, each sized from the conversation.
//!
//! A template comes from a file the user downloaded, so it may loop for ever, double a string until memory runs
//! out or write gigabytes. The limits make every render end, deterministically, with an error naming the limit:
//!
//! - **fuel**: `100,000 + 50 x` instructions for a conversation of `x` bytes of text (roles and contents, plus
//!   [`RenderLimits::PER_MESSAGE`] per message), lowered
//!   to `256 MiB / L` for a template whose longest literal text is `L` bytes (literal text written inside a
//!   `{% set %}` block or a macro is kept in memory without passing through the checks below);
//! - **output**: `64 KiB + 16 x` bytes of rendered text; the writer stops at the limit, so the text never grows
//!   past it;
//! - **value**: no value the template builds (a string, a list, a map, counted with everything it holds) may be
//!   larger than the output limit; every `~`, `+`, `*`, list or map literal, filter, function and method result is
//!   checked, and the filters whose result can be much larger than their input (`replace`, `join`, `indent`,
//!   `format`, `tojson`, `batch`, `slice`) are checked before they run (`render_filters.rs`);
//! - **built**: the bytes of all those values, of everything written and of the strings passed to filters and
//!   methods (whose work is linear in them) add up to at most 16 times the output limit.
//!
//! Every limit is multiplied by the scale the caller gives ([`super::ChatTemplate::scale_limits`]).
//! Real templates use a small fraction of each (see docs/datasets.md for the figures).

use std::cell::RefCell;
use std::io;
use std::sync::Mutex;

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};

/// Fuel for an empty conversation.
const FUEL_BASE: u64 = 100_000;
/// Fuel per byte of conversation text.
const FUEL_PER_BYTE: u64 = 50;
/// What literal text may add to captured blocks in one render: the fuel is at most this over the longest literal.
const CAPTURE_BYTES: u64 = 256 << 20;
/// Output for an empty conversation.
const OUTPUT_BASE: usize = 64 << 10;
/// Output per byte of conversation text.
const OUTPUT_PER_BYTE: usize = 16;
/// Bytes built in all, per byte of the output limit.
const BUILT_PER_OUTPUT: usize = 16;
/// Nesting deeper than this is refused (no real value nests so; a value that holds itself would nest without end).
const MAX_DEPTH: u32 = 64;

/// The limits of one render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderLimits {
    /// Instructions (minijinja fuel).
    pub fuel: u64,
    /// Whether the fuel was lowered for the template's longest literal text.
    pub fuel_for_literal: bool,
    /// Bytes of rendered text, and of any one value.
    pub output: usize,
    /// Bytes built and written in all.
    pub built: usize,
}

impl RenderLimits {
    /// The bytes every message counts for besides its role and content (templates write a header and an
    /// end-of-turn marker around each).
    pub const PER_MESSAGE: usize = 64;

    /// The limits for a conversation of `text_bytes` bytes rendered by a template whose longest literal text is
    /// `longest_literal` bytes, each multiplied by `scale` (at least 1).
    pub fn new(text_bytes: usize, longest_literal: usize, scale: u64) -> Self {
        let scale = scale.max(1);
        let x = text_bytes as u64;
        let fuel = FUEL_PER_BYTE
            .saturating_mul(x)
            .saturating_add(FUEL_BASE)
            .saturating_mul(scale);
        let literal_fuel = CAPTURE_BYTES.saturating_mul(scale) / (longest_literal.max(1) as u64);
        let output = OUTPUT_PER_BYTE
            .saturating_mul(text_bytes)
            .saturating_add(OUTPUT_BASE)
            .saturating_mul(usize::try_from(scale).unwrap_or(usize::MAX));
        Self {
            fuel: fuel.min(literal_fuel),
            fuel_for_literal: literal_fuel < fuel,
            output,
            built: output.saturating_mul(BUILT_PER_OUTPUT),
        }
    }
}

/// Which limit a render ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exceeded {
    /// Out of fuel.
    Fuel,
    /// The rendered text reached the output limit.
    Output,
    /// One value over the value limit: of this many bytes when known (an estimate made before a filter runs),
    /// else only known to be larger (or nested without end).
    Value(Option<usize>),
    /// The bytes built in all.
    Built,
    /// A namespace attribute set to a value holding the namespace (a value without end when written out).
    Cycle,
}

/// Why a render failed.
pub(super) enum Failure {
    /// A limit.
    Exceeded(Exceeded),
    /// Any other template error (a `raise_exception`, an unknown filter, ...).
    Template(JinjaError),
}

struct Meter {
    value: usize,
    built_limit: usize,
    built: usize,
    largest: usize,
    exceeded: Option<Exceeded>,
}

/// What one render used of its limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Usage {
    /// Instructions.
    pub fuel: u64,
    /// Bytes of rendered text.
    pub output: usize,
    /// Bytes built and written in all.
    pub built: usize,
    /// The largest value checked.
    pub largest: usize,
}

thread_local! {
    /// The meter of the render running on this thread (renders never nest and never leave their thread).
    static METER: RefCell<Option<Meter>> = const { RefCell::new(None) };
}

pub(super) fn over(what: Exceeded) -> JinjaError {
    METER.with(|m| {
        if let Some(m) = m.borrow_mut().as_mut() {
            m.exceeded.get_or_insert(what);
        }
    });
    JinjaError::new(ErrorKind::InvalidOperation, "render limit exceeded")
}

/// The value limit of the running render (0 outside a render: everything is refused).
pub(super) fn value_limit() -> usize {
    METER.with(|m| m.borrow().as_ref().map_or(0, |m| m.value))
}

/// Refuses `bytes` over the value limit and adds them to the bytes built.
pub(super) fn admit(bytes: usize) -> Result<(), JinjaError> {
    meter(bytes, true)
}

/// Adds `bytes` to the bytes built; `one_value`: they are one new value, refused over the value limit.
pub(super) fn meter(bytes: usize, one_value: bool) -> Result<(), JinjaError> {
    let verdict = METER.with(|m| {
        let mut m = m.borrow_mut();
        let Some(m) = m.as_mut() else {
            return Some(Exceeded::Built);
        };
        if one_value && bytes > m.value {
            return Some(Exceeded::Value(Some(bytes)));
        }
        m.largest = m.largest.max(if one_value { bytes } else { 0 });
        m.built = m.built.saturating_add(bytes);
        (m.built > m.built_limit).then_some(Exceeded::Built)
    });
    verdict.map_or(Ok(()), |what| Err(over(what)))
}

/// The bytes `v` stands for, everything it holds included (16 per item, plus strings' lengths), walked no
/// further than `limit`; `None` when larger, nested deeper than [`MAX_DEPTH`] or holding `avoid`.
pub(super) fn size_within(v: &Value, limit: usize, avoid: Option<&Value>) -> Option<usize> {
    fn walk(v: &Value, limit: usize, avoid: Option<&Value>, total: &mut usize, depth: u32) -> bool {
        if let (Some(a), Some(_)) = (avoid, v.as_object()) {
            if minijinja::tests::is_sameas(v, a) {
                return false;
            }
        }
        *total = total.saturating_add(v.as_str().map_or(16, str::len));
        if *total > limit {
            return false;
        }
        if !matches!(
            v.kind(),
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable
        ) {
            return true;
        }
        if depth >= MAX_DEPTH {
            return false;
        }
        let Ok(items) = v.try_iter() else {
            return true;
        };
        let is_map = v.kind() == ValueKind::Map;
        for item in items {
            if !walk(&item, limit, avoid, total, depth + 1) {
                return false;
            }
            if is_map {
                if let Ok(value) = v.get_item(&item) {
                    if !walk(&value, limit, avoid, total, depth + 1) {
                        return false;
                    }
                }
            }
        }
        true
    }
    let mut total = 0;
    walk(v, limit, avoid, &mut total, 0).then_some(total)
}

/// Checks a value the template made: within the value limit, and counted in the bytes built.
pub(super) fn check_made(v: &Value) -> Result<(), JinjaError> {
    let limit = value_limit();
    match size_within(v, limit, None) {
        Some(n) => admit(n),
        None => Err(over(Exceeded::Value(None))),
    }
}

/// The rendered text, refused once it would pass `cap` bytes.
struct CappedWriter {
    text: Vec<u8>,
    cap: usize,
    full: bool,
}

impl io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.text.len().saturating_add(buf.len()) > self.cap {
            self.full = true;
            return Err(io::Error::other("render output limit"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Renders template `name` of `env` with `ctx` within `limits`; also says what the render used.
pub(super) fn render(
    env: &Mutex<Environment<'static>>,
    name: &str,
    ctx: Value,
    limits: &RenderLimits,
) -> (Result<String, Failure>, Usage) {
    let mut env = env.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    env.set_fuel(Some(limits.fuel));
    let t = match env.get_template(name) {
        Ok(t) => t,
        Err(e) => return (Err(Failure::Template(e)), Usage::default()),
    };
    let mut out = CappedWriter {
        text: Vec::new(),
        cap: limits.output,
        full: false,
    };
    let previous = METER.with(|m| {
        m.replace(Some(Meter {
            value: limits.output,
            built_limit: limits.built,
            built: 0,
            largest: 0,
            exceeded: None,
        }))
    });
    let result = t.render_captured_to(ctx, &mut out);
    let fuel = result
        .as_ref()
        .ok()
        .and_then(|c| c.state().fuel_levels())
        .map_or(0, |(used, _)| used);
    let result = result.map(drop);
    let meter = METER.with(|m| m.replace(previous));
    let usage = Usage {
        fuel,
        output: out.text.len(),
        built: meter.as_ref().map_or(0, |m| m.built),
        largest: meter.as_ref().map_or(0, |m| m.largest),
    };
    let exceeded = meter.and_then(|m| m.exceeded);
    let result = match result {
        Ok(()) => String::from_utf8(out.text).map_err(|_| {
            Failure::Template(JinjaError::new(
                ErrorKind::InvalidOperation,
                "the rendered text is not UTF-8",
            ))
        }),
        Err(_) if out.full => Err(Failure::Exceeded(Exceeded::Output)),
        Err(_) if exceeded.is_some() => Err(Failure::Exceeded(exceeded.unwrap_or(Exceeded::Built))),
        Err(e) if out_of_fuel(&e) => Err(Failure::Exceeded(Exceeded::Fuel)),
        Err(e) => Err(Failure::Template(e)),
    };
    (result, usage)
}

fn out_of_fuel(e: &JinjaError) -> bool {
    let mut err: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = err {
        if x.downcast_ref::<JinjaError>()
            .is_some_and(|j| j.kind() == ErrorKind::OutOfFuel)
        {
            return true;
        }
        err = x.source();
    }
    false
}
