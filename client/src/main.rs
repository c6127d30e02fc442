use bevy::app::AppExit;
use clap::Parser;
use plaza_client::options::ClientOptions;

fn main() -> std::process::ExitCode {
    let options = ClientOptions::parse();
    match plaza_client::build_app(options).run() {
        AppExit::Success => std::process::ExitCode::SUCCESS,
        AppExit::Error(code) => std::process::ExitCode::from(code.get()),
    }
}
