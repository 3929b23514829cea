//! Integration tests for `trainer-core`. The real-model tests read the GGUF path from `TRAINER_TEST_MODEL`,
//! falling back to `<repo root>/models/SmolLM2-135M-Instruct.Q4_1.gguf`, and fail when neither exists.

mod common;
// The tiny job shared by the job and data-parallel tests.
mod job_fixtures;
// Loading: reference logits against PEFT, tokenizer against the reference tokenizer.json.
mod reference;
// HF directories, merging, adapter strictness, rsLoRA, perplexity.
mod hf_dir;
// Training against PEFT, gradients, determinism, resume.
mod training;
// Finite differences and the engine against candle's autograd on tiny random models.
mod gradcheck;
// Base weights kept as stored: every type against f32, split and tampered files, memory limits.
mod stored;
// Instruction and chat datasets: format files, chat templates, label masks.
mod dataset;
// Synthetic models: every weight type loads, fallbacks, GGUF and HF outputs agree.
mod synthetic;
// The job API: runs, stops, interrupt and resume, recovery, format-1 checkpoints.
mod job;
// llama.cpp LoRA adapter GGUF: export/import round trip, q/k row order, refusals.
mod gguf_lora;
// Starting a run from an existing adapter (PEFT or GGUF).
mod init_adapter;
// Every optimizer: exact resume through the trainer and the job, refusals of another optimizer's state.
mod optimizers;
// report_to: TensorBoard event files of a job against its training log.
mod reporting;
// Data parallelism over a collective of threads: byte-identical to one process, resume across rank counts,
// control on rank 0, refusals before the first step.
mod distributed;
