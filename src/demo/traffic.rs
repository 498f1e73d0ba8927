//! `distill-guard demo --traffic`: a scenario's simulated traffic (the
//! same requests `simulate` generates) sent through the real proxy over
//! real TLS connections, faster than real time, with a live table per
//! population and `simulate`'s headline figures at the end.
//!
//! The proxy runs the shipped default policy with one TLS listener (a
//! certificate made at start) that reads a PROXY protocol header from
//! loopback peers, and an engine clock that follows the player: each
//! request is decided at its own scenario time (sent `speed` times faster
//! than real time), so per-minute budgets and detection windows see the
//! scenario's time line even when a loaded machine makes sending lag.
//! Every request gets its own connection announcing the simulated client
//! address in a PROXY v1 header (the proxy takes a client's network prefix
//! from the connection, not from `x-forwarded-for`, which is sent too), and
//! its own TLS client profile, so the proxy sees distinct JA4s. Behind an
//! HTTP front ([`Front::ForwardedFor`]) there is no PROXY header: the
//! connection comes from the trusted front and `x-forwarded-for` alone
//! names the client.
//!
//! Each request states its account's age as a trusted auth front would, in
//! [`ACCOUNT_CREATED_HEADER`] (`[identity] account_created_header`): the
//! wall-clock time less the age the scenario gives the account at the
//! request's scenario time. The proxy believes it only from a trusted
//! peer, so only behind the HTTP front: behind PROXY protocol the header
//! comes from the (simulated) client itself.
//!
//! The proxy's decision for each answer is read back from its traffic
//! record (joined on the `x-request-id` the demo sets): a 200 may have been
//! slowed or degraded, which the client cannot see.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{IsTerminal as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::Semaphore;

use crate::app::Clock;
use crate::config::{ListenerConfig, TlsFiles};
use crate::replay::{Headline, PopulationOutcome, TrafficRecord};
use crate::server;
use crate::simulate::{Generator, Scenario, SimRequest};
use crate::{mock, simulate};

pub use crate::simulate::scenario::SMALL_SCENARIO;

/// Where each request states its account's creation time (Unix seconds),
/// as a trusted auth front would.
pub const ACCOUNT_CREATED_HEADER: &str = "x-account-created";

/// The output length asked of the mock is capped at this.
const MAX_OUTPUT_TOKENS: u64 = 8192;

/// At most this many requests in flight; later ones wait (and are late).
const MAX_IN_FLIGHT: usize = 256;

/// One request (connect, handshake, answer) may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// After the last request is sent, answers are awaited this long at most.
const DRAIN_DEADLINE: Duration = Duration::from_secs(40);

/// How progress is shown while the scenario plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// A table redrawn in place about once a second when stdout is a
    /// terminal; otherwise a block of lines about every five seconds.
    Auto,
    /// Nothing until the end.
    Quiet,
}

/// The front the proxy trusts, and how it names each client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Front {
    /// A TCP load balancer: every connection opens with a PROXY v1 header
    /// naming the client (`x-forwarded-for` is sent too, and ignored).
    #[default]
    ProxyProtocol,
    /// An HTTP front: the connection comes from the front (loopback, a
    /// trusted proxy) and the client is named by `x-forwarded-for` alone.
    ForwardedFor,
}

/// What to play and how fast.
#[derive(Debug, Clone)]
pub struct TrafficOptions {
    /// Scenario time per real time (120, the default: the small scenario's
    /// two hours in one real minute).
    pub speed: f64,
    /// A scenario file; None: the compiled-in small scenario.
    pub scenario: Option<PathBuf>,
    /// Progress display.
    pub live: Live,
    /// The front the proxy trusts.
    pub front: Front,
}

impl Default for TrafficOptions {
    fn default() -> Self {
        TrafficOptions {
            speed: 120.0,
            scenario: None,
            live: Live::Auto,
            front: Front::ProxyProtocol,
        }
    }
}

/// What happened to one population's requests, as its clients saw them
/// with the proxy's decisions joined in. The outcome counts are exclusive:
/// `served + slowed + degraded + throttled + blocked + errors == sent`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PopulationStats {
    /// Population name.
    pub name: String,
    /// The population is an attack.
    pub attack: bool,
    /// Requests sent.
    pub sent: u64,
    /// Answered 200, forwarded untouched.
    pub served: u64,
    /// Answered 200 after a delay.
    pub slowed: u64,
    /// Answered 200 with a lowered output limit.
    pub degraded: u64,
    /// Refused with 429.
    pub throttled: u64,
    /// Refused with 403.
    pub blocked: u64,
    /// No answer in time, a connection failure or another status.
    pub errors: u64,
    /// 99th percentile of the client-side latency (real ms, answered
    /// requests only).
    pub p99_ms: u64,
}

impl PopulationStats {
    /// Answered with the model's output (served, slowed or degraded).
    pub fn answered(&self) -> u64 {
        self.served + self.slowed + self.degraded
    }

    /// Refused (throttled or blocked).
    pub fn refused(&self) -> u64 {
        self.throttled + self.blocked
    }
}

/// What `demo --traffic` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrafficReport {
    /// Scenario name.
    pub scenario: String,
    /// Speed factor played at.
    pub speed: f64,
    /// Real time the run took.
    pub real_seconds: f64,
    /// Per population, in scenario order.
    pub populations: Vec<PopulationStats>,
    /// `simulate`'s headline figures, from the live proxy's decisions
    /// (errors are left out: they are no decision).
    pub headline: Headline,
    /// JA4s the proxy recorded, per TLS client profile.
    pub ja4_by_profile: BTreeMap<usize, BTreeSet<String>>,
    /// Answered requests with no line in the proxy's traffic record
    /// (counted as served untouched).
    pub unrecorded: u64,
    /// The front played behind.
    #[serde(skip)]
    pub front: Front,
    /// Distinct network prefixes in the proxy's record, and distinct
    /// prefixes of the simulated client addresses.
    pub ip_prefixes: (usize, usize),
}

impl TrafficReport {
    /// The final table and the headline figures as text.
    pub fn render(&self) -> String {
        let mut out = format!(
            "scenario {} at {}x: {:.1} s real\n",
            self.scenario, self.speed, self.real_seconds
        );
        out.push_str(&table(&self.populations));
        out.push('\n');
        out.push_str(&self.headline.render("proxy", None));
        let ja4s: Vec<String> = self
            .ja4_by_profile
            .iter()
            .map(|(p, set)| {
                let v: Vec<&str> = set.iter().map(String::as_str).collect();
                format!("  profile {p}: {}", v.join(", "))
            })
            .collect();
        out.push_str("JA4 per TLS client profile:\n");
        out.push_str(&ja4s.join("\n"));
        out.push('\n');
        let (recorded, clients) = self.ip_prefixes;
        out.push_str(&format!(
            "behind {}: {recorded} network prefixes recorded for clients in {clients}\n",
            match self.front {
                Front::ProxyProtocol => "a PROXY protocol front",
                Front::ForwardedFor => "an x-forwarded-for front",
            }
        ));
        if self.unrecorded > 0 {
            out.push_str(&format!(
                "({} answered requests had no traffic-record line; counted as served)\n",
                self.unrecorded
            ));
        }
        out
    }
}

/// The per-population table.
fn table(pops: &[PopulationStats]) -> String {
    let mut out = format!(
        "{:<16} {:>7} {:>7} {:>7} {:>8} {:>9} {:>7} {:>6} {:>8}\n",
        "population",
        "sent",
        "served",
        "slowed",
        "degraded",
        "throttled",
        "blocked",
        "errors",
        "p99 ms"
    );
    for p in pops {
        let name = if p.attack {
            format!("{} (attack)", p.name)
        } else {
            p.name.clone()
        };
        out.push_str(&format!(
            "{:<16} {:>7} {:>7} {:>7} {:>8} {:>9} {:>7} {:>6} {:>8}\n",
            name,
            p.sent,
            p.served,
            p.slowed,
            p.degraded,
            p.throttled,
            p.blocked,
            p.errors,
            p.p99_ms
        ));
    }
    out
}

/// One TLS client profile: its rustls settings.
struct Profile {
    config: Arc<rustls::ClientConfig>,
}

/// Four client stacks that differ in what JA4 sees: versions, cipher
/// suites, key-exchange groups and ALPN.
fn profiles(cert: &rustls_pki_types::CertificateDer<'static>) -> anyhow::Result<Vec<Profile>> {
    use rustls::crypto::ring::{cipher_suite as cs, default_provider, kx_group};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.clone())
        .context("trusting the demo certificate")?;
    let build = |provider: rustls::crypto::CryptoProvider,
                 versions: &[&'static rustls::SupportedProtocolVersion],
                 alpn: &[&[u8]]|
     -> anyhow::Result<Profile> {
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .context("TLS client profile")?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        // Every connection a full handshake: a resumed one sends other
        // extensions (another JA4) and skips the work the proxy does.
        c.resumption = rustls::client::Resumption::disabled();
        Ok(Profile {
            config: Arc::new(c),
        })
    };
    let all = rustls::ALL_VERSIONS;
    let tls13 = &[&rustls::version::TLS13][..];
    Ok(vec![
        // A browser-like stack: every suite, TLS 1.2 and 1.3, h2.
        build(default_provider(), all, &[b"h2", b"http/1.1"])?,
        // An SDK on HTTP/1.1 only, TLS 1.3 only.
        build(default_provider(), tls13, &[b"http/1.1"])?,
        // A trimmed stack: two TLS 1.3 suites, X25519 only, h2.
        build(
            rustls::crypto::CryptoProvider {
                cipher_suites: vec![
                    cs::TLS13_CHACHA20_POLY1305_SHA256,
                    cs::TLS13_AES_256_GCM_SHA384,
                ],
                kx_groups: vec![kx_group::X25519],
                ..default_provider()
            },
            tls13,
            &[b"h2"],
        )?,
        // A script: AES-GCM suites for TLS 1.2 and 1.3, NIST curves, no ALPN.
        build(
            rustls::crypto::CryptoProvider {
                cipher_suites: vec![
                    cs::TLS13_AES_128_GCM_SHA256,
                    cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                    cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                ],
                kx_groups: vec![kx_group::SECP256R1, kx_group::SECP384R1],
                ..default_provider()
            },
            all,
            &[],
        )?,
    ])
}

/// A scratch directory for the certificate and the traffic record, removed
/// on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("distill-guard-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for localhost / 127.0.0.1, written as PEM
/// files in `dir`.
fn certificate(
    dir: &Path,
) -> anyhow::Result<(TlsFiles, rustls_pki_types::CertificateDer<'static>)> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .context("making the demo certificate")?;
    let files = TlsFiles {
        cert_path: dir.join("demo-cert.pem"),
        key_path: dir.join("demo-key.pem"),
    };
    std::fs::write(&files.cert_path, ck.cert.pem())
        .with_context(|| format!("writing {}", files.cert_path.display()))?;
    std::fs::write(&files.key_path, ck.key_pair.serialize_pem())
        .with_context(|| format!("writing {}", files.key_path.display()))?;
    Ok((files, ck.cert.der().clone()))
}

/// The scenario of `options`.
pub fn scenario(options: &TrafficOptions) -> anyhow::Result<Scenario> {
    match &options.scenario {
        Some(path) => simulate::scenario::load(path).map_err(|e| anyhow!("{e}")),
        None => simulate::scenario::parse(Path::new("config/scenarios/small.toml"), SMALL_SCENARIO)
            .map_err(|e| anyhow!("{e}")),
    }
}

/// What the client saw of one request.
#[derive(Debug, Clone, Copy)]
struct Answer {
    /// HTTP status; None: no answer (timeout, connection failure).
    status: Option<u16>,
    /// Client-side latency, real ms.
    latency_ms: u64,
}

/// What the proxy recorded about one request.
#[derive(Debug, Clone)]
struct Recorded {
    decision: String,
    ja4: Option<String>,
    ip_prefix: Option<String>,
    output_tokens: u64,
}

/// Requests sent and answered so far, by request index.
#[derive(Debug, Default)]
struct Progress {
    sent: Vec<bool>,
    answers: Vec<Option<Answer>>,
}

/// Reads the proxy's traffic record as it grows.
struct RecordTail {
    path: PathBuf,
    offset: u64,
    partial: String,
    by_index: HashMap<usize, Recorded>,
}

impl RecordTail {
    /// Read the lines appended since the last call (the file may not exist
    /// yet).
    fn poll(&mut self) {
        use std::io::{Read as _, Seek as _};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(std::io::SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else {
            return;
        };
        self.offset += n as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut rest = String::new();
        for line in self.partial.split_inclusive('\n') {
            if !line.ends_with('\n') {
                rest = line.to_string();
                break;
            }
            let Ok(rec) = serde_json::from_str::<TrafficRecord>(line.trim_end()) else {
                continue;
            };
            let Some(index) = rec
                .request_id
                .as_deref()
                .and_then(|id| id.strip_prefix("demo-"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            self.by_index.insert(
                index,
                Recorded {
                    decision: rec.decision,
                    ja4: rec.ja4,
                    ip_prefix: rec.ip_prefix,
                    output_tokens: rec.output_tokens,
                },
            );
        }
        self.partial = rest;
    }
}

/// Classify request `i`: (label, served tokens) for a decision, or None
/// for an error. `label` is one of allow, slow, degrade, throttle, block.
fn classify(answer: &Answer, rec: Option<&Recorded>) -> Option<(&'static str, u64)> {
    match answer.status {
        Some(200) => {
            let label = match rec.map(|r| r.decision.as_str()) {
                Some("slow") => "slow",
                Some("degrade") => "degrade",
                _ => "allow",
            };
            Some((label, rec.map_or(0, |r| r.output_tokens)))
        }
        Some(429) => Some(("throttle", 0)),
        Some(403) => Some(("block", 0)),
        _ => None,
    }
}

/// The per-population counts now; requests sent but not answered count as
/// errors when `finished`.
fn tally(
    scenario: &Scenario,
    requests: &[SimRequest],
    progress: &Progress,
    records: &HashMap<usize, Recorded>,
    finished: bool,
) -> Vec<PopulationStats> {
    let mut pops: Vec<PopulationStats> = scenario
        .populations
        .iter()
        .map(|p| PopulationStats {
            name: p.name.clone(),
            attack: p.attack,
            ..Default::default()
        })
        .collect();
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); pops.len()];
    for (i, req) in requests.iter().enumerate() {
        if !progress.sent.get(i).copied().unwrap_or(false) {
            continue;
        }
        let Some(p) = pops.get_mut(req.population) else {
            continue;
        };
        p.sent += 1;
        let Some(answer) = progress.answers.get(i).copied().flatten() else {
            if finished {
                p.errors += 1;
            }
            continue;
        };
        match classify(&answer, records.get(&i)) {
            Some(("allow", _)) => p.served += 1,
            Some(("slow", _)) => p.slowed += 1,
            Some(("degrade", _)) => p.degraded += 1,
            Some(("throttle", _)) => p.throttled += 1,
            Some(_) => p.blocked += 1,
            None => p.errors += 1,
        }
        if answer.status.is_some() {
            latencies[req.population].push(answer.latency_ms);
        }
    }
    for (p, mut l) in pops.iter_mut().zip(latencies) {
        l.sort_unstable();
        if !l.is_empty() {
            let k = ((l.len() as f64) * 0.99).ceil() as usize;
            p.p99_ms = l[k.clamp(1, l.len()) - 1];
        }
    }
    pops
}

/// Run the traffic demo to the end: start the mock and the proxy, play the
/// scenario at `options.speed`, stop both and report.
pub fn run(options: &TrafficOptions) -> anyhow::Result<TrafficReport> {
    let scenario = scenario(options)?;
    let speed = if options.speed.is_finite() && options.speed > 0.0 {
        options.speed
    } else {
        return Err(anyhow!("--speed must be a positive number"));
    };
    let requests: Vec<SimRequest> = Generator::new(&scenario).collect();
    let scratch = Scratch::new()?;
    let (tls_files, cert) = certificate(&scratch.0)?;
    let record_path = scratch.0.join("traffic.jsonl");

    let upstream = mock::start(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        mock::MockOptions::default(),
    )
    .context("starting the mock upstream")?;
    let mut cfg = super::demo_config(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), upstream.addr())
        .map_err(|e| anyhow!("{e}"))?;
    cfg.listeners = vec![ListenerConfig {
        address: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        tls: Some(tls_files),
        proxy_protocol: options.front == Front::ProxyProtocol,
    }];
    cfg.identity.trusted_proxies = vec![
        "127.0.0.0/8".parse().context("loopback network")?,
        "::1/128".parse().context("loopback network")?,
    ];
    cfg.identity.account_created_header =
        Some(http::HeaderName::from_static(ACCOUNT_CREATED_HEADER));
    cfg.record = Some((record_path.clone(), 1 << 16));
    // The console's drill-downs show the audit log's tail.
    cfg.audit.path = Some(scratch.0.join("audit.jsonl"));
    cfg.server.workers = 2;
    let prefix_lens = (
        cfg.fingerprint.ipv4_prefix_len,
        cfg.fingerprint.ipv6_prefix_len,
    );
    // The engine's clock follows the player: each request is decided at
    // its scenario time, however far a loaded machine makes sending lag.
    let (clock, scenario_ns) = Clock::driven(speed);
    let proxy = server::start_with_clock(cfg, clock).context("starting the proxy")?;
    let addr = *proxy
        .local_addrs()
        .first()
        .ok_or_else(|| anyhow!("the proxy has no listener"))?;
    if options.live != Live::Quiet {
        println!(
            "distill-guard demo --traffic: scenario {} at {speed}x",
            scenario.name
        );
        println!(
            "  proxy:         https://{addr}  (TLS, self-signed; {})",
            match options.front {
                Front::ProxyProtocol => "a PROXY protocol v1 header first, from loopback",
                Front::ForwardedFor => "clients named in x-forwarded-for",
            }
        );
        if let Some(a) = proxy.admin_addr() {
            let token = proxy.shared().config.load().admin.token.is_some();
            println!("{}", super::console_line(a, token));
        }
        println!();
        let _ = std::io::stdout().flush();
    }

    let profiles = profiles(&cert)?;
    let n_profiles = profiles.len().max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the client runtime")?;
    let progress = Arc::new(Mutex::new(Progress {
        sent: vec![false; requests.len()],
        answers: vec![None; requests.len()],
    }));
    let requests = Arc::new(requests);
    let scenario = Arc::new(scenario);
    let mut tail = RecordTail {
        path: record_path,
        offset: 0,
        partial: String::new(),
        by_index: HashMap::new(),
    };
    let started = Instant::now();
    let stopped = rt.block_on(play(
        Play {
            scenario: scenario.clone(),
            requests: requests.clone(),
            profiles: Arc::new(profiles),
            addr,
            speed,
            scenario_ns,
            progress: progress.clone(),
            front: options.front,
        },
        options.live,
        &mut tail,
    ));
    rt.shutdown_timeout(Duration::from_secs(1));
    let real_seconds = started.elapsed().as_secs_f64();
    proxy.shutdown();
    proxy.join();
    upstream.stop();
    if stopped == Stopped::Interrupted {
        // The scratch directory goes with `scratch` on the way out.
        return Err(anyhow!(
            "interrupted after {real_seconds:.0} s; the proxy and the mock are stopped"
        ));
    }
    tail.poll();

    let progress = progress
        .lock()
        .map_err(|_| anyhow!("a request task panicked"))?;
    let populations = tally(&scenario, &requests, &progress, &tail.by_index, true);
    let mut outcomes: BTreeMap<String, PopulationOutcome> = BTreeMap::new();
    let mut ja4_by_profile: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let mut unrecorded = 0;
    let mut seen: HashSet<(usize, u32)> = HashSet::new();
    let (mut recorded_prefixes, mut client_prefixes) = (HashSet::new(), HashSet::new());
    for (i, req) in requests.iter().enumerate() {
        let first = seen.insert((req.population, req.account));
        let rec = tail.by_index.get(&i);
        client_prefixes.insert(crate::fingerprint::network::prefix(
            req.address,
            prefix_lens.0,
            prefix_lens.1,
        ));
        if let Some(prefix) = rec.and_then(|r| r.ip_prefix.clone()) {
            recorded_prefixes.insert(prefix);
        }
        if let Some(ja4) = rec.and_then(|r| r.ja4.clone()) {
            ja4_by_profile
                .entry(req.profile % n_profiles)
                .or_default()
                .insert(ja4);
        }
        let Some(answer) = progress.answers.get(i).copied().flatten() else {
            continue;
        };
        if answer.status == Some(200) && rec.is_none() {
            unrecorded += 1;
        }
        let Some((label, served)) = classify(&answer, rec) else {
            continue;
        };
        if req.cover {
            continue; // an attack's cover traffic: not in the headline, as in simulate
        }
        let pop = &scenario.populations[req.population];
        outcomes
            .entry(pop.name.clone())
            .or_insert_with(|| PopulationOutcome::new(pop.attack, req.t_ms))
            .count_label(
                req.t_ms,
                req.output_tokens.min(MAX_OUTPUT_TOKENS),
                label,
                served,
                first,
            );
    }
    Ok(TrafficReport {
        scenario: scenario.name.clone(),
        speed,
        real_seconds,
        populations,
        headline: Headline::new(&outcomes),
        ja4_by_profile,
        unrecorded,
        front: options.front,
        ip_prefixes: (recorded_prefixes.len(), client_prefixes.len()),
    })
}

/// What the sending side shares.
#[derive(Clone)]
struct Play {
    scenario: Arc<Scenario>,
    requests: Arc<Vec<SimRequest>>,
    profiles: Arc<Vec<Profile>>,
    addr: SocketAddr,
    speed: f64,
    /// The engine clock's time: the scenario time of the latest request sent.
    scenario_ns: &'static std::sync::atomic::AtomicU64,
    progress: Arc<Mutex<Progress>>,
    front: Front,
}

/// How [`play`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// Every request was sent and answered (or timed out).
    Done,
    /// Ctrl-C: sending stopped early.
    Interrupted,
}

/// Send every request on schedule, wait for the answers (bounded), and
/// show progress meanwhile; Ctrl-C stops it (so the caller can stop the
/// servers and remove its scratch files).
async fn play(p: Play, live: Live, tail: &mut RecordTail) -> Stopped {
    let sending = tokio::spawn(send_all(p.clone()));
    tokio::pin!(sending);
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let started = Instant::now();
    let terminal = std::io::stdout().is_terminal();
    let every = if terminal { 1 } else { 5 };
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    let mut drawn = 0usize;
    loop {
        tokio::select! {
            _ = &mut sending => return Stopped::Done,
            _ = &mut interrupt => {
                sending.abort();
                return Stopped::Interrupted;
            }
            _ = ticks.tick() => {
                n += 1;
                if live == Live::Quiet || !n.is_multiple_of(every) {
                    continue;
                }
                tail.poll();
                let text = live_view(&p, tail, started.elapsed());
                let mut out = std::io::stdout().lock();
                if terminal && drawn > 0 {
                    let _ = write!(out, "\x1b[{drawn}A");
                }
                for line in text.lines() {
                    let _ = if terminal {
                        writeln!(out, "\x1b[2K{line}")
                    } else {
                        writeln!(out, "{line}")
                    };
                }
                if !terminal {
                    let _ = writeln!(out);
                }
                let _ = out.flush();
                drawn = text.lines().count();
            }
        }
    }
}

/// The live table: scenario time, requests in flight, per population.
fn live_view(p: &Play, tail: &RecordTail, real: Duration) -> String {
    let Ok(progress) = p.progress.lock() else {
        return String::new();
    };
    let pops = tally(&p.scenario, &p.requests, &progress, &tail.by_index, false);
    let in_flight = progress
        .sent
        .iter()
        .zip(&progress.answers)
        .filter(|(s, a)| **s && a.is_none())
        .count();
    // Scenario time as far as the requests sent so far.
    let sent = progress.sent.iter().take_while(|s| **s).count();
    let first = p.requests.first().map_or(0, |r| r.t_ms);
    let sim = sent
        .checked_sub(1)
        .and_then(|i| p.requests.get(i))
        .map_or(0, |r| (r.t_ms - first) / 1000);
    let total_s = p.scenario.duration_ms / 1000;
    format!(
        "scenario {} at {}x: {:02}:{:02} of {:02}:{:02} simulated, {:.0} s real, {} in flight\n{}",
        p.scenario.name,
        p.speed,
        sim / 60,
        sim % 60,
        total_s / 60,
        total_s % 60,
        real.as_secs_f64(),
        in_flight,
        table(&pops)
    )
}

/// Send each request at its real offset, `(t_ms - first) / speed`, at most
/// [`MAX_IN_FLIGHT`] at once; then wait for the answers until
/// [`DRAIN_DEADLINE`].
async fn send_all(p: Play) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let first = p.requests.first().map_or(0, |r| r.t_ms);
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..p.requests.len() {
        let at = (p.requests[i].t_ms - first) as f64 / p.speed;
        tokio::time::sleep_until(start + Duration::from_secs_f64(at / 1000.0)).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        if let Ok(mut g) = p.progress.lock() {
            g.sent[i] = true;
        }
        let scenario_ms = p.requests[i].t_ms - first;
        p.scenario_ns.fetch_max(
            scenario_ms.saturating_mul(1_000_000),
            std::sync::atomic::Ordering::Relaxed,
        );
        let p = p.clone();
        tasks.spawn(async move {
            let began = Instant::now();
            let status = tokio::time::timeout(REQUEST_TIMEOUT, send(&p, i))
                .await
                .ok()
                .and_then(Result::ok);
            let answer = Answer {
                status,
                latency_ms: u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
            };
            if let Ok(mut g) = p.progress.lock() {
                g.answers[i] = Some(answer);
            }
            drop(permit);
        });
        // Reap finished tasks as we go.
        while tasks.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(DRAIN_DEADLINE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

/// The PROXY v1 header announcing `client` (a made-up port) to the proxy.
fn proxy_header(client: IpAddr, port: u16) -> String {
    match client {
        IpAddr::V4(a) => format!("PROXY TCP4 {a} {} {port} 443\r\n", Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) => format!("PROXY TCP6 {a} {} {port} 443\r\n", Ipv6Addr::LOCALHOST),
    }
}

/// The Anthropic Messages body of a request.
fn body(req: &SimRequest) -> Bytes {
    let mut b = serde_json::json!({
        "model": req.model,
        "max_tokens": req.max_tokens,
        "messages": [{"role": "user", "content": req.prompt}],
    });
    if let Some(budget) = req.thinking_budget {
        b["thinking"] = serde_json::json!({"type": "enabled", "budget_tokens": budget});
    }
    Bytes::from(b.to_string())
}

/// Send request `i` on a connection of its own; returns the status once
/// the whole answer is read.
async fn send(p: &Play, i: usize) -> anyhow::Result<u16> {
    let req = &p.requests[i];
    let mut tcp = tokio::net::TcpStream::connect(p.addr)
        .await
        .context("connect")?;
    let _ = tcp.set_nodelay(true);
    if p.front == Front::ProxyProtocol {
        let port = 1024 + (i % 60000) as u16;
        tcp.write_all(proxy_header(req.address, port).as_bytes())
            .await
            .context("PROXY header")?;
    }
    let profile = &p.profiles[req.profile % p.profiles.len()];
    let name = rustls_pki_types::ServerName::try_from("localhost").context("server name")?;
    let tls = tokio_rustls::TlsConnector::from(profile.config.clone())
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let mut builder = if h2 {
        http::Request::post("https://localhost/v1/messages")
    } else {
        http::Request::post("/v1/messages").header("host", "localhost")
    };
    builder = builder
        .header("x-api-key", req.api_key(&p.scenario))
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .header("x-forwarded-for", req.address.to_string())
        .header("x-request-id", format!("demo-{i}"))
        .header(
            "x-mock-output-tokens",
            req.output_tokens.min(MAX_OUTPUT_TOKENS).to_string(),
        );
    if let Some(age_s) = req.account_age_s(&p.scenario) {
        // The age at the request's scenario time, stated as the creation
        // time it makes at the wall clock the proxy reads.
        let now_s = crate::telemetry::audit::now_unix_ms() / 1000;
        builder = builder.header(
            ACCOUNT_CREATED_HEADER,
            now_s.saturating_sub(age_s).to_string(),
        );
    }
    let request = builder
        .body(Full::new(body(req)))
        .context("building the request")?;
    let io = TokioIo::new(tls);
    let response = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .context("HTTP/2 handshake")?;
        tokio::spawn(conn);
        send.send_request(request).await.context("request")?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(conn);
        send.send_request(request).await.context("request")?
    };
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?;
    Ok(status)
}
