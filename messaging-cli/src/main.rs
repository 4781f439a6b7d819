//! The `messaging` command; see the crate docs of `messaging_cli` for commands and exit codes.

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("messaging: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let (mut input, mut out, mut err) = (stdin.lock(), stdout.lock(), stderr.lock());
    let code = runtime.block_on(messaging_cli::main_with(
        std::env::args_os(),
        &mut input,
        &mut out,
        &mut err,
    ));
    // Exit without tearing the runtime down under client I/O threads (lapin's, rdkafka's)
    // that may still be winding down; everything printed was flushed.
    std::process::exit(i32::from(code))
}
