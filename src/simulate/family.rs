//! Scenario families: scenarios drawn at random from a strategy space, one
//! per seed, and the evaluation of a policy over a family. Seeds are split
//! once and for all into a *tuning* family (weights and thresholds may be
//! fitted there) and a *held-out* family (only reported), which also uses
//! attack templates the tuning family never shows. `docs/scenarios.md`
//! lists the ranges.
//!
//! Each scenario is built from the same [`Population`]s as a scenario
//! file: honest look-alikes of a campaign (chat, students asking for
//! step-by-step answers, users of one app sharing its system prompt,
//! corporate NATs, batch summarisers, evaluation harnesses, LLM-as-judge
//! pipelines, tool-using agents, chats over pasted documents, and heavy
//! long-answer users: students' worked solutions, document writers, judges
//! that reason, whole-document rewrites) with drawn sizes and rates, a
//! hydra with drawn size and pools, and a campaign drawn from the whole
//! [`AttackStrategy`] space. Each population draws from its own stream.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::redteam::COST;
use super::scenario::{self, Per, Piece, Population, Scenario, Timing};
use super::strategy::{AttackStrategy, HONEST_STACKS, RESIDENTIAL, ROTATION_STACKS, TOOL_STACKS};
use crate::config::Config;
use crate::engine::AccountId;

/// A fixed half of the seed space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Seeds 1000–1999: tune on these.
    Tuning,
    /// Seeds 9000–9999: report on these, never tune on them.
    Heldout,
}

/// Seeds in a family.
pub const FAMILY_SIZE: u64 = 1000;

impl Family {
    /// The family's first seed.
    pub fn first_seed(self) -> u64 {
        match self {
            Family::Tuning => 1000,
            Family::Heldout => 9000,
        }
    }

    /// The family of a seed, if it belongs to one.
    pub fn of_seed(seed: u64) -> Option<Family> {
        [Family::Tuning, Family::Heldout]
            .into_iter()
            .find(|f| (f.first_seed()..f.first_seed() + FAMILY_SIZE).contains(&seed))
    }

    /// Its first `n` seeds (at most [`FAMILY_SIZE`]).
    pub fn seeds(self, n: u64) -> Vec<u64> {
        self.seeds_from(0, n)
    }

    /// `n` of its seeds after its first `skip` (never past its last seed).
    pub fn seeds_from(self, skip: u64, n: u64) -> Vec<u64> {
        let from = skip.min(FAMILY_SIZE);
        (from..from.saturating_add(n).min(FAMILY_SIZE))
            .map(|i| self.first_seed() + i)
            .collect()
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Tuning => "tuning",
            Family::Heldout => "heldout",
        }
    }
}

/// How large a drawn scenario is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Size {
    /// Scenario length in minutes.
    pub minutes: u64,
    /// Every population's accounts are multiplied by this (at least one
    /// account each).
    pub accounts: f64,
}

impl Size {
    /// Two hours at full size: about 20–35 thousand requests.
    pub const FULL: Size = Size {
        minutes: 120,
        accounts: 1.0,
    };
}

const MINUTE: u64 = 60_000;

/// The attack templates: the tuning family uses the small scenario's
/// (`config/scenarios/small.toml`), the held-out family its own.
fn attack_templates(family: Family) -> (Vec<Vec<Piece>>, Vec<Vec<Piece>>) {
    let parse = |list: &[&str]| -> Vec<Vec<Piece>> {
        list.iter()
            .filter_map(|t| scenario::parse_template(t).ok())
            .collect()
    };
    match family {
        Family::Tuning => {
            let small =
                scenario::parse(std::path::Path::new("small.toml"), scenario::SMALL_SCENARIO).ok();
            let of = |name: &str| {
                small
                    .as_ref()
                    .and_then(|s| s.populations.iter().find(|p| p.name == name))
                    .map(|p| p.templates.clone())
                    .unwrap_or_default()
            };
            (of("hydra"), of("stealth"))
        }
        Family::Heldout => (parse(&HELDOUT_PLAIN), parse(&HELDOUT_PARAPHRASED)),
    }
}

/// Held-out hydra templates: written for this family only.
const HELDOUT_PLAIN: [&str; 4] = [
    "Take the worked problem below and produce the complete derivation that arrives at the given result, with each inference on its own line.\nProblem: {}\nResult: {}",
    "Act as an expert annotator. For the dialogue below, label the intent of every turn and explain the evidence for each label in detail.\nDialogue: {}\nLabels wanted: {}",
    "Translate the following passage into French, then explain every translation choice you made and the alternatives you rejected.\nPassage: {}\nRegister: {}",
    "Given the specification below, design the data structures and algorithms, justify the complexity of each operation, and then write the full implementation.\nSpecification: {}\nLanguage: {}",
];

/// Held-out paraphrased templates: written for this family only.
const HELDOUT_PARAPHRASED: [&str; 4] = [
    "{Here's|This is|Below you'll find|I'm sharing} {a problem|an exercise|a puzzle|a question} {and the answer someone gave|together with a reply it got|with its final result|and what was answered}. {Could you|Can you|I'd like you to|Please} {recreate|unpack|retrace|explain in full} {how one gets there|the path to that result|the steps that reach it|the derivation behind it}, {not leaving anything out|covering every step|with nothing skipped|in as much detail as possible}.\n{Problem|Exercise|Puzzle|Question}: {}\n{Reply|Result|Answer|What was answered}: {}",
    "{For a course I'm designing|For our internal wiki|For a workshop handout|For a set of flashcards}, {I need|we need|I want|I'm after} {model answers|reference solutions|exemplary responses|annotated solutions} {with the reasoning spelled out|that show the thinking|that explain themselves|with every step visible}. {Answer|Respond to|Work out|Handle} the {item|prompt|question|case} below {accordingly|in that style|the same way|like that}.\n{Item|Prompt|Question|Case}: {}\n{Notes|Hints|Context|Extra}: {}",
    "{Review|Critique|Assess|Appraise} the {reply|essay|solution|proposal} {that follows|below|given here|at the end} {like a meticulous editor|as a rigorous referee|the way a tough reviewer would|as a domain expert would}: {list each flaw and why it matters|go point by point and justify each criticism|name every weakness and give the reasoning|explain every issue you find}, {then rewrite it properly|and then supply a corrected version|then produce an improved version|and finish with a better version}.\n{Prompt|Brief|Assignment|Request}: {}\n{Reply|Essay|Solution|Proposal}: {}",
    "{An assistant|A model|An automated helper|A chatbot} {was asked|got the request|received the instruction|was told} {shown below|quoted here|that follows|given here} and {used tools|called several functions|ran some commands|queried a few APIs} {to finish it|before replying|to get the result|along the way}. {Write down|Spell out|Produce|Give me} {the whole sequence|each call in order|every action taken|the full run}, {with arguments and outputs|including inputs and results|with parameters and responses|listing what went in and came out}, {and the thinking in between|and the reasons for each step|plus the rationale for every move|with the reasoning between calls}.\n{Request|Instruction|Task|Ask}: {}\n{Result|Reply|Outcome|Final answer}: {}",
];

/// Honest look-alikes' templates.
const APP_PROMPTS: [&str; 4] = [
    "You are a helpful writing assistant inside a note-taking app. Improve the user's text for clarity and tone without changing its meaning; answer in the user's language and keep their formatting.\n\nNote:\n{}\n\nRequest: {}",
    "You are an interactive command line coding agent. You help the user with software engineering tasks in their repository. Use the available tools to read files, search the code, run commands and edit files; prefer small, verifiable steps.\n\nRepository context:\n{}\n\nUser: {}",
    "You are the support assistant of an online shop. Answer questions about orders, delivery and returns politely and briefly; never promise refunds, hand over to a human when unsure.\n\nOrder data: {}\n\nCustomer: {}",
    "You are a tutor for secondary-school mathematics. Guide the student to the answer with hints and questions, explain each step when asked, and check their working.\n\nTopic: {}\n\nStudent: {}",
];
/// A company's internal assistants: the system prompt of a tool only its
/// staff use (so the NAT's users are one app's users, not also a public
/// app's).
const INTERNAL_APP_PROMPTS: [&str; 3] = [
    "You are the internal knowledge assistant of a logistics company. Answer staff questions from the policy handbook and the wiki excerpts below; cite the section you used and say when the handbook does not cover a question.\n\nExcerpts:\n{}\n\nEmployee: {}",
    "You are the drafting assistant of a law firm's contracts team. Redraft the clause below in plain English for the client memo, keep every defined term and flag anything that changes the clause's effect.\n\nClause:\n{}\n\nAssociate: {}",
    "You are the engineering assistant of a hardware design group. Answer questions about the team's internal build and test tooling; prefer the documented commands and keep answers short.\n\nTool docs:\n{}\n\nEngineer: {}",
];
const BATCH_TEMPLATES: [&str; 4] = [
    "Summarise the following support ticket in three bullet points for the weekly report.\nTicket: {}",
    "Extract the invoice number, the total and the due date from this email as JSON.\nEmail: {}",
    "Classify the sentiment of this product review as positive, neutral or negative.\nReview: {}",
    "Translate this product description into German, keeping the HTML tags unchanged.\nDescription: {}",
];
const EVAL_TEMPLATES: [&str; 2] = [
    "Answer with a single letter.\nQuestion: {}\nA) {}\nB) {}\nC) {}\nD) {}",
    "Answer with the final number only.\nProblem: {}",
];
const JUDGE_TEMPLATES: [&str; 2] = [
    "Please act as an impartial judge and evaluate the quality of the two responses to the user question below. Explain briefly, then output your verdict as [[A]], [[B]] or [[C]] for a tie.\nQuestion: {}\nResponse A: {}\nResponse B: {}",
    "Rate the following answer for factual accuracy on a scale of 1 to 5 and give one sentence of justification.\nQuestion: {}\nAnswer: {}",
];
const AGENT_TEMPLATES: [&str; 2] = [
    "System: you can call tools. Tools: search(query), read(url), python(code).\nConversation so far: {}\nTool result: {}\nUser: {}",
    "You are a browsing agent. Decide the next action from click, type, scroll or finish and give its arguments.\nPage: {}\nGoal: {}\nHistory: {}",
];
const STUDENT_PHRASES: [&str; 4] = [
    "explain it step by step",
    "show your working",
    "walk me through each step",
    "why does that step work",
];
/// What students who want the whole working type (some of it on the
/// elicitation list: honest users say these too).
const STUDENT_LONG_PHRASES: [&str; 6] = [
    "explain it step by step",
    "show your working",
    "walk me through your reasoning",
    "explain your thought process",
    "write out every step of your reasoning",
    "show every intermediate step",
];
const JUDGE_RATIONALE_TEMPLATES: [&str; 2] = [
    "You are grading a response using the rubric below. Think step by step: for each criterion, quote the relevant part of the response, explain whether it meets the criterion and why, then give the score on a scale of 1 to 10.\nRubric: {}\nQuestion: {}\nResponse: {}",
    "Compare the two answers below as an expert reviewer. Write a detailed critique of each, covering correctness, completeness and clarity, explain your reasoning, then state which response is better.\nQuestion: {}\nAnswer A: {}\nAnswer B: {}",
];
const CHAT_PHRASES: [&str; 2] = [
    "write out your reasoning step by step",
    "every intermediate step",
];

fn templates(list: &[&str]) -> Vec<Vec<Piece>> {
    list.iter()
        .filter_map(|t| scenario::parse_template(t).ok())
        .collect()
}

/// An honest population with a chat client's defaults; callers set what
/// differs.
fn honest(name: String, seed: u64, nets: &[(&str, u32)], addresses: u32) -> Population {
    let (addresses, address_asns) =
        scenario::spread_over(nets, addresses.max(1), address_seed(seed, &name));
    Population {
        name,
        attack: false,
        accounts: 1,
        rate_per_hour: 6.0,
        start_ms: 0,
        end_ms: 0,
        timing: Timing::Poisson,
        ja4: HONEST_STACKS.iter().map(|s| s.0.to_string()).collect(),
        http: HONEST_STACKS.iter().map(|s| s.1.to_string()).collect(),
        h2: Vec::new(),
        fingerprint_per: Per::Account,
        addresses,
        address_asns,
        address_per: Per::Account,
        models: vec!["claude-sonnet-4-5".into()],
        templates: Vec::new(),
        template_per: Per::Request,
        prompt_words: [8, 120],
        fill_words: [10, 40],
        elicitation_share: 0.0,
        elicitation_phrases: Vec::new(),
        max_tokens: vec![1024, 2048, 4096, 8192],
        pinned_max_tokens_share: 0.0,
        thinking_share: 0.1,
        thinking_budget: 16000,
        output_tokens: [80, 1500],
        inconsistent_share: 0.0,
        stealth: false,
        paraphrase_share: 1.0,
        warmup_ms: 0,
        cover_share: 0.0,
        community: None,
        tenure_hours: Some(HONEST_TENURE_HOURS),
        new_accounts: 0.0,
        second_client: None,
    }
}

/// Honest accounts are a month to three years old, but for the sign-ups
/// of the day ([`with_new_accounts`]).
const HONEST_TENURE_HOURS: [f64; 2] = [24.0 * 30.0, 24.0 * 365.0 * 3.0];

/// Every honest population's share of new accounts (sign-ups of the day:
/// 2 to 20 %), each drawn from a stream of its own so the populations keep
/// their other draws.
fn with_new_accounts(seed: u64, mut pops: Vec<Population>) -> Vec<Population> {
    // A population that states its own share (a workshop's sign-ups) keeps it.
    for p in pops
        .iter_mut()
        .filter(|p| !p.attack && p.new_accounts == 0.0)
    {
        p.new_accounts = stream(seed, &format!("{}/tenure", p.name)).gen_range(0.02..=0.2);
    }
    pops
}

/// Where honest accounts' second clients send from: a mobile carrier and
/// a cloud provider's region (a server beside a developer's laptop), each
/// its own AS.
const SECOND_CLIENT_NETS: [(&str, u32); 2] = [("100.0.0.0/10", 64660), ("44.0.0.0/10", 64661)];

/// Every honest population's accounts that also send from a second client
/// (0 to 25 % of them, 10 to 40 % of their requests each), each drawn from
/// a stream of its own ("<name>/clients") so the populations keep their
/// other draws. These are the honest look-alikes of a campaign rotating
/// client stacks and addresses: their stack and network change between
/// requests, though far less often.
fn with_second_clients(seed: u64, mut pops: Vec<Population>) -> Vec<Population> {
    for p in pops
        .iter_mut()
        .filter(|p| !p.attack && p.second_client.is_none())
    {
        let name = format!("{}/clients", p.name);
        let rng = &mut stream(seed, &name);
        let (accounts, requests) = (rng.gen_range(0.0..=0.25), rng.gen_range(0.1..=0.4));
        let (addresses, address_asns) = scenario::spread_over(
            &SECOND_CLIENT_NETS,
            p.accounts.max(1),
            address_seed(seed, &name),
        );
        p.second_client = Some(scenario::SecondClient {
            accounts,
            requests,
            clients: 1,
            addresses,
            address_asns,
        });
    }
    pops
}

/// Users of one coding agent (the tool's system prompt and two of its
/// client stacks, long contexts, high limits, thinking half the time);
/// callers set accounts, rate and answers.
fn coding_agents(name: &str, seed: u64, nets: &[(&str, u32)], addresses: u32) -> Population {
    let stacks = &HONEST_STACKS[3..5];
    Population {
        ja4: stacks.iter().map(|s| s.0.to_string()).collect(),
        http: stacks.iter().map(|s| s.1.to_string()).collect(),
        templates: templates(&AGENT_TEMPLATES),
        fill_words: [100, 400],
        max_tokens: vec![16000, 32000],
        thinking_share: 0.5,
        community: Some(AGENT_TOOL.into()),
        ..honest(name.into(), seed, nets, addresses)
    }
}

fn one_stack(i: usize, stacks: &[(&str, &str)]) -> (Vec<String>, Vec<String>) {
    let (j, h) = stacks[i % stacks.len()];
    (vec![j.to_string()], vec![h.to_string()])
}

/// The stream a drawn scenario's population `name` (or `"layout"`, the
/// scenario's shape) draws its parameters from: the seed and the name,
/// never the position ([`super::population_rng`]).
fn stream(seed: u64, name: &str) -> ChaCha8Rng {
    super::population_rng(seed, name, PARAMETER_STREAM)
}

/// Where population `name` of the scenario of `seed` places its addresses:
/// its own, so two populations in one network do not share addresses by
/// position.
pub(crate) fn address_seed(seed: u64, name: &str) -> u64 {
    super::population_stream(seed, name, 0xadd7)
}

/// Purpose of the parameter streams.
const PARAMETER_STREAM: u64 = 0xfa31;

/// A drawn account count: `lo..=hi` times the size's factor, at least one.
fn accounts(rng: &mut ChaCha8Rng, (lo, hi): (u32, u32), size: Size) -> u32 {
    ((f64::from(rng.gen_range(lo..=hi)) * size.accounts).round() as u32).max(1)
}

/// The honest look-alikes, drawn. Each population's parameters come from
/// its own stream ([`stream`]); which apps and how many NATs there are
/// come from the scenario's layout stream. A population added here draws
/// from a stream of its own, so the others keep their draws.
fn honest_populations(seed: u64, size: Size) -> Vec<Population> {
    let end = size.minutes * MINUTE;
    let n = |rng: &mut ChaCha8Rng, lo: u32, hi: u32| accounts(rng, (lo, hi), size);
    let mut layout = stream(seed, "layout");
    let mut pops = Vec::new();
    // Chat users: browsers and SDKs in residential ISPs.
    let rng = &mut stream(seed, "chat");
    let accounts = n(rng, 200, 400);
    pops.push(Population {
        accounts,
        rate_per_hour: rng.gen_range(4.0..8.0),
        end_ms: end,
        elicitation_share: rng.gen_range(0.01..0.05),
        elicitation_phrases: CHAT_PHRASES.iter().map(|s| s.to_string()).collect(),
        ..honest("chat".into(), seed, &RESIDENTIAL, accounts)
    });
    // Students asking for step-by-step explanations.
    let rng = &mut stream(seed, "students");
    let accounts = n(rng, 40, 120);
    pops.push(Population {
        accounts,
        rate_per_hour: rng.gen_range(3.0..8.0),
        end_ms: end,
        prompt_words: [15, 80],
        elicitation_share: rng.gen_range(0.3..0.7),
        elicitation_phrases: STUDENT_PHRASES.iter().map(|s| s.to_string()).collect(),
        thinking_share: 0.2,
        max_tokens: vec![2048, 4096],
        output_tokens: [300, 2500],
        ..honest("students".into(), seed, &RESIDENTIAL, accounts)
    });
    // Users of one app each: its system prompt in every request, its client.
    let apps = layout.gen_range(1..=3usize);
    let first_app = layout.gen_range(0..APP_PROMPTS.len());
    for k in 0..apps {
        let app = (first_app + k) % APP_PROMPTS.len();
        let name = format!("app-{app}-users");
        let rng = &mut stream(seed, &name);
        let accounts = n(rng, 20, 80);
        let (ja4, http) = one_stack(3 + k, &HONEST_STACKS);
        pops.push(Population {
            accounts,
            rate_per_hour: rng.gen_range(5.0..12.0),
            end_ms: end,
            ja4,
            http,
            templates: templates(&APP_PROMPTS[app..=app]),
            fill_words: [20, 200],
            max_tokens: vec![4096, 8192, 32000],
            thinking_share: rng.gen_range(0.0..0.5),
            output_tokens: [100, 3000],
            ..honest(name, seed, &RESIDENTIAL, accounts)
        });
    }
    // Corporate NATs: many accounts, one or two addresses, one client stack.
    let nats = layout.gen_range(1..=2usize);
    for k in 0..nats {
        let name = format!("corporate-nat-{k}");
        let rng = &mut stream(seed, &name);
        let accounts = n(rng, 20, 100);
        let (ja4, http) = one_stack(k * 3 + 3, &HONEST_STACKS);
        let net = [("192.0.2.0/24", 64700), ("172.16.5.0/24", 64701)][k];
        pops.push(Population {
            accounts,
            rate_per_hour: rng.gen_range(4.0..8.0),
            end_ms: end,
            ja4,
            http,
            max_tokens: vec![2048, 4096],
            prompt_words: [10, 150],
            elicitation_share: 0.02,
            elicitation_phrases: CHAT_PHRASES.iter().map(|s| s.to_string()).collect(),
            thinking_share: 0.0,
            output_tokens: [100, 2000],
            ..honest(name, seed, &[net], rng.gen_range(1..=2))
        });
    }
    // A company's staff using its internal assistant behind their corporate
    // NAT: one system prompt, one client stack, one or two addresses in one /24 —
    // every attribute a strong link rule joins on. One cluster of one
    // population; it must not be acted on for being one.
    let rng = &mut stream(seed, "app-nat");
    let accounts = n(rng, 20, 60);
    let app = rng.gen_range(0..INTERNAL_APP_PROMPTS.len());
    let (ja4, http) = one_stack(4, &HONEST_STACKS);
    pops.push(Population {
        accounts,
        rate_per_hour: rng.gen_range(4.0..10.0),
        end_ms: end,
        ja4,
        http,
        templates: templates(&INTERNAL_APP_PROMPTS[app..=app]),
        fill_words: [20, 200],
        max_tokens: vec![4096, 8192],
        thinking_share: rng.gen_range(0.0..0.3),
        output_tokens: [100, 2500],
        ..honest(
            "app-nat".into(),
            seed,
            &[("198.51.100.0/24", 64702)],
            rng.gen_range(1..=2),
        )
    });
    // A company's developers running coding agents behind their office
    // NAT: tool-use trajectories with long answers at agent rates, a few
    // addresses in one /24, one or two client stacks. Per account and per
    // network they take as many long answers as an extraction does. The
    // same coding tool as `agents` (one community: the tool's prompt links
    // its users by template+shape).
    let rng = &mut stream(seed, "office-agents");
    let accounts = n(rng, 8, 30);
    let rate_per_hour = rng.gen_range(10.0..30.0);
    let addresses = rng.gen_range(1..=4);
    pops.push(Population {
        accounts,
        rate_per_hour,
        end_ms: end,
        output_tokens: [500, 6000],
        ..coding_agents(
            "office-agents",
            seed,
            &[("203.0.113.0/24", 64703)],
            addresses,
        )
    });
    // Batch summarisers: high volume, fixed templates, small max_tokens.
    let rng = &mut stream(seed, "batch");
    let accounts = n(rng, 1, 4);
    let (ja4, http) = one_stack(1, &TOOL_STACKS);
    pops.push(Population {
        accounts,
        rate_per_hour: rng.gen_range(100.0..300.0),
        end_ms: end,
        timing: Timing::Periodic { jitter: 0.05 },
        ja4,
        http,
        templates: templates(&BATCH_TEMPLATES),
        template_per: Per::Account,
        fill_words: [40, 160],
        max_tokens: vec![300],
        thinking_share: 0.0,
        output_tokens: [40, 250],
        ..honest("batch".into(), seed, &[("10.20.0.0/16", 64800)], accounts)
    });
    // An evaluation harness: a burst of short, fixed-format questions.
    let rng = &mut stream(seed, "eval");
    let start = rng.gen_range(0..size.minutes.max(2) / 2) * MINUTE;
    let (ja4, http) = one_stack(0, &TOOL_STACKS);
    pops.push(Population {
        accounts: 1,
        rate_per_hour: rng.gen_range(300.0..900.0),
        start_ms: start,
        end_ms: (start + rng.gen_range(10..=20) * MINUTE).min(end),
        timing: Timing::Periodic { jitter: 0.0 },
        ja4,
        http,
        templates: templates(&EVAL_TEMPLATES),
        fill_words: [3, 20],
        max_tokens: vec![1, 5],
        thinking_share: 0.0,
        output_tokens: [1, 5],
        ..honest("eval".into(), seed, &[("10.30.0.0/24", 64801)], 1)
    });
    // LLM-as-judge pipelines: a grader template, short verdicts.
    let rng = &mut stream(seed, "judge");
    let accounts = n(rng, 1, 3);
    let (ja4, http) = one_stack(3, &HONEST_STACKS);
    pops.push(Population {
        accounts,
        rate_per_hour: rng.gen_range(60.0..200.0),
        end_ms: end,
        timing: Timing::Periodic { jitter: 0.2 },
        ja4,
        http,
        templates: templates(&JUDGE_TEMPLATES),
        fill_words: [30, 200],
        max_tokens: vec![512, 1024],
        thinking_share: 0.0,
        output_tokens: [50, 400],
        ..honest("judge".into(), seed, &[("10.40.0.0/24", 64802)], accounts)
    });
    // Agents with tool-use trajectories: long contexts, high limits.
    let rng = &mut stream(seed, "agents");
    let accounts = n(rng, 20, 60);
    pops.push(Population {
        accounts,
        rate_per_hour: rng.gen_range(15.0..40.0),
        end_ms: end,
        output_tokens: [300, 4000],
        ..coding_agents("agents", seed, &RESIDENTIAL, accounts)
    });
    // Multi-turn chats over pasted documents: long prompts.
    let rng = &mut stream(seed, "doc-chat");
    let accounts = n(rng, 20, 80);
    pops.push(Population {
        accounts,
        rate_per_hour: rng.gen_range(3.0..8.0),
        end_ms: end,
        prompt_words: [800, 3000],
        max_tokens: vec![2048, 4096],
        output_tokens: [200, 1500],
        ..honest("doc-chat".into(), seed, &RESIDENTIAL, accounts)
    });
    pops.push(team_keys(seed, size));
    pops.extend(long_answer_populations(seed, size));
    with_second_clients(seed, with_new_accounts(seed, pops))
}

/// Keys a team shares: each key used from 4 to 8 machines (laptops, a
/// build server, a notebook host), each machine its own client stack — the
/// browsers, SDKs and the versions of them that `redteam`'s stack rotation
/// impersonates — and its own address, their requests interleaved. Coding
/// and explanation questions, some step by step, some long answers. The
/// honest look-alike of a campaign account that rotates its client stack:
/// its stack changes from request to request among a handful it keeps.
fn team_keys(seed: u64, size: Size) -> Population {
    let name = "team-keys";
    let rng = &mut stream(seed, name);
    let accounts = self::accounts(rng, (3, 12), size);
    let clients = rng.gen_range(3..=7u32);
    let nets: Vec<(&str, u32)> = RESIDENTIAL
        .iter()
        .chain(&SECOND_CLIENT_NETS)
        .copied()
        .collect();
    let (addresses, address_asns) = scenario::spread_over(
        &nets,
        accounts * clients,
        address_seed(seed, &format!("{name}/clients")),
    );
    Population {
        accounts,
        rate_per_hour: rng.gen_range(15.0..60.0),
        end_ms: size.minutes * MINUTE,
        ja4: ROTATION_STACKS.iter().map(|s| s.0.to_string()).collect(),
        http: ROTATION_STACKS.iter().map(|s| s.1.to_string()).collect(),
        elicitation_share: rng.gen_range(0.1..0.4),
        elicitation_phrases: STUDENT_LONG_PHRASES.iter().map(|s| s.to_string()).collect(),
        max_tokens: vec![4096, 8192, 16000],
        thinking_share: 0.3,
        output_tokens: [200, 3000],
        // The first machine is one of `clients + 1`: the others send the
        // rest of the key's requests.
        second_client: Some(scenario::SecondClient {
            accounts: 1.0,
            requests: f64::from(clients) / f64::from(clients + 1),
            clients,
            addresses,
            address_asns,
        }),
        ..honest(name.into(), seed, &RESIDENTIAL, accounts)
    }
}

/// Students' requests for worked solutions (`students-long`, `workshop`):
/// step-by-step explanations, long worked answers; many study apps pin
/// max_tokens. Draws the shares from `rng` after the caller's own draws
/// (a struct's base expression is evaluated after its fields).
fn worked_answers(rng: &mut ChaCha8Rng, base: Population) -> Population {
    Population {
        prompt_words: [20, 120],
        elicitation_share: rng.gen_range(0.5..0.9),
        elicitation_phrases: STUDENT_LONG_PHRASES.iter().map(|s| s.to_string()).collect(),
        max_tokens: vec![4096, 8192, 16000],
        pinned_max_tokens_share: rng.gen_range(0.3..0.7),
        thinking_share: rng.gen_range(0.3..0.6),
        output_tokens: [1500, 4500],
        ..base
    }
}

/// The honest heavy long-answer users: accounts that legitimately draw
/// 20–40 thousand output tokens an hour in bursts — the look-alikes of a
/// slow-and-low campaign's yield per account. Each draws from its own
/// stream like every other population.
fn long_answer_populations(seed: u64, size: Size) -> Vec<Population> {
    let end = size.minutes * MINUTE;
    let mut pops = Vec::new();
    // Students working through problem sets: step-by-step explanations,
    // long worked answers, in study sessions; many study apps pin
    // max_tokens.
    let rng = &mut stream(seed, "students-long");
    let accounts = self::accounts(rng, (20, 60), size);
    pops.push(Population {
        accounts,
        rate_per_hour: rng.gen_range(6.0..14.0),
        end_ms: end,
        timing: Timing::Sessions {
            per_day: rng.gen_range(1.0..3.0),
            minutes: [30, 120],
        },
        ..worked_answers(
            rng,
            honest("students-long".into(), seed, &RESIDENTIAL, accounts),
        )
    });
    // A workshop on a campus network: students who signed up for it today,
    // each on their own laptop's browser, behind the university's NAT (one
    // or two addresses in one /24), working through a problem set together
    // for one to two and a half hours: step-by-step explanations and long
    // worked answers. The honest look-alike of a young campaign on a few
    // addresses: every account new, one network, long answers.
    let rng = &mut stream(seed, "workshop");
    let accounts = self::accounts(rng, (15, 60), size);
    let start = rng.gen_range(0..=end / 2);
    let length = rng.gen_range(60..=150) * MINUTE;
    let addresses = rng.gen_range(1..=2);
    pops.push(Population {
        accounts,
        rate_per_hour: rng.gen_range(6.0..14.0),
        start_ms: start,
        end_ms: (start + length).min(end),
        new_accounts: 1.0,
        ..worked_answers(
            rng,
            honest(
                "workshop".into(),
                seed,
                &[("10.60.0.0/24", 64704)],
                addresses,
            ),
        )
    });
    // Long-document writers (reports, chapters, whole files): high
    // max_tokens, long outputs, several sessions a day.
    let rng = &mut stream(seed, "doc-writers");
    let accounts = self::accounts(rng, (10, 40), size);
    pops.push(Population {
        accounts,
        rate_per_hour: rng.gen_range(4.0..8.0),
        end_ms: end,
        timing: Timing::Sessions {
            per_day: rng.gen_range(2.0..5.0),
            minutes: [45, 180],
        },
        prompt_words: [30, 300],
        max_tokens: vec![16000, 32000, 64000],
        pinned_max_tokens_share: rng.gen_range(0.5..0.9),
        thinking_share: 0.2,
        output_tokens: [2500, 8000],
        ..honest("doc-writers".into(), seed, &RESIDENTIAL, accounts)
    });
    // LLM-as-judge pipelines that reason before the verdict: rubric
    // templates asking for step-by-step critique, one pinned ceiling.
    let rng = &mut stream(seed, "judge-rationale");
    let accounts = self::accounts(rng, (1, 3), size);
    let (ja4, http) = one_stack(4, &HONEST_STACKS);
    pops.push(Population {
        accounts,
        rate_per_hour: rng.gen_range(15.0..30.0),
        end_ms: end,
        timing: Timing::Periodic { jitter: 0.3 },
        ja4,
        http,
        templates: templates(&JUDGE_RATIONALE_TEMPLATES),
        fill_words: [30, 250],
        max_tokens: vec![4096],
        thinking_share: 0.0,
        output_tokens: [600, 2000],
        ..honest(
            "judge-rationale".into(),
            seed,
            &[("10.50.0.0/24", 64803)],
            accounts,
        )
    });
    // Multi-turn chats over pasted documents that ask for the whole
    // document back (rewritten, translated, restructured): long prompts
    // and long answers, in sessions.
    let rng = &mut stream(seed, "doc-rewrite");
    let accounts = self::accounts(rng, (10, 40), size);
    pops.push(Population {
        accounts,
        rate_per_hour: rng.gen_range(4.0..10.0),
        end_ms: end,
        timing: Timing::Sessions {
            per_day: rng.gen_range(1.0..3.0),
            minutes: [30, 90],
        },
        prompt_words: [800, 3000],
        max_tokens: vec![8192, 16000],
        thinking_share: 0.0,
        output_tokens: [1500, 5000],
        ..honest("doc-rewrite".into(), seed, &RESIDENTIAL, accounts)
    });
    pops
}

/// The name of the drawn campaign's population.
pub const CAMPAIGN: &str = "campaign";

/// A drawn scenario and the strategy of its campaign.
#[derive(Debug, Clone)]
pub struct Drawn {
    /// The scenario.
    pub scenario: Scenario,
    /// The strategy of its population named [`CAMPAIGN`].
    pub campaign: AttackStrategy,
}

/// The scenario of `seed` in `family` at `size`: honest look-alikes, a
/// hydra and a campaign drawn from the strategy space.
pub fn draw(family: Family, seed: u64, size: Size) -> Drawn {
    let end = size.minutes * MINUTE;
    let mut pops = honest_populations(seed, size);

    // Attacks: a hydra and a campaign drawn from the whole space, each
    // from its own stream.
    let (plain, paraphrased) = attack_templates(family);
    let mut rng = stream(seed, "hydra");
    let hydra = AttackStrategy {
        accounts: accounts(&mut rng, (100, 400), size),
        addresses_per_account: rng.gen_range(0.05..0.3),
        address_rotation: true,
        stack_rotation: false,
        sdk_mimic: false,
        paraphrase_share: 0.0,
        requests_per_account_per_hour: rng.gen_range(8.0..30.0),
        jitter: rng.gen_range(0.0..0.3),
        warmup_minutes: 0,
        cover_share: 0.0,
        models: 1,
        pinned_max_tokens: true,
        aged_days: 0.0,
    };
    let start = rng.gen_range(1..=10).min(size.minutes / 4) * MINUTE;
    let mut h = hydra.population("hydra", plain, (start, end), seed);
    h.stealth = false;
    pops.push(h);
    let mut rng = stream(seed, CAMPAIGN);
    let mut campaign = AttackStrategy::draw(&mut rng);
    campaign.aged_days = super::strategy::draw_aged_days(&mut stream(seed, "campaign/tenure"));
    campaign.accounts = ((f64::from(campaign.accounts) * size.accounts).round() as u32).max(1);
    let start = rng.gen_range(2..=15).min(size.minutes / 4) * MINUTE;
    let max_warmup = (end.saturating_sub(start) / MINUTE / 2) as u32;
    campaign.warmup_minutes = campaign.warmup_minutes.min(max_warmup);
    pops.push(campaign.population(CAMPAIGN, paraphrased, (start, end), seed));
    Drawn {
        scenario: Scenario {
            name: format!("{}-{seed}", family.as_str()),
            description: format!(
                "drawn: {} family, seed {seed}, {} minutes",
                family.as_str(),
                size.minutes
            ),
            seed,
            start_unix_ms: START_UNIX_MS,
            duration_ms: end,
            populations: pops,
        },
        campaign,
    }
}

/// 2026-01-01T00:00:00Z.
const START_UNIX_MS: u64 = 1_767_225_600_000;

/// The honest background of `seed` (the tuning family's draw) with one
/// campaign of `strategy` from minute 2 and the tuning family's paraphrased
/// templates: what `redteam` evaluates a strategy on.
pub fn against_background(strategy: &AttackStrategy, seed: u64, size: Size) -> Scenario {
    let end = size.minutes * MINUTE;
    let mut pops = honest_populations(seed, size);
    let (_, paraphrased) = attack_templates(Family::Tuning);
    let start = (2 * MINUTE).min(end / 4);
    pops.push(strategy.population(CAMPAIGN, paraphrased, (start, end), seed));
    Scenario {
        name: format!("redteam-{seed}"),
        description: format!("honest background of seed {seed} and one campaign"),
        seed,
        start_unix_ms: START_UNIX_MS,
        duration_ms: end,
        populations: pops,
    }
}

/// How long the campaign of `s` (its population named [`CAMPAIGN`], run
/// with `strategy`) runs, warm-up included, in hours, and what that costs
/// under [`COST`] (None: `s` has no campaign).
pub fn campaign_cost(s: &Scenario, strategy: &AttackStrategy) -> Option<(f64, f64)> {
    let p = s.populations.iter().find(|p| p.name == CAMPAIGN)?;
    let hours = p.end_ms.saturating_sub(p.start_ms) as f64 / 3_600_000.0;
    Some((hours, COST.cost(strategy, hours)))
}

/// Output tokens per unit of cost that the cheapest extraction under
/// per-key limits alone gets: [`AttackStrategy::per_key_optimum`] (where
/// `redteam` starts its search) under `baseline`, on the honest background
/// of `seed`. What [`FamilyReport::new`] prices each campaign against.
pub fn per_key_reference(
    seed: u64,
    size: Size,
    config: &Config,
    baseline: &Config,
) -> Result<f64, String> {
    let strategy = AttackStrategy::per_key_optimum();
    let s = against_background(&strategy, seed, size);
    let run = evaluate(&s, Some(&strategy), config, baseline)?;
    match run.campaign_cost {
        Some(cost) if cost > 0.0 => Ok(run.baseline_campaign_tokens_served as f64 / cost),
        _ => Err("the per-key reference campaign costs nothing".into()),
    }
}

/// An honest population priced as a campaign: what an attacker whose
/// traffic cannot be told from that population's (its accounts and their
/// ages, its addresses, client stacks, prompts, limits and timing) pays per
/// output token. The policy sees traffic, not intent, so it serves such a
/// copy what it served the population: the lowest of these multiples in a
/// scenario bounds what the policy charges any campaign there without
/// refusing or degrading honest users. A cost multiple goal above it can be
/// met only at that population's expense.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LookAlike {
    /// The population.
    pub population: String,
    /// Its accounts.
    pub accounts: u32,
    /// Hours it is active (its copy pays for its accounts and addresses
    /// over all of them, as [`campaign_cost`] does).
    pub hours: f64,
    /// What the copy pays under [`COST`]: account-hours, address-hours
    /// (the population's addresses and its second clients'), and each
    /// account's age at the population's start in aged account-days.
    pub cost: f64,
    /// Output tokens the policy let out to the population.
    pub tokens: u64,
    /// Share of its requests not served in full (degraded or refused): what
    /// the policy already takes from it.
    pub not_served_in_full: f64,
    /// Its cost per token over the per-key reference's
    /// ([`FamilyReport::new`] sets it; None: nothing let out, or no
    /// reference).
    pub cost_multiplier: Option<f64>,
}

impl LookAlike {
    /// Output tokens per unit of cost.
    pub fn tokens_per_cost(&self) -> f64 {
        if self.cost > 0.0 {
            self.tokens as f64 / self.cost
        } else {
            0.0
        }
    }
}

/// Each honest population of `s` that was let out output tokens, priced as
/// a campaign ([`LookAlike`]) from the policy's `headline`.
fn look_alikes(s: &Scenario, headline: &crate::replay::Headline) -> Vec<LookAlike> {
    let mut out = Vec::new();
    for p in s.populations.iter().filter(|p| !p.attack && p.accounts > 0) {
        let Some(o) = headline.populations.get(&p.name) else {
            continue;
        };
        if o.output_tokens_served == 0 {
            continue;
        }
        let hours = p.end_ms.saturating_sub(p.start_ms) as f64 / 3_600_000.0;
        let addresses =
            p.addresses.len() + p.second_client.as_ref().map_or(0, |c| c.addresses.len());
        let aged_days: f64 = (0..p.accounts)
            .filter_map(|a| p.account_age_s(super::account_key(s, p, a), p.start_ms))
            .map(|age_s| age_s as f64 / 86_400.0)
            .sum();
        let addresses = u32::try_from(addresses).unwrap_or(u32::MAX);
        let cost = COST.price(p.accounts, addresses, hours, aged_days);
        let full = o.allowed + o.slowed;
        out.push(LookAlike {
            population: p.name.clone(),
            accounts: p.accounts,
            hours,
            cost,
            tokens: o.output_tokens_served,
            not_served_in_full: if o.requests > 0 {
                1.0 - full as f64 / o.requests as f64
            } else {
                0.0
            },
            cost_multiplier: None,
        });
    }
    out
}

/// Of `look_alikes`, the one with the most output tokens per unit of cost:
/// the cheapest to copy.
pub fn cheapest_look_alike<'a>(
    look_alikes: impl IntoIterator<Item = &'a LookAlike>,
) -> Option<&'a LookAlike> {
    look_alikes
        .into_iter()
        .max_by(|a, b| a.tokens_per_cost().total_cmp(&b.tokens_per_cost()))
}

/// The largest cluster holding honest accounts of more than one population,
/// or honest and attack accounts: at its largest over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MixedCluster {
    /// Accounts in it.
    pub members: u32,
    /// Of those, per population.
    pub populations: BTreeMap<String, u32>,
    /// Minute of the scenario it was seen at.
    pub minute: u64,
}

/// Every this many simulated minutes (and at the end), clusters are read.
const CLUSTER_SAMPLE_MINUTES: u64 = 5;

/// An attack population's minutes after this many from its first request
/// are the "after the first 10 minutes" figures.
pub const SETTLING_MINUTES: u64 = 10;

/// A policy on one drawn scenario.
#[derive(Debug, Clone, Serialize)]
pub struct FamilyRun {
    /// The seed.
    pub seed: u64,
    /// Requests generated.
    pub requests: u64,
    /// The strategy of the population named `campaign`.
    pub campaign: Option<AttackStrategy>,
    /// Output tokens the policy let out to it.
    pub campaign_tokens_served: u64,
    /// Output tokens the per-key-only baseline let out to it.
    pub baseline_campaign_tokens_served: u64,
    /// What the campaign paid ([`campaign_cost`]; None: no campaign).
    pub campaign_cost: Option<f64>,
    /// Its cost per output token let out, over the per-key reference's
    /// ([`FamilyReport::new`] sets it; None: no campaign, or nothing let
    /// out to it).
    pub cost_multiplier: Option<f64>,
    /// The same campaign run by an attacker that drops each account at its
    /// first answer not served in full (None: no campaign).
    pub if_dropped: Option<IfDropped>,
    /// Attack requests more than ten minutes after their campaign's first
    /// extraction request, served in full (allowed or slowed).
    pub attack_served_after_10min: f64,
    /// The same for the stealth-style campaigns alone (None: none).
    pub stealth_served_after_10min: Option<f64>,
    /// Attack requests served in full, all of them.
    pub attack_served_fraction: f64,
    /// Output tokens let out to the attack, of what an unprotected API
    /// would have produced.
    pub attack_output_tokens_fraction: f64,
    /// Honest requests refused.
    pub legit_refused_fraction: f64,
    /// Honest requests degraded.
    pub legit_degraded_fraction: f64,
    /// Honest requests slowed.
    pub legit_slowed_fraction: f64,
    /// Seconds to first containment of the slowest attack (None: never).
    pub containment_seconds: Option<u64>,
    /// The largest mixed cluster (None: no cluster was mixed).
    pub largest_mixed_cluster: Option<MixedCluster>,
    /// Each honest population priced as a campaign, in scenario order.
    pub look_alikes: Vec<LookAlike>,
    /// The per-key-only baseline's attack served in full.
    pub baseline_attack_served_fraction: f64,
}

/// A campaign as an attacker that drops each account at its first answer
/// not served in full (degraded, throttled or blocked) would have run it,
/// opening no account in its place: each account costs its hours until then
/// (its share of the rented addresses with it; its age in full) and takes
/// the extraction tokens let out to it until then, the dropping answer's
/// included (a cover request's answer can drop it too).
/// Where [`FamilyRun::campaign_cost`] has every account pay to the end, this
/// attacker stops paying as soon as it is caught, and gives up the degraded
/// answers it would have gone on getting: neither is always the cheaper.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IfDropped {
    /// What it pays.
    pub cost: f64,
    /// Output tokens let out to it.
    pub tokens: u64,
    /// Its cost per token over the per-key reference's
    /// ([`FamilyReport::new`] sets it; None: nothing let out).
    pub cost_multiplier: Option<f64>,
}

/// One campaign account, for [`IfDropped`].
#[derive(Default)]
struct Dropping {
    dropped_ms: Option<u64>,
    tokens: u64,
}

#[derive(Default)]
struct Late {
    first_ms: Option<u64>,
    requests: u64,
    served: u64,
}

/// Run `config` (and `baseline`) on one drawn scenario.
/// `campaign` is the strategy of its population named `campaign`, if any.
pub fn evaluate(
    s: &Scenario,
    campaign: Option<&AttackStrategy>,
    config: &Config,
    baseline: &Config,
) -> Result<FamilyRun, String> {
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, p) in s.populations.iter().enumerate() {
        for a in 0..p.accounts {
            ids.insert(AccountId(super::account_id(s, i, a)).to_string(), i);
        }
    }
    let mut seen: HashSet<u64> = HashSet::new();
    let mut seen_pop: HashMap<u64, usize> = HashMap::new();
    let mut late: Vec<Late> = s.populations.iter().map(|_| Late::default()).collect();
    let mut next_sample = s.start_unix_ms + CLUSTER_SAMPLE_MINUTES * MINUTE;
    let mut worst: Option<MixedCluster> = None;
    let mut sample = |run: &crate::replay::Run<'_>, t_ms: u64, seen_pop: &HashMap<u64, usize>| {
        let minute = t_ms.saturating_sub(s.start_unix_ms) / MINUTE;
        if let Some(m) = largest_mixed(s, run, seen_pop, minute) {
            if worst.as_ref().is_none_or(|w| m.members > w.members) {
                worst = Some(m);
            }
        }
    };
    let campaign_pop = s.populations.iter().position(|p| p.name == CAMPAIGN);
    let mut dropping: HashMap<u64, Dropping> = HashMap::new();
    let mut last_t = s.start_unix_ms;
    let (policy, base, n) = super::drive(s, config, baseline, |rec, d, run| {
        last_t = rec.t_ms;
        if seen.insert(rec_id(&rec.account)) {
            if let Some(&p) = ids.get(&rec.account) {
                seen_pop.insert(rec_id(&rec.account), p);
            }
        }
        if let Some(&p) = ids.get(&rec.account) {
            if rec.population.is_some() && s.populations[p].attack {
                let l = &mut late[p];
                let first = *l.first_ms.get_or_insert(rec.t_ms);
                if rec.t_ms >= first + SETTLING_MINUTES * MINUTE {
                    l.requests += 1;
                    l.served += u64::from(matches!(d.label(), "allow" | "slow"));
                }
            }
            if Some(p) == campaign_pop {
                let a = dropping.entry(rec_id(&rec.account)).or_default();
                if a.dropped_ms.is_none() {
                    let label = d.label();
                    // Extraction answers count (cover requests carry no
                    // population), as in `campaign_tokens_served`; any
                    // answer not served in full drops the account.
                    if rec.population.is_some() && matches!(label, "allow" | "slow" | "degrade") {
                        a.tokens += d.verdict.clamp_output(rec.output_tokens);
                    }
                    if !matches!(label, "allow" | "slow") {
                        a.dropped_ms = Some(rec.t_ms);
                    }
                }
            }
        }
        if rec.t_ms >= next_sample {
            sample(run, rec.t_ms, &seen_pop);
            while next_sample <= rec.t_ms {
                next_sample += CLUSTER_SAMPLE_MINUTES * MINUTE;
            }
        }
        Ok(())
    })?;
    sample(&policy, last_t, &seen_pop);
    let h = policy.headline().unwrap_or_default();
    let b = base.headline().unwrap_or_default();
    let share = |pick: &dyn Fn(&Population) -> bool| {
        let (mut req, mut served) = (0, 0);
        for (p, l) in s.populations.iter().zip(&late) {
            if p.attack && pick(p) {
                req += l.requests;
                served += l.served;
            }
        }
        (req > 0).then(|| served as f64 / req as f64)
    };
    let tokens = |h: &crate::replay::Headline| {
        h.populations
            .get(CAMPAIGN)
            .map_or(0, |p| p.output_tokens_served)
    };
    Ok(FamilyRun {
        seed: s.seed,
        requests: n,
        campaign: campaign.cloned(),
        campaign_tokens_served: tokens(&h),
        baseline_campaign_tokens_served: tokens(&b),
        campaign_cost: campaign
            .and_then(|c| campaign_cost(s, c))
            .map(|(_, cost)| cost),
        cost_multiplier: None,
        if_dropped: campaign.and_then(|c| if_dropped(s, c, &dropping)),
        attack_served_after_10min: share(&|_| true).unwrap_or(0.0),
        stealth_served_after_10min: share(&|p| p.stealth),
        attack_served_fraction: h.attack_served_fraction,
        attack_output_tokens_fraction: h.attack_output_tokens_fraction,
        legit_refused_fraction: h.legit_refused_fraction,
        legit_degraded_fraction: h.legit_degraded_fraction,
        legit_slowed_fraction: h.legit_slowed_fraction,
        containment_seconds: h.containment_seconds,
        largest_mixed_cluster: worst,
        look_alikes: look_alikes(s, &h),
        baseline_attack_served_fraction: b.attack_served_fraction,
    })
}

/// [`IfDropped`] of the campaign of `s`, run with `strategy`, from its
/// accounts' requests (`accounts`, by [`rec_id`]): each account is held
/// from the campaign's start until its drop or the end.
fn if_dropped(
    s: &Scenario,
    strategy: &AttackStrategy,
    accounts: &HashMap<u64, Dropping>,
) -> Option<IfDropped> {
    let p = s.populations.iter().find(|p| p.name == CAMPAIGN)?;
    let (hours, _) = campaign_cost(s, strategy)?;
    let n = strategy.accounts.max(1);
    // Accounts that sent nothing are held to the end, like those never caught.
    let mut held = hours * f64::from(n.saturating_sub(accounts.len() as u32));
    let mut tokens = 0;
    for a in accounts.values() {
        let until = a.dropped_ms.unwrap_or(p.end_ms).min(p.end_ms);
        held += until.saturating_sub(p.start_ms) as f64 / 3_600_000.0;
        tokens += a.tokens;
    }
    // The mean hours an account was held, at the cost model's rates.
    Some(IfDropped {
        cost: COST.cost(strategy, held / f64::from(n)),
        tokens,
        cost_multiplier: None,
    })
}

fn rec_id(hex: &str) -> u64 {
    u64::from_str_radix(hex, 16).unwrap_or(0)
}

/// The coding tool of the `agents` and `office-agents` populations.
const AGENT_TOOL: &str = "agent-tool";

/// The largest mixed cluster among the accounts seen so far: honest
/// accounts of two communities ([`Population::community`]; by default each
/// population is its own), or honest and attack accounts.
fn largest_mixed(
    s: &Scenario,
    run: &crate::replay::Run<'_>,
    seen_pop: &HashMap<u64, usize>,
    minute: u64,
) -> Option<MixedCluster> {
    let mut clusters: HashMap<u64, (u32, BTreeMap<usize, u32>)> = HashMap::new();
    for (&id, &p) in seen_pop {
        if let Some(c) = run.engine().cluster_of(AccountId(id)) {
            let e = clusters
                .entry(c.id)
                .or_insert_with(|| (c.members, BTreeMap::new()));
            *e.1.entry(p).or_default() += 1;
        }
    }
    clusters
        .into_values()
        .filter(|(_, pops)| {
            let honest: HashSet<&str> = pops
                .keys()
                .map(|&p| &s.populations[p])
                .filter(|p| !p.attack)
                .map(|p| p.community.as_deref().unwrap_or(&p.name))
                .collect();
            let attack = pops.keys().filter(|&&p| s.populations[p].attack).count();
            honest.len() >= 2 || (!honest.is_empty() && attack >= 1)
        })
        .max_by_key(|(members, _)| *members)
        .map(|(members, pops)| MixedCluster {
            members,
            populations: pops
                .into_iter()
                .map(|(p, k)| (s.populations[p].name.clone(), k))
                .collect(),
            minute,
        })
}

/// A figure's median and worst decile over a family's runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tail<T> {
    /// The median (of an even count, the lower middle run: a run that
    /// happened, not a mean).
    pub median: T,
    /// The worst decile: the run at the 90th percentile from the best
    /// (nearest rank; with fewer than ten runs, the worst run).
    pub worst_decile: T,
}

/// `xs` sorted best first: its median and worst decile.
fn tail<T: Copy + Default>(xs: &[T]) -> Tail<T> {
    let n = xs.len();
    if n == 0 {
        return Tail {
            median: T::default(),
            worst_decile: T::default(),
        };
    }
    let rank = ((n as f64) * 0.9).ceil() as usize;
    Tail {
        median: xs[(n - 1) / 2],
        worst_decile: xs[rank.clamp(1, n) - 1],
    }
}

fn tail_of(mut xs: Vec<f64>) -> Tail<f64> {
    xs.sort_by(f64::total_cmp);
    tail(&xs)
}

/// Multipliers, where the lowest is the worst and `None` (nothing
/// extracted) the best.
fn tail_of_lowest(mut xs: Vec<Option<f64>>) -> Tail<Option<f64>> {
    xs.sort_by(|a, b| {
        b.unwrap_or(f64::INFINITY)
            .total_cmp(&a.unwrap_or(f64::INFINITY))
    });
    tail(&xs)
}

/// Seconds, `None` for never: never is the worst.
fn tail_of_seconds(mut xs: Vec<Option<u64>>) -> Tail<Option<u64>> {
    xs.sort_by_key(|x| x.unwrap_or(u64::MAX));
    tail(&xs)
}

/// A policy over a family: each seed's figures, their median and worst
/// decile.
#[derive(Debug, Serialize)]
pub struct FamilyReport {
    /// The family.
    pub family: Family,
    /// Each seed's run, in seed order.
    pub runs: Vec<FamilyRun>,
    /// Of `attack_served_after_10min`.
    pub attack_served_after_10min: Tail<f64>,
    /// Of `stealth_served_after_10min` (runs without a stealth-style
    /// campaign left out).
    pub stealth_served_after_10min: Tail<f64>,
    /// Of `attack_output_tokens_fraction`.
    pub attack_output_tokens_fraction: Tail<f64>,
    /// Of `legit_refused_fraction`.
    pub legit_refused_fraction: Tail<f64>,
    /// Of `legit_degraded_fraction`.
    pub legit_degraded_fraction: Tail<f64>,
    /// Of `legit_slowed_fraction`.
    pub legit_slowed_fraction: Tail<f64>,
    /// Of `containment_seconds`.
    pub containment_seconds: Tail<Option<u64>>,
    /// Of the largest mixed cluster's members (0: none).
    pub largest_mixed_cluster: Tail<f64>,
    /// Output tokens per unit of cost of the cheapest per-key extraction
    /// ([`per_key_reference`]; None: not measured).
    pub per_key_reference: Option<f64>,
    /// Of `cost_multiplier` over the runs with a campaign: the worst
    /// decile is the lowest (the campaign that paid least per token), a
    /// campaign that got nothing counts as the highest.
    pub cost_multiplier: Tail<Option<f64>>,
    /// The same of each run's [`IfDropped`] multiple.
    pub cost_multiplier_if_dropped: Tail<Option<f64>>,
    /// Of each run's cheapest honest look-alike's multiple
    /// ([`cheapest_look_alike`]): the worst decile is the lowest, the
    /// ceiling on what the policy charges a copy of honest traffic.
    pub look_alike_multiple: Tail<Option<f64>>,
}

impl FamilyReport {
    /// Sums up the runs, pricing each campaign against `per_key_reference`
    /// (output tokens per unit of cost under per-key limits alone, as
    /// [`per_key_reference`] measures it): what it paid per token let out,
    /// as a multiple of that reference's cost per token — the figure
    /// `redteam` maximises the inverse of.
    pub fn new(
        family: Family,
        mut runs: Vec<FamilyRun>,
        per_key_reference: Option<f64>,
    ) -> FamilyReport {
        let multiple = |cost: f64, tokens: u64| {
            per_key_reference
                .filter(|_| tokens > 0)
                .map(|reference| reference * cost / tokens as f64)
        };
        for r in &mut runs {
            r.cost_multiplier = r
                .campaign_cost
                .and_then(|cost| multiple(cost, r.campaign_tokens_served));
            if let Some(d) = &mut r.if_dropped {
                d.cost_multiplier = multiple(d.cost, d.tokens);
            }
            for l in &mut r.look_alikes {
                l.cost_multiplier = multiple(l.cost, l.tokens);
            }
        }
        let f = |get: &dyn Fn(&FamilyRun) -> Option<f64>| {
            tail_of(runs.iter().filter_map(get).collect())
        };
        FamilyReport {
            family,
            attack_served_after_10min: f(&|r| Some(r.attack_served_after_10min)),
            stealth_served_after_10min: f(&|r| r.stealth_served_after_10min),
            attack_output_tokens_fraction: f(&|r| Some(r.attack_output_tokens_fraction)),
            legit_refused_fraction: f(&|r| Some(r.legit_refused_fraction)),
            legit_degraded_fraction: f(&|r| Some(r.legit_degraded_fraction)),
            legit_slowed_fraction: f(&|r| Some(r.legit_slowed_fraction)),
            containment_seconds: tail_of_seconds(
                runs.iter().map(|r| r.containment_seconds).collect(),
            ),
            largest_mixed_cluster: f(&|r| {
                Some(f64::from(
                    r.largest_mixed_cluster.as_ref().map_or(0, |m| m.members),
                ))
            }),
            per_key_reference,
            cost_multiplier: tail_of_lowest(
                runs.iter()
                    .filter(|r| r.campaign_cost.is_some() && per_key_reference.is_some())
                    .map(|r| r.cost_multiplier)
                    .collect(),
            ),
            cost_multiplier_if_dropped: tail_of_lowest(
                runs.iter()
                    .filter_map(|r| r.if_dropped.filter(|_| per_key_reference.is_some()))
                    .map(|d| d.cost_multiplier)
                    .collect(),
            ),
            look_alike_multiple: tail_of_lowest(
                runs.iter()
                    .filter(|_| per_key_reference.is_some())
                    .filter_map(|r| cheapest_look_alike(&r.look_alikes))
                    .map(|l| l.cost_multiplier)
                    .collect(),
            ),
            runs,
        }
    }

    /// The report as text: a line per seed, then median and worst decile.
    pub fn render(&self) -> String {
        let pct = |x: f64| format!("{:.2} %", x * 100.0);
        let secs = |x: Option<u64>| x.map_or("never".to_string(), |s| format!("{s} s"));
        let mut out = format!(
            "{} family: {} seeds (attack figures after each campaign's first {SETTLING_MINUTES} minutes)\n",
            self.family.as_str(),
            self.runs.len()
        );
        // A campaign's multiple: "-" without a campaign or a reference.
        let times = |priced: bool, tokens: u64, m: Option<f64>| match m {
            Some(m) => format!("{m:.1}x"),
            None if priced && tokens == 0 => "no tokens".into(),
            None => "-".into(),
        };
        let mut line = |cols: [&str; 12]| {
            let [a, b, c, d, e, f, g, h, i, j, k, l] = cols;
            let _ = writeln!(
                out,
                "{a:>6} {b:>8} {c:>10} {d:>10} {e:>10} {f:>10} {g:>10} {h:>10} {i:>11} {j:>7} {k:>9} {l:>10}"
            );
        };
        line([
            "seed",
            "requests",
            "attack",
            "stealth",
            "tokens",
            "refused",
            "degraded",
            "slowed",
            "containment",
            "mixed",
            "cost",
            "if dropped",
        ]);
        for r in &self.runs {
            let cols = [
                r.seed.to_string(),
                r.requests.to_string(),
                pct(r.attack_served_after_10min),
                r.stealth_served_after_10min.map_or("-".into(), pct),
                pct(r.attack_output_tokens_fraction),
                pct(r.legit_refused_fraction),
                pct(r.legit_degraded_fraction),
                pct(r.legit_slowed_fraction),
                secs(r.containment_seconds),
                r.largest_mixed_cluster
                    .as_ref()
                    .map_or(0, |m| m.members)
                    .to_string(),
                times(
                    r.campaign_cost.is_some() && self.per_key_reference.is_some(),
                    r.campaign_tokens_served,
                    r.cost_multiplier,
                ),
                r.if_dropped.map_or("-".into(), |d| {
                    times(
                        self.per_key_reference.is_some(),
                        d.tokens,
                        d.cost_multiplier,
                    )
                }),
            ];
            line(cols.each_ref().map(String::as_str));
        }
        let _ = writeln!(out, "median / worst decile:");
        let mut row = |label: &str, a: String, b: String| {
            let _ = writeln!(out, "  {label:<44} {a} / {b}");
        };
        let p = |t: &Tail<f64>| (pct(t.median), pct(t.worst_decile));
        for (label, t) in [
            (
                "attack served in full (after 10 min)",
                &self.attack_served_after_10min,
            ),
            (
                "stealth-style served in full (after 10 min)",
                &self.stealth_served_after_10min,
            ),
            (
                "attack output tokens let out",
                &self.attack_output_tokens_fraction,
            ),
            ("honest refused", &self.legit_refused_fraction),
            ("honest degraded", &self.legit_degraded_fraction),
            ("honest slowed", &self.legit_slowed_fraction),
        ] {
            let (a, b) = p(t);
            row(label, a, b);
        }
        row(
            "containment (slowest attack)",
            secs(self.containment_seconds.median),
            secs(self.containment_seconds.worst_decile),
        );
        row(
            "largest mixed cluster (accounts)",
            format!("{}", self.largest_mixed_cluster.median),
            format!("{}", self.largest_mixed_cluster.worst_decile),
        );
        if let Some(reference) = self.per_key_reference {
            let shown = |x: Option<f64>| x.map_or("no tokens".into(), |m| format!("{m:.1}x"));
            for (label, t) in [
                (
                    "campaign's cost per token, x per-key",
                    &self.cost_multiplier,
                ),
                (
                    "the same, each account dropped when caught",
                    &self.cost_multiplier_if_dropped,
                ),
                (
                    "cheapest honest look-alike, x per-key",
                    &self.look_alike_multiple,
                ),
            ] {
                row(label, shown(t.median), shown(t.worst_decile));
            }
            // The run whose cheapest look-alike is cheapest of all.
            if let Some((seed, l)) = self
                .runs
                .iter()
                .filter_map(|r| cheapest_look_alike(&r.look_alikes).map(|l| (r.seed, l)))
                .max_by(|a, b| a.1.tokens_per_cost().total_cmp(&b.1.tokens_per_cost()))
            {
                let _ = writeln!(
                    out,
                    "cheapest honest look-alike: seed {seed}, {} ({} accounts, {:.1} h, {} tokens for {:.1}, {:.2} % not served in full): {}; a campaign whose traffic is its copy pays that, and a policy can charge it more only by taking from that population",
                    l.population,
                    l.accounts,
                    l.hours,
                    l.tokens,
                    l.cost,
                    l.not_served_in_full * 100.0,
                    shown(l.cost_multiplier),
                );
            }
            let _ = writeln!(
                out,
                "cost: account-hour {}, address-hour {}, aged account-day {}; per-key reference {reference:.1} tokens per unit (the cheapest extraction under per-key limits alone)",
                COST.account_hour, COST.address_hour, COST.aged_account_day
            );
        }
        if let Some(r) = self
            .runs
            .iter()
            .filter(|r| r.largest_mixed_cluster.is_some())
            .max_by_key(|r| r.largest_mixed_cluster.as_ref().map_or(0, |m| m.members))
        {
            if let Some(m) = &r.largest_mixed_cluster {
                let pops: Vec<String> = m
                    .populations
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                let _ = writeln!(
                    out,
                    "largest mixed cluster: seed {}, minute {}, {} accounts ({})",
                    r.seed,
                    m.minute,
                    m.members,
                    pops.join(", ")
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_do_not_overlap() {
        let t = Family::Tuning.seeds(FAMILY_SIZE);
        let h = Family::Heldout.seeds(FAMILY_SIZE);
        assert!(t.iter().all(|s| !h.contains(s)));
        assert_eq!(Family::of_seed(1000), Some(Family::Tuning));
        assert_eq!(Family::of_seed(9999), Some(Family::Heldout));
        assert_eq!(Family::of_seed(7), None);
    }

    #[test]
    fn a_slice_starts_after_the_skipped_seeds_and_stays_in_the_family() {
        assert_eq!(Family::Heldout.seeds_from(32, 3), vec![9032, 9033, 9034]);
        assert_eq!(Family::Tuning.seeds_from(0, 2), Family::Tuning.seeds(2));
        assert_eq!(Family::Heldout.seeds_from(998, 5), vec![9998, 9999]);
        assert!(Family::Tuning.seeds_from(FAMILY_SIZE, 5).is_empty());
    }

    #[test]
    fn a_draw_is_deterministic_and_differs_by_seed() {
        let a = draw(Family::Tuning, 1000, Size::FULL);
        let b = draw(Family::Tuning, 1000, Size::FULL);
        assert_eq!(a.campaign, b.campaign);
        let c = draw(Family::Tuning, 1001, Size::FULL);
        assert_ne!(a.campaign, c.campaign);
        let names: Vec<&str> = a
            .scenario
            .populations
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        for want in [
            "chat",
            "students",
            "batch",
            "eval",
            "judge",
            "agents",
            "doc-chat",
            "students-long",
            "doc-writers",
            "judge-rationale",
            "doc-rewrite",
            "workshop",
            "hydra",
            CAMPAIGN,
        ] {
            assert!(names.contains(&want), "{want} in {names:?}");
        }
        let first: Vec<_> = super::super::Generator::new(&a.scenario).take(50).collect();
        let again: Vec<_> = super::super::Generator::new(&b.scenario).take(50).collect();
        assert_eq!(first, again);
    }

    /// Every population of a drawn scenario sends what it would send
    /// alone: no population's traffic depends on another's.
    #[test]
    fn a_drawn_populations_traffic_is_its_own() {
        let size = Size {
            minutes: 30,
            accounts: 0.2,
        };
        let d = draw(Family::Tuning, 1003, size);
        let all: Vec<_> = super::super::Generator::new(&d.scenario).collect();
        let mut sent = 0;
        for (i, p) in d.scenario.populations.iter().enumerate() {
            let alone = Scenario {
                populations: vec![p.clone()],
                ..d.scenario.clone()
            };
            let mine: Vec<_> = all
                .iter()
                .filter(|r| r.population == i)
                .map(|r| super::super::SimRequest {
                    population: 0,
                    ..r.clone()
                })
                .collect();
            let solo: Vec<_> = super::super::Generator::new(&alone).collect();
            sent += usize::from(!solo.is_empty());
            assert!(mine == solo, "{}: traffic depends on the others", p.name);
        }
        // At this size a few session-based accounts may have no session.
        assert!(sent + 3 >= d.scenario.populations.len(), "{sent} sent");
        // The honest background is the same in a family draw and in
        // redteam's (which has no hydra and its own campaign).
        let bg = against_background(&d.campaign, 1003, size);
        for p in bg.populations.iter().filter(|p| !p.attack) {
            let q = d.scenario.populations.iter().find(|q| q.name == p.name);
            assert_eq!(q.map(|q| format!("{q:?}")), Some(format!("{p:?}")));
        }
    }

    /// The workshop is the one honest population whose accounts are all
    /// opened for it (on the day, just before it starts), on one campus
    /// /24, inside the run; every other honest population keeps its 2–20 %
    /// of the day's sign-ups.
    #[test]
    fn a_workshop_is_young_together_on_one_network() {
        for (family, seed) in [(Family::Tuning, 1000), (Family::Heldout, 9000)] {
            let d = draw(family, seed, Size::FULL);
            let pops = &d.scenario.populations;
            let w = pops.iter().find(|p| p.name == "workshop").unwrap();
            assert_eq!(w.new_accounts, 1.0);
            assert!(!w.attack && w.accounts >= 15, "{}", w.accounts);
            assert!(w.start_ms < w.end_ms && w.end_ms <= d.scenario.duration_ms);
            assert!(!w.addresses.is_empty() && w.addresses.len() <= 2);
            for a in &w.addresses {
                assert!(a.to_string().starts_with("10.60.0."), "{a}");
            }
            for k in 0..u64::from(w.accounts) {
                let age = w.account_age_s(k, w.start_ms).unwrap();
                assert!(age <= 60, "workshop account {k}: {age} s old at its start");
            }
            for p in pops.iter().filter(|p| !p.attack && p.name != "workshop") {
                assert!((0.02..=0.2).contains(&p.new_accounts), "{}", p.name);
            }
        }
    }

    #[test]
    fn held_out_attacks_use_their_own_templates() {
        let t = draw(Family::Tuning, 1000, Size::FULL);
        let h = draw(Family::Heldout, 9000, Size::FULL);
        let of = |d: &Drawn| {
            d.scenario
                .populations
                .iter()
                .find(|p| p.name == CAMPAIGN)
                .map(|p| p.templates.clone())
                .unwrap_or_default()
        };
        assert!(!of(&t).is_empty() && !of(&h).is_empty());
        assert!(of(&t).iter().all(|x| !of(&h).contains(x)));
    }

    #[test]
    fn tails_take_the_median_and_the_worst_decile() {
        let t = tail_of(vec![0.5, 0.1, 0.2, 0.3]);
        assert_eq!(t.median, 0.2);
        assert_eq!(t.worst_decile, 0.5);
        let xs: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(tail_of(xs).worst_decile, 18.0);
        let s = tail_of_seconds(vec![Some(60), None, Some(120)]);
        assert_eq!(s.median, Some(120));
        assert_eq!(s.worst_decile, None);
    }

    fn priced(seed: u64, cost: Option<f64>, tokens: u64) -> FamilyRun {
        FamilyRun {
            seed,
            requests: 1,
            campaign: None,
            campaign_tokens_served: tokens,
            baseline_campaign_tokens_served: tokens,
            campaign_cost: cost,
            cost_multiplier: None,
            if_dropped: cost.map(|c| IfDropped {
                cost: c / 2.0,
                tokens: tokens / 4,
                cost_multiplier: None,
            }),
            attack_served_after_10min: 0.0,
            stealth_served_after_10min: None,
            attack_served_fraction: 0.0,
            attack_output_tokens_fraction: 0.0,
            legit_refused_fraction: 0.0,
            legit_degraded_fraction: 0.0,
            legit_slowed_fraction: 0.0,
            containment_seconds: None,
            largest_mixed_cluster: None,
            look_alikes: Vec::new(),
            baseline_attack_served_fraction: 1.0,
        }
    }

    /// A campaign's cost per token over the reference's: 100 units for
    /// 50 000 tokens against 1 000 tokens a unit is 2×. The worst decile is
    /// the campaign that paid least; one that got nothing is the best, and
    /// a run without a campaign is left out.
    #[test]
    fn campaigns_are_priced_against_the_per_key_reference() {
        let runs = vec![
            priced(1, Some(100.0), 50_000),
            priced(2, Some(100.0), 10_000),
            priced(3, Some(100.0), 0),
            priced(4, None, 0),
        ];
        let r = FamilyReport::new(Family::Tuning, runs, Some(1_000.0));
        let m: Vec<Option<f64>> = r.runs.iter().map(|r| r.cost_multiplier).collect();
        assert_eq!(m, [Some(2.0), Some(10.0), None, None]);
        assert_eq!(r.cost_multiplier.median, Some(10.0));
        assert_eq!(r.cost_multiplier.worst_decile, Some(2.0));
        // Half the cost for a quarter of the tokens: twice the multiple.
        let d: Vec<Option<f64>> = r
            .runs
            .iter()
            .map(|r| r.if_dropped.and_then(|d| d.cost_multiplier))
            .collect();
        assert_eq!(d, [Some(4.0), Some(20.0), None, None]);
        assert_eq!(r.cost_multiplier_if_dropped.worst_decile, Some(4.0));
        assert!(r.render().contains("no tokens"), "{}", r.render());
        let unpriced = FamilyReport::new(Family::Tuning, vec![priced(1, Some(100.0), 1)], None);
        assert_eq!(unpriced.runs[0].cost_multiplier, None);
        assert!(!unpriced.render().contains("per-key reference"));
    }

    /// An honest population is priced as the campaign that copies it: a
    /// workshop of new accounts on one or two addresses pays what a
    /// campaign of as many new accounts on as many addresses pays for as
    /// many hours; accounts that existed long before their population
    /// starts add their age; a population let out nothing is not priced.
    #[test]
    fn an_honest_population_is_priced_as_the_campaign_that_copies_it() {
        let d = draw(Family::Tuning, 1000, Size::FULL);
        let s = &d.scenario;
        let outcome = |requests: u64, degraded: u64, tokens: u64| {
            let mut o = crate::replay::PopulationOutcome::default();
            (o.requests, o.allowed, o.degraded) = (requests, requests - degraded, degraded);
            o.output_tokens_served = tokens;
            o
        };
        let mut pops = BTreeMap::new();
        pops.insert("workshop".to_string(), outcome(400, 100, 1_000_000));
        pops.insert("students-long".to_string(), outcome(400, 0, 1_000_000));
        pops.insert("chat".to_string(), outcome(400, 0, 0));
        let h = crate::replay::Headline::new(&pops);
        let found = look_alikes(s, &h);
        let names: Vec<&str> = found.iter().map(|l| l.population.as_str()).collect();
        assert_eq!(names, ["students-long", "workshop"], "{found:?}");

        let w = s.populations.iter().find(|p| p.name == "workshop").unwrap();
        // Its students' phones and home connections are rented too.
        let second = w.second_client.as_ref().map_or(0, |c| c.addresses.len());
        let copy = AttackStrategy {
            accounts: w.accounts,
            addresses_per_account: (w.addresses.len() + second) as f64 / f64::from(w.accounts),
            aged_days: 0.0,
            ..AttackStrategy::starting_point()
        };
        let hours = (w.end_ms - w.start_ms) as f64 / 3_600_000.0;
        let l = found
            .iter()
            .find(|l| l.population == "workshop")
            .unwrap()
            .clone();
        // Its accounts were made at most a minute before it started.
        let made = f64::from(w.accounts) / 1440.0 * COST.aged_account_day;
        let campaign = COST.cost(&copy, hours);
        assert!(
            l.cost >= campaign && l.cost <= campaign + made,
            "{l:?} against {campaign}"
        );
        assert_eq!((l.tokens, l.not_served_in_full), (1_000_000, 0.25));

        // Students' accounts are hours to years old: their copy pays for it.
        let st = found
            .iter()
            .find(|l| l.population == "students-long")
            .unwrap();
        let p = s
            .populations
            .iter()
            .find(|p| p.name == "students-long")
            .unwrap();
        let unaged = (p.end_ms - p.start_ms) as f64 / 3_600_000.0
            * (f64::from(p.accounts) * COST.account_hour
                + p.addresses.len() as f64 * COST.address_hour);
        assert!(st.cost > unaged + 1.0, "{st:?} against {unaged}");

        // The cheapest to copy is the one with the most tokens per cost; a
        // report prices it against the reference, lowest first.
        let cheapest = cheapest_look_alike(&found).unwrap();
        assert_eq!(cheapest.population, "workshop");
        let mut run = priced(1, None, 0);
        run.look_alikes = found;
        let r = FamilyReport::new(Family::Tuning, vec![run], Some(1_000.0));
        let m = r.runs[0].look_alikes[1].cost_multiplier.unwrap();
        assert!((m - 1_000.0 * l.cost / 1_000_000.0).abs() < 1e-9, "{m}");
        assert_eq!(r.look_alike_multiple.worst_decile, Some(m));
        assert!(r
            .render()
            .contains("cheapest honest look-alike: seed 1, workshop"));
    }

    /// An account dropped at its first answer not served in full is held
    /// until then; one never caught, or that never sent, to the end.
    #[test]
    fn a_dropped_account_pays_until_it_is_dropped() {
        let d = draw(Family::Tuning, 1000, Size::FULL);
        let (s, c) = (&d.scenario, &d.campaign);
        let p = s.populations.iter().find(|p| p.name == CAMPAIGN).unwrap();
        let (_, full) = campaign_cost(s, c).unwrap();
        let none = if_dropped(s, c, &HashMap::new()).unwrap();
        assert_eq!((none.cost, none.tokens), (full, 0));
        let all: HashMap<u64, Dropping> = (0..u64::from(c.accounts))
            .map(|i| {
                let a = Dropping {
                    dropped_ms: Some(p.start_ms),
                    tokens: 10,
                };
                (i, a)
            })
            .collect();
        let at_once = if_dropped(s, c, &all).unwrap();
        assert_eq!(at_once.cost, COST.cost(c, 0.0));
        assert_eq!(at_once.tokens, 10 * u64::from(c.accounts));
        let half = p.start_ms + (p.end_ms - p.start_ms) / 2;
        let one = HashMap::from([(
            7,
            Dropping {
                dropped_ms: Some(half),
                tokens: 5,
            },
        )]);
        let hours = (p.end_ms - p.start_ms) as f64 / 3_600_000.0;
        let n = f64::from(c.accounts);
        let mean = (hours * (n - 1.0) + hours / 2.0) / n;
        let r = if_dropped(s, c, &one).unwrap();
        assert!((r.cost - COST.cost(c, mean)).abs() < 1e-9 * full, "{r:?}");
        assert!(r.cost < full && r.tokens == 5);
    }
}
