use bevy::app::AppExit;
use clap::Parser;
use plaza_client::options::ClientOptions;
use plaza_client::scenario::Scenario;
use plaza_client::settings::{SettingsFile, default_path};

fn main() -> std::process::ExitCode {
    let settings = SettingsFile::open(default_path());
    let options = ClientOptions::parse().resolve(&settings.settings);
    if options.list_audio_devices {
        print!("{}", plaza_client::voice::device_listing(&plaza_voice::devices::list()));
        return std::process::ExitCode::SUCCESS;
    }
    let scenario = match options.scenario.as_deref().map(Scenario::load).transpose() {
        Ok(scenario) => scenario,
        Err(e) => {
            eprintln!("plaza: --scenario: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match plaza_client::build_app(options, scenario, settings).run() {
        AppExit::Success => std::process::ExitCode::SUCCESS,
        AppExit::Error(code) => std::process::ExitCode::from(code.get()),
    }
}
