//! Is there a headset? Asked of the system's OpenXR loader before the app
//! is built, so that without one the desktop view starts and says why.

/// Why VR could not start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XrUnavailable {
    #[error("no OpenXR loader (libopenxr_loader.so) on this machine: {0}. Install your headset's runtime (SteamVR, Monado, WiVRn) and the OpenXR loader (Debian/Ubuntu: libopenxr-loader1 and libopenxr-dev)")]
    NoLoader(String),
    #[error("no OpenXR runtime is active ({0}). Start SteamVR, Monado or WiVRn and make it the active OpenXR runtime")]
    NoRuntime(String),
    #[error("the OpenXR runtime {runtime} can't render with Vulkan (no XR_KHR_vulkan_enable2), which Plaza needs")]
    NoVulkan { runtime: String },
    #[error("the OpenXR runtime {runtime} sees no headset ({detail}). Connect and switch on the headset, then start Plaza again")]
    NoHeadset { runtime: String, detail: String },
}

/// The runtime and headset the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XrRuntime {
    pub runtime: String,
    pub headset: String,
}

/// Asks the system's OpenXR loader for the active runtime and a headset,
/// the same way the renderer will (`libopenxr_loader.so`), and lets go of
/// them again.
pub fn probe() -> Result<XrRuntime, XrUnavailable> {
    // SAFETY: the library is the OpenXR loader the renderer loads too; its
    // entry points are used only through the openxr crate's checked API.
    #[allow(unsafe_code)]
    let entry = unsafe { openxr::Entry::load() }.map_err(|e| XrUnavailable::NoLoader(e.to_string()))?;
    probe_entry(&entry)
}

fn probe_entry(entry: &openxr::Entry) -> Result<XrRuntime, XrUnavailable> {
    let extensions = entry.enumerate_extensions().map_err(|e| XrUnavailable::NoRuntime(e.to_string()))?;
    let mut wanted = openxr::ExtensionSet::default();
    wanted.khr_vulkan_enable2 = extensions.khr_vulkan_enable2;
    let app = openxr::ApplicationInfo { application_name: "Plaza", engine_name: "Bevy", ..Default::default() };
    let instance = entry.create_instance(&app, &wanted, &[]).map_err(|e| XrUnavailable::NoRuntime(e.to_string()))?;
    let runtime = instance.properties().map(|p| format!("{} {}", p.runtime_name, p.runtime_version)).unwrap_or_else(|_| "(unnamed)".into());
    if !extensions.khr_vulkan_enable2 {
        return Err(XrUnavailable::NoVulkan { runtime });
    }
    let system = instance.system(openxr::FormFactor::HEAD_MOUNTED_DISPLAY).map_err(|e| XrUnavailable::NoHeadset { runtime: runtime.clone(), detail: e.to_string() })?;
    let headset = instance.system_properties(system).map(|p| p.system_name).unwrap_or_default();
    Ok(XrRuntime { runtime, headset: if headset.is_empty() { "(unnamed headset)".into() } else { headset } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_loader_the_probe_says_what_to_install() {
        // SAFETY: the path names no library, so nothing is loaded.
        #[allow(unsafe_code)]
        let missing = unsafe { openxr::Entry::load_from(std::path::Path::new("/nonexistent/libopenxr_loader.so")) };
        let err = missing.map(|_| ()).map_err(|e| XrUnavailable::NoLoader(e.to_string())).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("libopenxr_loader.so") && text.contains("libopenxr-loader1"), "{text}");
    }
}
