//! `trainer-cli train` and `check`: flags and config file into settings, settings into a
//! `trainer_core::job::Job`, the job run with the command line's observer; or the plan shown
//! (`--dry-run`, `check`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use checkpoint_policy::StopReason;
use clap::Args;
use trainer_core::job::{
    Collective, ControlFile, DirStore, End, Interrupter, Job, Report, GRAPH_FILE, PARAMETERS_FILE,
};

use crate::dry_run::dry_run;
use crate::fsutil::{disk_full_hint, output_error};
use crate::init_adapter;
use crate::lock;
use crate::observer::{CliObserver, ProgressMode};
use crate::prepare::{base_model_name, dump_if_asked, prepare, resolve_settings, Prepared, Say};
use crate::ranks::{self, RankFlags};
use crate::settings::SettingFlags;
use crate::signals;
use crate::ui::{Both, BothSources, RunInfo, RunUi, UiFlags, UiObserver};

/// Arguments of `trainer-cli train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A settings file: TOML (the keys of training_parameters.toml), or Training PRO's training_parameters.json
    /// (a name ending in .json, mapped key by key; --dry-run lists what each key became). Repeatable: later files
    /// win over earlier ones, flags over every file.
    #[arg(long)]
    pub config: Vec<PathBuf>,
    /// Print the resolved settings, data summary, step plan and first blocks, write the LR preview, and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace the training output already in --output.
    #[arg(long)]
    pub overwrite: bool,
    /// Continue a run: `latest` (newest checkpoint of --output) or a checkpoint folder.
    #[arg(long)]
    pub resume: Option<String>,
    /// Progress display.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Blocks shown by --dry-run.
    #[arg(long, default_value_t = 3)]
    pub show_blocks: usize,
    /// Write every training and eval sample as trained (decoded, special tokens shown, masked spans marked) to
    /// this JSON Lines file.
    #[arg(long)]
    pub dump_dataset: Option<PathBuf>,
    /// The old spelling of `--mode dementor` / `--mode precise`.
    #[arg(long, hide = true, value_name = "BOOL")]
    pub dementor: Option<bool>,
    #[command(flatten)]
    pub ranks: RankFlags,
    #[command(flatten)]
    pub settings: SettingFlags,
    #[command(flatten)]
    pub ui: UiFlags,
}

/// Runs `trainer-cli train`.
pub fn run(args: &TrainArgs) -> Result<ExitCode> {
    // Under `mpirun -n N` (N > 1) with the `distributed` feature, this process is one rank of one job.
    #[cfg(feature = "distributed")]
    if let Some(mpi) = crate::mpi_collective::Mpi::from_launcher()? {
        return mpi.run(|c| run_ranked(args, None, Some(c)));
    }
    #[cfg(not(feature = "distributed"))]
    ranks::refuse_unjoined(ranks::launched_size())?;
    run_ranked::<trainer_core::job::ThreadGroup>(args, None, None)
}

impl TrainArgs {
    /// The arguments of `trainer-cli train` with these setting flags and nothing else (the setup page's Start,
    /// which runs the job as the command line would with the same flags).
    pub fn from_settings(settings: SettingFlags) -> Self {
        TrainArgs {
            config: Vec::new(),
            dry_run: false,
            overwrite: false,
            resume: None,
            progress: ProgressMode::None,
            show_blocks: 3,
            dump_dataset: None,
            dementor: None,
            ranks: RankFlags::default(),
            settings,
            ui: UiFlags {
                ui: None,
                ui_public: false,
            },
        }
    }
}

/// Runs a training as `train` does. With `interrupter`, the caller raises it (the `ui` server on Ctrl-C) and
/// no signal handler is installed; without one, Ctrl-C and SIGTERM raise a new one.
pub fn run_with(args: &TrainArgs, interrupter: Option<Interrupter>) -> Result<ExitCode> {
    run_ranked::<trainer_core::job::ThreadGroup>(args, interrupter, None)
}

/// [`run_with`] as one rank of a job joined by `collective` (none: the only process). Rank 0 alone takes the
/// output folder's lock, prepares the folder, prints and writes; the other ranks are quiet.
fn run_ranked<C: Collective>(
    args: &TrainArgs,
    interrupter: Option<Interrupter>,
    collective: Option<C>,
) -> Result<ExitCode> {
    let (rank, size) = collective.as_ref().map_or((0, 1), |c| (c.rank(), c.size()));
    let leader = rank == 0;
    if size > 1 && (args.dry_run || args.ui.ui.is_some()) {
        bail!("--dry-run and --ui are for a single process, not a job under mpirun");
    }
    if args.dry_run && args.ui.ui.is_some() {
        bail!("--ui serves a training run's page; --dry-run starts no run: drop one of them");
    }
    let mut resolved = resolve_settings(args)?;
    let output = resolved.settings.output.clone();
    let store = DirStore::new(&output);
    // The output-folder lock, held until this function returns (the whole run), taken before anything in
    // the folder is looked at, cleaned, deleted or written. `--dry-run` takes none: it writes only
    // lr_preview.png (atomically), which no run writes or deletes.
    let _lock = if args.dry_run || !leader {
        None
    } else {
        if output.as_os_str().is_empty() {
            bail!("no output folder: give --output DIR");
        }
        if args.resume.is_some() && !output.is_dir() {
            bail!(
                "--resume: output folder {} does not exist",
                output.display()
            );
        }
        Some(lock::acquire(&output)?)
    };
    // Everything cheap is checked first; nothing is deleted before the run is known to be valid.
    let mut resume_dir = None;
    if !args.dry_run {
        match args.resume.as_deref() {
            None if leader => {
                store.check_new(args.overwrite).map_err(output_error)?;
            }
            None => {}
            // Rank 0 picks the checkpoint and tells the others (below).
            Some(from) if leader => {
                // A killed run may have left temporaries behind: clean them first.
                for done in store.recover()? {
                    eprintln!("{done}");
                }
                resume_dir = Some(match from {
                    "latest" => store.latest_checkpoint()?,
                    dir => PathBuf::from(dir),
                });
            }
            Some(_) => {}
        }
    }
    if let Some(c) = collective
        .as_ref()
        .filter(|_| size > 1 && args.resume.is_some())
    {
        resume_dir = Some(ranks::share_resume_dir(
            c,
            resume_dir,
            args.ranks.timeout(),
        )?);
    }
    if !args.dry_run && leader {
        for original in &resolved.originals {
            eprintln!("note: {}", original.summary());
        }
    }
    let say = if leader {
        Say::Everything
    } else {
        Say::Nothing
    };
    let mut p = prepare(&resolved.settings, say)?;
    // A resumed run continues from its checkpoint; its saved settings already hold the adapter's values.
    let init = if args.resume.is_none() {
        init_adapter::apply(
            &mut resolved.settings,
            &mut p.lora,
            &p.model,
            &mut resolved.sources,
        )?
    } else {
        None
    };
    let settings = resolved.settings.clone();
    let formats = settings.adapter_formats.0.resolve(&p.model, &p.lora)?;
    if leader {
        if let Some(warning) = &formats.warning {
            eprintln!("warning: {warning}");
        }
        dump_if_asked(&p, args.dump_dataset.as_deref())?;
    }
    if args.dry_run {
        dry_run(&resolved, &p, args.show_blocks)?;
        return Ok(ExitCode::SUCCESS);
    }
    if resume_dir.is_none() && leader {
        store.prepare_new(args.overwrite).map_err(output_error)?;
    }
    if leader {
        eprintln!("{}", p.data.summary_text(settings.eval_every()));
        eprintln!("{}", p.plan.text());
    }

    // The page starts before the job is built; a refused resume drops it with the error.
    let ui = match args.ui.ui {
        Some(_) => {
            let mut warnings: Vec<String> = formats.warning.iter().cloned().collect();
            warnings.extend(p.data.notes.iter().map(|n| format!("note: {n}")));
            let plan_text = p.plan.text();
            warnings.extend(
                plan_text
                    .lines()
                    .filter_map(|l| l.strip_prefix("warning: ").map(str::to_string)),
            );
            let info = RunInfo {
                output: output.display().to_string(),
                settings_toml: settings.to_toml()?,
                data_summary: p.data.summary_text(settings.eval_every()),
                plan: plan_text,
                warnings,
            };
            let (ui, commands) = RunUi::start(&args.ui, info)?;
            eprintln!("run page: {}", ui.url);
            Some((ui, commands))
        }
        None => None,
    };

    let own_signals = interrupter.is_none();
    let interrupter = interrupter.unwrap_or_default();
    let Prepared {
        model,
        lora,
        data,
        plan,
    } = p;
    let steps = plan.steps.clone();
    let mut out_store = DirStore::new(&output);
    if let Some(base) = formats.gguf {
        out_store = out_store.with_gguf_copies(base);
    }
    let mut builder = Job::builder(&model, data, out_store)
        .lora(lora)
        .train_config(settings.train_config()?)
        .report_to(settings.report_to()?)
        .checkpoints(settings.policy_settings(&steps))
        .loss_save_rule(settings.loss_save_rule(&steps))
        .plan(plan)
        .eval_every(settings.eval_every())
        .group_by_length(settings.group_by_length)
        .base_model_name(base_model_name(&settings.model))
        .interrupter(interrupter.clone());
    let cli_observer = CliObserver::new(args.progress, &output);
    let control_file = ControlFile::new(&output);
    // The page (when served) sees every event beside the command line, and its commands join the control
    // file's. `ui` lives to the end of this function: the page shows the run's end until the process exits.
    let (ui, commands) = match ui {
        Some((ui, commands)) => (Some(ui), Some(commands)),
        None => (None, None),
    };
    builder = match (&ui, commands) {
        // The other ranks follow rank 0's decisions: no observer (Silent), no control source.
        _ if !leader => builder,
        (Some(ui), Some(commands)) => builder
            .observer(Both(cli_observer, UiObserver::new(ui.hub.clone(), &output)))
            .control(BothSources(control_file, commands)),
        _ => builder.observer(cli_observer).control(control_file),
    };
    if let Some(dir) = &resume_dir {
        builder = builder.resume_from(dir);
    }
    if let Some(adapter) = init {
        builder = builder.init_adapter(adapter);
    }
    if let Some(c) = collective {
        builder = builder
            .collective(c)
            .collective_timeout(args.ranks.timeout());
    }
    let job = builder.build()?;
    if !leader {
        if own_signals {
            signals::interrupt_on_signal(interrupter)?;
        }
        let report = job.run()?;
        ranks::say(&format!(
            "process {rank} of {size}: followed process 0 to step {} of {} ({})",
            report.step,
            report.total_steps,
            ending_text(&report)
        ));
        return Ok(exit_code(report.end));
    }
    if let Some(dir) = job.resumed_from() {
        ranks::say(&format!(
            "resuming from {} at step {}",
            dir.display(),
            job.step()
        ));
    }
    // Written only now: a refused resume leaves the run's parameters as they were.
    store
        .write_file(PARAMETERS_FILE, settings.to_toml()?.as_bytes())
        .map_err(|e| disk_full_hint(e, &output))?;
    if own_signals {
        signals::interrupt_on_signal(interrupter)?;
    }
    let report = job.run().map_err(|e| disk_full_hint(e, &output))?;

    ranks::say(&format!(
        "{} after {} of {} steps, loss {:.4}. Adapter: {}\ngraph: {}",
        ending_text(&report),
        report.step,
        report.total_steps,
        report.loss,
        output.display(),
        output.join(GRAPH_FILE).display()
    ));
    if report.end == End::Interrupted {
        if let Some(dir) = &report.last_checkpoint {
            eprintln!(
                "resume with: trainer-cli train --output {} --resume latest   (checkpoint {})",
                output.display(),
                dir.display()
            );
        }
    }
    Ok(exit_code(report.end))
}

/// How a run ended, in words.
fn ending_text(report: &Report) -> String {
    match report.end {
        End::Finished => "finished".to_string(),
        End::Interrupted => "interrupted".to_string(),
        End::Stopped(StopReason::AtLoss) => format!("stopped at loss {:.4}", report.loss),
        End::Stopped(StopReason::AtEpoch) => "stopped at the requested epoch".to_string(),
        End::Stopped(StopReason::User) => "stopped on request".to_string(),
        End::Stopped(other) => format!("stopped ({other:?})"),
    }
}

/// 130 for an interrupted run (as after Ctrl-C), 0 otherwise.
fn exit_code(end: End) -> ExitCode {
    if end == End::Interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    }
}
