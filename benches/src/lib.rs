//! Criterion benchmark suites for recompose; the suites live in `benches/benches/`.
