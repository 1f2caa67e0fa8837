//! Any byte string given to `coreflow_model_from_bytes` is either rejected
//! with FORMAT/VERSION or loads a model that works; it never crashes, hangs
//! or allocates by an unchecked length.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out: *mut coreflow::ffi::coreflow_model = std::ptr::null_mut();
    let status = unsafe { coreflow::ffi::coreflow_model_from_bytes(data.as_ptr(), data.len(), &mut out) };
    match status {
        coreflow::ffi::COREFLOW_OK => {
            let mut info: coreflow::ffi::coreflow_model_info = unsafe { std::mem::zeroed() };
            info.struct_size = std::mem::size_of_val(&info);
            assert_eq!(unsafe { coreflow::ffi::coreflow_model_get_info(out, &mut info) }, 0);
            unsafe { coreflow::ffi::coreflow_model_free(out) };
        }
        coreflow::ffi::COREFLOW_ERR_FORMAT | coreflow::ffi::COREFLOW_ERR_VERSION => assert!(out.is_null()),
        other => panic!("unexpected status {other}"),
    }
});
