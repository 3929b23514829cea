//! Ctrl-C and SIGTERM during training: the first raises the job's interrupter (finish the step, save,
//! exit 130), a second exits at once. Every file is written atomically, so nothing is left half-written.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use trainer_core::job::Interrupter;

static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static TARGET: OnceLock<Interrupter> = OnceLock::new();

/// Routes Ctrl-C / SIGTERM to `interrupter` (the handler is installed once per process).
pub fn interrupt_on_signal(interrupter: Interrupter) -> Result<()> {
    if TARGET.set(interrupter).is_err() {
        return Ok(());
    }
    ctrlc::set_handler(|| {
        if SIGNALS.fetch_add(1, Ordering::SeqCst) == 0 {
            if let Some(i) = TARGET.get() {
                i.stop();
            }
            eprintln!(
                "\ninterrupt: finishing the current step, then saving a checkpoint (press Ctrl-C again to quit at once)"
            );
        } else {
            eprintln!("\ninterrupted again: exiting without saving");
            std::process::exit(130);
        }
    })
    .context("cannot install the Ctrl-C handler")
}
