//! The budget of one chat-template render: instructions (minijinja's fuel), the length of the rendered text, the
//! size of any one value the template builds and the bytes it builds in all, each sized from the conversation.
//!
//! A template comes from a file the user downloaded, so it may loop for ever, double a string until memory runs
//! out or write gigabytes. The limits make every render end, deterministically, with an error naming the limit:
//!
//! - **fuel**: `200,000 + 100 x` instructions for a conversation of `x` bytes of text (roles and contents), lowered
//!   to `256 MiB / L` for a template whose longest literal text is `L` bytes (literal text written inside a
//!   `{% set %}` block or a macro is kept in memory without passing through the checks below);
//! - **output**: `64 KiB + 16 x` bytes of rendered text; the writer stops at the limit, so the text never grows
//!   past it;
//! - **value**: no value the template builds (a string, a list, a map, counted with everything it holds) may be
//!   larger than the output limit; every `~`, `+`, `*`, list or map literal, filter, function and method result is
//!   checked, and the filters whose result can be much larger than their input (`replace`, `join`, `indent`,
//!   `format`, `tojson`, `batch`, `slice`) are checked before they run;
//! - **built**: the bytes of all those values and of everything written add up to at most 16 times the output
//!   limit.
//!
//! Every limit is multiplied by the scale the caller gives ([`super::ChatTemplate::scale_limits`]).
//! Real templates use a small fraction of each (see docs/datasets.md for the figures).

use std::cell::RefCell;
use std::io;
use std::sync::Mutex;

use minijinja::value::{Rest, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, State};

use super::template_guard::CHECKED;

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
/// The check on a namespace attribute's new value (it must not hold the namespace, which would make a cycle).
pub(super) const ATTR: &str = "__trainer_checked_attr";

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

fn over(what: Exceeded) -> JinjaError {
    METER.with(|m| {
        if let Some(m) = m.borrow_mut().as_mut() {
            m.exceeded.get_or_insert(what);
        }
    });
    JinjaError::new(ErrorKind::InvalidOperation, "render limit exceeded")
}

/// The value limit of the running render (0 outside a render: everything is refused).
fn value_limit() -> usize {
    METER.with(|m| m.borrow().as_ref().map_or(0, |m| m.value))
}

/// Refuses `bytes` over the value limit and adds them to the bytes built.
fn admit(bytes: usize) -> Result<(), JinjaError> {
    meter(bytes, true)
}

/// Adds `bytes` to the bytes built; `one_value`: they are one new value, refused over the value limit.
fn meter(bytes: usize, one_value: bool) -> Result<(), JinjaError> {
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
fn size_within(v: &Value, limit: usize, avoid: Option<&Value>) -> Option<usize> {
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
fn check_made(v: &Value) -> Result<(), JinjaError> {
    let limit = value_limit();
    match size_within(v, limit, None) {
        Some(n) => admit(n),
        None => Err(over(Exceeded::Value(None))),
    }
}

/// The size of an argument as text (its length for a string, its size otherwise; `usize::MAX` when over the
/// value limit, so that the walk stays short).
fn text_size(v: &Value) -> usize {
    v.as_str().map_or_else(
        || size_within(v, value_limit(), None).unwrap_or(usize::MAX),
        str::len,
    )
}

fn kwarg(args: &[Value], name: &str) -> Option<Value> {
    args.last()
        .filter(|v| v.is_kwargs())
        .and_then(|k| k.get_attr(name).ok())
        .filter(|v| !v.is_undefined())
}

/// Positional argument `i`, or keyword `name`.
fn arg(args: &[Value], i: usize, name: &str) -> Option<Value> {
    args.get(i)
        .filter(|v| !v.is_kwargs())
        .cloned()
        .or_else(|| kwarg(args, name))
}

fn as_count(v: Option<Value>) -> Option<usize> {
    v.and_then(|v| v.as_i64())
        .map(|n| usize::try_from(n).unwrap_or(0))
}

/// The largest number written in a format string (a width or precision): each placeholder may pad to it.
fn widest(fmt: &str) -> usize {
    fmt.split(|c: char| !c.is_ascii_digit())
        .map(|d| d.parse::<usize>().unwrap_or(usize::MAX))
        .max()
        .unwrap_or(0)
}

/// How large the result of a filter (or string method) may be, estimated before it runs from its arguments
/// (`args[0]` is the filtered value or the string the method is called on), for those whose result can be much
/// larger than their input.
#[derive(Clone, Copy)]
enum Grows {
    /// Only checked after it ran (at most a few times its input, already within limits).
    No,
    /// `replace(old, new, count)`: every occurrence of `old` becomes `new`.
    Replace,
    /// `join(separator)` on a list (filter) / `separator.join(list)` (method).
    Join,
    /// The `join` method: `separator.join(list)`.
    JoinMethod,
    /// `indent(width)`: `width` spaces per line.
    Indent,
    /// `format(...)`: placeholders padded to the widths the format string names.
    Format,
    /// `tojson(indent)`: `indent` spaces per nesting level on every line.
    ToJson,
    /// `batch(count, fill)` / `slice(count, fill)`: `count` slots.
    Count,
}

fn estimate(how: Grows, args: &[Value]) -> usize {
    let first = args.first().map_or(0, text_size);
    match how {
        Grows::No => 0,
        Grows::Replace => {
            let (Some(s), Some(old), Some(new)) = (
                args.first().and_then(Value::as_str),
                args.get(1).and_then(Value::as_str),
                args.get(2).and_then(Value::as_str),
            ) else {
                return first;
            };
            let mut n = if old.is_empty() {
                s.chars().count() + 1
            } else {
                s.matches(old).count()
            };
            if let Some(c) = as_count(arg(args, 3, "count")) {
                n = n.min(c);
            }
            s.len().saturating_add(n.saturating_mul(new.len()))
        }
        Grows::Join | Grows::JoinMethod => {
            let (list, sep) = match how {
                Grows::Join => (args.first(), arg(args, 1, "d")),
                _ => (args.get(1), args.first().cloned()),
            };
            let sep = sep.as_ref().map_or(0, text_size);
            let items = list
                .and_then(|l| l.try_iter().ok())
                .map_or(0, |it| it.take(value_limit() / 16 + 1).count());
            list.map_or(0, text_size)
                .saturating_add(items.saturating_mul(sep))
        }
        Grows::Indent => {
            let width = as_count(arg(args, 1, "width")).unwrap_or(4);
            let lines = args
                .first()
                .and_then(Value::as_str)
                .map_or(1, |s| s.matches('\n').count() + 1);
            first.saturating_add(lines.saturating_mul(width))
        }
        Grows::Format => {
            let fmt = args.first().and_then(Value::as_str).unwrap_or("");
            let slots = fmt.matches(['%', '{']).count() + 1;
            let rest: usize = args[1.min(args.len())..].iter().map(text_size).sum();
            first
                .saturating_add(rest)
                .saturating_add(widest(fmt).saturating_mul(slots))
        }
        Grows::ToJson => {
            let indent = as_count(arg(args, 1, "indent")).unwrap_or(0);
            first.saturating_mul(indent.saturating_add(2).saturating_mul(4))
        }
        Grows::Count => {
            let count = as_count(arg(args, 1, "count")).unwrap_or(0);
            let fill = arg(args, 2, "fill_with").as_ref().map_or(0, text_size);
            first.saturating_add(count.saturating_mul(fill.saturating_add(16)))
        }
    }
}

/// Runs a builtin with its estimate checked first and its result checked after.
fn guarded(
    how: Grows,
    args: &[Value],
    run: impl FnOnce() -> Result<Value, JinjaError>,
) -> Result<Value, JinjaError> {
    // A filter or method works through its string arguments: that work counts as built, so that a loop cannot
    // scan a large string without end (within the fuel) at no cost.
    meter(
        args.iter().filter_map(Value::as_str).map(str::len).sum(),
        false,
    )?;
    if !matches!(how, Grows::No) {
        let est = estimate(how, args);
        if est > value_limit() {
            return Err(over(Exceeded::Value(Some(est))));
        }
    }
    let v = run()?;
    check_made(&v)?;
    Ok(v)
}

/// Replaces minijinja's builtin filters, functions and Python methods with checked ones, and installs the
/// formatter and the check functions the guard's rewrite calls.
pub(super) fn install(env: &mut Environment<'static>) {
    use minijinja::filters as f;
    let filters: Vec<(&str, Value, Grows)> = vec![
        ("safe", Value::from_function(f::safe), Grows::No),
        ("escape", Value::from_function(f::escape), Grows::No),
        ("e", Value::from_function(f::escape), Grows::No),
        ("lower", Value::from_function(f::lower), Grows::No),
        ("upper", Value::from_function(f::upper), Grows::No),
        ("title", Value::from_function(f::title), Grows::No),
        ("capitalize", Value::from_function(f::capitalize), Grows::No),
        ("replace", Value::from_function(f::replace), Grows::Replace),
        ("length", Value::from_function(f::length), Grows::No),
        ("count", Value::from_function(f::length), Grows::No),
        ("dictsort", Value::from_function(f::dictsort), Grows::No),
        ("items", Value::from_function(f::items), Grows::No),
        ("reverse", Value::from_function(f::reverse), Grows::No),
        ("trim", Value::from_function(f::trim), Grows::No),
        ("join", Value::from_function(f::join), Grows::Join),
        ("split", Value::from_function(f::split), Grows::No),
        ("lines", Value::from_function(f::lines), Grows::No),
        ("default", Value::from_function(f::default), Grows::No),
        ("d", Value::from_function(f::default), Grows::No),
        ("round", Value::from_function(f::round), Grows::No),
        ("abs", Value::from_function(f::abs), Grows::No),
        ("int", Value::from_function(f::int), Grows::No),
        ("float", Value::from_function(f::float), Grows::No),
        ("attr", Value::from_function(f::attr), Grows::No),
        ("first", Value::from_function(f::first), Grows::No),
        ("last", Value::from_function(f::last), Grows::No),
        ("min", Value::from_function(f::min), Grows::No),
        ("max", Value::from_function(f::max), Grows::No),
        ("sort", Value::from_function(f::sort), Grows::No),
        ("list", Value::from_function(f::list), Grows::No),
        ("string", Value::from_function(f::string), Grows::No),
        ("bool", Value::from_function(f::bool), Grows::No),
        ("batch", Value::from_function(f::batch), Grows::Count),
        ("slice", Value::from_function(f::slice), Grows::Count),
        ("sum", Value::from_function(f::sum), Grows::No),
        ("indent", Value::from_function(f::indent), Grows::Indent),
        ("select", Value::from_function(f::select), Grows::No),
        ("reject", Value::from_function(f::reject), Grows::No),
        ("selectattr", Value::from_function(f::selectattr), Grows::No),
        ("rejectattr", Value::from_function(f::rejectattr), Grows::No),
        ("map", Value::from_function(f::map), Grows::No),
        ("groupby", Value::from_function(f::groupby), Grows::No),
        ("unique", Value::from_function(f::unique), Grows::No),
        ("chain", Value::from_function(f::chain), Grows::No),
        ("zip", Value::from_function(f::zip), Grows::No),
        ("pprint", Value::from_function(f::pprint), Grows::No),
        ("format", Value::from_function(f::format), Grows::Format),
        ("tojson", Value::from_function(f::tojson), Grows::ToJson),
    ];
    for (name, builtin, how) in filters {
        env.add_filter(name, move |state: &State, args: Rest<Value>| {
            guarded(how, &args, || builtin.call(state, &args))
        });
    }
    use minijinja::functions as g;
    let functions = [
        ("range", Value::from_function(g::range)),
        ("dict", Value::from_function(g::dict)),
        ("namespace", Value::from_function(g::namespace)),
        ("debug", Value::from_function(g::debug)),
    ];
    for (name, builtin) in functions {
        env.add_function(name, move |state: &State, args: Rest<Value>| {
            guarded(Grows::No, &args, || builtin.call(state, &args))
        });
    }
    env.set_unknown_method_callback(|state, value, method, args| {
        let how = match method {
            "replace" => Grows::Replace,
            "join" => Grows::JoinMethod,
            "format" => Grows::Format,
            _ => Grows::No,
        };
        let mut all = Vec::with_capacity(args.len() + 1);
        all.push(value.clone());
        all.extend_from_slice(args);
        guarded(how, &all, || {
            minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
        })
    });
    env.add_function(CHECKED, |v: Value| -> Result<Value, JinjaError> {
        check_made(&v)?;
        Ok(v)
    });
    env.add_function(
        ATTR,
        |target: Value, v: Value| -> Result<Value, JinjaError> {
            let limit = value_limit();
            if size_within(&v, limit, None).is_none() {
                return Err(over(Exceeded::Value(None)));
            }
            if size_within(&v, limit, Some(&target)).is_none() {
                return Err(over(Exceeded::Cycle));
            }
            Ok(v)
        },
    );
    env.set_formatter(|out, state, value| {
        check_made(value)?;
        minijinja::escape_formatter(out, state, value)
    });
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
