use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

const SEC: Nanos = 1_000_000_000;
const MIN: Nanos = 60 * SEC;
const GEN: Nanos = 10 * MIN;
/// Band keys per prompt signature in these tests.
const BANDS: usize = 4;
/// An arbitrary epoch: the linker must not assume time starts at 0.
const EPOCH: Nanos = 123_456 * SEC;

const HYDRA_JA4: u64 = 0x4a34_0001;
const HYDRA_HTTP: u64 = 0x4854_0001;
const HYDRA_ASN: u64 = 0x4153_0001;
const NAT_JA4: u64 = 0x4a34_0002;
const NAT_HTTP: u64 = 0x4854_0002;
const NAT_PREFIX: u64 = 0x5052_0002;
const NAT_ASN: u64 = 0x4153_0002;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One of the hydra's accounts: the hydra's JA4, 8 IPs in 2 prefixes, prompt template `template`.
    Hydra { template: usize },
    /// Behind the corporate NAT: one SDK JA4, one prefix, its own prompts.
    Nat,
    /// An ordinary client: its own stack and network, its own prompts.
    Ordinary { ja4: u64, prefix: u64 },
}

struct Actor {
    account: u64,
    kind: Kind,
    gap: (Nanos, Nanos),
    active: bool,
}

/// A seeded traffic simulation on virtual time.
struct Sim {
    linker: Linker,
    rng: StdRng,
    now: Nanos,
    actors: Vec<Actor>,
    queue: BinaryHeap<Reverse<(Nanos, usize)>>,
    templates: Vec<[u64; BANDS]>,
    hydra_prefixes: [u64; 2],
    common_ja4: Vec<u64>,
    bands: Vec<u64>,
    requests: u64,
}

impl Sim {
    fn new(policy: LinkPolicy, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let templates = (0..6).map(|_| rng.gen()).collect();
        let hydra_prefixes = [rng.gen(), rng.gen()];
        // 20 common client stacks; the hydra's SDK is one of them.
        let mut common_ja4: Vec<u64> = (0..19).map(|_| rng.gen()).collect();
        common_ja4.push(HYDRA_JA4);
        Sim {
            linker: Linker::new(policy),
            rng,
            now: EPOCH,
            actors: Vec::new(),
            queue: BinaryHeap::new(),
            templates,
            hydra_prefixes,
            common_ja4,
            bands: Vec::new(),
            requests: 0,
        }
    }

    fn add(
        &mut self,
        n: usize,
        gap: (Nanos, Nanos),
        kind: impl Fn(usize, &mut StdRng) -> Kind,
    ) -> Vec<u64> {
        (0..n)
            .map(|i| {
                let account = self.rng.gen();
                let kind = kind(i, &mut self.rng);
                let first = self.now + self.rng.gen_range(0..gap.1);
                self.queue.push(Reverse((first, self.actors.len())));
                self.actors.push(Actor {
                    account,
                    kind,
                    gap,
                    active: true,
                });
                account
            })
            .collect()
    }

    fn add_hydra(&mut self, n: usize) -> Vec<u64> {
        self.add(n, (30 * SEC, 90 * SEC), |i, _| Kind::Hydra {
            template: i % 6,
        })
    }

    fn add_nat(&mut self, n: usize) -> Vec<u64> {
        self.add(n, (30 * SEC, 90 * SEC), |_, _| Kind::Nat)
    }

    fn add_ordinary(&mut self, n: usize) -> Vec<u64> {
        let common = self.common_ja4.clone();
        self.add(n, (10 * SEC, 120 * SEC), move |_, rng| Kind::Ordinary {
            ja4: common[rng.gen_range(0..common.len())],
            prefix: rng.gen(),
        })
    }

    fn stop_all(&mut self) {
        for a in &mut self.actors {
            a.active = false;
        }
    }

    fn run_until(&mut self, t: Nanos) {
        while let Some(&Reverse((at, a))) = self.queue.peek() {
            if at > t {
                break;
            }
            self.queue.pop();
            if !self.actors[a].active {
                continue;
            }
            self.now = at;
            self.send(a);
            let (lo, hi) = self.actors[a].gap;
            let next = at + self.rng.gen_range(lo..=hi);
            self.queue.push(Reverse((next, a)));
        }
        self.now = self.now.max(t);
    }

    fn send(&mut self, a: usize) {
        let Actor { account, kind, .. } = self.actors[a];
        self.bands.clear();
        let (ja4, http, prefix, asn) = match kind {
            Kind::Hydra { template } => {
                // A near-duplicate of the template: half the time one band differs.
                self.bands.extend_from_slice(&self.templates[template]);
                if self.rng.gen_bool(0.5) {
                    let i = self.rng.gen_range(0..BANDS);
                    self.bands[i] = self.rng.gen();
                }
                let ip = self.rng.gen_range(0..8);
                (
                    HYDRA_JA4,
                    HYDRA_HTTP,
                    self.hydra_prefixes[ip / 4],
                    HYDRA_ASN,
                )
            }
            Kind::Nat => {
                self.bands.extend((0..BANDS).map(|_| self.rng.gen::<u64>()));
                (NAT_JA4, NAT_HTTP, NAT_PREFIX, NAT_ASN)
            }
            Kind::Ordinary { ja4, prefix } => {
                self.bands.extend((0..BANDS).map(|_| self.rng.gen::<u64>()));
                (ja4, ja4 ^ 0x77, prefix, prefix >> 40)
            }
        };
        let attrs = Attributes {
            ja4: Some(ja4),
            http: Some(http),
            h2: None,
            ip_prefix: Some(prefix),
            asn: Some(asn),
            prompt: &self.bands,
            shape: None,
        };
        let view = self.linker.observe(account, &attrs, self.now);
        assert_eq!(view, self.linker.cluster_of(account));
        self.requests += 1;
    }
}

/// How the given accounts are clustered: (unlinked, id → (members among them, view)).
fn summary(linker: &Linker, accounts: &[u64]) -> (usize, BTreeMap<u64, (usize, ClusterView)>) {
    let mut unlinked = 0;
    let mut clusters = BTreeMap::new();
    for &a in accounts {
        match linker.cluster_of(a) {
            None => unlinked += 1,
            Some(v) => clusters.entry(v.id).or_insert((0, v)).0 += 1,
        }
    }
    (unlinked, clusters)
}

fn largest(clusters: &BTreeMap<u64, (usize, ClusterView)>) -> usize {
    clusters.values().map(|(n, _)| *n).max().unwrap_or(0)
}

fn weak_only_policy() -> LinkPolicy {
    let mut policy = LinkPolicy::default();
    policy.rules.retain(|r| r.name == "weak");
    policy
}

/// Index invariants: every occupied slot is reachable from its key's home, `first` is the newest entry, spill
/// lists are non-empty, every arena block is one short list's or free (never both, never two lists'), every long
/// list one slot's or free; counters match.
fn check_index(index: &Index) {
    let mut len = 0;
    let mut entries = 0;
    let mut owners = vec![0u8; index.spills.arena_len()];
    // The arena a compaction empties: its blocks still in use, and the entries they span.
    let (moving_len, moving_live) = index.spills.moving().unwrap_or_default();
    let mut moving_owners = vec![0u8; moving_len];
    let mut moving_seen = 0;
    let mut own = |(at, size, moving): (usize, usize, bool)| {
        let owners = if moving {
            moving_seen += size;
            &mut moving_owners
        } else {
            &mut owners
        };
        for o in &mut owners[at..at + size] {
            *o += 1;
        }
    };
    let mut free = 0;
    for (at, size) in index.spills.free_blocks() {
        free += size;
        own((at, size, false));
    }
    assert_eq!(index.spills.free_entries(), free);
    let (long, free_long) = index.spills.long_lists();
    let mut long_owners = vec![0u8; long];
    for &id in free_long {
        long_owners[id as usize] += 1;
    }
    // Every key is in one of the two tables while a growth's old table is drained, found from its home there.
    let old = index.old.as_deref().unwrap_or_default();
    assert!(old.iter().take(index.drained).all(|s| s.key == 0));
    let tables = [(&index.slots[..], true), (old, false)];
    for (i, s, current) in tables
        .iter()
        .flat_map(|&(t, current)| t.iter().enumerate().map(move |(i, s)| (i, s, current)))
    {
        if s.key == 0 {
            assert!(!s.spill.is_some());
            continue;
        }
        if current {
            assert_eq!(index.probe(s.key), Ok(i));
        } else {
            assert_eq!(probe_in(old, s.key), Ok(i));
            assert!(index.probe(s.key).is_err(), "a key in both tables");
        }
        len += 1;
        entries += 1;
        if s.spill.is_some() {
            let v = index.spills.get(s.spill);
            assert!(!v.is_empty());
            assert_eq!(v.len(), s.spill.len());
            assert!(v
                .iter()
                .all(|e| e.seen <= s.first.seen && e.account != s.first.account));
            match index.spills.place(s.spill) {
                Ok(block) => {
                    assert!(s.spill.len() <= block.1);
                    own(block);
                }
                Err(id) => long_owners[id] += 1,
            }
            entries += v.len();
        }
    }
    assert!(
        owners.iter().chain(&moving_owners).all(|&n| n <= 1),
        "an arena block is shared, or free and in use"
    );
    assert_eq!(
        moving_seen, moving_live,
        "the arena a compaction empties counts its blocks in use"
    );
    assert!(
        long_owners.iter().all(|&n| n == 1),
        "a long list is lost or shared"
    );
    assert_eq!(index.len, len);
    assert_eq!(index.entries, entries);
}

#[test]
fn hydra_forms_one_strong_cluster() {
    let mut sim = Sim::new(LinkPolicy::default(), 1);
    let hydra = sim.add_hydra(400);
    let start = sim.now;
    let mut formed_after = None;
    for step in 1..=120 {
        sim.run_until(start + step * 5 * SEC);
        let (unlinked, clusters) = summary(&sim.linker, &hydra);
        if step % 6 == 0 && formed_after.is_none() {
            println!(
                "hydra t={:>3}s: {unlinked} unlinked, {} clusters, largest {}",
                step * 5,
                clusters.len(),
                largest(&clusters)
            );
        }
        let all_strong = clusters
            .values()
            .all(|(_, v)| v.strength == Strength::Strong);
        if formed_after.is_none() && unlinked == 0 && clusters.len() <= 3 && all_strong {
            formed_after = Some(step * 5);
            println!(
                    "hydra: all 400 accounts in {} Strong cluster(s) after {} simulated seconds ({} requests)",
                    clusters.len(),
                    step * 5,
                    sim.requests
                );
        }
    }
    let formed_after = formed_after.expect("the hydra never formed");
    assert!(formed_after <= 240, "took {formed_after} s");
    // Ten minutes in: one cluster, linked by all three rules.
    let (unlinked, clusters) = summary(&sim.linker, &hydra);
    assert_eq!(unlinked, 0);
    assert_eq!(clusters.len(), 1);
    let (_, view) = clusters.values().next().copied().unwrap();
    assert_eq!(view.members, 400);
    assert_eq!(view.strength, Strength::Strong);
    assert_eq!(view.rules, 0b111);
    assert_eq!(sim.linker.cluster(view.id), Some(view));
    let stats = sim.linker.stats();
    println!("hydra stats after 10 min: {stats:?}");
    assert_eq!(stats.accounts, 400);
    assert_eq!(stats.clusters, 1);
    check_index(&sim.linker.index);
}

#[test]
fn corporate_nat_links_weakly_at_most() {
    let mut sim = Sim::new(LinkPolicy::default(), 2);
    let nat = sim.add_nat(50);
    for minute in 1..=30 {
        sim.run_until(EPOCH + minute * MIN);
        let (_, clusters) = summary(&sim.linker, &nat);
        for (_, v) in clusters.values() {
            assert_eq!(v.strength, Strength::Weak, "{v:?}");
            assert_eq!(v.rules, 0b100);
        }
    }
    let (unlinked, clusters) = summary(&sim.linker, &nat);
    println!(
        "corporate NAT: {} weak cluster(s), largest {}, {unlinked} unlinked",
        clusters.len(),
        largest(&clusters)
    );
}

#[test]
fn ordinary_accounts_stay_unlinked() {
    let mut sim = Sim::new(LinkPolicy::default(), 3);
    let ordinary = sim.add_ordinary(300);
    let mut largest_weak = 0;
    for minute in 1..=30 {
        sim.run_until(EPOCH + minute * MIN);
        let (_, clusters) = summary(&sim.linker, &ordinary);
        for (_, v) in clusters.values() {
            assert!(v.strength < Strength::Medium, "{v:?}");
        }
        largest_weak = largest_weak.max(largest(&clusters));
    }
    println!("ordinary: largest weak cluster {largest_weak} (of 300 accounts)");
    assert_eq!(largest_weak, 0);
    assert_eq!(sim.linker.stats().clusters, 0);
}

#[test]
fn mixed_traffic_keeps_populations_apart() {
    let mut sim = Sim::new(LinkPolicy::default(), 4);
    let hydra = sim.add_hydra(400);
    let nat = sim.add_nat(50);
    let ordinary = sim.add_ordinary(300);
    sim.run_until(EPOCH + 30 * MIN);
    let (unlinked, clusters) = summary(&sim.linker, &hydra);
    assert_eq!((unlinked, clusters.len()), (0, 1));
    let hydra_id = *clusters.keys().next().unwrap();
    for &a in nat.iter().chain(&ordinary) {
        if let Some(v) = sim.linker.cluster_of(a) {
            assert_ne!(v.id, hydra_id);
            assert_eq!(v.strength, Strength::Weak);
        }
    }
    let hydra_members = sim.linker.members(hydra_id, usize::MAX);
    assert_eq!(hydra_members.len(), 400);
    assert!(hydra_members.iter().all(|a| hydra.contains(a)));
    assert_eq!(sim.linker.members(hydra_id, 10).len(), 10);
    assert!(sim.linker.members(hydra_id ^ 1, 10).is_empty());
    assert_eq!(sim.linker.cluster(hydra_id ^ 1), None);
}

#[test]
fn clusters_expire_when_the_hydra_stops() {
    let mut sim = Sim::new(LinkPolicy::default(), 5);
    let hydra = sim.add_hydra(400);
    sim.run_until(EPOCH + 15 * MIN);
    assert_eq!(summary(&sim.linker, &hydra).0, 0);
    sim.stop_all();
    let stop = sim.now;
    let before = sim.linker.stats();
    let mut gone_after = None;
    for minute in 1..=30 {
        sim.linker.maintain(stop + minute * MIN);
        let (unlinked, _) = summary(&sim.linker, &hydra);
        if minute == 1 {
            assert_eq!(unlinked, 0, "links must outlive the request that made them");
        }
        if unlinked == hydra.len() && gone_after.is_none() {
            gone_after = Some(minute);
        }
        if gone_after.is_some() {
            assert_eq!(unlinked, hydra.len(), "a cluster came back");
        }
    }
    let stats = sim.linker.stats();
    println!(
            "expiry: cluster gone {} simulated minutes after the hydra stopped; stats before {before:?}, after {stats:?}",
            gone_after.unwrap()
        );
    assert!(gone_after.unwrap() <= 20);
    assert_eq!((stats.values, stats.entries), (0, 0));
    assert_eq!((stats.accounts, stats.clusters), (0, 0));
    assert!(stats.approx_bytes < before.approx_bytes);
    check_index(&sim.linker.index);
}

#[test]
fn a_cluster_is_drawn_from_its_recent_links() {
    let mut sim = Sim::new(LinkPolicy::default(), 7);
    let hydra = sim.add_hydra(120);
    let nat = sim.add_nat(40);
    sim.run_until(EPOCH + 15 * MIN);
    let (unlinked, clusters) = summary(&sim.linker, &hydra);
    assert_eq!((unlinked, clusters.len()), (0, 1));
    let id = *clusters.keys().next().unwrap();
    // The hydra is the largest cluster; the NAT's is listed after it.
    let listed = sim.linker.clusters(10);
    assert_eq!(listed[0].id, id);
    assert!(listed.windows(2).all(|w| w[0].members >= w[1].members));
    let nat_cluster = sim.linker.cluster_of(nat[0]).map(|v| v.id);
    assert!(nat_cluster.is_none_or(|n| listed.iter().any(|c| c.id == n)));
    assert_eq!(sim.linker.clusters(1).len(), 1);

    let links = sim.linker.cluster_links(id, 10_000);
    let members: std::collections::HashSet<u64> = hydra.iter().copied().collect();
    let mut pairs = std::collections::HashSet::new();
    for e in &links {
        // Both ends are members, each pair once, newest first, and every link names the rules it matched.
        assert!(
            members.contains(&e.from) && members.contains(&e.to),
            "{e:?}"
        );
        assert!(pairs.insert((e.from.min(e.to), e.from.max(e.to))), "{e:?}");
        assert_ne!(e.rules, 0);
        assert!(e.at <= sim.now && e.at + 2 * GEN >= sim.now);
    }
    assert!(links.windows(2).all(|w| w[0].at >= w[1].at));
    // The links connect every member: the graph is the cluster, not a sample of it.
    let mut uf: std::collections::HashMap<u64, u64> = hydra.iter().map(|&a| (a, a)).collect();
    fn root(uf: &mut std::collections::HashMap<u64, u64>, mut a: u64) -> u64 {
        while uf[&a] != a {
            a = uf[&a];
        }
        a
    }
    for e in &links {
        let (ra, rb) = (root(&mut uf, e.from), root(&mut uf, e.to));
        uf.insert(ra, rb);
    }
    let roots: std::collections::HashSet<u64> = hydra.iter().map(|&a| root(&mut uf, a)).collect();
    assert_eq!(
        roots.len(),
        1,
        "{} components from {} links",
        roots.len(),
        links.len()
    );
    assert_eq!(sim.linker.cluster_links(id, 5).len(), 5);
    assert!(sim.linker.cluster_links(id ^ 1, 10).is_empty());
}

#[test]
fn cluster_id_is_stable_across_rotations() {
    let mut sim = Sim::new(LinkPolicy::default(), 6);
    let hydra = sim.add_hydra(400);
    sim.run_until(EPOCH + 5 * MIN);
    let (unlinked, clusters) = summary(&sim.linker, &hydra);
    assert_eq!((unlinked, clusters.len()), (0, 1));
    let (_, first) = clusters.values().next().copied().unwrap();
    for step in 1..=100 {
        sim.run_until(EPOCH + 5 * MIN + step * 30 * SEC);
        let (unlinked, clusters) = summary(&sim.linker, &hydra);
        assert_eq!(unlinked, 0, "step {step}");
        assert_eq!(clusters.len(), 1, "step {step}");
        let (_, view) = clusters.values().next().copied().unwrap();
        assert_eq!(
            (view.id, view.formed_at),
            (first.id, first.formed_at),
            "step {step}"
        );
        assert_eq!(view.members, 400);
    }
    let rotations = sim.linker.stats().rotations_total;
    println!("stable id {:#x} over {rotations} rotations", first.id);
    assert!(rotations >= 5);
}

#[test]
fn ignored_values_never_link() {
    let mut sim = Sim::new(weak_only_policy(), 7);
    let mut policy = weak_only_policy();
    policy.ignored = vec![
        (AttrKind::Ja4, HYDRA_JA4),
        (AttrKind::IpPrefix, sim.hydra_prefixes[0]),
        (AttrKind::IpPrefix, sim.hydra_prefixes[1]),
    ];
    sim.linker.set_policy(policy);
    let hydra = sim.add_hydra(400);
    sim.run_until(EPOCH + 20 * MIN);
    assert_eq!(summary(&sim.linker, &hydra).0, 400);
    let stats = sim.linker.stats();
    assert_eq!((stats.clusters, stats.values), (0, 0));
}

#[test]
fn ignoring_only_the_ja4_leaves_the_prompt_rule() {
    let policy = LinkPolicy {
        ignored: vec![(AttrKind::Ja4, HYDRA_JA4)],
        ..LinkPolicy::default()
    };
    let mut sim = Sim::new(policy, 8);
    let hydra = sim.add_hydra(400);
    sim.run_until(EPOCH + 10 * MIN);
    let (unlinked, clusters) = summary(&sim.linker, &hydra);
    assert_eq!(unlinked, 0);
    // Only the prompt rule applies: one Medium cluster per template.
    assert_eq!(clusters.len(), 6);
    assert!(clusters
        .values()
        .all(|(_, v)| v.strength == Strength::Medium && v.rules == 0b010));
}

#[test]
fn downweighted_values_lower_strength() {
    let policy = LinkPolicy {
        downweighted: vec![(AttrKind::Ja4, HYDRA_JA4)],
        ..LinkPolicy::default()
    };
    let mut sim = Sim::new(policy, 9);
    let hydra = sim.add_hydra(400);
    sim.run_until(EPOCH + 10 * MIN);
    let (unlinked, clusters) = summary(&sim.linker, &hydra);
    assert_eq!(unlinked, 0);
    // strong → Medium, medium stays Medium, weak → no link: six Medium clusters joined by the strong rule's keys
    // are still split by template (those keys include the prompt).
    for (_, v) in clusters.values() {
        assert_eq!(v.strength, Strength::Medium);
        assert_eq!(v.rules & 0b100, 0, "the weak rule fell to nothing");
    }
}

#[test]
fn bounded_memory_under_a_million_accounts() {
    let policy = LinkPolicy {
        max_values: 50_000,
        ..LinkPolicy::default()
    };
    let max_values = policy.max_values;
    let mut linker = Linker::new(policy);
    let mut rng = StdRng::seed_from_u64(10);
    let n: u64 = 1_000_000;
    let span = 4 * GEN;
    let mut bands = [0u64; BANDS];
    let mut linked_pairs = 0;
    let mut peak_bytes = 0;
    for i in 0..n {
        let now = EPOCH + i * span / n;
        // Every 100th account repeats the previous account's prompt (a pair to link); the rest are unique.
        if i % 100 != 1 {
            bands = rng.gen();
        }
        let attrs = random_network_and_stack(&mut rng, &bands);
        let view = linker.observe(splitmix(i), &attrs, now);
        if i % 100 == 1 {
            assert_eq!(view.map(|v| v.members), Some(2));
            linked_pairs += 1;
        } else {
            assert_eq!(view, None);
        }
        if i % 50_000 == 0 {
            let stats = linker.stats();
            assert!(stats.values <= max_values, "{stats:?}");
            peak_bytes = peak_bytes.max(stats.approx_bytes);
        }
    }
    let stats = linker.stats();
    println!("1M accounts: {linked_pairs} linked pairs; stats {stats:?}; peak ~{peak_bytes} bytes");
    assert!(stats.values <= max_values);
    assert!(stats.evicted_total > 0);
    // Nine fresh keys a request (the bands of two prompt rules, one network key) at n / span requests a
    // nanosecond: the cap holds the last `max_values / 9` requests. Sampled LRU evicts a little short of that.
    let keys = (2 * BANDS + 1) as u64;
    let horizon = (max_values as u64 / keys) * span / n;
    let age = stats.evicted_age;
    assert!(
        age > horizon / 2 && age < horizon * 3 / 2,
        "{age} against {horizon}"
    );
    // Pairs come at ~2 500 per generation; only the last one to two generations are held.
    assert!(stats.accounts <= 2 * 2 * 2_600, "{stats:?}");
    assert!(stats.accounts >= 2 * 2_000, "{stats:?}");
    linker.maintain(EPOCH + span + 2 * GEN);
    let stats = linker.stats();
    assert_eq!(
        (stats.values, stats.entries, stats.accounts, stats.clusters),
        (0, 0, 0, 0)
    );
    check_index(&linker.index);
}

/// Keys each shared by many accounts fill lists, not the table: `max_values` alone lets entries reach
/// `max_values × max_accounts_per_value`. `max_entries` holds them, by evicting keys as `max_values` does, and a
/// lowered cap on reload evicts at once.
#[test]
fn index_entries_stay_under_their_cap_when_keys_are_shared() {
    let run = |max_entries: usize| {
        let policy = LinkPolicy {
            max_values: 5_000,
            max_entries,
            ..LinkPolicy::default()
        };
        let mut linker = Linker::new(policy);
        let mut rng = StdRng::seed_from_u64(11);
        // 60 templates, 4 networks, 4 stacks: every key is sent by dozens of the 3 000 accounts.
        let templates: Vec<[u64; BANDS]> = (0..60).map(|_| rng.gen()).collect();
        let mut peak = 0;
        for i in 0..30_000u64 {
            let account = splitmix(rng.gen_range(0..3_000u64));
            let attrs = Attributes {
                ja4: Some(rng.gen_range(1..5)),
                http: None,
                h2: None,
                ip_prefix: Some(rng.gen_range(1..5) << 8),
                asn: None,
                prompt: &templates[rng.gen_range(0..60)],
                shape: None,
            };
            linker.observe(account, &attrs, EPOCH + i * SEC / 10);
            if i % 500 == 0 {
                peak = peak.max(linker.stats().entries);
                check_index(&linker.index);
            }
        }
        (linker, peak)
    };
    // Without the entries cap (every key may hold its 64 accounts) this traffic holds far more than 12 000.
    let (_, uncapped) = run(5_000 * 64);
    assert!(uncapped > 30_000, "{uncapped}");
    let (mut linker, peak) = run(12_000);
    let stats = linker.stats();
    assert!(
        peak <= 12_000 && stats.entries <= 12_000,
        "{peak} {stats:?}"
    );
    assert!(stats.evicted_total > 0, "{stats:?}");
    // Linking still works within what is held: accounts of one template and network are clustered.
    assert!(stats.clusters > 0 && stats.accounts > 100, "{stats:?}");
    // A lowered cap on reload evicts at once.
    linker.set_policy(LinkPolicy {
        max_values: 5_000,
        max_entries: 6_000,
        ..LinkPolicy::default()
    });
    assert!(linker.stats().entries <= 6_000, "{:?}", linker.stats());
    check_index(&linker.index);
}

/// A large table's growth used to fault its new memory in with the linker locked (up to half a second). An owner
/// can make the next table ready beforehand: the growth then moves into it, and nothing else changes.
#[test]
fn the_index_grows_into_a_table_made_ready_ahead() {
    let mut plain = Linker::new(LinkPolicy::default());
    let mut ahead = Linker::new(LinkPolicy::default());
    let mut rng = StdRng::seed_from_u64(12);
    let mut made = Vec::new();
    let mut bands = [0u64; BANDS];
    // Nine keys a request, a pair on one prompt every 50 requests: about 117 000 keys, so the table grows into
    // 2^17 slots (4 MiB, the first size that is mapped) and then, at 98 304 keys, into 2^18.
    for i in 0..13_000u64 {
        if i % 50 != 1 {
            bands = rng.gen();
        }
        let attrs = random_network_and_stack(&mut rng, &bands);
        let now = EPOCH + i * SEC / 100;
        assert_eq!(
            plain.observe(splitmix(i), &attrs, now),
            ahead.observe(splitmix(i), &attrs, now)
        );
        if let Some(len) = ahead.spare_wanted() {
            assert_eq!(len, 2 * ahead.index.slots.len());
            assert!(ahead.index.len * 16 > ahead.index.slots.len() * 9);
            // One of the wrong size (made for a table that has grown or shrunk since) is not kept.
            ahead.give_spare(SpareTable::prepare(len / 2));
            assert_eq!(ahead.spare_wanted(), Some(len));
            let spare = SpareTable::prepare(len);
            made.push((len, spare.0.as_ptr()));
            ahead.give_spare(spare);
            assert_eq!(ahead.spare_wanted(), None, "asked again once ready");
        }
    }
    let lens: Vec<usize> = made.iter().map(|m| m.0).collect();
    assert_eq!(lens, [1 << 17, 1 << 18]);
    let (len, table) = made[1];
    assert_eq!(ahead.index.slots.len(), len);
    assert!(matches!(ahead.index.slots, Slots::Mapped(_)));
    assert_eq!(
        ahead.index.slots.as_ptr(),
        table,
        "the growth made a table of its own"
    );
    check_index(&ahead.index);
    let (p, a) = (plain.stats(), ahead.stats());
    assert_eq!(
        (p.values, p.entries, p.accounts, p.clusters),
        (a.values, a.entries, a.accounts, a.clusters)
    );
    // The keys of the table it grew from are still moving over (8 slots a touch), which holds its memory till then.
    assert!(ahead.index.old.is_some());
    assert_eq!(
        (p.mapped_bytes, a.mapped_bytes),
        (len * 32, len * 32 * 3 / 2)
    );
    let later = EPOCH + 13_000 * SEC / 100;
    plain.maintain(later);
    ahead.maintain(later);
    assert!(ahead.index.old.is_none(), "a full sweep moves the rest");
    check_index(&ahead.index);
    let (p, a) = (plain.stats(), ahead.stats());
    assert_eq!((p.values, p.entries), (a.values, a.entries));
    assert_eq!((p.mapped_bytes, a.mapped_bytes), (len * 32, len * 32));

    // A table that `max_values` keeps from growing again asks for nothing, however full it is.
    let mut capped = Linker::new(LinkPolicy {
        max_values: 80_000,
        ..LinkPolicy::default()
    });
    for i in 0..25_000u64 {
        let keys: [u64; BANDS] = rng.gen();
        let attrs = random_network_and_stack(&mut rng, &keys);
        capped.observe(splitmix(i), &attrs, EPOCH + i * SEC / 100);
        // 80 000 keys need 2^17 slots (2^16 hold 49 152), never 2^18.
        match capped.spare_wanted() {
            Some(len) if capped.index.slots.len() < 1 << 17 => {
                capped.give_spare(SpareTable::prepare(len))
            }
            wanted => assert_eq!(wanted, None),
        }
    }
    assert_eq!(capped.index.slots.len(), 1 << 17);
    assert!(capped.index.len * 16 > capped.index.slots.len() * 9);
}

/// A growth into a ready table moves its keys over the touches that follow (a few slots each, and a touched key at
/// once): while both tables hold keys, every touch finds what the same touch finds in an index that grew all at
/// once. At `max_values` during the move, the old table's keys, untouched since the growth, are evicted first.
#[test]
fn a_growth_into_a_ready_table_moves_its_keys_over_the_touches_that_follow() {
    let touch = |account: u64, now: Nanos, max_values: usize| Touch {
        account,
        now,
        window: GEN,
        max_window: 6 * GEN,
        per_value: 8,
        max_values,
        max_entries: 1 << 24,
    };
    let mut rng = StdRng::seed_from_u64(5);
    let (mut plain, mut ahead) = (Index::new(), Index::new());
    let mut found = (
        Found {
            limit: 64,
            ..Found::default()
        },
        Found {
            limit: 64,
            ..Found::default()
        },
    );
    let (mut growths, mut touches_while_moving, mut old_hits) = (0, 0, 0);
    for step in 0..300_000u64 {
        // Keys from a range that widens: old keys come back, some of them still in the old table.
        let key = splitmix(rng.gen_range(0..1 + step * 2 / 3)) | 1;
        let (account, now) = (rng.gen_range(0..40u64), EPOCH + step * SEC / 1000);
        found.0.items.clear();
        found.1.items.clear();
        let in_old = ahead
            .old
            .as_deref()
            .is_some_and(|o| probe_in(o, key).is_ok());
        plain.touch(key, &touch(account, now, 1 << 22), &mut found.0);
        ahead.touch(key, &touch(account, now, 1 << 22), &mut found.1);
        assert_eq!(found.0.items, found.1.items, "step {step}");
        old_hits += usize::from(in_old);
        touches_while_moving += usize::from(ahead.old.is_some());
        if let Some(len) = ahead.spare_wanted(1 << 22) {
            ahead.give_spare(SpareTable::prepare(len), now);
            growths += 1;
        }
        if step % 25_000 == 0 || (ahead.old.is_some() && step % 2_000 == 0) {
            check_index(&ahead);
        }
    }
    assert_eq!(growths, 2, "into 2^17 and 2^18 slots");
    assert!(
        touches_while_moving > 10_000 && old_hits > 100,
        "{touches_while_moving} {old_hits}"
    );
    assert!(ahead.old.is_none());
    assert_eq!((plain.len, plain.entries), (ahead.len, ahead.entries));
    check_index(&ahead);

    // `max_values` just past the growth: the cap is reached while the old table still holds most keys.
    let mut capped = Index::new();
    let (mut grown_at, mut moved_at) = (None, None);
    for k in 0..120_000u64 {
        let now = EPOCH + k * SEC / 1000;
        let was_moving = capped.old.is_some();
        capped.touch(splitmix(k) | 1, &touch(k, now, 100_000), &mut found.0);
        assert!(capped.len <= 100_000);
        if !was_moving && capped.old.is_some() {
            grown_at = Some(k);
        }
        if was_moving && capped.old.is_none() && k > 100_000 {
            moved_at = Some(k);
            // Every eviction so far took an old key: each key inserted since the growth is still held.
            let from = grown_at.unwrap();
            assert!((from..=k).all(|k| capped.probe(splitmix(k) | 1).is_ok()));
            assert!(capped.evicted_total > 1_000, "{}", capped.evicted_total);
        }
        if let Some(len) = capped.spare_wanted(100_000) {
            capped.give_spare(SpareTable::prepare(len), now);
        }
        if k % 10_000 == 0 {
            check_index(&capped);
        }
    }
    assert!(
        grown_at.is_some() && moved_at.is_some(),
        "{grown_at:?} {moved_at:?}"
    );
    assert_eq!(capped.len, 100_000);
    check_index(&capped);
}

/// Keys that hold steady between the load that asks for the next table and the growth would keep a table twice
/// the index's size for nothing: one unused for ten minutes is given back, and not asked for again until the keys
/// grow.
#[test]
fn a_spare_the_index_never_grows_into_is_given_back() {
    let mut index = Index::new();
    let mut found = Found::default();
    let mut key = 0u64;
    let mut add = |index: &mut Index, n: usize, now: Nanos| {
        for _ in 0..n {
            key += 1;
            let t = Touch {
                account: key,
                now,
                window: GEN,
                max_window: 6 * GEN,
                per_value: 64,
                max_values: 1 << 22,
                max_entries: 1 << 24,
            };
            index.touch(splitmix(key) | 1, &t, &mut found);
        }
    };
    // 80 000 keys: 61 % of 2^17 slots, past 9/16 and short of the growth at 3/4.
    add(&mut index, 80_000, EPOCH);
    assert_eq!(index.slots.len(), 1 << 17);
    let len = index
        .spare_wanted(1 << 22)
        .expect("asked for near the growth");
    assert_eq!(len, 1 << 18);
    let given = EPOCH + SEC;
    index.give_spare(SpareTable::prepare(len), given);
    assert_eq!(index.spare_wanted(1 << 22), None);
    let table = (1 << 17) * 32;
    assert_eq!(index.mapped_bytes(), 3 * table);
    // Kept while it may still be needed.
    index.release_stale_spare(given + 10 * MIN);
    assert_eq!(index.mapped_bytes(), 3 * table);
    // Unused for longer: given back, and not asked for again until the keys grow by 1/32 of the table.
    index.release_stale_spare(given + 10 * MIN + 1);
    assert_eq!(index.mapped_bytes(), table);
    add(&mut index, (1 << 17) / 32 - 1, given + 11 * MIN);
    assert_eq!(index.spare_wanted(1 << 22), None);
    add(&mut index, 1, given + 11 * MIN);
    assert_eq!(index.spare_wanted(1 << 22), Some(1 << 18));
    check_index(&index);
}

#[test]
fn linked_accounts_cap_refuses_links() {
    let policy = LinkPolicy {
        max_linked_accounts: 100,
        ..LinkPolicy::default()
    };
    let mut sim = Sim::new(policy, 11);
    let hydra = sim.add_hydra(400);
    sim.run_until(EPOCH + 10 * MIN);
    let stats = sim.linker.stats();
    assert!(stats.accounts <= 100, "{stats:?}");
    assert!(stats.links_dropped_total > 0);
    assert_eq!(summary(&sim.linker, &hydra).0, 400 - stats.accounts);
}

#[test]
fn merge_keeps_the_older_id() {
    let mut linker = Linker::new(LinkPolicy::default());
    let prompt = |p: u64| [p, p + 1, p + 2, p + 3];
    let (p1, p2, p3) = (prompt(100), prompt(200), prompt(300));
    assert_eq!(linker.observe(1, &attrs(&p1), EPOCH), None);
    let x = linker.observe(2, &attrs(&p1), EPOCH + SEC).unwrap();
    assert_eq!(
        (x.members, x.strength, x.rules, x.formed_at),
        (2, Strength::Medium, 0b010, EPOCH + SEC)
    );
    assert_eq!(linker.observe(3, &attrs(&p2), EPOCH + 2 * SEC), None);
    let y = linker.observe(4, &attrs(&p2), EPOCH + 3 * SEC).unwrap();
    assert_ne!(x.id, y.id);
    // 3 first, so the younger cluster's member starts the merge.
    linker.observe(3, &attrs(&p3), EPOCH + 4 * SEC);
    let merged = linker.observe(2, &attrs(&p3), EPOCH + 5 * SEC).unwrap();
    assert_eq!(
        (merged.id, merged.members, merged.formed_at),
        (x.id, 4, x.formed_at)
    );
    assert_eq!(linker.cluster(y.id), None);
    assert_eq!(linker.cluster_of(4).map(|v| v.id), Some(x.id));
    let mut members = linker.members(x.id, 10);
    members.sort_unstable();
    assert_eq!(members, vec![1, 2, 3, 4]);
    // What changed, for state kept per cluster: every account joined once, and y went into x.
    let changes = linker.changes().clone();
    assert_eq!(changes.merges, vec![(y.id, x.id)]);
    assert_eq!(changes.joined, vec![2, 1, 4, 3]);
    linker.clear_changes();
    assert!(linker.changes().is_empty());
    // Outside the window nothing links.
    let late = EPOCH + 5 * SEC + 11 * MIN;
    assert_eq!(linker.observe(5, &attrs(&p1), late), None);
}

#[test]
fn an_account_already_linked_skips_gathering_until_something_changes() {
    let mut linker = Linker::new(LinkPolicy::default());
    let refresh = linker.compiled.refresh;
    assert!(refresh > 0 && refresh < MIN);
    let (p1, p2) = ([100, 101, 102, 103], [200, 201, 202, 203]);
    linker.observe(1, &attrs(&p1), EPOCH);
    let x = linker.observe(2, &attrs(&p1), EPOCH + SEC).unwrap();
    // That gathering merged: not settled. The next finds only its cluster: settled.
    assert!(!linker.settled.contains_key(&2));
    assert_eq!(linker.observe(2, &attrs(&p1), EPOCH + 2 * SEC), Some(x));
    let shared = linker.shared_rules();
    assert_eq!(shared, 0b010);
    assert!(linker.settled.contains_key(&2));
    let first_of = |linker: &Linker, band: u64| {
        let key = murmur3_combine(linker.compiled.rules[1].seed, band).max(1);
        linker.index.slots[linker.index.probe(key).unwrap()].first
    };
    // Within `record_every` of that: no gathering and no recording, the same answer and shared rules; 2's entries
    // stay as they were.
    let record = linker.compiled.record_every;
    assert!(record > 0 && record < refresh);
    let t = EPOCH + 2 * SEC + record / 2;
    assert_eq!(linker.observe(2, &attrs(&p1), t), Some(x));
    assert_eq!(linker.shared_rules(), shared);
    for &band in &p1 {
        let at = EPOCH + 2 * SEC;
        assert_eq!(
            first_of(&linker, band),
            Entry {
                account: 2,
                seen: at
            }
        );
    }
    // Within `refresh`, after `record_every`: no gathering, the same answer and shared rules, and 2 is recorded at
    // the front of every key's list.
    let t = EPOCH + 2 * SEC + record;
    assert_eq!(linker.observe(2, &attrs(&p1), t), Some(x));
    assert_eq!(linker.shared_rules(), shared);
    for &band in &p1 {
        assert_eq!(
            first_of(&linker, band),
            Entry {
                account: 2,
                seen: t
            }
        );
    }
    // A newcomer links through its own request.
    let v = linker.observe(3, &attrs(&p1), t + SEC).unwrap();
    assert_eq!((v.id, v.members), (x.id, 3));
    // Other keys: a full gathering, which links 2 to the accounts of the other template.
    linker.observe(4, &attrs(&p2), t + 2 * SEC);
    let v = linker.observe(2, &attrs(&p2), t + 3 * SEC).unwrap();
    assert_eq!((v.id, v.members), (x.id, 4));
    // After `refresh`, and after a rotation, it gathers again.
    linker.observe(2, &attrs(&p2), t + 4 * SEC);
    assert!(linker.settled.contains_key(&2));
    linker.observe(2, &attrs(&p2), t + 4 * SEC + refresh);
    assert!(linker
        .settled
        .get(&2)
        .is_some_and(|s| s.at == t + 4 * SEC + refresh));
    linker.observe(5, &attrs(&[900]), EPOCH + GEN);
    assert!(linker.settled.is_empty());
}

#[test]
fn each_rule_has_its_own_window() {
    let mut policy = LinkPolicy::default();
    policy.rules[0].window = MIN; // strong: within one minute only
    let mut linker = Linker::new(policy);
    let bands = [7, 8];
    let attrs = Attributes {
        ja4: Some(1),
        ip_prefix: Some(2),
        prompt: &bands,
        ..Attributes::default()
    };
    assert_eq!(linker.observe(1, &attrs, EPOCH), None);
    // Two minutes later: too late for the strong rule, in time for medium and weak.
    let v = linker.observe(2, &attrs, EPOCH + 2 * MIN).unwrap();
    assert_eq!((v.strength, v.rules), (Strength::Medium, 0b110));
    // Thirty seconds later: strong.
    let v = linker
        .observe(3, &attrs, EPOCH + 2 * MIN + 30 * SEC)
        .unwrap();
    assert_eq!(
        (v.strength, v.rules, v.members),
        (Strength::Strong, 0b111, 3)
    );
}

#[test]
fn a_rule_of_one_evidence_class_reports_sharing_but_never_links() {
    // The reference rules with two classes required: "medium" (prompt
    // only) is signal-only; "weak" (JA4 + prefix) and "strong" link.
    let policy = LinkPolicy {
        min_classes: 2,
        ..LinkPolicy::default()
    };
    let mut linker = Linker::new(policy);
    let bands = [7, 8];
    // Strangers with one template, each from their own stack and network.
    for a in 1..=20u64 {
        let attrs = Attributes {
            ja4: Some(100 + a),
            ip_prefix: Some(200 + a),
            prompt: &bands,
            ..Attributes::default()
        };
        assert_eq!(linker.observe(a, &attrs, EPOCH + a * SEC), None);
        // Every one after the first saw the template on another account.
        let want = if a == 1 { 0 } else { 0b010 };
        assert_eq!(linker.shared_rules(), want, "account {a}");
    }
    assert_eq!(linker.stats().clusters, 0);
    // The same template with a second class (one stack and network): linked.
    let attrs = Attributes {
        ja4: Some(101),
        ip_prefix: Some(201),
        prompt: &bands,
        ..Attributes::default()
    };
    let v = linker.observe(99, &attrs, EPOCH + 30 * SEC).unwrap();
    assert_eq!((v.strength, v.members), (Strength::Strong, 2));
    assert_eq!(v.rules & 0b010, 0, "the signal-only rule holds no cluster");
    assert_eq!(linker.shared_rules(), 0b111);
}

#[test]
fn the_request_shape_is_a_class_of_its_own() {
    let policy = LinkPolicy {
        rules: vec![LinkRule {
            name: "template+shape".into(),
            kinds: vec![AttrKind::Prompt, AttrKind::Shape],
            strength: Strength::Medium,
            window: 10 * MIN,
        }],
        min_classes: 2,
        ..LinkPolicy::default()
    };
    let mut linker = Linker::new(policy);
    let bands = [7, 8];
    let with = |shape| Attributes {
        prompt: &bands,
        shape: Some(shape),
        ..Attributes::default()
    };
    assert_eq!(linker.observe(1, &with(5), EPOCH), None);
    // Same template, another request shape: no link.
    assert_eq!(linker.observe(2, &with(6), EPOCH + SEC), None);
    // Same template and shape: linked.
    let v = linker.observe(3, &with(5), EPOCH + 2 * SEC).unwrap();
    assert_eq!((v.strength, v.members), (Strength::Medium, 2));
}

#[test]
fn lists_keep_the_most_recent_accounts() {
    let policy = LinkPolicy {
        max_accounts_per_value: 16,
        ..LinkPolicy::default()
    };
    let mut linker = Linker::new(policy);
    let attrs = Attributes {
        ja4: Some(1),
        ip_prefix: Some(2),
        ..Attributes::default()
    };
    for a in 0..1_000u64 {
        linker.observe(a, &attrs, EPOCH + a * SEC / 10);
    }
    // One key (the weak rule's), sixteen most recent accounts.
    let stats = linker.stats();
    assert_eq!((stats.values, stats.entries), (1, 16));
    let slot = linker.index.slots.iter().find(|s| s.key != 0).unwrap();
    assert_eq!(slot.first.account, 999);
    let rest: Vec<u64> = linker
        .index
        .spills
        .get(slot.spill)
        .iter()
        .map(|e| e.account)
        .collect();
    assert_eq!(rest, (984..999).collect::<Vec<_>>());
    // All of them one weak cluster, each request linking to at most 8.
    let v = linker.cluster_of(0).unwrap();
    assert_eq!((v.members, v.strength), (1_000, Strength::Weak));
    check_index(&linker.index);
}

#[test]
fn split_evidence_gets_a_fresh_id_for_the_smaller_part() {
    let mut linker = Linker::new(LinkPolicy::default());
    // Generation 0: {1,2} via prompt A, {3,4} via prompt B, 2–3 via prompt C: one cluster X.
    let t = EPOCH;
    linker.observe(1, &attrs(&[10]), t);
    linker.observe(2, &attrs(&[10]), t + SEC);
    linker.observe(3, &attrs(&[20]), t + 2 * SEC);
    linker.observe(4, &attrs(&[20]), t + 3 * SEC);
    linker.observe(2, &attrs(&[30]), t + 4 * SEC);
    let x = linker.observe(3, &attrs(&[30]), t + 5 * SEC).unwrap();
    assert_eq!(x.members, 4);
    // Generation 1: only {1,2} and {3,4,5} relink (both adopt X); the bridge is gone.
    let t = EPOCH + GEN + MIN;
    linker.observe(1, &attrs(&[40]), t);
    linker.observe(2, &attrs(&[40]), t + SEC);
    linker.observe(3, &attrs(&[50]), t + 2 * SEC);
    linker.observe(4, &attrs(&[50]), t + 3 * SEC);
    linker.observe(5, &attrs(&[50]), t + 4 * SEC);
    assert_eq!(
        linker.cluster_of(5).map(|v| (v.id, v.members)),
        Some((x.id, 5))
    );
    // Generation 2: the larger part keeps X, the smaller gets a fresh id formed at rotation.
    linker.maintain(EPOCH + 2 * GEN + MIN);
    let big = linker.cluster_of(3).unwrap();
    let small = linker.cluster_of(1).unwrap();
    assert_eq!((big.id, big.members, big.formed_at), (x.id, 3, x.formed_at));
    assert_ne!(small.id, x.id);
    assert_eq!(small.members, 2);
    assert_eq!(linker.cluster(small.id), Some(small));
    assert_eq!(linker.cluster(x.id), Some(big));
}

#[test]
fn same_traffic_same_clusters() {
    let run = || {
        let mut sim = Sim::new(LinkPolicy::default(), 12);
        let mut accounts = sim.add_hydra(200);
        accounts.extend(sim.add_nat(30));
        accounts.extend(sim.add_ordinary(100));
        sim.run_until(EPOCH + 25 * MIN);
        let views: Vec<_> = accounts.iter().map(|&a| sim.linker.cluster_of(a)).collect();
        (views, sim.linker.stats())
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b);
    assert!(a.0.iter().any(Option::is_some));
}

#[test]
fn hot_reload_keeps_state() {
    let mut sim = Sim::new(LinkPolicy::default(), 13);
    let hydra = sim.add_hydra(400);
    sim.run_until(EPOCH + 5 * MIN);
    let before = sim.linker.cluster_of(hydra[0]).unwrap();
    let mut policy = LinkPolicy {
        max_values: 500,
        ..LinkPolicy::default()
    };
    policy.rules.reverse();
    sim.linker.set_policy(policy);
    assert!(sim.linker.stats().values <= 500);
    assert_eq!(sim.linker.cluster_of(hydra[0]), Some(before));
    sim.run_until(EPOCH + 25 * MIN);
    let (unlinked, clusters) = summary(&sim.linker, &hydra);
    assert_eq!((unlinked, clusters.len()), (0, 1));
    let (_, after) = clusters.values().next().copied().unwrap();
    assert_eq!(after.id, before.id);
    // Rule bits follow the new order: weak is now bit 0, strong bit 2.
    assert_eq!(after.rules, 0b111);
    check_index(&sim.linker.index);
}

#[test]
fn index_survives_churn() {
    let mut index = Index::new();
    let mut rng = StdRng::seed_from_u64(14);
    let mut out = Found::default();
    for step in 0..200_000u64 {
        let now = EPOCH + step * SEC / 10;
        let touch = Touch {
            account: rng.gen_range(0..50),
            now,
            window: 5 * SEC,
            max_window: 10 * SEC,
            per_value: 4,
            max_values: 3_000,
            max_entries: usize::MAX,
        };
        // Few distinct keys with clustered low bits, so probe runs and wrap-around are exercised.
        let key = (rng.gen_range(0..6_000u64) << 20 | rng.gen_range(0..8)).max(1);
        out.items.clear();
        out.limit = 8;
        index.touch(key, &touch, &mut out);
        assert!(out.items.len() < 4);
        assert!(out.items.iter().all(|e| e.account != touch.account));
        index.sweep_step(now, 10 * SEC);
        if step % 20_000 == 0 {
            check_index(&index);
            assert!(index.len <= 3_000);
        }
    }
    index.sweep_full(EPOCH + 200_000 * SEC / 10, 10 * SEC);
    check_index(&index);
    assert!(index.evicted_total + index.expired_total > 0);
}

/// The index against a plain model of what it keeps per key: the accounts, newest first, at most `per_value`, an
/// entry dropped once older than `max_window`; a touch finds the others within `window`, newest first, at most
/// `limit`. Keys of every popularity make spill lists grow, shrink, move between blocks, empty and come back, and
/// full sweeps compact the arena between rounds.
#[test]
fn index_matches_a_model_of_recent_accounts_per_key() {
    const WINDOW: Nanos = 5 * SEC;
    const MAX_WINDOW: Nanos = 20 * SEC;
    const PER_VALUE: usize = 12;
    let mut index = Index::new();
    let mut model: HashMap<u64, Vec<Entry>> = HashMap::new();
    let mut rng = StdRng::seed_from_u64(15);
    let mut out = Found::default();
    let mut now = EPOCH;
    let mut compacted = 0;
    for round in 0..6u64 {
        // Busy rounds and quiet ones, so that lists fill up and run dry.
        let (accounts, step) = if round % 2 == 0 {
            (60, SEC / 20)
        } else {
            (8, SEC)
        };
        for _ in 0..40_000 {
            now += rng.gen_range(0..step);
            let account = rng.gen_range(0..accounts);
            // A few hot keys, many cold ones.
            let key = if rng.gen_bool(0.3) {
                rng.gen_range(1..8u64)
            } else {
                rng.gen_range(8..2_000u64)
            };
            let t = Touch {
                account,
                now,
                window: WINDOW,
                max_window: MAX_WINDOW,
                per_value: PER_VALUE,
                max_values: 1 << 20,
                max_entries: usize::MAX,
            };
            out.items.clear();
            out.limit = 6;
            index.touch(key, &t, &mut out);
            let list = model.entry(key).or_default();
            list.retain(|e| now - e.seen <= MAX_WINDOW);
            let expected: Vec<Entry> = list
                .iter()
                .filter(|e| e.account != account && now - e.seen <= WINDOW)
                .take(6)
                .copied()
                .collect();
            assert_eq!(out.items, expected, "key {key} at {now}");
            match list.iter().position(|e| e.account == account) {
                Some(j) => {
                    list.remove(j);
                }
                None if list.len() >= PER_VALUE => {
                    list.pop();
                }
                None => {}
            }
            list.insert(0, Entry { account, seen: now });
            index.sweep_step(now, MAX_WINDOW);
        }
        check_index(&index);
        let free_before = index.spills.free_entries();
        index.sweep_full(now, MAX_WINDOW);
        check_index(&index);
        if free_before > 0 && index.spills.free_entries() == 0 {
            compacted += 1;
        }
        // Everything the model holds unexpired, the index holds, in the same order.
        for (key, list) in &model {
            let held: Vec<Entry> = match index.probe(*key) {
                Ok(i) => {
                    let s = index.slots[i];
                    let mut v = vec![s.first];
                    v.extend(index.spills.get(s.spill).iter().rev());
                    v
                }
                Err(_) => Vec::new(),
            };
            let live: Vec<Entry> = list
                .iter()
                .filter(|e| now - e.seen <= MAX_WINDOW)
                .copied()
                .collect();
            assert_eq!(held, live, "key {key} after round {round}");
        }
    }
    assert!(compacted > 0, "no full sweep compacted the arena");
}

/// Lists that grow past two entries leave their arena blocks free; compaction gives that room back and keeps every
/// list as it was.
#[test]
fn compaction_gives_back_the_blocks_of_lists_that_grew_long() {
    let mut index = Index::new();
    let mut out = Found::default();
    let touch = |account: u64, step: u64| Touch {
        account,
        now: EPOCH + step,
        window: SEC,
        max_window: 1_000 * SEC,
        per_value: 16,
        max_values: 1 << 20,
        max_entries: usize::MAX,
    };
    let keys = 1_000u64;
    // Three accounts per key: every list holds two entries, in a block of two.
    let mut step = 0;
    for account in 0..3 {
        for k in 1..=keys {
            step += 1;
            index.touch(k.wrapping_mul(GOLDEN) | 1, &touch(account, step), &mut out);
        }
    }
    check_index(&index);
    let short = index.spills.arena_len();
    assert!(short >= 2 * keys as usize);
    // Six more: every list is long now, and its block is free.
    for account in 3..9 {
        for k in 1..=keys {
            step += 1;
            index.touch(k.wrapping_mul(GOLDEN) | 1, &touch(account, step), &mut out);
        }
    }
    check_index(&index);
    assert_eq!(index.spills.free_entries(), index.spills.arena_len());
    let lists: Vec<Vec<Entry>> = (1..=keys)
        .map(|k| {
            let s = index.slots[index.probe(k.wrapping_mul(GOLDEN) | 1).unwrap()];
            index.spills.get(s.spill).to_vec()
        })
        .collect();
    index.spills.compact(&mut index.slots);
    check_index(&index);
    assert_eq!(
        (index.spills.arena_len(), index.spills.free_entries()),
        (0, 0)
    );
    for (k, list) in (1..=keys).zip(&lists) {
        let s = index.slots[index.probe(k.wrapping_mul(GOLDEN) | 1).unwrap()];
        assert_eq!(index.spills.get(s.spill), &list[..]);
        assert_eq!(list.len(), 8);
    }
}

/// A key's newest entry and its spill list, from whichever table holds it.
fn list_of(index: &Index, key: u64) -> Option<(Entry, Vec<Entry>)> {
    let old = index.old.as_deref().unwrap_or_default();
    let slot = match index.probe(key) {
        Ok(i) => index.slots[i],
        Err(_) if old.is_empty() => return None,
        Err(_) => old[probe_in(old, key).ok()?],
    };
    Some((slot.first, index.spills.get(slot.spill).to_vec()))
}

/// A compaction moves the short lists a few slots at a step, while between the steps lists grow, shrink, expire and
/// move, and keys come and go: every list stays as an index that never compacts has it, every touch finds the same
/// entries, and the arena the lists leave is let go once its last block has moved or been freed.
#[test]
fn a_compaction_in_steps_keeps_every_list_while_the_table_changes() {
    let mut rng = StdRng::seed_from_u64(7);
    // `index` compacts in steps; `plain` never compacts.
    let (mut index, mut plain) = (Index::new(), Index::new());
    let (mut out, mut plain_out) = (Found::default(), Found::default());
    out.limit = 64;
    plain_out.limit = 64;
    let max_window = 100 * SEC;
    let touch = |account: u64, now: Nanos| Touch {
        account,
        now,
        window: 50 * SEC,
        max_window,
        per_value: 8,
        max_values: 1 << 20,
        max_entries: usize::MAX,
    };
    let keys: Vec<u64> = (1..13_000u64).map(|k| k.wrapping_mul(GOLDEN) | 1).collect();
    let mut now = EPOCH;
    let (mut begun, mut finished, mut steps) = (0, 0, 0);
    for round in 0..60 {
        // Keys by threes of accounts (short lists), then by twelve (long lists: the short lists' blocks freed), half
        // of them the last round's.
        let base = round * 200;
        let accounts = if round % 2 == 0 { 3 } else { 12 };
        for _ in 0..2_000 {
            now += SEC / 50;
            let key = keys[base + rng.gen_range(0..400)];
            let t = touch(rng.gen_range(0..accounts), now);
            out.items.clear();
            plain_out.items.clear();
            index.touch(key, &t, &mut out);
            plain.touch(key, &t, &mut plain_out);
            assert_eq!(out.items, plain_out.items);
            if rng.gen_range(0..4) == 0 {
                index.sweep_step(now, max_window);
                plain.sweep_step(now, max_window);
            }
            if index.spills.moving().is_some() && rng.gen_range(0..4) == 0 {
                steps += 1;
                if !index.compact_step(3).0 {
                    finished += 1;
                }
            }
        }
        check_index(&index);
        for &key in &keys {
            assert_eq!(list_of(&index, key), list_of(&plain, key));
        }
        if index.spills.moving().is_none() {
            index.begin_compaction();
            begun += usize::from(index.spills.moving().is_some());
        }
    }
    assert!(begun >= 5, "{begun} compactions begun");
    assert!(
        finished + 1 >= begun,
        "{finished} of {begun} compactions finished"
    );
    assert!(steps > 1_000, "{steps} steps");
    // The arena in use holds no more than the index that never compacts.
    assert!(index.spills.arena_len() <= plain.spills.arena_len());
}

/// A table that grows past [`HUGE_TABLE_BYTES`] moves into a mapping of its own, keeps every key on the way, and
/// goes back to the heap when a sweep shrinks it.
#[test]
fn a_large_table_is_mapped_and_moves_back_when_it_shrinks() {
    let mut index = Index::new();
    assert!(matches!(index.slots, Slots::Heap(_)));
    let mut out = Found::default();
    let touch = |i: u64| Touch {
        account: i % 1_000,
        now: EPOCH + i,
        window: SEC,
        max_window: SEC,
        per_value: 4,
        max_values: 1 << 20,
        max_entries: usize::MAX,
    };
    let keys = (HUGE_TABLE_BYTES / size_of::<Slot>()) as u64;
    for i in 1..=keys {
        index.touch(i.wrapping_mul(GOLDEN) | 1, &touch(i), &mut out);
    }
    assert!(index.slots.len() * size_of::<Slot>() >= HUGE_TABLE_BYTES);
    assert!(matches!(index.slots, Slots::Mapped(_)));
    assert_eq!(index.len, keys as usize);
    check_index(&index);
    // Every key is still found after the moves.
    assert!((1..=keys).all(|i| index.probe(i.wrapping_mul(GOLDEN) | 1).is_ok()));
    index.sweep_full(EPOCH + keys + 2 * SEC, SEC);
    assert_eq!(index.len, 0);
    assert!(matches!(index.slots, Slots::Heap(_)));
    check_index(&index);
}

#[test]
fn policy_validation() {
    assert_eq!(LinkPolicy::default().validate(), Ok(()));
    let mut p = LinkPolicy::default();
    p.rules[1].kinds.clear();
    assert!(matches!(
        p.validate(),
        Err(LinkPolicyError::EmptyRule { .. })
    ));
    let p = LinkPolicy {
        generation: 0,
        ..LinkPolicy::default()
    };
    assert_eq!(
        p.validate(),
        Err(LinkPolicyError::Zero {
            field: "generation"
        })
    );
    let mut p = LinkPolicy::default();
    p.rules[2].name = "strong".into();
    assert!(p.validate().unwrap_err().to_string().contains("strong"));
    // An invalid policy is still usable: empty rules are skipped, zero limits raised.
    let mut p = LinkPolicy {
        max_values: 0,
        ..LinkPolicy::default()
    };
    p.rules[1].kinds.clear();
    let mut linker = Linker::new(p);
    let bands = [1, 2];
    let attrs = Attributes {
        prompt: &bands,
        ..Attributes::default()
    };
    linker.observe(1, &attrs, EPOCH);
    assert_eq!(
        linker.stats().values,
        0,
        "no rule applies without JA4 and prefix"
    );
}

/// `min_prompt_bands`: a link found only by the prompt rule needs that many distinct bands shared; a rule with
/// a client-stack or network attribute links on one.
#[test]
fn prompt_only_links_need_the_set_number_of_bands() {
    let linked = |min_prompt_bands: u8, a: &[u64], b: &[u64], stack: bool| {
        let mut policy = LinkPolicy {
            min_prompt_bands,
            ..LinkPolicy::default()
        };
        // Strong (JA4 + prefix + prompt) and medium (prompt); not the weak rule, which links on JA4 + prefix.
        policy.rules.truncate(2);
        let mut linker = Linker::new(policy);
        let with = |bands| Attributes {
            ja4: stack.then_some(HYDRA_JA4),
            ip_prefix: stack.then_some(77),
            ..attrs(bands)
        };
        linker.observe(1, &with(a), EPOCH);
        linker.observe(2, &with(b), EPOCH + SEC).is_some()
    };
    // One band in common (a stock phrase), then two.
    let one = ([10, 11, 12, 13], [10, 21, 22, 23]);
    let two = ([10, 11, 12, 13], [10, 11, 22, 23]);
    assert!(linked(1, &one.0, &one.1, false));
    assert!(!linked(2, &one.0, &one.1, false), "one band linked");
    assert!(linked(2, &two.0, &two.1, false));
    assert!(!linked(3, &two.0, &two.1, false), "two bands linked at 3");
    // Same JA4 and prefix: the strong rule links on one band.
    assert!(linked(2, &one.0, &one.1, true));
}

/// `late_after` / `late_min_prompt_bands`: a link found only by the prompt rule to a request older than `late_after`
/// needs the late count of bands; a newer one the usual count; nothing beyond the rule's window.
#[test]
fn late_prompt_only_links_need_the_late_number_of_bands() {
    let linked = |gap: Nanos, a: &[u64], b: &[u64]| {
        let mut linker = Linker::new(hour_with_late_bands(0));
        linker.observe(1, &attrs(a), EPOCH);
        linker.observe(2, &attrs(b), EPOCH + gap).is_some()
    };
    let one = ([10, 11, 12, 13], [10, 21, 22, 23]);
    let two = ([10, 11, 12, 13], [10, 11, 22, 23]);
    assert!(linked(5 * MINUTE, &one.0, &one.1));
    assert!(
        !linked(30 * MINUTE, &one.0, &one.1),
        "one band linked across 30 minutes"
    );
    assert!(linked(30 * MINUTE, &two.0, &two.1));
    assert!(
        !linked(70 * MINUTE, &two.0, &two.1),
        "linked beyond the window"
    );
}

/// `late_after_requests`: a one-band link to a request two minutes old is late when more than that many requests came
/// since (a busy API), and recent when fewer did.
#[test]
fn on_a_busy_api_one_band_links_only_across_few_requests() {
    let linked = |others: u64| {
        let mut linker = Linker::new(hour_with_late_bands(128));
        linker.observe(1, &attrs(&[10, 11, 12, 13]), EPOCH);
        // Other accounts' requests in the next minute, with prompts of their own.
        for i in 0..others {
            let bands = [1000 + 4 * i, 1001 + 4 * i, 1002 + 4 * i, 1003 + 4 * i];
            linker.observe(100 + i, &attrs(&bands), EPOCH + SEC + i * (MINUTE / 400));
        }
        linker
            .observe(2, &attrs(&[10, 21, 22, 23]), EPOCH + 2 * MINUTE)
            .is_some()
    };
    assert!(linked(0));
    assert!(linked(100), "not linked across 101 requests");
    assert!(!linked(300), "one band linked across 300 requests");
}

/// The reference policy's strong and prompt-only rules over an hour; links to requests older than ten minutes (or
/// `late_after_requests` requests) need two bands.
fn hour_with_late_bands(late_after_requests: u64) -> LinkPolicy {
    let mut policy = LinkPolicy {
        late_after: 10 * MINUTE,
        late_min_prompt_bands: 2,
        late_after_requests,
        ..LinkPolicy::default()
    };
    policy.rules.truncate(2);
    for rule in &mut policy.rules {
        rule.window = 60 * MINUTE;
    }
    policy
}

/// Attributes with only a prompt signature.
fn attrs(bands: &[u64]) -> Attributes<'_> {
    Attributes {
        prompt: bands,
        ..Attributes::default()
    }
}

/// Attributes with a random client stack and network (never shared) and `prompt`'s band keys.
fn random_network_and_stack<'a>(rng: &mut StdRng, prompt: &'a [u64]) -> Attributes<'a> {
    Attributes {
        ja4: Some(rng.gen()),
        http: Some(rng.gen()),
        h2: None,
        ip_prefix: Some(rng.gen()),
        asn: Some(rng.gen()),
        prompt,
        shape: None,
    }
}

fn splitmix(x: u64) -> u64 {
    murmur3_fmix64(x.wrapping_add(GOLDEN))
}

/// The reference policy's strong and prompt-only rules, with `single_band_contacts` set.
fn with_single_band_contacts(contacts: u8) -> LinkPolicy {
    let mut policy = LinkPolicy {
        single_band_contacts: contacts,
        ..LinkPolicy::default()
    };
    policy.rules.truncate(2);
    policy
}

/// `single_band_contacts` = 2: two strangers who share one phrasing with no one else stay apart however often they
/// meet on it; a third account that shares it joins all three (one of the two has then met two accounts so).
#[test]
fn a_link_on_one_band_waits_for_a_second_partner() {
    let (a, b, c) = ([10, 11, 12, 13], [10, 21, 22, 23], [10, 31, 32, 33]);
    let mut linker = Linker::new(with_single_band_contacts(1));
    linker.observe(1, &attrs(&a), EPOCH);
    assert!(
        linker.observe(2, &attrs(&b), EPOCH + SEC).is_some(),
        "at 1 the first one-band link joins"
    );

    let mut linker = Linker::new(with_single_band_contacts(2));
    for k in 0..4 {
        let t = EPOCH + k * MIN;
        assert!(linker.observe(1, &attrs(&a), t).is_none());
        assert!(
            linker.observe(2, &attrs(&b), t + SEC).is_none(),
            "two accounts linked on one band at their meeting {k}"
        );
    }
    // Account 2's four requests found account 1, and account 1's last three found account 2.
    assert_eq!(linker.stats().single_band_held_total, 7);
    let cluster = linker
        .observe(3, &attrs(&c), EPOCH + 5 * MIN)
        .expect("a third account on the band is linked");
    assert_eq!(cluster.members, 3);
    assert_eq!(linker.cluster_of(1).map(|v| v.id), Some(cluster.id));
    assert_eq!(linker.stats().single_band_held_total, 7);
    assert_eq!(linker.stats().single_band_unrecorded_total, 0);
}

/// `single_band_contacts` holds back only links on one band alone: two bands, or a rule with a client-stack or
/// network attribute, join at once.
#[test]
fn links_on_more_than_one_band_are_not_held_back() {
    let mut linker = Linker::new(with_single_band_contacts(2));
    linker.observe(1, &attrs(&[10, 11, 12, 13]), EPOCH);
    assert!(linker
        .observe(2, &attrs(&[10, 11, 22, 23]), EPOCH + SEC)
        .is_some());

    let mut linker = Linker::new(with_single_band_contacts(2));
    let with_stack = |bands| Attributes {
        ja4: Some(HYDRA_JA4),
        ip_prefix: Some(77),
        ..attrs(bands)
    };
    linker.observe(1, &with_stack(&[10, 11, 12, 13]), EPOCH);
    assert!(linker
        .observe(2, &with_stack(&[10, 21, 22, 23]), EPOCH + SEC)
        .is_some());
}

/// Single-band contacts count for one to two generations: a partner met more than two generations ago is
/// forgotten, so a new one is again only the first.
#[test]
fn single_band_contacts_are_forgotten_after_two_generations() {
    let (a, b, c) = ([10, 11, 12, 13], [10, 21, 22, 23], [10, 31, 32, 33]);
    let third_links = |gap: Nanos| {
        let mut linker = Linker::new(with_single_band_contacts(2));
        linker.observe(1, &attrs(&a), EPOCH);
        assert!(linker.observe(2, &attrs(&b), EPOCH + SEC).is_none());
        // Account 1 again, alone within the window; then a third account.
        linker.observe(1, &attrs(&a), EPOCH + gap);
        linker.observe(3, &attrs(&c), EPOCH + gap + SEC).is_some()
    };
    assert!(
        third_links(GEN + MIN),
        "a partner of the last generation forgotten"
    );
    assert!(
        !third_links(2 * GEN + 5 * MIN),
        "a partner of two generations ago still counted"
    );
}
