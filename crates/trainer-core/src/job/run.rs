//! [`Job::run`]: the step loop.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use checkpoint_policy::{Action, Event, StopReason};
use plot_report::LogRecord;

use crate::dataset::select::group_by_length;
use crate::error::{Error, Result};
use crate::evaluate::evaluate;
use crate::job::control::{Change, ControlCommand};
use crate::job::observer::{ControlOutcome, End, Flow, Report, Start};
use crate::job::order::{epoch_order, step_batches};
use crate::job::parallel::{self, Ending};
use crate::job::plan::EvalEvery;
use crate::job::report::TensorBoard;
use crate::job::Job;
use crate::train::Sample;

impl Job<'_> {
    /// Trains to the end of the plan, or until a rule, a user (control input, observer) or the
    /// [`Interrupter`](crate::job::Interrupter) stops it; then saves the final adapter and reports how it
    /// ended.
    ///
    /// After every optimizer step: divergence checks (a non-finite loss, gradient norm or updated weight is
    /// [`Error::Diverged`]: that step is neither saved nor logged), the eval set at its cadence, the control
    /// input, the checkpoint policy's saves, deletes and stops, one log record (with the control commands'
    /// outcomes; and a TensorBoard event), the observer.
    ///
    /// With a [`Collective`](crate::job::Collective) of several ranks, every rank runs this loop; the ranks
    /// other than 0 compute their micro-batches and the update, and follow rank 0's decision to stop.
    pub fn run(mut self) -> Result<Report> {
        let steps = self.plan.steps.clone();
        let (total, per_epoch) = (steps.total_steps, steps.steps_per_epoch);
        let mut step = self.trainer.steps_done();
        let parallel = self.collective.as_ref().is_some_and(|c| c.size() > 1);
        let leader = self.collective.as_ref().is_none_or(|c| c.rank() == 0);
        if leader {
            self.observer.on_start(&Start {
                step,
                total_steps: total,
                resumed_from: self.resumed_from.clone(),
            });
        }
        let mut tensorboard = match &self.tensorboard {
            Some(dir) if leader => Some(TensorBoard::open(
                dir,
                self.resumed_from.is_some().then_some(step),
            )?),
            _ => None,
        };
        let started = Instant::now();
        // Steps are never cancelled half-way: an interrupt finishes the step, then saves it.
        let never = AtomicBool::new(false);
        let lengths: Vec<usize> = self
            .data
            .samples
            .iter()
            .map(|s| s.input_ids.len())
            .collect();
        let batch_size = steps.input.batch_size as usize;
        let (mut order_epoch, mut order) = (u64::MAX, Vec::new());
        let mut stop: Option<StopReason> = None;
        let mut interrupted = false;

        while step < total {
            let epoch_index = step / per_epoch;
            if epoch_index != order_epoch {
                order = epoch_order(lengths.len(), self.data.options.seed, epoch_index);
                if self.group_by_length {
                    order = group_by_length(&order, &lengths, batch_size);
                }
                order_epoch = epoch_index;
            }
            let batch: Vec<Vec<Sample>> = step_batches(&steps, &order, step)
                .iter()
                .map(|b| b.iter().map(|&i| self.data.samples[i].clone()).collect())
                .collect();
            let lr = self.plan.lr(step);
            let t0 = Instant::now();
            let (stats, others_interrupted) = match &self.collective {
                Some(c) if parallel => parallel::step(
                    c.as_ref(),
                    &mut self.trainer,
                    &batch,
                    lr,
                    self.interrupter.should_stop(),
                    self.collective_timeout,
                )?,
                _ => (self.trainer.step(&batch, lr, &never)?, false),
            };
            let seconds = t0.elapsed().as_secs_f64();
            step = stats.step;
            if !stats.loss.is_finite() {
                return Err(self.diverged(format!("the loss became {}", stats.loss), step, lr));
            }
            if !stats.grad_norm.is_finite() {
                return Err(self.diverged(
                    format!("the gradient norm became {}", stats.grad_norm),
                    step,
                    lr,
                ));
            }
            self.loss = stats.loss;
            if !leader {
                let c = self.collective.as_ref().ok_or_else(|| {
                    Error::distributed(0, "a follower without a collective (a bug)")
                })?;
                if parallel::decide(c.as_ref(), false, self.collective_timeout)? {
                    break;
                }
                continue;
            }

            let epoch = steps.epoch_at(step);
            let mut event = Event::new(step, epoch, self.loss);
            let epoch_end = step.is_multiple_of(per_epoch) || step == total;
            if epoch_end {
                event = event.with_epoch_end();
            }
            let eval_now = !self.data.eval.is_empty()
                && (step == total
                    || match self.eval_every {
                        EvalEvery::Steps(n) => n > 0 && step.is_multiple_of(n),
                        EvalEvery::EpochEnd => epoch_end,
                    });
            let mut eval_loss = None;
            if eval_now {
                let adapter = self.trainer.adapter()?;
                let pad = self.trainer.config().pad_id;
                let e = evaluate(
                    self.model,
                    Some(&adapter),
                    &self.data.eval,
                    batch_size,
                    pad,
                    &never,
                )?;
                if self.observer.on_eval(step, &e) == Flow::Stop {
                    event = event.with_stop();
                }
                event = event.with_eval_loss(e.loss);
                eval_loss = Some(e.loss);
            }
            let polled = match &mut self.control {
                Some(control) => control.poll(),
                None => Vec::new(),
            };
            let mut control_log = Vec::new();
            for command in polled {
                let outcome = match command {
                    Ok(ControlCommand::SaveNow) => {
                        event = event.with_save_now();
                        ControlOutcome::Applied(ControlCommand::SaveNow)
                    }
                    Ok(ControlCommand::Stop) => {
                        event = event.with_stop();
                        ControlOutcome::Applied(ControlCommand::Stop)
                    }
                    Ok(ControlCommand::Set { assignment }) => {
                        let applied = Change::parse(&assignment)
                            .and_then(|c| c.apply(&mut self.policy, self.loss_rule));
                        let command = ControlCommand::Set { assignment };
                        match applied {
                            Ok(()) => ControlOutcome::Applied(command),
                            Err(e) => ControlOutcome::Rejected {
                                command,
                                reason: e.to_string(),
                            },
                        }
                    }
                    Err(reason) => ControlOutcome::Unreadable { reason },
                };
                control_log.push(outcome.log_record());
                self.observer.on_control(&outcome);
            }
            if self.interrupter.should_stop() || others_interrupted {
                event = event.with_save_now().with_stop();
                interrupted = true;
            }

            let mut record = LogRecord {
                step,
                epoch,
                loss: Some(self.loss),
                lr: Some(lr),
                grad_norm: Some(stats.grad_norm),
                tokens_per_s: Some(stats.tokens as f64 / seconds.max(1e-9)),
                time_s: Some(started.elapsed().as_secs_f64()),
                eval_loss,
                control: control_log,
                ..LogRecord::default()
            };
            let actions = self.policy.decide(&event);
            if actions.iter().any(|a| matches!(a, Action::Save { .. }))
                && !self.trainer.adapter()?.is_finite()?
            {
                return Err(self.diverged("the update left inf or NaN weights".into(), step, lr));
            }
            let (stopped, saved) = self.carry_out(actions, step)?;
            stop = stop.or(stopped);
            record.checkpoint = saved;
            self.store.append_log(&record)?;
            if let Some(tb) = &mut tensorboard {
                tb.write(&record)?;
            }
            if self.observer.on_step(&record) == Flow::Stop {
                stop = stop.or(Some(StopReason::User));
            }
            if let Some(c) = self.collective.as_ref().filter(|_| parallel) {
                parallel::decide(
                    c.as_ref(),
                    stop.is_some() || interrupted,
                    self.collective_timeout,
                )?;
            }
            if stop.is_some() || interrupted {
                break;
            }
        }
        if !leader {
            return self.follower_report(step, total);
        }

        let adapter = self.trainer.adapter()?;
        if !adapter.is_finite()? {
            let lr = self.plan.lr(step.saturating_sub(1));
            return Err(self.diverged("the update left inf or NaN weights".into(), step, lr));
        }
        let finish = self.policy.finish(step, steps.epoch_at(step), self.loss);
        self.carry_out(finish, step)?;
        let dir = self.store.save_adapter(&adapter, &self.base_model)?;
        let report = Report {
            end: match stop {
                _ if interrupted => End::Interrupted,
                Some(reason) => End::Stopped(reason),
                None => End::Finished,
            },
            step,
            total_steps: total,
            loss: self.loss,
            adapter: dir,
            last_checkpoint: self.last_saved.clone(),
        };
        if let Some(c) = self.collective.as_ref().filter(|_| parallel) {
            let ending = Ending::new(
                report.end,
                report.adapter.clone(),
                report.last_checkpoint.clone(),
            );
            ending.share(c.as_ref(), self.collective_timeout)?;
        }
        self.observer.on_finish(&report);
        Ok(report)
    }

    /// The report of a rank other than 0: how rank 0 says the run ended, and where it saved.
    fn follower_report(&self, step: u64, total: u64) -> Result<Report> {
        let c = self
            .collective
            .as_ref()
            .ok_or_else(|| Error::distributed(0, "a follower without a collective (a bug)"))?;
        let ending = Ending::new(End::Finished, Default::default(), None)
            .share(c.as_ref(), self.collective_timeout)?;
        Ok(Report {
            end: ending.end(),
            step,
            total_steps: total,
            loss: self.loss,
            adapter: ending.adapter,
            last_checkpoint: ending.last_checkpoint,
        })
    }

    fn diverged(&self, what: String, step: u64, lr: f64) -> Error {
        Error::Diverged {
            what,
            step,
            lr,
            last_checkpoint: self.last_saved.clone(),
        }
    }
}
