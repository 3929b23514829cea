//! What a chat template may do, checked once when it is compiled: its size, the statements it uses, the constants
//! it builds, and every `~`, `+` and `*` wrapped in a call that checks the value it made (see `render_budget.rs`).
//!
//! minijinja bounds instructions (fuel) but not the size of the values one instruction makes: with a string that
//! doubles at every step (`{% set ns.s = ns.s ~ ns.s %}` in a loop of 40 turns) a template exhausts memory in a
//! few dozen instructions, without writing anything. The template is therefore parsed here and rewritten so that
//! the result of every concatenation, addition and repetition goes through [`CHECKED`], which refuses a value
//! over the render's limits. The rewrite only inserts `CHECKED(` before and `)` after each such expression, so
//! the template's lines (and the line numbers in its error messages) are unchanged, and what it renders is the
//! same (tests compare both forms on real templates).

use minijinja::machinery::ast::{self, BinOpKind, CallArg, Expr, Stmt};
use minijinja::machinery::{parse, WhitespaceConfig};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::ValueKind;

use super::render_filters::ATTR;

/// The function every `~`, `+` and `*` is wrapped in. A template that names it is refused: it could redefine it.
pub(super) const CHECKED: &str = "__trainer_checked";
/// The largest template source accepted (real chat templates are a few KiB; the largest known are ~20 KiB).
pub(super) const MAX_SOURCE: usize = 1 << 20;
/// The largest constant a template may build when it is compiled (minijinja folds `'x' * 99999999` into one
/// 100 MB string at compile time, before any render runs).
const MAX_CONSTANT: u128 = 1 << 20;

/// A template ready to compile.
#[derive(Debug)]
pub(super) struct Guarded {
    /// The source with every `~`, `+` and `*` wrapped in [`CHECKED`].
    pub source: String,
    /// The longest literal text of the template (text outside tags, written without passing through the
    /// formatter): each instruction can add at most this much to a captured block.
    pub longest_literal: usize,
}

/// Checks and rewrites a template; the error says what is refused.
pub(super) fn guard(source: &str) -> Result<Guarded, String> {
    if source.len() > MAX_SOURCE {
        return Err(format!(
            "the template is {} bytes; chat templates are at most {MAX_SOURCE} bytes here (real ones are a few KiB)",
            source.len()
        ));
    }
    if source.contains(CHECKED) {
        return Err(format!(
            "the template uses the name `{CHECKED}`, which is reserved for the render limits"
        ));
    }
    let ws = WhitespaceConfig {
        keep_trailing_newline: false,
        lstrip_blocks: true,
        trim_blocks: true,
    };
    // A template that does not parse is left to the compiler, whose error names the line.
    let Ok(tree) = parse(source, "chat_template", SyntaxConfig, ws) else {
        return Ok(Guarded {
            source: source.to_string(),
            longest_literal: 0,
        });
    };
    let mut walk = Walk {
        source,
        wraps: Vec::new(),
        longest_literal: 0,
        problem: None,
    };
    walk.stmt(&tree);
    if let Some(problem) = walk.problem {
        return Err(problem);
    }
    Ok(Guarded {
        source: rewrite(source, &walk.wraps),
        longest_literal: walk.longest_literal,
    })
}

/// Inserts each wrap's opening text at its start and `)` at its end (byte offsets); wraps nest properly: of two
/// starting at one offset the longer (or, for equal spans, the earlier) opens first and closes last.
fn rewrite(source: &str, wraps: &[Wrap]) -> String {
    use std::cmp::Reverse;
    // (offset, closes before opens, ordering among opens / closes, index)
    type Event = (usize, u8, (Reverse<usize>, Reverse<usize>), usize);
    let mut events: Vec<Event> = Vec::new();
    for (i, w) in wraps.iter().enumerate() {
        events.push((w.start, 1, (Reverse(w.end), Reverse(usize::MAX - i)), i));
        events.push((w.end, 0, (Reverse(w.start), Reverse(i)), i));
    }
    events.sort();
    let extra: usize = wraps.iter().map(|w| w.open.len() + 1).sum();
    let mut out = String::with_capacity(source.len() + extra);
    let mut at = 0;
    for (offset, kind, _, i) in events {
        out.push_str(&source[at..offset]);
        at = offset;
        out.push_str(if kind == 1 { &wraps[i].open } else { ")" });
    }
    out.push_str(&source[at..]);
    out
}

/// A span of the source to wrap in a call: `open` (`name(` and any first arguments) before, `)` after.
struct Wrap {
    start: usize,
    end: usize,
    open: String,
}

/// Whether a constant is a number (or bool, none) or something with a size (string, list, map).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Sized,
}

struct Walk<'s> {
    source: &'s str,
    wraps: Vec<Wrap>,
    longest_literal: usize,
    problem: Option<String>,
}

impl Walk<'_> {
    fn wrap(&mut self, span: minijinja::machinery::Span, open: String) {
        self.wraps.push(Wrap {
            start: span.start_offset as usize,
            end: span.end_offset as usize,
            open,
        });
    }

    fn refuse(&mut self, what: String) {
        self.problem.get_or_insert(what);
    }

    fn stmts(&mut self, list: &[Stmt]) {
        for s in list {
            self.stmt(s);
        }
    }

    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::Template(t) => self.stmts(&t.children),
            Stmt::EmitExpr(e) => {
                self.expr(&e.expr);
            }
            Stmt::EmitRaw(r) => self.longest_literal = self.longest_literal.max(r.raw.len()),
            Stmt::ForLoop(f) => {
                self.expr(&f.iter);
                self.opt(f.filter_expr.as_ref());
                self.stmts(&f.body);
                self.stmts(&f.else_body);
            }
            Stmt::IfCond(c) => {
                self.expr(&c.expr);
                self.stmts(&c.true_body);
                self.stmts(&c.false_body);
            }
            Stmt::WithBlock(w) => {
                for (_, value) in &w.assignments {
                    self.expr(value);
                }
                self.stmts(&w.body);
            }
            Stmt::Set(s) => {
                self.expr(&s.expr);
                // A namespace attribute must not come to hold its namespace: a value that holds itself has no
                // end when it is written out.
                if let Expr::GetAttr(target) = &s.target {
                    let (start, end) = extent(&target.expr);
                    let ns = &self.source[start..end];
                    let (start, end) = extent(&s.expr);
                    self.wraps.push(Wrap {
                        start,
                        end,
                        open: format!("{ATTR}({ns}, "),
                    });
                }
            }
            Stmt::SetBlock(s) => {
                self.opt(s.filter.as_ref());
                self.stmts(&s.body);
            }
            Stmt::AutoEscape(a) => {
                self.expr(&a.enabled);
                self.stmts(&a.body);
            }
            Stmt::FilterBlock(f) => {
                self.expr(&f.filter);
                self.stmts(&f.body);
            }
            Stmt::Block(b) => self.stmts(&b.body),
            Stmt::Import(_) | Stmt::FromImport(_) | Stmt::Extends(_) | Stmt::Include(_) => {
                let line = stmt_line(s);
                self.refuse(format!(
                    "line {line} includes, imports or extends a template; a chat template is one file and \
                     cannot (it could only include itself, without end)"
                ));
            }
            Stmt::Macro(m) => self.macro_decl(m),
            Stmt::CallBlock(c) => {
                self.call(&c.call);
                self.macro_decl(&c.macro_decl);
            }
            Stmt::Do(d) => self.call(&d.call),
        }
    }

    fn macro_decl(&mut self, m: &ast::Macro) {
        for e in &m.defaults {
            self.expr(e);
        }
        self.stmts(&m.body);
    }

    fn call(&mut self, c: &ast::Call) {
        self.expr(&c.expr);
        self.args(&c.args);
    }

    fn args(&mut self, args: &[CallArg]) {
        for a in args {
            match a {
                CallArg::Pos(e)
                | CallArg::Kwarg(_, e)
                | CallArg::PosSplat(e)
                | CallArg::KwargSplat(e) => {
                    self.expr(e);
                }
            }
        }
    }

    fn opt(&mut self, e: Option<&Expr>) {
        if let Some(e) = e {
            self.expr(e);
        }
    }

    /// Walks an expression; for a constant one (which minijinja folds when it compiles), returns its size in
    /// bytes (an upper bound) and kind.
    fn expr(&mut self, e: &Expr) -> Option<(u128, Kind)> {
        match e {
            Expr::Var(_) => None,
            Expr::Const(c) => Some(const_size(&c.value)),
            Expr::Slice(s) => {
                self.expr(&s.expr);
                for part in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.expr(part);
                }
                None
            }
            Expr::UnaryOp(u) => self.expr(&u.expr).map(|_| (16, Kind::Number)),
            Expr::BinOp(b) => self.binop(b, e),
            Expr::Compare(c) => {
                let mut all = self.expr(&c.expr).is_some();
                for op in &c.ops {
                    all &= self.expr(&op.expr).is_some();
                }
                all.then_some((16, Kind::Number))
            }
            Expr::IfExpr(i) => {
                self.expr(&i.test_expr);
                self.expr(&i.true_expr);
                self.opt(i.false_expr.as_ref());
                None
            }
            Expr::Filter(f) => {
                self.opt(f.expr.as_ref());
                self.args(&f.args);
                None
            }
            Expr::Test(t) => {
                self.expr(&t.expr);
                self.args(&t.args);
                None
            }
            Expr::GetAttr(g) => {
                self.expr(&g.expr);
                None
            }
            Expr::GetItem(g) => {
                self.expr(&g.expr);
                self.expr(&g.subscript_expr);
                None
            }
            Expr::Call(c) => {
                self.call(c);
                None
            }
            Expr::List(l) => {
                let mut size = 0u128;
                let mut all = true;
                for item in &l.items {
                    match (self.expr(item), item) {
                        (Some((s, _)), Expr::Const(_)) => size += s + 16,
                        _ => all = false,
                    }
                }
                if !all {
                    self.wrap(l.span(), format!("{CHECKED}("));
                }
                all.then_some((size, Kind::Sized))
            }
            Expr::Map(m) => {
                let mut size = 0u128;
                let mut all = true;
                for item in m.keys.iter().chain(&m.values) {
                    match (self.expr(item), item) {
                        (Some((s, _)), Expr::Const(_)) => size += s + 16,
                        _ => all = false,
                    }
                }
                if !all {
                    self.wrap(m.span(), format!("{CHECKED}("));
                }
                all.then_some((size, Kind::Sized))
            }
        }
    }

    fn binop(&mut self, b: &ast::Spanned<ast::BinOp>, whole: &Expr) -> Option<(u128, Kind)> {
        let left = self.expr(&b.left);
        let right = self.expr(&b.right);
        if matches!(b.op, BinOpKind::Add | BinOpKind::Concat | BinOpKind::Mul) {
            self.wrap(b.span(), format!("{CHECKED}("));
        }
        let ((l, lk), (r, rk)) = (left?, right?);
        let folded = match b.op {
            BinOpKind::Concat => (l.max(48) + r.max(48), Kind::Sized),
            BinOpKind::Add if lk == Kind::Sized || rk == Kind::Sized => (l + r, Kind::Sized),
            BinOpKind::Mul if lk != rk => {
                // A string or list repeated: its size times the number, which is a constant of numbers only
                // (cheap to evaluate).
                let (size, count) = if lk == Kind::Sized {
                    (l, &b.right)
                } else {
                    (r, &b.left)
                };
                let n = count
                    .as_const()
                    .and_then(|v| v.as_i64())
                    .and_then(|v| u128::try_from(v).ok())
                    .unwrap_or(0);
                (size.saturating_mul(n), Kind::Sized)
            }
            _ => (16, Kind::Number),
        };
        if folded.0 > MAX_CONSTANT {
            let line = whole.span().start_line;
            self.refuse(format!(
                "line {line} builds a constant of {} bytes when the template is compiled (at most {MAX_CONSTANT})",
                folded.0
            ));
        }
        Some(folded)
    }
}

/// The byte range of an expression's source. A node's own span can start at its postfix operator (`.name`,
/// `(args)`, `|filter`), so the range covers every node of the expression.
fn extent(e: &Expr) -> (usize, usize) {
    let own = e.span();
    let mut range = (own.start_offset as usize, own.end_offset as usize);
    let mut take = |x: &Expr| {
        let (s, t) = extent(x);
        range = (range.0.min(s), range.1.max(t));
    };
    let args = |args: &[CallArg], take: &mut dyn FnMut(&Expr)| {
        for a in args {
            match a {
                CallArg::Pos(x)
                | CallArg::Kwarg(_, x)
                | CallArg::PosSplat(x)
                | CallArg::KwargSplat(x) => take(x),
            }
        }
    };
    match e {
        Expr::Var(_) | Expr::Const(_) => {}
        Expr::Slice(s) => {
            take(&s.expr);
            for p in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                take(p);
            }
        }
        Expr::UnaryOp(u) => take(&u.expr),
        Expr::BinOp(b) => {
            take(&b.left);
            take(&b.right);
        }
        Expr::Compare(c) => {
            take(&c.expr);
            for op in &c.ops {
                take(&op.expr);
            }
        }
        Expr::IfExpr(i) => {
            take(&i.test_expr);
            take(&i.true_expr);
            if let Some(f) = &i.false_expr {
                take(f);
            }
        }
        Expr::Filter(f) => {
            if let Some(x) = &f.expr {
                take(x);
            }
            args(&f.args, &mut take);
        }
        Expr::Test(t) => {
            take(&t.expr);
            args(&t.args, &mut take);
        }
        Expr::GetAttr(g) => take(&g.expr),
        Expr::GetItem(g) => {
            take(&g.expr);
            take(&g.subscript_expr);
        }
        Expr::Call(c) => {
            take(&c.expr);
            args(&c.args, &mut take);
        }
        Expr::List(l) => l.items.iter().for_each(&mut take),
        Expr::Map(m) => m.keys.iter().chain(&m.values).for_each(&mut take),
    }
    range
}

fn const_size(v: &minijinja::Value) -> (u128, Kind) {
    match v.kind() {
        ValueKind::String | ValueKind::Bytes => (v.len().unwrap_or(0) as u128, Kind::Sized),
        ValueKind::Seq | ValueKind::Map => (16 * v.len().unwrap_or(0) as u128, Kind::Sized),
        _ => (16, Kind::Number),
    }
}

fn stmt_line(s: &Stmt) -> u16 {
    match s {
        Stmt::Import(x) => x.span().start_line,
        Stmt::FromImport(x) => x.span().start_line,
        Stmt::Extends(x) => x.span().start_line,
        Stmt::Include(x) => x.span().start_line,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_concatenations_additions_and_repetitions_only() {
        let g = guard("{{ a ~ b ~ c }}{% set x = (y + 1) * 2 %}{{ x - 1 }}{{ f(a ~ (b ~ c)) }}")
            .unwrap();
        let ns =
            guard("{% set ns.s = ns.s.replace('a', ns.s)|trim %}{% set n.x = m.y[1:] %}").unwrap();
        assert_eq!(
            ns.source,
            format!("{{% set ns.s = {ATTR}(ns, ns.s.replace('a', ns.s)|trim) %}}{{% set n.x = {ATTR}(n, m.y[1:]) %}}")
        );
        let c = CHECKED;
        assert_eq!(
            g.source,
            format!(
                "{{{{ {c}({c}(a ~ b) ~ c) }}}}{{% set x = {c}(({c}(y + 1)) * 2) %}}{{{{ x - 1 }}}}\
                 {{{{ f({c}(a ~ ({c}(b ~ c)))) }}}}"
            )
        );
    }

    #[test]
    fn refuses_includes_big_constants_and_the_reserved_name() {
        for (src, needle) in [
            ("{% include 'chat_template' %}", "line 1 includes"),
            ("x\n{% import 'chat_template' as m %}", "line 2"),
            ("{{ 'ab' * 10000000 }}", "constant of 20000000 bytes"),
            ("{{ ('ab' * 1000) * (1000 * 1000) }}", "constant of"),
            ("{{ [1, 2] * 100000000 }}", "constant of"),
            ("{{ __trainer_checked(1) }}", "reserved"),
        ] {
            let e = guard(src).unwrap_err();
            assert!(e.contains(needle), "{src}: {e}");
        }
        let big = "x".repeat(MAX_SOURCE + 1);
        assert!(guard(&big).unwrap_err().contains("bytes"));
        // Small constants and anything not constant pass.
        guard("{{ 'ab' * 1000 }}{{ x * 100000000 }}{{ '-' * n }}").unwrap();
    }

    #[test]
    fn measures_the_longest_literal() {
        let g = guard("abc{% for m in messages %}0123456789{{ m }}{% endfor %}").unwrap();
        assert_eq!(g.longest_literal, 10);
    }
}
