//! The `distill-guard` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use distill_guard::config::{self, LogFormat};
use distill_guard::telemetry::stderr::Stderr;
use distill_guard::{demo, mock, server};

/// The process's allocator: jemalloc. Against glibc's malloc it holds less
/// resident memory per open stream and costs less CPU per request (BENCHMARKS.md,
/// "Resident memory per open stream"). Set here only: the library sets none, and
/// the allocs bench counts with its own.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// `--version`: the package version and the commit it was built from
/// (`unknown` outside a git checkout; see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DISTILL_GUARD_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "distill-guard",
    version = VERSION,
    about = "Edge proxy for LLM APIs that stops distillation campaigns"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `demo --traffic --front`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum DemoFront {
    /// PROXY protocol v1 on every connection.
    ProxyProtocol,
    /// x-forwarded-for from a trusted HTTP front.
    XForwardedFor,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: prints `ok`, or `FILE:LINE:COL: key: reason`
    /// and exits non-zero.
    Check {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// A stand-in model API (Anthropic and OpenAI shapes, JSON and SSE).
    MockUpstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Delay before every response head, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Delay per streamed token, in milliseconds.
        #[arg(long, default_value_t = 0)]
        token_delay_ms: u64,
    },
    /// Print the account id (keyed hash) of an API key, for the accounts
    /// file. The key is read from standard input (one per line) unless given.
    HashKey {
        /// The config whose `[identity]` hash secret to use.
        #[arg(long, short)]
        config: PathBuf,
        /// The key (avoid: it lands in shell history); default: stdin.
        key: Option<String>,
    },
    /// JA4 of TLS ClientHello records given as hex (`-` or nothing: one per
    /// line on stdin); one JSON object per input.
    Fingerprint {
        /// A TLS record as hex, or `-` for stdin.
        #[arg(long = "client-hello", default_value = "-")]
        client_hello: String,
    },
    /// Run a policy on a recorded traffic file (no network, virtual time) and
    /// print what it would have done.
    Replay {
        /// The policy to replay.
        #[arg(long, short)]
        config: PathBuf,
        /// The traffic record (JSON Lines, `[record] path`; `-`: stdin).
        record: PathBuf,
        /// Stop at the first malformed line (exit non-zero with its number).
        #[arg(long)]
        strict: bool,
        /// Write each request's decision here as JSON Lines.
        #[arg(long)]
        decisions: Option<PathBuf>,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
        /// Also run this other config on the same record and show, account by
        /// account, where the two policies differ.
        #[arg(long)]
        compare: Option<PathBuf>,
    },
    /// Generate traffic from a scenario file and report what a policy does
    /// to it (attack served, legitimate refused, containment), beside a
    /// per-key-limits-only baseline. No network, virtual time.
    Simulate {
        /// The scenario (TOML; see config/scenarios/).
        #[arg(long, short, required_unless_present = "family")]
        scenario: Option<PathBuf>,
        /// Instead of a scenario file, a family of drawn scenarios: tuning
        /// (seeds 1000–1999; fit policy there) or heldout (seeds 9000–9999;
        /// report there). Runs --seeds of its seeds (default 32: fewer make
        /// the worst decile one unlucky draw) from its first, or after
        /// --skip, and prints each seed's figures, their median and worst
        /// decile. With --seed instead: that one drawn scenario, reported
        /// as a scenario file's is, and --record writes its traffic (to
        /// follow a seed's requests with `replay --decisions`).
        #[arg(long, value_enum, conflicts_with = "scenario")]
        family: Option<distill_guard::simulate::family::Family>,
        /// With --family: each drawn scenario's length in minutes (the
        /// reported figures use the default).
        #[arg(long, default_value_t = 120, requires = "family", value_parser = clap::value_parser!(u64).range(10..=1440))]
        minutes: u64,
        /// With --family: every population's accounts times this (the
        /// reported figures use the default).
        #[arg(long, default_value_t = 1.0, requires = "family")]
        scale: f64,
        /// With --family: leave out the family's first N seeds and run the
        /// --seeds after them. Once a slice of the held-out family has been
        /// looked into (a seed diagnosed, a choice made after seeing it), the
        /// next slice is one nothing was chosen on.
        #[arg(long, default_value_t = 0, requires = "family", value_parser = clap::value_parser!(u64).range(0..=999))]
        skip: u64,
        /// The policy (default: the shipped config/distill-guard.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The baseline policy (default: the policy's tiers with clusters
        /// and detection off — per-key limits only).
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Also write the generated traffic as a traffic record (`-`: stdout,
        /// and the report goes to stderr) for `replay`.
        #[arg(long)]
        record: Option<PathBuf>,
        /// Report format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        report: ReportFormat,
        /// Generate from this seed instead of the scenario's own (with
        /// --family: the family's seed to draw, e.g. 1008).
        #[arg(long)]
        seed: Option<u64>,
        /// Run the scenario once per seed, from the scenario's seed (or
        /// --seed) on, and report the policy's figures for each and their
        /// spread: how much a figure owes to one draw of the traffic.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000), conflicts_with = "record")]
        seeds: Option<u32>,
    },
    /// Search the attack strategy space for the cheapest evasion of a
    /// policy in simulation (random search and hill climbing, deterministic
    /// from --seed) and price it against the per-key-only baseline.
    Redteam {
        /// The policy (default: the shipped config/distill-guard.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The baseline policy (default: the policy's tiers with clusters
        /// and detection off — per-key limits only).
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Seed of the search.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Evaluations in all (the start and the per-key reference
        /// included).
        #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(2..=1000))]
        budget: u32,
        /// The tuning-family seed whose honest background every evaluation
        /// runs on.
        #[arg(long, default_value_t = 1000)]
        background_seed: u64,
        /// Scenario length in minutes.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(10..=1440))]
        minutes: u64,
        /// Honest accounts times this.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Report format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        report: ReportFormat,
        /// Do not search: price the best evasion of each of these earlier
        /// `redteam --report json` reports (or a file holding one strategy
        /// object) under this policy, on this background.
        #[arg(long, num_args = 1.., value_name = "REPORT", conflicts_with_all = ["seed", "budget"])]
        reprice: Vec<PathBuf>,
    },
    /// Mock upstream + proxy with the default policy, in one process.
    Demo {
        /// Address the proxy listens on (without --traffic; --traffic uses
        /// free loopback ports).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Send a simulated scenario's traffic through the proxy over TLS,
        /// with a live table per population and the headline figures at the
        /// end; exits when the scenario has played.
        #[arg(long)]
        traffic: bool,
        /// With --traffic: scenario time per real time (120 plays the small
        /// scenario's two hours in about a minute).
        #[arg(long, default_value_t = 120.0, requires = "traffic")]
        speed: f64,
        /// With --traffic: the scenario file (default: the compiled-in small
        /// scenario).
        #[arg(long, requires = "traffic")]
        scenario: Option<PathBuf>,
        /// With --traffic: the front the proxy trusts — a TCP one sending
        /// PROXY protocol, or an HTTP one naming clients in x-forwarded-for.
        #[arg(long, value_enum, default_value_t = DemoFront::ProxyProtocol, requires = "traffic")]
        front: DemoFront,
    },
    /// Print the config file's JSON Schema (draft-07), generated from the
    /// parser's own types; config/distill-guard.schema.json is a copy.
    Schema,
    /// Exit 0 when `GET PATH` on ADDRESS answers 200, 1 otherwise: a
    /// container health check for images without curl.
    #[command(hide = true)]
    Healthcheck {
        /// The listener to ask (the admin listener serves /healthz).
        #[arg(long, default_value = "127.0.0.1:9901")]
        address: SocketAddr,
        /// The path to get.
        #[arg(long, default_value = "/healthz")]
        path: String,
    },
    /// Print a shell completion script.
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per subcommand into a
    /// directory.
    #[command(hide = true)]
    Manpage {
        /// Write distill-guard.1 and distill-guard-SUBCOMMAND.1 here instead.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("distill-guard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr: JSON is one object per line and never coloured; text
/// is coloured only when stderr is a terminal and `NO_COLOR` is unset, so
/// files, pipes and journald get no escape codes.
///
/// `queued` (the commands that serve traffic): lines go through
/// [`Stderr`]'s queue and thread, so a request never waits on stderr (a
/// reader that stalls costs lines, counted, not requests). Keep the returned
/// guard until the command ends: dropping it writes what is queued.
fn init_logging(format: LogFormat, level: &str, queued: bool) -> Option<QueuedLog> {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = format == LogFormat::Text
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    match queued.then(Stderr::install).flatten() {
        Some(queue) => {
            install_subscriber(format, filter, colour, queue.clone());
            Some(QueuedLog(queue))
        }
        None => {
            install_subscriber(format, filter, colour, std::io::stderr);
            None
        }
    }
}

fn install_subscriber<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    colour: bool,
    writer: W,
) where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(colour);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Writes the log's queue out when dropped (at most [`distill_guard::telemetry::stderr::CLOSE_WAIT`]).
struct QueuedLog(Stderr);

impl Drop for QueuedLog {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// SIGTERM, SIGINT and SIGHUP, registered before anything is started so a
/// signal that arrives early is never the default (fatal) action.
struct Signals {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("signal runtime")?;
        let (term, int, hup) = rt.block_on(async {
            anyhow::Ok((
                signal(SignalKind::terminate()).context("SIGTERM handler")?,
                signal(SignalKind::interrupt()).context("SIGINT handler")?,
                signal(SignalKind::hangup()).context("SIGHUP handler")?,
            ))
        })?;
        Ok(Signals { rt, term, int, hup })
    }

    /// Block until SIGTERM or SIGINT; on SIGHUP call `on_hup` and go on.
    fn wait(mut self, on_hup: impl Fn()) {
        self.rt.block_on(async {
            loop {
                tokio::select! {
                    _ = self.term.recv() => {
                        tracing::info!("SIGTERM: shutting down");
                        return;
                    }
                    _ = self.int.recv() => {
                        tracing::info!("SIGINT: shutting down");
                        return;
                    }
                    _ = self.hup.recv() => {
                        tracing::info!("SIGHUP: reloading the config");
                        on_hup();
                    }
                }
            }
        })
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Schema => {
            print!("{}", config::schema::schema_text());
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck { address, path } => healthcheck(address, &path),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "distill-guard", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpage { out_dir: None } => {
            let man = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            man.render(&mut std::io::stdout())
                .context("writing the man page")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpage { out_dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => match config::load(&config) {
            Ok(_) => {
                println!("ok");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Serve { config } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let _log = init_logging(cfg.logging.format, &cfg.logging.level, true);
            server::descriptors::prepare(server::descriptors::needed(&cfg));
            let signals = Signals::register()?;
            let handle = server::start(cfg).context("starting the proxy")?;
            signals.wait(|| {
                // Failures are logged and counted by reload itself.
                let _ = handle.reload();
            });
            handle.shutdown();
            handle.join();
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::MockUpstream {
            listen,
            latency_ms,
            token_delay_ms,
        } => {
            init_logging(LogFormat::Text, "info", false);
            let signals = Signals::register()?;
            let opts = mock::MockOptions {
                latency: Duration::from_millis(latency_ms),
                token_delay: Duration::from_millis(token_delay_ms),
            };
            let m =
                mock::start(listen, opts).with_context(|| format!("mock upstream on {listen}"))?;
            println!("mock upstream listening on http://{}", m.addr());
            signals.wait(|| ());
            m.stop();
            Ok(ExitCode::SUCCESS)
        }
        Command::HashKey { config, key } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let Some(secret) = cfg.identity.hash_secret else {
                eprintln!(
                    "{}: no [identity] hash secret (set the environment variable named by \
                     identity.hash_secret_env, or identity.hash_secret): ids would change on \
                     every restart",
                    config.display()
                );
                return Ok(ExitCode::FAILURE);
            };
            let hasher = distill_guard::identity::KeyHasher::new(&secret);
            let keys: Vec<String> = match key {
                Some(k) => vec![k],
                None => std::io::stdin()
                    .lines()
                    .collect::<Result<_, _>>()
                    .context("reading keys from stdin")?,
            };
            for k in keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
                println!("{}", hasher.account_id(k.as_bytes()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Fingerprint { client_hello } => {
            let inputs: Vec<String> = if client_hello == "-" {
                std::io::stdin()
                    .lines()
                    .collect::<Result<_, _>>()
                    .context("reading stdin")?
            } else {
                vec![client_hello]
            };
            let mut failed = false;
            for line in inputs.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
                let out = distill_guard::fingerprint::tls::ja4_json(line);
                failed |= out.get("error").is_some();
                println!("{out}");
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Replay {
            config,
            record,
            strict,
            decisions,
            json,
            compare,
        } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let compare = match compare.as_deref().map(config::load) {
                None => None,
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let mut out = match &decisions {
                Some(p) => Some(std::io::BufWriter::new(
                    std::fs::File::create(p).with_context(|| format!("{}", p.display()))?,
                )),
                None => None,
            };
            let opts = distill_guard::replay::ReplayOptions { strict, compare };
            let decisions_out = out.as_mut().map(|w| w as &mut dyn std::io::Write);
            let result = if record.as_os_str() == "-" {
                distill_guard::replay::replay(
                    &cfg,
                    &mut std::io::stdin().lock(),
                    &opts,
                    decisions_out,
                )
                .map_err(|e| format!("stdin: {e}"))
            } else {
                distill_guard::replay::replay_file(&cfg, &record, &opts, decisions_out)
            };
            if let Some(mut w) = out {
                use std::io::Write as _;
                w.flush().context("writing decisions")?;
            }
            match result {
                Ok(summary) => {
                    if json {
                        println!("{}", serde_json::to_string(&summary)?);
                    } else {
                        print!("{}", summary.render());
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Simulate {
            scenario,
            config: config_path,
            baseline,
            record,
            report,
            seed,
            seeds,
            family,
            minutes,
            scale,
            skip,
        } => {
            let (c, b) = match policy_and_baseline(config_path.as_deref(), baseline.as_deref()) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let s = match (family, scenario) {
                (Some(f), _) => {
                    if !(scale > 0.0 && scale <= 10.0) {
                        eprintln!("--scale: expected more than 0 and at most 10");
                        return Ok(ExitCode::FAILURE);
                    }
                    let size = distill_guard::simulate::family::Size {
                        minutes,
                        accounts: scale,
                    };
                    let Some(one) = seed else {
                        if record.is_some() {
                            eprintln!(
                                "--record with --family: name the one seed to record (--seed)"
                            );
                            return Ok(ExitCode::FAILURE);
                        }
                        // clap bounds --skip to 0..=999 and --seeds to 1..=1000: never empty.
                        let slice = f.seeds_from(skip, u64::from(seeds.unwrap_or(FAMILY_SEEDS)));
                        return simulate_family(f, &slice, size, &c, &b, report);
                    };
                    if distill_guard::simulate::family::Family::of_seed(one) != Some(f) {
                        eprintln!(
                            "--seed {one}: not a seed of the {} family ({}-{})",
                            f.as_str(),
                            f.first_seed(),
                            f.first_seed() + distill_guard::simulate::family::FAMILY_SIZE - 1
                        );
                        return Ok(ExitCode::FAILURE);
                    }
                    if seeds.is_some() || skip != 0 {
                        eprintln!("--seed with --family runs that one seed: --seeds and --skip do not apply");
                        return Ok(ExitCode::FAILURE);
                    }
                    distill_guard::simulate::family::draw(f, one, size).scenario
                }
                (None, Some(scenario)) => {
                    let s = match distill_guard::simulate::scenario::load_with_seed(&scenario, seed)
                    {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("{e}");
                            return Ok(ExitCode::FAILURE);
                        }
                    };
                    if let Some(runs) = seeds {
                        return simulate_seeds(&scenario, s.seed, runs, &c, &b, report);
                    }
                    s
                }
                (None, None) => anyhow::bail!("--scenario or --family is required"),
            };
            let to_stdout = record.as_deref() == Some(std::path::Path::new("-"));
            let mut out: Option<Box<dyn std::io::Write>> = match &record {
                None => None,
                Some(_) if to_stdout => Some(Box::new(std::io::BufWriter::new(std::io::stdout()))),
                Some(p) => Some(Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p).with_context(|| format!("{}", p.display()))?,
                ))),
            };
            let started = std::time::Instant::now();
            let result = distill_guard::simulate::simulate(
                &s,
                &c,
                &b,
                out.as_mut().map(|w| w as &mut dyn std::io::Write),
            );
            if let Some(mut w) = out {
                w.flush().context("writing the record")?;
            }
            let r = match result {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let text = match report {
                ReportFormat::Json => format!("{}\n", serde_json::to_string(&r)?),
                ReportFormat::Text => format!(
                    "{}(generated and replayed twice in {:.1} s)\n",
                    r.render(),
                    started.elapsed().as_secs_f64()
                ),
            };
            if to_stdout {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Redteam {
            config: config_path,
            baseline,
            seed,
            budget,
            background_seed,
            minutes,
            scale,
            report,
            reprice,
        } => {
            use distill_guard::simulate::{family::Family, redteam};
            let (c, b) = match policy_and_baseline(config_path.as_deref(), baseline.as_deref()) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            if !(scale > 0.0 && scale <= 10.0) {
                eprintln!("--scale: expected more than 0 and at most 10");
                return Ok(ExitCode::FAILURE);
            }
            if Family::of_seed(background_seed) != Some(Family::Tuning) {
                eprintln!("--background-seed: expected a tuning-family seed (1000-1999)");
                return Ok(ExitCode::FAILURE);
            }
            if !reprice.is_empty() {
                let options = redteam::RepriceOptions {
                    background_seed,
                    minutes,
                    scale,
                };
                let priced = read_strategies(&reprice)
                    .and_then(|strategies| redteam::reprice(&options, strategies, &c, &b));
                let r = match priced {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("{e}");
                        return Ok(ExitCode::FAILURE);
                    }
                };
                match report {
                    ReportFormat::Json => println!("{}", serde_json::to_string(&r)?),
                    ReportFormat::Text => print!("{}", r.render()),
                }
                return Ok(ExitCode::SUCCESS);
            }
            let options = redteam::Options {
                seed,
                budget,
                background_seed,
                minutes,
                scale,
            };
            let started = std::time::Instant::now();
            let r = match redteam::search(&options, &c, &b) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            match report {
                ReportFormat::Json => println!("{}", serde_json::to_string(&r)?),
                ReportFormat::Text => println!(
                    "{}({budget} evaluations, each generated and replayed twice, in {:.1} s)",
                    r.render(),
                    started.elapsed().as_secs_f64()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            traffic: true,
            speed,
            scenario,
            front,
            ..
        } => {
            // The access log would drown the table: warnings only.
            init_logging(LogFormat::Text, "warn", false);
            let options = demo::traffic::TrafficOptions {
                speed,
                scenario,
                live: demo::traffic::Live::Auto,
                front: match front {
                    DemoFront::ProxyProtocol => demo::traffic::Front::ProxyProtocol,
                    DemoFront::XForwardedFor => demo::traffic::Front::ForwardedFor,
                },
            };
            let report = demo::traffic::run(&options).context("demo --traffic")?;
            println!("\n{}", report.render());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { listen, .. } => {
            let _log = init_logging(LogFormat::Text, "info", true);
            let signals = Signals::register()?;
            let (upstream, proxy) = demo::start(
                listen,
                mock::MockOptions {
                    latency: Duration::ZERO,
                    token_delay: Duration::from_millis(20),
                },
            )
            .map_err(|e| anyhow::anyhow!(e))
            .context("starting the demo")?;
            let addr = proxy.local_addrs()[0];
            println!("distill-guard demo");
            println!("  proxy:         http://{addr}  (default policy)");
            println!("  mock upstream: http://{}", upstream.addr());
            println!();
            let [plain, streaming] = demo::curl_commands(addr);
            println!("Try:\n  {plain}\n\nStreaming:\n  {streaming}\n");
            if let Some(a) = proxy.admin_addr() {
                println!(
                    "  admin API:     http://{a}/metrics  (also /admin/top, /admin/accounts/ID)"
                );
                let token = proxy.shared().config.load().admin.token.is_some();
                println!("{}", demo::console_line(a, token));
            }
            println!("Ctrl-C to stop.");
            signals.wait(|| ());
            proxy.shutdown();
            proxy.join();
            upstream.stop();
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `healthcheck`: one HTTP/1.1 GET, two seconds for each step.
fn healthcheck(address: SocketAddr, path: &str) -> anyhow::Result<ExitCode> {
    use std::io::{Read as _, Write as _};
    let limit = Duration::from_secs(2);
    let mut conn = std::net::TcpStream::connect_timeout(&address, limit)
        .with_context(|| format!("connecting to {address}"))?;
    conn.set_read_timeout(Some(limit))?;
    conn.set_write_timeout(Some(limit))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n"
    )
    .with_context(|| format!("writing to {address}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = conn
            .read(&mut buf)
            .with_context(|| format!("reading from {address}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let status_line = String::from_utf8_lossy(&head);
    let status_line = status_line.lines().next().unwrap_or("").trim();
    if status_line.split(' ').nth(1) == Some("200") {
        println!("{address}{path}: {status_line}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{address}{path}: {status_line:?}");
        Ok(ExitCode::FAILURE)
    }
}

/// Seeds `simulate --family` runs without `--seeds`: at 8 the worst decile
/// is the worst draw or next to it, and on the tuning family it hid four
/// slow-and-low campaigns that the 32 seeds show (BENCHMARKS.md, "Families
/// at 32 seeds"). 32 seeds take about 15 s in a release build.
const FAMILY_SEEDS: u32 = 32;

/// The policy to try (`--config`, or the shipped default) and the baseline
/// it is compared with (`--baseline`, or its per-key limits alone).
fn policy_and_baseline(
    config_path: Option<&std::path::Path>,
    baseline: Option<&std::path::Path>,
) -> Result<(config::Config, config::Config), config::ConfigError> {
    let c = match config_path {
        Some(p) => config::load(p)?,
        None => demo::default_config()?,
    };
    let b = match baseline {
        Some(p) => config::load(p)?,
        None => distill_guard::simulate::per_key_only(&c),
    };
    Ok((c, b))
}

/// `simulate --family F [--skip K] --seeds N`: the family's scenarios of
/// `seeds`, drawn and run one after the other.
fn simulate_family(
    family: distill_guard::simulate::family::Family,
    seeds: &[u64],
    size: distill_guard::simulate::family::Size,
    policy: &config::Config,
    baseline: &config::Config,
    report: ReportFormat,
) -> anyhow::Result<ExitCode> {
    use distill_guard::simulate::family;
    let started = std::time::Instant::now();
    let mut runs = Vec::with_capacity(seeds.len());
    for &seed in seeds {
        let drawn = family::draw(family, seed, size);
        match family::evaluate(&drawn.scenario, Some(&drawn.campaign), policy, baseline) {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("seed {seed}: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    // What each campaign's cost per token is priced against: the cheapest
    // per-key extraction, on the background `redteam` prices it on by
    // default (the first tuning seed), so that every slice of either family
    // is priced against the same reference.
    let background = family::Family::Tuning.first_seed();
    let reference = match family::per_key_reference(background, size, policy, baseline) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("per-key reference on seed {background}: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let all = family::FamilyReport::new(family, runs, Some(reference));
    match report {
        ReportFormat::Json => println!("{}", serde_json::to_string(&all)?),
        ReportFormat::Text => println!(
            "{}({} seeds, {}–{}, each drawn, generated and replayed twice, in {:.1} s)",
            all.render(),
            seeds.len(),
            seeds.first().copied().unwrap_or_default(),
            seeds.last().copied().unwrap_or_default(),
            started.elapsed().as_secs_f64()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `simulate --seeds N`: the scenario once per seed from `first` on, one
/// after the other (each run already uses both cores' worth of threads).
fn simulate_seeds(
    path: &std::path::Path,
    first: u64,
    runs: u32,
    policy: &config::Config,
    baseline: &config::Config,
    report: ReportFormat,
) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let mut reports = Vec::with_capacity(runs as usize);
    for seed in (0..u64::from(runs)).map(|i| first.wrapping_add(i)) {
        let run = distill_guard::simulate::scenario::load_with_seed(path, Some(seed))
            .map_err(|e| e.to_string())
            .and_then(|s| distill_guard::simulate::simulate(&s, policy, baseline, None));
        match run {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("seed {seed}: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let all = distill_guard::simulate::SeedsReport::new(reports);
    match report {
        ReportFormat::Json => println!("{}", serde_json::to_string(&all)?),
        ReportFormat::Text => println!(
            "{}({runs} seeds, each generated and replayed twice, in {:.1} s)",
            all.render(),
            started.elapsed().as_secs_f64()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The strategies `redteam --reprice` prices: each file's `best.strategy`
/// (a `redteam --report json` report) or, failing that, the file's whole
/// object as one strategy. Labelled by the file's path.
fn read_strategies(
    paths: &[PathBuf],
) -> Result<Vec<(String, distill_guard::simulate::strategy::AttackStrategy)>, String> {
    paths
        .iter()
        .map(|p| {
            let label = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| format!("{label}: {e}"))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{label}: {e}"))?;
            let strategy = v
                .get("best")
                .and_then(|b| b.get("strategy"))
                .cloned()
                .unwrap_or(v);
            serde_json::from_value(strategy)
                .map(|s| (label.clone(), s))
                .map_err(|e| format!("{label}: not a redteam report or an attack strategy: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// The subcommands a user sees (hidden ones and `help` aside).
    fn visible_subcommands() -> Vec<String> {
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| c.get_name().to_string())
            .collect();
        assert!(names.len() >= 10, "{names:?}");
        names
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_name_every_subcommand_in_every_shell() {
        use clap_complete::Shell;
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "distill-guard", &mut out);
            let text = String::from_utf8(out).unwrap();
            for name in visible_subcommands() {
                assert!(text.contains(&name), "{shell}: no {name}");
            }
        }
    }

    #[test]
    fn the_man_page_names_every_subcommand_and_the_version() {
        let mut out = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH distill-guard 1"),
            "{text}"
        );
        // roff escapes the hyphens of names.
        let roff = text.replace("\\-", "-");
        for name in visible_subcommands() {
            assert!(roff.contains(&name), "man page has no {name}");
        }
        assert!(roff.contains(env!("CARGO_PKG_VERSION")), "no version");
    }

    #[test]
    fn the_version_names_the_commit() {
        let v = Cli::command().render_version();
        assert!(
            v.starts_with(&format!(
                "distill-guard {} (commit ",
                env!("CARGO_PKG_VERSION")
            )),
            "{v}"
        );
        let commit = env!("DISTILL_GUARD_COMMIT");
        assert!(!commit.is_empty());
        assert!(v.contains(commit), "{v}");
    }
}
