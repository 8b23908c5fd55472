//! `/mutate` body bytes through `review::parse` and `review::admit`, with the
//! same checks as the stable replay test (`tests/properties.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    calmplane_testkit::fuzz_check::check_mutate_body(data);
});
