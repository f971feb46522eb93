//! `recompose-afl TARGET`: one fuzz target of `recompose_benches::fuzz` under AFL++ (persistent
//! mode). A panic, a broken property and an internal error for a malformed input all abort, so
//! that AFL++ saves the input as a crash.

#![forbid(unsafe_code)]

use recompose_benches::fuzz::targets::{Scratch, Verdict, target};

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(t) = target(&name) else {
        eprintln!("usage: recompose-afl TARGET (unknown target `{name}`)");
        std::process::exit(2);
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/ lives in the workspace")
        .to_path_buf();
    let dir = std::env::temp_dir().join(format!("recompose-afl-{name}-{}", std::process::id()));
    let scratch = Scratch::new(dir, root).expect("scratch directory");
    (t.prepare)(&scratch).expect("the target's seeds");
    afl::fuzz!(|data: &[u8]| {
        match (t.run)(&scratch, data) {
            Verdict::Accepted | Verdict::Rejected(_) => {}
            Verdict::Internal(m) => panic!("internal error for a malformed input: {m}"),
            Verdict::Violation(m) => panic!("{m}"),
        }
    });
}
