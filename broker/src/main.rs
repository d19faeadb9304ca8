//! `weir`: the broker and its command-line tools in one binary.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use weir_broker::cli;
use weir_broker::config::ServeArgs;

// glibc malloc shrinks its per-thread heaps with madvise(MADV_DONTNEED) as request
// buffers come and go, then faults the pages back in: under produce load that was
// ~8% of the broker in TLB-shootdown IPIs plus page faults and zeroing. mimalloc
// reuses freed pages and purges lazily. The wrapper prefetches the block each size
// class hands out next (see `weir_cep::alloc`).
#[global_allocator]
static ALLOCATOR: weir_cep::alloc::Allocator = weir_cep::alloc::Allocator;

#[derive(Parser, Debug)]
#[command(
    name = "weir",
    version,
    about = "Weir: a Kafka-compatible log broker with complex event processing"
)]
struct Cli {
    /// Kafka bootstrap address used by the admin and client commands (works against any Kafka broker).
    #[arg(
        long,
        global = true,
        env = "WEIR_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a broker (a single node needs no flags and no config file).
    Serve(ServeArgs),
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topics(cli::topics::TopicsCommand),
    /// Produce lines from standard input to a topic.
    Produce(cli::produce::ProduceArgs),
    /// Consume records from a topic to standard output.
    Consume(cli::consume::ConsumeArgs),
    /// List, describe, reset offsets of and delete consumer groups.
    #[command(subcommand)]
    Groups(cli::groups::GroupsCommand),
    /// Cluster id, controller, brokers, and how leadership is spread.
    #[command(subcommand)]
    Cluster(cli::cluster::ClusterCommand),
    /// Load generator: throughput and tail latency beside the machine's limits.
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
    /// Register, list, remove and follow CEP definitions over the broker's HTTP API.
    Cep(cli::cep::CepArgs),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    weir_broker::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match args.command {
            Command::Serve(serve) => weir_broker::server::serve(serve).await,
            Command::Topics(cmd) => cli::topics::run(&args.bootstrap, cmd).await,
            Command::Produce(p) => cli::produce::run(&args.bootstrap, p).await,
            Command::Consume(c) => cli::consume::run(&args.bootstrap, c).await,
            Command::Groups(g) => cli::groups::run(&args.bootstrap, g).await,
            Command::Cluster(c) => cli::cluster::run(&args.bootstrap, c).await,
            Command::Bench(b) => cli::bench::run(&args.bootstrap, b).await,
            Command::Cep(c) => cli::cep::run(c).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
