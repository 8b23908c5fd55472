//! Writes a bench fixture for `make load`:
//!
//! ```text
//! load_fixture request typical-pod  > body.json      # the AdmissionReview request
//! load_fixture response typical-pod > response.json  # calmplane's answer to it
//! ```
//!
//! The fixtures are the ones of `benches/pipeline.rs` (`calmplane_testkit::fixtures`).

use calmplane_testkit::fixtures;
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [what, name] = args.as_slice() else {
        eprintln!(
            "usage: load_fixture request|response FIXTURE ({:?})",
            fixtures::NAMES
        );
        std::process::exit(2);
    };
    let fixture = fixtures::fixture(name);
    let out = match what.as_str() {
        "request" => fixture.body,
        "response" => {
            let pipeline = calmplane::pipeline::Pipeline::with_defaults();
            let response = fixtures::pipeline(&pipeline, &fixture.body);
            fixtures::check_response(&fixture, &response);
            response.into_bytes()
        }
        other => panic!("expected request or response, got {other:?}"),
    };
    std::io::stdout().write_all(&out).expect("write stdout");
}
