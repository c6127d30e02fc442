//! `--xr` on a machine with the OpenXR loader but no runtime: the probe
//! says so instead of the renderer failing later. (Its own test binary:
//! the loader reads `XR_RUNTIME_JSON` from the environment.)

use plaza_client::xr::{XrUnavailable, probe};

#[test]
fn with_no_active_runtime_the_probe_says_to_start_one() {
    let manifest = std::env::temp_dir().join("plaza-no-such-openxr-runtime.json");
    // SAFETY: the only test in this binary, so no other thread reads the
    // environment while it changes.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("XR_RUNTIME_JSON", &manifest);
    }
    match probe() {
        Err(XrUnavailable::NoRuntime(detail)) => {
            let text = XrUnavailable::NoRuntime(detail).to_string();
            assert!(text.contains("no OpenXR runtime is active") && text.contains("SteamVR, Monado or WiVRn"), "{text}");
        }
        // tools/setup.sh installs the loader; without it this names the package.
        other => panic!("expected no runtime (is libopenxr-dev installed? tools/setup.sh): {other:?}"),
    }
}
