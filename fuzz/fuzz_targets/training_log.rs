//! Arbitrary text into `RunLog::parse`: no panic, and every accepted record is written by
//! `to_json_line` as one line that parses back to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plot_report::RunLog;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(log) = RunLog::parse(&text, "fuzz.jsonl") else {
        return;
    };
    assert!(log.records.len() <= text.lines().count());
    let mut all = String::new();
    for r in &log.records {
        let line = r.to_json_line();
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line:?}"
        );
        let back = RunLog::parse(&line, "line")
            .unwrap_or_else(|e| panic!("to_json_line output rejected: {e}\n{line}"));
        assert_eq!(back.records.as_slice(), std::slice::from_ref(r), "{line}");
        all.push_str(&line);
    }
    // The rewritten log reads back whole, in order.
    let back = RunLog::parse(&all, "all").expect("rewritten log parses");
    assert_eq!(back, log);
});
