//! Render limits: real templates render exactly as without the guard and far below every limit; template bombs
//! end in the error of the limit they run into.

use super::*;
use crate::dataset::render_budget::{self, Usage};

/// Real chat templates: SmolLM2's (copied from the model), and others written from their published form.
const REAL: [(&str, &str); 6] = [
    (
        "smollm2",
        include_str!("../../tests/fixtures/templates/smollm2.jinja"),
    ),
    (
        "llama3",
        include_str!("../../tests/fixtures/templates/llama3.jinja"),
    ),
    (
        "llama31-tools",
        include_str!("../../tests/fixtures/templates/llama31-tools.jinja"),
    ),
    (
        "mistral",
        include_str!("../../tests/fixtures/templates/mistral.jinja"),
    ),
    (
        "qwen2",
        include_str!("../../tests/fixtures/templates/qwen2.jinja"),
    ),
    (
        "qwen3-thinking",
        include_str!("../../tests/fixtures/templates/qwen3-thinking.jinja"),
    ),
];

/// `turns` user/assistant exchanges (after a system message unless `mistral`) whose texts are about `len` bytes.
fn conversation(turns: usize, len: usize, system: bool) -> Vec<Message> {
    let words = [
        "the",
        "model",
        "answers",
        "<think>why</think>",
        "Joseph",
        "said",
        "\n",
        "é",
        "{{ x }}",
        "%s",
    ];
    let text = |seed: usize| {
        let mut t = String::new();
        let mut i = seed;
        while t.len() < len {
            t.push_str(words[i % words.len()]);
            t.push(' ');
            i = i.wrapping_mul(31).wrapping_add(7);
        }
        t
    };
    let mut m = Vec::new();
    if system {
        m.push(Message::new("system", text(1)));
    }
    for i in 0..turns {
        m.push(Message::new("user", text(2 * i + 2)));
        m.push(Message::new("assistant", text(2 * i + 3)));
    }
    m
}

/// The template rendered by a plain minijinja environment set up as transformers sets up jinja2: no guard, no
/// limits.
fn plain(src: &str, messages: &[Message], gen: bool) -> String {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_template_owned("t", src.to_string()).unwrap();
    let ctx = context! { messages => messages, add_generation_prompt => gen, bos_token => "<s>", eos_token => "</s>" };
    env.get_template("t").unwrap().render(ctx).unwrap()
}

fn measured(
    t: &ChatTemplate,
    messages: &[Message],
    gen: bool,
) -> (Result<String>, Usage, RenderLimits) {
    let limits = t.limits(messages);
    let ctx = context! {
        messages => messages, add_generation_prompt => gen, bos_token => t.bos_token, eos_token => t.eos_token,
    };
    let (out, usage) = render_budget::render(&t.env, NAME, ctx, &limits);
    let out = out.map_err(|_| Error::dataset(&t.origin, "over a limit"));
    (out, usage, limits)
}

#[test]
fn real_templates_render_as_without_limits_and_far_below_them() {
    // (name, the largest share of each limit used): figures for docs/datasets.md.
    for (name, src) in REAL {
        let t = ChatTemplate::new(src, Path::new(name), "<s>", "</s>").unwrap();
        let mut share = [0f64; 4];
        for (turns, len) in [(1, 1), (1, 40), (3, 300), (20, 100), (50, 2000), (300, 30)] {
            let m = conversation(turns, len, name != "mistral");
            for gen in [false, true] {
                let (out, used, lim) = measured(&t, &m, gen);
                assert_eq!(out.unwrap(), plain(src, &m, gen), "{name} {turns}x{len}");
                for (s, (u, l)) in share.iter_mut().zip([
                    (used.fuel as f64, lim.fuel as f64),
                    (used.output as f64, lim.output as f64),
                    (used.built as f64, lim.built as f64),
                    (used.largest as f64, lim.output as f64),
                ]) {
                    *s = s.max(u / l);
                }
            }
        }
        eprintln!(
            "{name}: largest share of the fuel {:.4}, output {:.4}, built {:.4}, value {:.4}",
            share[0], share[1], share[2], share[3]
        );
        assert!(
            share.iter().all(|&s| s < 0.1),
            "{name} uses over a tenth of a limit: {share:?}"
        );
    }
}

/// Renders `src` for a short conversation; the error text.
fn bomb(src: &str) -> String {
    let t = ChatTemplate::new(src, Path::new("bomb.jinja"), "<s>", "</s>")
        .unwrap_or_else(|e| panic!("{src}: {e}"));
    let e = t
        .render(&conversation(1, 20, true), false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bomb.jinja") && e.contains("--chat-template"),
        "{e}"
    );
    e
}

#[test]
fn template_bombs_end_in_the_limit_they_run_into() {
    let fuel = "ran more than";
    let value = "built a value of";
    let mut wrong = Vec::new();
    for (src, needle) in [
        // Nested loops, writing nothing, then writing.
        ("{% set r = range(3000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}", fuel),
        ("{% for i in range(3000) %}{% for j in range(3000) %}{% endfor %}{% endfor %}", fuel),
        ("{% for i in range(3000) %}{% for j in range(3000) %}{{ j }}{% endfor %}{% endfor %}", "wrote more than"),
        // String doubling through a namespace, a list doubling, a doubling macro argument.
        ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", value),
        ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", value),
        ("{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}", value),
        ("{% set ns = namespace(l=['xy']) %}{% for i in range(64) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}", value),
        ("{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}{% endmacro %}{{ d('ab', 60) }}", value),
        // Doubling written out: a macro calling itself twice.
        ("{% macro d(n) %}{% if n %}{{ d(n - 1) }}{{ d(n - 1) }}{% else %}abcdefgh{% endif %}{% endmacro %}{{ d(40) }}", fuel),
        ("{% macro d(n) %}{% if n %}{{ d(n - 1) ~ d(n - 1) }}{% else %}{{ 'abcdefgh' }}{% endif %}{% endmacro %}{{ d(40) }}", fuel),
        // A captured block of literal text in loops.
        (&format!("{{% set x %}}{{% for i in range(300) %}}{{% for j in range(300) %}}{}{{% endfor %}}{{% endfor %}}{{% endset %}}{{{{ x|length }}}}", "z".repeat(1000)), fuel),
        // Filters whose one call is huge.
        ("{{ 'ab'|indent(99999999999) }}", value),
        ("{{ messages|tojson(indent=99999999999) }}", value),
        ("{{ messages|batch(99999999999) }}", value),
        ("{{ messages|slice(99999999999, 'x') }}", value),
        ("{{ '%99999999999s'|format('x') }}", value),
        ("{{ '{:>99999999999}'.format('x') }}", value),
        ("{% set ns = namespace(s='abcdefgh' * 64) %}{% for i in range(8) %}{% set ns.s = ns.s.replace('a', ns.s) %}{% endfor %}", value),
        ("{% set ns = namespace(s='abcdefgh' * 64) %}{% for i in range(8) %}{% set ns.s = ns.s|replace('a', ns.s) %}{% endfor %}", value),
        ("{{ range(5000)|join('x' * 100000) }}", value),
        ("{{ ('x' * 100000).join(range(5000)|map('string')) }}", value),
        ("{{ range(100000)|length }}", value),
        // A large string scanned by a filter in a loop.
        ("{% set s = 'x' * 60000 %}{% for i in range(3000) %}{{ s|length }}{% endfor %}", "in all"),
        // Many values, each under the value limit.
        ("{% for i in range(3000) %}{% set x = 'y' * 60000 %}{% endfor %}", "in all"),
        // A namespace that holds itself.
        ("{% set ns = namespace() %}{% set ns.a = ns %}{{ ns }}", "holds the namespace itself"),
        ("{% set ns = namespace() %}{% set ns.a = [ns] %}{{ ns }}", "holds the namespace itself"),
        ("{% set a = namespace() %}{% set b = namespace(x=a) %}{% set a.y = {'k': b} %}{{ a }}", "holds the namespace itself"),
    ] {
        let e = bomb(src);
        if !e.contains(needle) {
            wrong.push(format!("{src}\n  -> {e}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn templates_that_cannot_be_bounded_are_refused_when_compiled() {
    for (src, needle) in [
        ("{{ 'x' * 99999999 }}", "constant of"),
        ("{% include 'chat_template' %}", "includes"),
        ("{{ __trainer_checked('x') }}", "reserved"),
    ] {
        let e = ChatTemplate::new(src, Path::new("bomb.jinja"), "", "")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bomb.jinja") && e.contains(needle) && e.contains("--chat-template"),
            "{e}"
        );
    }
}

#[test]
fn deep_recursion_is_a_clean_error() {
    let t = ChatTemplate::new(
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        Path::new("deep.jinja"),
        "",
        "",
    )
    .unwrap();
    let e = t
        .render(&conversation(1, 5, false), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("deep.jinja") && e.contains("recursion"), "{e}");
}

#[test]
fn scaled_limits_let_a_larger_render_through() {
    // 100 KiB of text for a tiny conversation: over the default output limit, under twice it.
    let src = "{% for i in range(1000) %}{{ 'x' * 100 }}{% endfor %}";
    let mut t = ChatTemplate::new(src, Path::new("big.jinja"), "", "").unwrap();
    let m = conversation(1, 5, false);
    let e = t.render(&m, false).unwrap_err().to_string();
    assert!(
        e.contains("wrote more than") && e.contains("TRAINER_TEMPLATE_LIMITS"),
        "{e}"
    );
    t.scale_limits(2);
    assert_eq!(t.render(&m, false).unwrap().len(), 100_000);
    assert_eq!(t.renders(), 2);
}
