//! The `fogconnect` command: run a node, send to a node, run the demo.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // A server's --config FILE becomes arguments before its own.
    let argv = match cli::config_file::expand(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(problems) => {
            for problem in &problems {
                eprintln!("fogconnect: {}", cli::terminal_safe(&problem.to_string()));
            }
            return std::process::ExitCode::from(2);
        }
    };
    let args = cli::Cli::parse_from(argv);
    cli::init_tracing(args.default_log_level());
    // Servers hold a descriptor per client: use what the hard limit allows.
    fogconnect::limits::raise_descriptor_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fogconnect: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Errors can quote the network (refusal reasons, ids).
            eprintln!("fogconnect: {}", cli::terminal_safe(&format!("{e:#}")));
            std::process::ExitCode::FAILURE
        }
    }
}
