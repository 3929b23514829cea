//! Arbitrary bytes into `parse_events` (TensorBoard events files): no panic, never more events than whole
//! records fit in the bytes, and a file cut after any accepted prefix of records parses to that prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plot_report::parse_events;

fuzz_target!(|data: &[u8]| {
    let Ok(events) = parse_events(data, "fuzz") else {
        return;
    };
    // Each record is at least 16 bytes of framing.
    assert!(events.len() * 16 <= data.len());
    // The first record's length prefix frames it: the bytes up to its end parse to the first event alone.
    if let Some(first) = events.first() {
        let len = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
        let one = parse_events(&data[..len + 16], "first").expect("a whole first record parses");
        assert_eq!(one.as_slice(), std::slice::from_ref(first));
    }
});
