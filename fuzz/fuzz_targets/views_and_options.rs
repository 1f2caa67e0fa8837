//! Any view (sizes, strides, data magnitude) and any option values given to
//! the inference calls, `coreflow_metrics` and `coreflow_fit` either succeed
//! with finite outputs or fail with the outputs untouched; a view whose
//! sizes overflow is refused. The cases are decoded from the fuzz input by
//! the probe shared with `tests/hostile.rs`.
#![no_main]

#[path = "../../tests/hostile_probe/mod.rs"]
mod hostile_probe;

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

struct Shared {
    fixture: hostile_probe::Fixture,
    model: usize, // *const coreflow_model, immutable and thread-safe
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let fixture = hostile_probe::Fixture::new();
        let mut model = std::ptr::null_mut();
        let st = unsafe {
            coreflow::ffi::coreflow_model_from_bytes(fixture.image.as_ptr(), fixture.image.len(), &mut model)
        };
        assert_eq!(st, coreflow::ffi::COREFLOW_OK);
        Shared { fixture, model: model as usize }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = shared();
    let mut stats = hostile_probe::Stats::default();
    hostile_probe::views_and_options(&s.fixture, s.model as *const _, data, &mut stats);
});
