//! The builtins a chat template calls, replaced by checked ones: every filter, function and Python method result
//! is checked against the render's value limit and counted as built (`render_budget.rs`), and the few whose one
//! call can build much more than they are given (`replace`, `join`, `indent`, `format`, `tojson`, `batch`,
//! `slice`; the `replace`, `join` and `format` methods) are refused before they run when their estimated result
//! is over the limit (minijinja would otherwise abort the process asking for `indent(99999999999)` spaces).
//! Also the formatter (every value written, inside a block or a macro too) and the two check functions the
//! guard's rewrite calls (`template_guard.rs`).

use minijinja::value::{Rest, Value};
use minijinja::{Environment, Error as JinjaError, State};

use super::render_budget::{check_made, meter, over, size_within, value_limit, Exceeded};
use super::template_guard::CHECKED;

/// The check on a namespace attribute's new value (it must not hold the namespace, which would make a cycle).
pub(super) const ATTR: &str = "__trainer_checked_attr";

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
