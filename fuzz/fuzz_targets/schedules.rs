//! Schedule names and arbitrary plans: `Schedule::from_str` never panics and names round-trip;
//! every accepted plan gives a scheduler whose multipliers are finite and in [0, 1].
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use schedulers::{Horizon, PlanInput, Schedule, Scheduler, StepPlan, Warmup};

#[derive(Debug, Arbitrary)]
enum ArbWarmup {
    Steps(u64),
    MicroSteps(u64),
    Ratio(f64),
}

#[derive(Debug, Arbitrary)]
enum ArbSchedule {
    Named(u8),
    Cosine(f64),
    CosineWithRestarts(u32),
    Polynomial(f64, f64),
    InverseSqrt(Option<u64>),
}

#[derive(Debug, Arbitrary)]
struct Input {
    name: String,
    /// Small counts most of the time (interesting shapes), full range otherwise.
    small: bool,
    blocks: u64,
    batch_size: u64,
    grad_accum: u64,
    epochs: f64,
    warmup: ArbWarmup,
    schedule: ArbSchedule,
    base_lr: f64,
    probes: Vec<u64>,
    /// A horizon given directly (total, warmup, per epoch).
    direct: (u64, u64, u64),
}

fuzz_target!(|input: Input| {
    check_name(&input.name);
    let shrink = |x: u64| if input.small { x % 4096 } else { x };
    let warmup = match input.warmup {
        ArbWarmup::Steps(w) => Warmup::Steps(shrink(w)),
        ArbWarmup::MicroSteps(w) => Warmup::MicroSteps(shrink(w)),
        ArbWarmup::Ratio(r) => Warmup::Ratio(r),
    };
    let epochs = if input.small {
        input.epochs % 64.0
    } else {
        input.epochs
    };
    let plan_input = PlanInput {
        blocks: shrink(input.blocks),
        batch_size: shrink(input.batch_size),
        grad_accum: shrink(input.grad_accum),
        epochs,
        warmup,
        max_steps: None,
    };
    let schedule = match input.schedule {
        ArbSchedule::Named(i) => Schedule::all()[usize::from(i) % Schedule::NAMES.len()],
        ArbSchedule::Cosine(num_cycles) => Schedule::Cosine { num_cycles },
        ArbSchedule::CosineWithRestarts(num_cycles) => Schedule::CosineWithRestarts { num_cycles },
        ArbSchedule::Polynomial(power, lr_end) => Schedule::Polynomial { power, lr_end },
        ArbSchedule::InverseSqrt(timescale) => Schedule::InverseSqrt { timescale },
    };
    if let Ok(plan) = StepPlan::new(plan_input) {
        assert!(plan.total_steps >= 1 && plan.steps_per_epoch >= 1);
        assert!(plan.grad_accum >= 1 && plan.grad_accum <= plan_input.grad_accum);
        assert_eq!(
            plan.warnings.is_empty(),
            plan.grad_accum == plan_input.grad_accum
        );
        check_scheduler(schedule, plan.horizon(), input.base_lr, &input.probes);
    }
    let (t, w, e) = input.direct;
    if let Ok(h) = Horizon::new(shrink(t), shrink(w), shrink(e)) {
        check_scheduler(schedule, h, input.base_lr, &input.probes);
    }
});

fn check_name(name: &str) {
    if let Ok(s) = name.parse::<Schedule>() {
        assert_eq!(s.name().parse::<Schedule>().ok(), Some(s));
        assert_eq!(
            s.name().to_ascii_lowercase(),
            name.trim().to_ascii_lowercase().replace('-', "_")
        );
    }
}

fn check_scheduler(schedule: Schedule, horizon: Horizon, base_lr: f64, probes: &[u64]) {
    let Ok(sched) = Scheduler::new(schedule, horizon, base_lr) else {
        return;
    };
    let t = horizon.total_steps();
    let w = horizon.warmup_steps();
    let e = horizon.steps_per_epoch();
    // The start, the warmup and epoch boundaries, the end, past the end, and fuzzer-chosen steps.
    let edges = [w, e, e.saturating_mul(2), e.saturating_mul(3), t / 2, t];
    let steps = (0..t.min(256))
        .chain(t.saturating_sub(256)..=t)
        .chain(
            edges
                .iter()
                .flat_map(|&x| [x.saturating_sub(1), x, x.saturating_add(1)]),
        )
        .chain([t.saturating_add(1), u64::MAX])
        .chain(probes.iter().copied());
    for s in steps {
        let m = sched.multiplier(s);
        assert!(
            m.is_finite() && (0.0..=1.0).contains(&m),
            "{schedule:?} on {horizon:?}: multiplier({s}) = {m}"
        );
        let lr = sched.lr(s);
        assert!(
            lr.is_finite() && lr >= 0.0 && lr <= base_lr,
            "lr({s}) = {lr}"
        );
    }
    let _ = sched.warnings();
}
