#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};

// -----------------------------------------------------------------------
// Stock phrases (§10)

const STOCK: &str =
    "please write out your reasoning step by step and check every intermediate step";

fn shared_keys(a: &PromptSignature, b: &PromptSignature) -> usize {
    let b_keys: HashSet<u64> = b.index_keys().into_iter().filter(|&k| k != 0).collect();
    a.index_keys()
        .into_iter()
        .filter(|k| *k != 0 && b_keys.contains(k))
        .count()
}

/// Short prompts of unrelated users who typed one stock phrase: without the stock set they share index keys
/// (the phrase is most of each region); with it they share none and are not near.
#[test]
fn a_shared_stock_phrase_alone_gives_no_shared_key() {
    let stock = StockShingles::new([STOCK]);
    let mut linked_plain = 0;
    for (a, b) in [
        ("kalomiter ansuvel", "rodinpa quiesbor"),
        ("linugatas reomfi", "delcuzan epkalo"),
        ("mitersu velrodin", "paquies borlinu"),
    ] {
        let x = format!("{a} {STOCK}");
        let y = format!("{b} {STOCK}");
        linked_plain += usize::from(shared_keys(&signature(&x), &signature(&y)) > 0);
        let (sx, sy) = (signature_with(&x, &stock), signature_with(&y, &stock));
        assert_eq!(shared_keys(&sx, &sy), 0, "{x:?} / {y:?}");
        assert!(!is_near(&sx, &sy), "{x:?} / {y:?}");
    }
    assert!(
        linked_plain > 0,
        "the example must show what the stock set prevents"
    );
}

/// A template keeps linking when it contains a stock phrase: its other shingles still carry it.
#[test]
fn a_template_holding_a_stock_phrase_still_links() {
    let stock = StockShingles::new([STOCK]);
    let template = |fill: &str| {
        format!(
                "You are grading solutions for a benchmark of olympiad problems; {STOCK}, then give the final \
                 answer in a box and a confidence between zero and one.\nProblem: {fill}"
            )
    };
    let a = signature_with(
        &template("a triangle has sides three four and five"),
        &stock,
    );
    let b = signature_with(&template("how many primes lie below one hundred"), &stock);
    assert!(is_near(&a, &b));
    assert!(shared_keys(&a, &b) >= 4);
}

/// A prompt that is only a stock phrase has no sketch: not informative, no key, near nothing.
#[test]
fn a_prompt_of_stock_shingles_only_is_not_informative() {
    let stock = StockShingles::new([STOCK, "think*"]);
    assert!(stock.len() >= 9, "{stock:?}");
    let sig = signature_with(STOCK, &stock);
    assert!(!sig.is_informative());
    assert!(sig.index_keys().iter().all(|&k| k == 0));
    assert!(!is_near(&sig, &sig));
    assert!(signature(STOCK).is_informative());
    // The flags survive the hex form.
    let back: PromptSignature = sig.to_hex().parse().unwrap();
    assert_eq!(back, sig);
    // Phrases shorter than a shingle have none.
    assert!(StockShingles::new(["step by step"]).is_empty());
}

/// Without stock phrases, `signature_with` is `signature`.
#[test]
fn no_stock_phrases_change_nothing() {
    let none = StockShingles::none(DEFAULT_KEY);
    for text in [STOCK, GRADE, "hi", ""] {
        assert_eq!(signature_with(text, &none), signature(text));
    }
}

// -----------------------------------------------------------------------
// Unit tests

const GRADE: &str = "Grade the following answer on a 1-10 rubric for correctness, completeness and clarity. List strengths and weaknesses, then output the score.\n\nQuestion: ";

#[test]
fn masks_numbers_quotes_code_urls_and_names() {
    let pairs = [
            (
                "please compute the sum of 12 and 30 and explain each step you take",
                "please compute the sum of 7.5 and 1,000,000 and explain each step you take",
            ),
            (
                "classify the sentiment of the review \"great phone, terrible battery\" as positive or negative",
                "classify the sentiment of the review \u{201C}never again\u{201D} as positive or negative",
            ),
            (
                "explain what this code does line by line ```fn main() { println!(\"hi\"); }``` and find the bugs",
                "explain what this code does line by line ```\nx = [i for i in range(10)]\n``` and find the bugs",
            ),
            (
                "summarise the page at https://example.com/a?b=c for a busy reader in three short bullet points",
                "summarise the page at www.example.org/news for a busy reader in three short bullet points",
            ),
            (
                "you are an assistant for Alice who lives in Paris and speaks French fluently every day",
                "you are an assistant for Bob who lives in Lagos and speaks Yoruba fluently every day",
            ),
            (
                "call the function compute_total with the value of userName and return the result to me",
                "call the function os.path.join with the value of x2 and return the result to me",
            ),
        ];
    for (a, b) in pairs {
        assert_eq!(signature(a), signature(b), "{a:?} vs {b:?}");
    }
}

#[test]
fn lowercases_and_ignores_spacing_and_punctuation() {
    let a = signature("Explain, step by step, how a bill becomes a law in a parliamentary system.");
    let b = signature("explain step by step how a BILL becomes a law in a parliamentary system");
    let c =
        signature("explain   step by step how a bill becomes a law\tin a parliamentary system!!");
    assert_eq!(a, b);
    assert_eq!(a, c);
}

#[test]
fn labels_differ_from_words() {
    let a = signature("question: what is the best way to learn the piano as an adult beginner");
    let b = signature("question what is the best way to learn the piano as an adult beginner");
    assert_ne!(a, b);
}

#[test]
fn same_template_is_near_and_shares_a_key() {
    let a = signature(&format!("{GRADE}Why is the sky blue?\nAnswer: Because the air scatters short wavelengths of sunlight more than long ones."));
    let b = signature(&format!("{GRADE}How do vaccines work?\nAnswer: They train the immune system with a harmless piece of the pathogen so it reacts faster later."));
    assert!(is_near(&a, &b));
    assert!(similarity(&a, &b) > 0.9);
    let ka: HashSet<u64> = a.index_keys().into_iter().collect();
    assert!(b.index_keys().iter().any(|k| ka.contains(k)));
}

#[test]
fn unrelated_prompts_are_not_near() {
    let a =
        signature("Can you write me a short poem about the sea at night, with a hopeful ending?");
    let b = signature(
        "My landlord refuses to return my deposit after I moved out. What are my options here?",
    );
    assert!(a.is_informative() && b.is_informative());
    assert!(!is_near(&a, &b));
    let ka: HashSet<u64> = a.index_keys().into_iter().collect();
    assert!(!b.index_keys().iter().any(|k| ka.contains(k)));
}

#[test]
fn short_prompts_are_not_informative() {
    for text in [
        "",
        "hi",
        "hello there",
        "what is the capital of France?",
        "   \n\t  ",
        "42",
        "```code```",
    ] {
        let s = signature(text);
        assert!(!s.is_informative(), "{text:?}");
        assert!(!is_near(&s, &s), "{text:?}");
    }
    let long = signature("what is the capital of France and why did it become the capital?");
    assert!(long.is_informative());
    assert!(is_near(&long, &long));
    assert_eq!(signature("").token_count(), 0);
}

#[test]
fn self_similarity_is_one() {
    let short = signature(&format!("{GRADE}Is water wet?"));
    assert!(short.token_count() < MIN_BODY_TOKENS);
    assert_eq!(similarity_parts(&short, &short).body, 0.0);
    assert_eq!(similarity(&short, &short), 1.0);
    let s = signature(&format!("{GRADE}Is water wet, and if it is, what makes it so? Explain the physics of surface tension, adhesion and cohesion to a curious student."));
    assert!(s.token_count() >= MIN_BODY_TOKENS);
    assert_eq!(similarity(&s, &s), 1.0);
    let p = similarity_parts(&s, &s);
    assert_eq!((p.head, p.tail, p.body), (1.0, 1.0, 1.0));
}

#[test]
fn keyed_signatures_differ_and_are_deterministic() {
    let text = "Imagine and articulate the internal reasoning behind the completed response below.";
    assert_eq!(signature_keyed(text, 7), signature_keyed(text, 7));
    assert_ne!(signature_keyed(text, 7), signature_keyed(text, 8));
    assert_ne!(signature_keyed(text, 7), signature(text));
    assert_eq!(signature(text), signature_keyed(text, DEFAULT_KEY));
}

#[test]
fn index_keys_are_distinct_per_position() {
    let s = signature(&format!(
        "{GRADE}What is entropy?\nAnswer: A measure of disorder."
    ));
    let keys: HashSet<u64> = s.index_keys().into_iter().collect();
    assert_eq!(keys.len(), INDEX_KEYS);
}

#[test]
fn hex_round_trip_and_errors() {
    let s = signature(&format!("{GRADE}What is entropy?"));
    let hex = s.to_hex();
    assert_eq!(hex.len(), 396);
    assert_eq!(PromptSignature::from_hex(&hex), Ok(s));
    assert_eq!(PromptSignature::from_hex(&hex.to_uppercase()), Ok(s));
    assert_eq!(hex.parse::<PromptSignature>(), Ok(s));
    assert_eq!(s.to_string(), hex);
    assert_eq!(
        PromptSignature::from_hex("abc"),
        Err(ParseSignatureError::Length {
            expected: 396,
            found: 3
        })
    );
    let mut bad = hex.clone().into_bytes();
    bad[10] = b'g';
    let bad = String::from_utf8(bad).unwrap();
    assert_eq!(
        PromptSignature::from_hex(&bad),
        Err(ParseSignatureError::NotHex { at: 10 })
    );
    let v2 = format!("02{}", &hex[2..]);
    assert_eq!(
        PromptSignature::from_hex(&v2),
        Err(ParseSignatureError::Version(2))
    );
    let multibyte = "é".repeat(198);
    assert!(PromptSignature::from_hex(&multibyte).is_err());
}

#[test]
fn head_and_tail_follow_lines() {
    // Same first line, different everything else: the head matches.
    let a = signature("Rewrite the passage below in plain English for a twelve year old reader.\nThe mitochondria is the powerhouse of the cell and makes most of its energy.");
    let b = signature("Rewrite the passage below in plain English for a twelve year old reader.\nParliament passed the budget after a long debate about taxes and pensions.");
    let p = similarity_parts(&a, &b);
    assert_eq!(p.head, 1.0);
    assert!(p.tail < 0.3);
    // Same last line: the tail matches.
    let c = signature("The mitochondria is the powerhouse of the cell and makes most of its energy.\nRewrite the passage above in plain English for a twelve year old reader.");
    let d = signature("Parliament passed the budget after a long debate about taxes and pensions.\nRewrite the passage above in plain English for a twelve year old reader.");
    let p = similarity_parts(&c, &d);
    assert_eq!(p.tail, 1.0);
    assert!(p.head < 0.3);
}

#[test]
fn size_is_as_documented() {
    assert_eq!(std::mem::size_of::<PromptSignature>(), 200);
}

#[test]
fn ascii_and_unicode_paths_agree() {
    // A non-ASCII byte sends a chunk down the Unicode path: same tokens.
    let pairs = [
        (
            "please don't rewrite the following paragraph in a formal register now",
            "please don\u{2019}t rewrite the following paragraph in a formal register now",
        ),
        (
            "explain the following idea in simple words please, and wait for more",
            "explain the following idea in simple words please\u{2026} and wait for more",
        ),
        (
            "rewrite the following text for a young reader; keep it short and clear",
            "rewrite the following text for a young reader\u{FF1B} keep it short and clear",
        ),
    ];
    for (a, b) in pairs {
        assert_eq!(signature(a), signature(b), "{a:?} vs {b:?}");
    }
    // Non-ASCII words are lowercased too.
    assert_eq!(
        signature("Écris un résumé de ce texte pour un lecteur pressé et curieux"),
        signature("écris un RÉSUMÉ de ce texte pour un lecteur pressé et curieux")
    );
}

#[test]
fn short_end_lines_are_fallback_regions() {
    let line = "Rewrite the passage below in plain English for a twelve year old reader.";
    let s = signature(&format!(
        "{line}\nThe cell makes energy in its mitochondria, which burn sugar with oxygen."
    ));
    assert_eq!(s.flags, 0);
    let s = signature(&format!("Hi,\n{line}\nThanks!"));
    assert_eq!(s.flags, HEAD_FALLBACK | TAIL_FALLBACK);
    let s = signature(&format!("{line} Here is my code:\n```\nx = 1\n```"));
    assert_eq!(s.flags, TAIL_FALLBACK);
    // Fallback keys are bands: prompts whose short tail region shares
    // only the stock phrase "here is my code: <code>" are not near, and
    // share a key only if that phrase's shingle happens to be the
    // minimum of both bins of a band (here: for one band of four).
    let firsts = [
        "why does the parser drop the last row of the table",
        "my loop never ends when the list is empty at all",
        "the test passes locally but fails in the nightly run",
        "how can I make this function faster on big inputs",
    ];
    let seconds = [
        "what is wrong with the way I open this file today",
        "the compiler says the borrow outlives the value here",
        "I get a timeout after thirty seconds on every call",
        "why is the output sorted in reverse for some users",
    ];
    let mut sharing = 0;
    for a in firsts {
        let sa = signature(&format!("{a}. Here is my code:\n```\nx = 1\n```"));
        let ka: HashSet<u64> = sa.index_keys().into_iter().collect();
        for b in seconds {
            let sb = signature(&format!("{b}. Here is my code:\n```\ny = 2\n```"));
            sharing += usize::from(sb.index_keys().iter().any(|k| ka.contains(k)));
            assert!(!is_near(&sa, &sb), "{a:?} / {b:?}");
        }
    }
    assert!(sharing <= 4, "{sharing} of 16 pairs share a key");
}

#[test]
fn pathological_inputs_finish() {
    let cases = [
        "\"a ".repeat(50_000),
        "`".repeat(100_000),
        "``` x ".repeat(20_000),
        "\u{201C}x ".repeat(30_000),
        "\u{300C}".repeat(30_000),
        "a".repeat(200_000),
        "1 ".repeat(100_000),
        "漢字".repeat(50_000),
        "\n".repeat(100_000),
        "x\u{0301}".repeat(50_000),
    ];
    for text in &cases {
        let s = signature(text);
        assert_eq!(PromptSignature::from_hex(&s.to_hex()), Ok(s));
    }
}

#[test]
fn cjk_is_tokenised_per_character() {
    let s = signature("请把下面的文章翻译成英文并保持原来的语气");
    assert!(s.is_informative());
    assert!(s.token_count() >= 15);
}

fn arb_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\"".to_string()),
        Just("`".to_string()),
        Just("```".to_string()),
        Just("\n".to_string()),
        Just(": ".to_string()),
        Just("\u{201C}".to_string()),
        Just("\u{201D}".to_string()),
        Just("\u{00AB}".to_string()),
        Just("\u{300C}".to_string()),
        Just("https://x.y/z ".to_string()),
        Just("www.".to_string()),
        "[a-zA-Z]{1,12}",
        "[0-9.,:-]{1,6}",
        "[ \t]{1,3}",
        "[\u{4E00}-\u{4E20}]{1,4}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(piece, 0..120).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn never_panics_on_any_string(text in any::<String>()) {
        let s = signature(&text);
        prop_assert_eq!(PromptSignature::from_hex(&s.to_hex()), Ok(s));
        prop_assert_eq!(similarity(&s, &s), 1.0);
        prop_assert_eq!(is_near(&s, &s), s.is_informative());
    }

    #[test]
    fn never_panics_on_structured_text(text in arb_text(), other in arb_text()) {
        let a = signature(&text);
        let b = signature(&other);
        let ab = similarity(&a, &b);
        prop_assert!((0.0..=1.0).contains(&ab));
        prop_assert_eq!(ab, similarity(&b, &a));
        prop_assert_eq!(is_near(&a, &b), is_near(&b, &a));
        prop_assert_eq!(PromptSignature::from_hex(&a.to_hex()), Ok(a));
    }

    #[test]
    fn from_hex_never_panics(text in any::<String>()) {
        let _ = PromptSignature::from_hex(&text);
    }

    #[test]
    fn from_hex_accepts_any_v1_payload(flags in 0u8..4, bytes in prop::collection::vec(any::<u8>(), 196)) {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let s = PromptSignature::from_hex(&format!("01{flags:02x}{hex}")).unwrap();
        prop_assert_eq!(s.to_hex(), format!("01{flags:02x}{hex}"));
    }
}

// -----------------------------------------------------------------------
// Corpus generator (seeded, deterministic)

const NOUNS: &[&str] = &[
    "house",
    "river",
    "market",
    "teacher",
    "engine",
    "garden",
    "report",
    "window",
    "city",
    "student",
    "company",
    "budget",
    "system",
    "network",
    "country",
    "child",
    "doctor",
    "forest",
    "machine",
    "problem",
    "answer",
    "letter",
    "journey",
    "bridge",
    "village",
    "mountain",
    "customer",
    "product",
    "contract",
    "policy",
    "farmer",
    "scientist",
    "planet",
    "battery",
    "library",
    "museum",
    "kitchen",
    "recipe",
    "painting",
    "song",
    "movie",
    "story",
    "island",
    "ocean",
    "storm",
    "winter",
    "summer",
    "festival",
    "election",
    "economy",
    "bank",
    "loan",
    "hospital",
    "patient",
    "vaccine",
    "virus",
    "cell",
    "protein",
    "gene",
    "atom",
    "molecule",
    "theory",
    "experiment",
    "telescope",
    "satellite",
    "rocket",
    "airport",
    "train",
    "bicycle",
    "road",
    "car",
    "truck",
    "factory",
    "worker",
    "manager",
    "team",
    "game",
    "player",
    "coach",
    "stadium",
    "ticket",
    "price",
    "tax",
    "law",
    "court",
    "judge",
    "lawyer",
    "witness",
    "crime",
    "police",
    "soldier",
    "army",
    "war",
    "peace",
    "treaty",
    "king",
    "queen",
    "empire",
    "castle",
    "temple",
    "church",
    "school",
    "university",
    "lecture",
    "exam",
    "grade",
    "essay",
    "book",
    "poem",
    "novel",
    "author",
    "editor",
    "newspaper",
    "website",
    "server",
    "database",
    "password",
    "software",
    "computer",
    "phone",
    "camera",
    "picture",
    "color",
    "shape",
    "circle",
    "triangle",
    "number",
    "equation",
    "function",
    "variable",
    "matrix",
    "vector",
    "graph",
    "chart",
    "table",
    "chair",
    "door",
    "wall",
    "roof",
    "floor",
    "tree",
    "flower",
    "seed",
    "apple",
    "bread",
    "cheese",
    "coffee",
    "tea",
    "water",
    "fire",
    "stone",
    "metal",
    "gold",
    "silver",
    "horse",
    "dog",
    "cat",
    "bird",
    "fish",
    "insect",
    "whale",
    "wolf",
    "bear",
    "mother",
    "father",
    "brother",
    "sister",
    "friend",
    "neighbor",
    "stranger",
    "meeting",
    "plan",
    "idea",
    "decision",
    "mistake",
    "habit",
    "dream",
    "memory",
    "emotion",
    "language",
    "culture",
    "religion",
    "history",
    "future",
    "climate",
    "energy",
    "oil",
    "solar",
    "wind",
    "carbon",
    "reactor",
    "wave",
    "signal",
    "sound",
    "light",
    "shadow",
    "mirror",
    "clock",
    "calendar",
    "holiday",
    "vacation",
    "hotel",
    "restaurant",
    "menu",
    "dinner",
    "breakfast",
    "lunch",
    "salary",
    "career",
    "interview",
    "resume",
    "office",
];
const VERBS: &[&str] = &[
    "builds",
    "finds",
    "changes",
    "moves",
    "carries",
    "breaks",
    "opens",
    "closes",
    "writes",
    "reads",
    "sells",
    "buys",
    "teaches",
    "learns",
    "follows",
    "leads",
    "protects",
    "destroys",
    "measures",
    "improves",
    "reduces",
    "increases",
    "explains",
    "describes",
    "creates",
    "supports",
    "ignores",
    "watches",
    "needs",
    "wants",
    "loves",
    "hates",
    "helps",
    "calls",
    "visits",
    "leaves",
    "enters",
    "crosses",
    "paints",
    "sings",
    "plays",
    "wins",
    "loses",
    "cooks",
    "eats",
    "drinks",
    "grows",
    "cuts",
    "fixes",
    "tests",
    "checks",
    "counts",
    "shares",
    "hides",
    "shows",
    "sends",
    "receives",
    "pays",
    "owns",
    "rents",
    "designs",
    "observes",
    "predicts",
    "replaces",
    "connects",
    "divides",
    "collects",
    "defends",
    "attacks",
    "forgets",
    "remembers",
    "drives",
    "rides",
    "pushes",
    "pulls",
    "throws",
    "catches",
    "draws",
    "signs",
];
const VERBS_BASE: &[&str] = &[
    "build", "find", "change", "move", "carry", "break", "open", "close", "write", "read", "sell",
    "buy", "teach", "learn", "follow", "lead", "protect", "measure", "improve", "reduce",
    "increase", "describe", "create", "support", "watch", "help", "visit", "cross", "paint",
    "cook", "grow", "fix", "test", "check", "count", "share", "design", "predict", "replace",
    "connect", "collect", "defend", "remember", "drive", "draw", "compare", "organize", "plan",
];
const ADJS: &[&str] = &[
    "large",
    "small",
    "old",
    "new",
    "bright",
    "dark",
    "quiet",
    "loud",
    "fast",
    "slow",
    "cheap",
    "expensive",
    "strong",
    "weak",
    "happy",
    "sad",
    "angry",
    "calm",
    "rich",
    "poor",
    "young",
    "ancient",
    "modern",
    "simple",
    "complex",
    "strange",
    "familiar",
    "dangerous",
    "safe",
    "beautiful",
    "ugly",
    "warm",
    "cold",
    "wet",
    "dry",
    "heavy",
    "light",
    "empty",
    "full",
    "clean",
    "dirty",
    "famous",
    "unknown",
    "local",
    "global",
    "public",
    "private",
    "digital",
    "natural",
    "political",
    "economic",
    "medical",
    "legal",
    "social",
    "chemical",
    "physical",
    "careful",
    "lazy",
    "honest",
    "clever",
    "curious",
    "broken",
    "hidden",
    "green",
    "red",
    "blue",
    "golden",
];
const ADVS: &[&str] = &[
    "quickly",
    "slowly",
    "carefully",
    "rarely",
    "often",
    "always",
    "never",
    "suddenly",
    "quietly",
    "loudly",
    "easily",
    "barely",
    "clearly",
    "probably",
    "certainly",
    "finally",
    "recently",
    "usually",
    "mostly",
    "partly",
];
const PREPS: &[&str] = &[
    "in", "on", "near", "under", "behind", "with", "without", "for", "from", "into", "across",
    "around", "after", "before", "during", "through", "beside", "against", "toward", "over",
];
const DETS: &[&str] = &[
    "the", "a", "this", "that", "every", "my", "our", "their", "one", "some",
];
const NAMES: &[&str] = &[
    "Alice", "Bob", "Carlos", "Dana", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kira",
    "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor",
    "Wen", "Ximena", "Yusuf", "Zoe", "London", "Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Cairo",
    "Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne",
];
const LANGS: &[&str] = &[
    "English",
    "French",
    "German",
    "Spanish",
    "Italian",
    "Portuguese",
    "Japanese",
    "Korean",
    "Chinese",
    "Arabic",
    "Hindi",
    "Russian",
    "Turkish",
    "Dutch",
    "Polish",
    "Swedish",
];
const SUBJECTS: &[&str] = &[
    "high school biology",
    "college chemistry",
    "world history",
    "macroeconomics",
    "computer security",
    "abstract algebra",
    "clinical knowledge",
    "moral philosophy",
    "international law",
    "astronomy",
    "marketing",
    "professional accounting",
    "virology",
    "electrical engineering",
    "formal logic",
    "human aging",
    "nutrition",
    "prehistory",
];
const PROFESSIONS: &[&str] = &[
    "tax accountant",
    "software architect",
    "emergency physician",
    "structural engineer",
    "immigration lawyer",
    "data scientist",
    "marketing strategist",
    "financial planner",
    "pediatric nurse",
    "supply chain manager",
    "cybersecurity analyst",
    "chef",
];
/// Openers shared by many natural prompts.
const OPENERS: &[&str] = &[
    "can you explain",
    "please help me",
    "what is the",
    "how do i",
    "i need help with",
    "could you write",
    "tell me about",
    "why does",
    "give me",
    "what are some",
    "write a",
    "help me understand",
    "can you please",
    "i want to know",
    "explain to me",
];
/// Phrases sprinkled through natural prompts.
const COMMON: &[&str] = &[
    "for example",
    "in other words",
    "step by step",
    "thank you",
    "as soon as possible",
    "in simple terms",
    "if possible",
    "please help me",
    "can you explain",
    "what is the best way to",
    "i am not sure",
    "does that make sense",
];
/// Very short natural prompts (many repeat).
const SHORT: &[&str] = &[
    "hi",
    "hello",
    "hey there",
    "thanks!",
    "thank you",
    "ok",
    "what is the capital of France?",
    "what is the capital of Peru?",
    "how are you?",
    "tell me a joke",
    "good morning",
    "what time is it in Tokyo?",
    "who won the world cup in 2018?",
    "translate hello to Spanish",
    "what's 2+2?",
    "help",
    "continue",
    "explain quantum computing",
    "write a haiku about rain",
    "summarize this",
    "are you there?",
    "what is love?",
    "define entropy",
    "yes",
    "no, try again",
];
/// Sign-off lines of email-style natural prompts.
const SIGNOFFS: &[&str] = &[
    "Thanks in advance for your help!",
    "Please let me know if you need more information.",
    "Any help would be greatly appreciated.",
];

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs.choose(rng).copied().unwrap_or("x")
}

fn noun_phrase(rng: &mut StdRng) -> String {
    if rng.gen_bool(0.4) {
        format!(
            "{} {} {}",
            pick(rng, DETS),
            pick(rng, ADJS),
            pick(rng, NOUNS)
        )
    } else {
        format!("{} {}", pick(rng, DETS), pick(rng, NOUNS))
    }
}

fn capitalise(s: &str) -> String {
    let mut cs = s.chars();
    match cs.next() {
        Some(f) => f.to_uppercase().collect::<String>() + cs.as_str(),
        None => String::new(),
    }
}

/// One random sentence from a small grammar.
fn sentence(rng: &mut StdRng) -> String {
    let r = rng.gen_range(0..14);
    let s = match r {
        0 => format!(
            "{} {} {} {} {}.",
            noun_phrase(rng),
            pick(rng, VERBS),
            noun_phrase(rng),
            pick(rng, PREPS),
            noun_phrase(rng)
        ),
        1 => format!(
            "{} {} {} because {} was {}.",
            pick(rng, NAMES),
            pick(rng, VERBS),
            noun_phrase(rng),
            noun_phrase(rng),
            pick(rng, ADJS)
        ),
        2 => format!(
            "when {} {}, {} {} {}.",
            noun_phrase(rng),
            pick(rng, VERBS),
            noun_phrase(rng),
            pick(rng, VERBS),
            pick(rng, ADVS)
        ),
        3 => format!(
            "why does {} {} {}?",
            noun_phrase(rng),
            pick(rng, VERBS_BASE),
            noun_phrase(rng)
        ),
        4 => format!(
            "{} said that {} is {} and {}.",
            pick(rng, NAMES),
            noun_phrase(rng),
            pick(rng, ADJS),
            pick(rng, ADJS)
        ),
        5 => format!(
            "there are {} {}s {} {}.",
            rng.gen_range(2..500),
            pick(rng, NOUNS),
            pick(rng, PREPS),
            noun_phrase(rng)
        ),
        6 => format!(
            "{} {} {} {} {}, but {} {} {}.",
            noun_phrase(rng),
            pick(rng, ADVS),
            pick(rng, VERBS),
            noun_phrase(rng),
            pick(rng, PREPS),
            pick(rng, NAMES),
            pick(rng, VERBS),
            noun_phrase(rng)
        ),
        7 => format!(
            "if {} {} {}, then {} will {} {}.",
            noun_phrase(rng),
            pick(rng, VERBS),
            noun_phrase(rng),
            pick(rng, NAMES),
            pick(rng, VERBS_BASE),
            noun_phrase(rng)
        ),
        8 => format!(
            "how can {} {} {} {} {}?",
            noun_phrase(rng),
            pick(rng, VERBS_BASE),
            noun_phrase(rng),
            pick(rng, PREPS),
            noun_phrase(rng)
        ),
        9 => format!(
            "{} is {} than {}.",
            noun_phrase(rng),
            pick(rng, ADJS),
            noun_phrase(rng)
        ),
        10 => format!(
            "in {}, {} {} {} {} {}.",
            rng.gen_range(1800..2030),
            pick(rng, NAMES),
            pick(rng, VERBS),
            noun_phrase(rng),
            pick(rng, PREPS),
            pick(rng, NAMES)
        ),
        11 => format!(
            "{} and {} {} {} {}.",
            noun_phrase(rng),
            noun_phrase(rng),
            pick(rng, ADVS),
            pick(rng, VERBS),
            noun_phrase(rng)
        ),
        12 => format!(
            "most {}s {} {} {} {}.",
            pick(rng, NOUNS),
            pick(rng, VERBS_BASE),
            noun_phrase(rng),
            pick(rng, PREPS),
            noun_phrase(rng)
        ),
        _ => format!(
            "{} {} {} {} {} {}.",
            pick(rng, NAMES),
            pick(rng, ADVS),
            pick(rng, VERBS),
            noun_phrase(rng),
            pick(rng, PREPS),
            noun_phrase(rng)
        ),
    };
    capitalise(&s)
}

/// Random sentences, at least `min_words` words.
fn prose(rng: &mut StdRng, min_words: usize) -> String {
    let mut out = String::new();
    let mut words = 0;
    while words < min_words {
        let s = sentence(rng);
        words += s.split_whitespace().count();
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&s);
    }
    out
}

fn ident(rng: &mut StdRng) -> String {
    let a = pick(rng, NOUNS);
    let b = pick(rng, VERBS_BASE);
    match rng.gen_range(0..4) {
        0 => format!("{b}_{a}"),
        1 => format!("{a}_{}", pick(rng, NOUNS)),
        2 => a.to_string(),
        _ => format!("{b}{}", capitalise(a)),
    }
}

/// A random code snippet (Python, JavaScript or SQL DDL).
fn code(rng: &mut StdRng, lang: &str) -> String {
    let mut out = String::new();
    for _ in 0..rng.gen_range(1..4) {
        let f = ident(rng);
        let args: Vec<String> = (0..rng.gen_range(1..4)).map(|_| ident(rng)).collect();
        let a0 = args[0].clone();
        let al = args[args.len() - 1].clone();
        match lang {
            "python" => {
                out += &format!("def {f}({}):\n", args.join(", "));
                for _ in 0..rng.gen_range(2..8) {
                    let v = ident(rng);
                    out += &match rng.gen_range(0..5) {
                        0 => format!("    {v} = {a0} * {}\n", rng.gen_range(1..100)),
                        1 => format!("    for {v} in range(len({a0})):\n        {al} += {v}\n"),
                        2 => format!(
                            "    if {v} > {}:\n        return {v}\n",
                            rng.gen_range(0..50)
                        ),
                        3 => format!(
                            "    {v} = [x for x in {a0} if x % {} == 0]\n",
                            rng.gen_range(2..9)
                        ),
                        _ => format!("    print(\"{}\", {v})\n", pick(rng, NOUNS)),
                    };
                }
                out += &format!("    return {a0}\n\n");
            }
            "sql" => {
                out += &format!("CREATE TABLE {f} (\n  id INTEGER PRIMARY KEY,\n");
                for a in &args {
                    out += &format!(
                        "  {a} {},\n",
                        pick(rng, &["TEXT", "INTEGER", "REAL", "DATE"])
                    );
                }
                out += &format!(
                    "  {}_id INTEGER REFERENCES {}(id)\n);\n",
                    pick(rng, NOUNS),
                    pick(rng, NOUNS)
                );
            }
            _ => {
                out += &format!("function {f}({}) {{\n", args.join(", "));
                for _ in 0..rng.gen_range(2..8) {
                    let v = ident(rng);
                    out += &match rng.gen_range(0..4) {
                        0 => format!(
                            "  const {v} = {a0}.map((x) => x * {});\n",
                            rng.gen_range(1..100)
                        ),
                        1 => {
                            format!("  for (let i = 0; i < {a0}.length; i++) {{ {v} += i; }}\n")
                        }
                        2 => format!(
                            "  if ({v} === null) {{ return {}; }}\n",
                            rng.gen_range(0..9)
                        ),
                        _ => format!("  console.log('{}', {v});\n", pick(rng, NOUNS)),
                    };
                }
                out += &format!("  return {a0};\n}}\n\n");
            }
        }
    }
    out
}

/// One part of a template: fixed text or a fill.
#[derive(Clone, Copy)]
enum Slot {
    Text(&'static str),
    /// Random sentences, about this many words (scaled, see `render`).
    Prose(usize),
    Num,
    Code(&'static str),
    /// A double-quoted span of about this many words.
    Quote(usize),
    Lang,
    Subject,
    Profession,
    Name,
}
use Slot::{Code, Lang, Name, Num, Profession, Prose, Quote, Subject, Text};

struct Template {
    name: &'static str,
    parts: Vec<Slot>,
}

/// Templates modelled on distillation prompts. The last five are the hard
/// cases: instruction shorter than a region, instruction between two
/// fills, slots inside the instruction, scaffolding that is mostly labels.
fn templates() -> Vec<Template> {
    let t = |name, parts| Template { name, parts };
    vec![
            t("cot-reconstruct", vec![Text("Imagine and articulate the internal reasoning behind the completed response below, and write it out step by step. Be explicit about every intermediate conclusion and never skip a step.\n\nQuestion: "), Prose(30), Text("\n\nAnswer: "), Prose(30)]),
            t("rubric-grade", vec![Text("Grade the following answer on a 1-10 rubric for correctness, completeness, clarity and concision. First list the strengths and the weaknesses, then output the final score on its own line as Score: N.\n\nQuestion: "), Prose(25), Text("\nAnswer: "), Prose(40)]),
            t("tool-trajectory", vec![Text("You are given a user request and the final answer produced by an assistant that had access to tools (web search, calculator, code interpreter). Reconstruct the full trajectory of tool calls, including the arguments and the observations returned, that would lead to this answer. Use the format Thought / Action / Observation.\n\nRequest: "), Prose(25), Text("\nFinal answer: "), Prose(35)]),
            t("coding-python", vec![Text("Solve the following coding problem in Python. Explain your approach, state the time and space complexity, and then write a complete and efficient solution.\n\n"), Prose(30), Text("\n\nExample input: "), Num, Text(" "), Num, Text("\nExample output: "), Num, Text("\n\nStarter code:\n```python\n"), Code("python"), Text("```")]),
            t("translate", vec![Text("Translate the following text from "), Lang, Text(" into "), Lang, Text(". Preserve the meaning, the tone and the formatting, and do not add any explanations or notes.\n\nText: "), Prose(50)]),
            t("mcq-eval", vec![Text("The following is a multiple choice question about "), Subject, Text(". Think step by step, then answer with the letter of the correct option only.\n\n"), Prose(20), Text("\nA) "), Prose(6), Text("\nB) "), Prose(6), Text("\nC) "), Prose(6), Text("\nD) "), Prose(6), Text("\nAnswer:")]),
            t("math-boxed", vec![Text("Solve the problem below. Show all of your work, reason carefully about each step, and put the final answer in \\boxed{}.\n\nProblem: "), Prose(20), Text(" If there are "), Num, Text(" of them and each costs "), Num, Text(" dollars, what is the total after a discount of "), Num, Text(" percent?")]),
            t("summarize-exec", vec![Text("Summarize the following article in three bullet points, then give a one-sentence takeaway for a busy executive.\n\nArticle:\n"), Prose(80)]),
            t("pairwise-judge", vec![Text("Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the user question displayed below. Explain your judgement briefly, then output your final verdict strictly as [[A]] or [[B]].\n\n[User Question]\n"), Prose(15), Text("\n\n[The Start of Assistant A's Answer]\n"), Prose(30), Text("\n[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n"), Prose(30), Text("\n[The End of Assistant B's Answer]")]),
            t("critique-rewrite", vec![Text("Critique the following response for factual errors, logical gaps and unclear wording. Then rewrite it so that it would receive a perfect score from an expert reviewer.\n\nResponse: "), Prose(60)]),
            t("qa-generation", vec![Text("Generate "), Num, Text(" diverse question and answer pairs about the passage below. Each question must be answerable from the passage alone. Return them as a JSON list of objects with the keys \"question\" and \"answer\".\n\nPassage: "), Prose(70)]),
            t("code-explain", vec![Text("Explain what the following code does line by line, identify any bugs or edge cases it mishandles, and suggest a more idiomatic version.\n\n```javascript\n"), Code("js"), Text("```\n"), Prose(8)]),
            t("unit-tests", vec![Text("Write comprehensive unit tests for the function below using pytest. Cover edge cases, invalid inputs and typical usage, and aim for full branch coverage.\n\n```python\n"), Code("python"), Text("```\nContext: "), Prose(20)]),
            t("text-to-sql", vec![Text("Given the database schema below, write a SQL query that answers the question. Return only the query, without any commentary.\n\nSchema:\n"), Code("sql"), Text("\nQuestion: "), Prose(20)]),
            t("sentiment", vec![Text("Classify the sentiment of the following customer review as positive, negative or neutral, and give a confidence between 0 and 1. Reply in the form label, confidence.\n\nReview: "), Quote(30), Text("\n"), Prose(30)]),
            t("ner-json", vec![Text("Extract all named entities (people, organisations, locations and dates) from the text below and return them as JSON grouped by entity type. Do not include any entity that is not explicitly mentioned.\n\nText: "), Prose(60)]),
            t("expert-persona", vec![Text("You are an expert "), Profession, Text(" with twenty years of experience. A client asks you the following question. Answer in detail, cite best practices, and end with a short checklist.\n\nClient question: "), Prose(50)]),
            t("fill-first-rewrite", vec![Prose(70), Text("\n\nRewrite the passage above in plain English for a twelve year old reader, keeping every fact but using short sentences and simple words.")]),
            t("think-tags", vec![Text("Answer the question below. Before giving the final answer, reason through the problem step by step inside <thinking> tags, then give only the final answer inside <answer> tags.\n\nQuestion: "), Prose(40)]),
            t("self-instruct", vec![Text("You are asked to come up with a set of "), Num, Text(" diverse task instructions. These task instructions will be given to a language model and we will evaluate the model for completing the instructions. Here are the requirements: try not to repeat the verb for each instruction, and the language used for the instructions also should be diverse.\n\nList of tasks:\n1. "), Prose(12), Text("\n2. "), Prose(12), Text("\n3. "), Prose(12), Text("\n4. "), Prose(12)]),
            t("reward-rating", vec![Text("Rate the helpfulness of the assistant's final reply on a scale of 1 to 5, where 1 means not helpful at all and 5 means extremely helpful. Output only the number.\n\nConversation:\nUser: "), Prose(25), Text("\nAssistant: "), Prose(40), Text("\nRating:")]),
            t("doc-qa", vec![Text("Read the document and answer the question at the end.\n\nDocument:\n"), Prose(90), Text("\n\nQuestion: "), Prose(12), Text("\nAnswer concisely and quote the sentence from the document that supports your answer.")]),
            t("quote-analysis", vec![Text("Here is a quotation from "), Name, Text(": "), Quote(25), Text(". Analyse its meaning, the historical context in which it was said, and how it is still relevant today. "), Prose(40)]),
            t("proof", vec![Text("Prove the following statement rigorously. State every assumption, justify each step, and conclude with Q.E.D.\n\nStatement: "), Prose(35)]),
            t("HARD short-summarize", vec![Text("Summarize the text below in one paragraph.\n\n"), Prose(60)]),
            t("HARD instruction-in-middle", vec![Prose(40), Text("\n\nBased on the conversation above, write the next reply as the assistant would, keeping the same tone. Then explain why it is better than the alternatives:\n\n"), Prose(40)]),
            t("HARD persona-slots", vec![Text("You are "), Name, Text(", a "), Profession, Text(" based in "), Name, Text(". You speak "), Lang, Text(" and have "), Num, Text(" years of experience. Answer the user's question in character.\n\nUser: "), Prose(40)]),
            t("HARD few-shot-labels", vec![Text("Here are some examples of questions and their answers.\nQ: "), Prose(12), Text("\nA: "), Prose(12), Text("\nQ: "), Prose(12), Text("\nA: "), Prose(12), Text("\nQ: "), Prose(12), Text("\nA:")]),
            t("HARD json-schema", vec![Text("Return a JSON object that matches this schema:\n```json\n{\"name\": string, \"age\": number, \"tags\": [string]}\n```\nInput: "), Prose(50)]),
        ]
}

/// Renders one instance; returns the text and the fraction of its bytes that are fill.
fn render(rng: &mut StdRng, t: &Template, scale: f64) -> (String, f64) {
    let mut out = String::new();
    let mut fill = 0usize;
    for part in &t.parts {
        let before = out.len();
        match *part {
            Text(s) => out.push_str(s),
            Prose(n) => {
                let lo = ((n as f64) * scale * 0.7) as usize;
                let hi = ((n as f64) * scale * 1.6) as usize + 2;
                let words = rng.gen_range(lo.max(1)..hi);
                out.push_str(&prose(rng, words));
            }
            Num => {
                let v = match rng.gen_range(0..3) {
                    0 => rng.gen_range(0..100).to_string(),
                    1 => rng.gen_range(100..100_000).to_string(),
                    _ => format!("{:.2}", rng.gen_range(0.0..1000.0)),
                };
                out.push_str(&v);
            }
            Code(lang) => out.push_str(&code(rng, lang)),
            Quote(n) => {
                let words = rng.gen_range(n / 2..n * 2);
                out.push('"');
                out.push_str(&prose(rng, words));
                out.push('"');
            }
            Lang => out.push_str(pick(rng, LANGS)),
            Subject => out.push_str(pick(rng, SUBJECTS)),
            Profession => out.push_str(pick(rng, PROFESSIONS)),
            Name => out.push_str(pick(rng, NAMES)),
        }
        if !matches!(part, Text(_)) {
            fill += out.len() - before;
        }
    }
    let frac = fill as f64 / out.len().max(1) as f64;
    (out, frac)
}

/// An instance whose fill is at least 60 % of its bytes.
fn instance(rng: &mut StdRng, t: &Template) -> (String, f64) {
    let mut scale = 1.0;
    loop {
        let (s, f) = render(rng, t, scale);
        if f >= 0.6 {
            return (s, f);
        }
        scale *= 1.25;
    }
}

/// One natural (unrelated) prompt: 5–400 words, varied shapes.
fn natural(rng: &mut StdRng) -> String {
    if rng.gen_bool(0.08) {
        return pick(rng, SHORT).to_string();
    }
    let target = (5.0 * 80f64.powf(rng.gen::<f64>())) as usize;
    let email = rng.gen_bool(0.06);
    let paragraphs = rng.gen_bool(0.1);
    let mut out = String::new();
    if email {
        out += &format!(
            "{},\n\n",
            pick(rng, &["Hi", "Hello", "Dear assistant", "Hey"])
        );
    }
    match rng.gen_range(0..6) {
        0 | 1 => {
            out += pick(rng, OPENERS);
            out.push(' ');
            out += &noun_phrase(rng);
            out += if rng.gen_bool(0.5) { "?" } else { "." };
        }
        2 => {
            out += &format!(
                "{} {} {}?",
                pick(
                    rng,
                    &["what is", "who is", "where is", "how does", "why is"]
                ),
                noun_phrase(rng),
                pick(rng, &["important", "used", "made", "different", "so hard"])
            );
        }
        3 => {
            out += &format!(
                "I am working on {} and {} {} {}.",
                noun_phrase(rng),
                noun_phrase(rng),
                pick(rng, VERBS),
                noun_phrase(rng)
            );
        }
        _ => {}
    }
    let mut words = out.split_whitespace().count();
    while words < target {
        let s = if rng.gen_bool(0.1) {
            format!("{}, {}", pick(rng, COMMON), sentence(rng).to_lowercase())
        } else if rng.gen_bool(0.03) {
            format!("Here is my code:\n```\n{}```", code(rng, "python"))
        } else if rng.gen_bool(0.04) {
            format!("The text says \"{}\"", prose(rng, 8))
        } else if rng.gen_bool(0.05) {
            format!("\n- {}", sentence(rng))
        } else if paragraphs && rng.gen_bool(0.3) {
            format!("\n\n{}", sentence(rng))
        } else {
            sentence(rng)
        };
        words += s.split_whitespace().count();
        out.push(' ');
        out += &s;
    }
    if email {
        out += &format!("\n\n{}\n{}", pick(rng, SIGNOFFS), pick(rng, NAMES));
    } else if rng.gen_bool(0.15) {
        out += &format!(
            " {}",
            pick(
                rng,
                &[
                    "Thanks!",
                    "Thank you in advance.",
                    "Please be concise.",
                    "Explain it step by step."
                ]
            )
        );
    }
    out
}

struct Corpus {
    /// (template index, text, fill fraction)
    instances: Vec<(usize, String, f64)>,
    natural: Vec<String>,
}

fn corpus(per_template: usize, naturals: usize) -> Corpus {
    let mut rng = StdRng::seed_from_u64(0x5EED_D157_1111);
    let mut instances = Vec::new();
    for (ti, t) in templates().iter().enumerate() {
        for _ in 0..per_template {
            let (s, f) = instance(&mut rng, t);
            instances.push((ti, s, f));
        }
    }
    let natural = (0..naturals).map(|_| natural(&mut rng)).collect();
    Corpus { instances, natural }
}

// -----------------------------------------------------------------------
// Measurement

#[derive(Default, Clone, Copy)]
struct Rate {
    pairs: u64,
    near: u64,
    key: u64,
}

impl Rate {
    fn add(&mut self, near: bool, key: bool) {
        self.pairs += 1;
        self.near += u64::from(near);
        self.key += u64::from(key);
    }
    fn near_frac(&self) -> f64 {
        self.near as f64 / self.pairs.max(1) as f64
    }
    fn key_frac(&self) -> f64 {
        self.key as f64 / self.pairs.max(1) as f64
    }
    fn line(&self, what: &str) -> String {
        format!(
            "{what:<44} pairs {:>9}  is_near {:>8.4}%  shares a key {:>8.4}%",
            self.pairs,
            100.0 * self.near_frac(),
            100.0 * self.key_frac()
        )
    }
}

const PER_TEMPLATE: usize = 50;
const NATURALS: usize = 2000;

/// Rates of one measurement run.
struct Rates {
    same: Rate,
    typical: Rate,
    hard: Rate,
    per_template: Vec<Rate>,
    diff: Rate,
    cross: Rate,
    cross_inf: Rate,
    nat_all: Rate,
    nat_inf: Rate,
    natural_not_informative: usize,
    instances_not_informative: usize,
}

/// Signs the corpus with `key` and measures every pair. Key sharing is
/// counted the way the engine would find it: through an index from key
/// to prompts.
fn measure(c: &Corpus, key: u64) -> Rates {
    let n_templates = templates().len();
    let hard: Vec<bool> = templates()
        .iter()
        .map(|t| t.name.starts_with("HARD"))
        .collect();
    let t_sigs: Vec<PromptSignature> = c
        .instances
        .iter()
        .map(|(_, s, _)| signature_keyed(s, key))
        .collect();
    let n_sigs: Vec<PromptSignature> = c.natural.iter().map(|s| signature_keyed(s, key)).collect();
    let nt = t_sigs.len();

    let mut index: HashMap<u64, Vec<u32>> = HashMap::new();
    for (id, s) in t_sigs.iter().chain(n_sigs.iter()).enumerate() {
        for k in s.index_keys() {
            index.entry(k).or_default().push(id as u32);
        }
    }
    let mut sharing: HashSet<(u32, u32)> = HashSet::new();
    for ids in index.values() {
        for (x, &a) in ids.iter().enumerate() {
            for &b in &ids[x + 1..] {
                if a != b {
                    sharing.insert((a.min(b), a.max(b)));
                }
            }
        }
    }
    let shares = |a: usize, b: usize| sharing.contains(&(a.min(b) as u32, a.max(b) as u32));

    let mut r = Rates {
        same: Rate::default(),
        typical: Rate::default(),
        hard: Rate::default(),
        per_template: vec![Rate::default(); n_templates],
        diff: Rate::default(),
        cross: Rate::default(),
        cross_inf: Rate::default(),
        nat_all: Rate::default(),
        nat_inf: Rate::default(),
        natural_not_informative: n_sigs.iter().filter(|s| !s.is_informative()).count(),
        instances_not_informative: t_sigs.iter().filter(|s| !s.is_informative()).count(),
    };
    for a in 0..nt {
        for b in a + 1..nt {
            let near = is_near(&t_sigs[a], &t_sigs[b]);
            let key = shares(a, b);
            let (ta, tb) = (c.instances[a].0, c.instances[b].0);
            if ta == tb {
                r.same.add(near, key);
                r.per_template[ta].add(near, key);
                if hard[ta] {
                    r.hard.add(near, key);
                } else {
                    r.typical.add(near, key);
                }
            } else {
                r.diff.add(near, key);
            }
        }
    }
    for (a, t) in t_sigs.iter().enumerate() {
        for (j, n) in n_sigs.iter().enumerate() {
            let near = is_near(t, n);
            let key = shares(a, nt + j);
            r.cross.add(near, key);
            if n.is_informative() {
                r.cross_inf.add(near, key);
            }
        }
    }
    for a in 0..n_sigs.len() {
        for b in a + 1..n_sigs.len() {
            let near = is_near(&n_sigs[a], &n_sigs[b]);
            let key = shares(nt + a, nt + b);
            r.nat_all.add(near, key);
            if n_sigs[a].is_informative() && n_sigs[b].is_informative() {
                r.nat_inf.add(near, key);
            }
        }
    }
    r
}

/// Pair rates over the generated corpus (deterministic: seeded). See the
/// report with `cargo test --release pair_rates -- --nocapture`.
///
/// The floors asserted are the project's: ≥ 95 % of same-template pairs
/// near and sharing a key, ≤ 1 % of unrelated pairs. The same-template
/// floor applies to the 24 typical templates; the 5 `HARD` ones probe
/// the limits listed in `docs/signature.md` (§9) and are reported apart, with
/// only a regression floor on all 29 together.
#[test]
fn pair_rates() {
    let c = corpus(PER_TEMPLATE, NATURALS);
    let r = measure(&c, DEFAULT_KEY);
    let names: Vec<&str> = templates().iter().map(|t| t.name).collect();
    let fills: Vec<f64> = c.instances.iter().map(|i| i.2).collect();
    let fill_mean = fills.iter().sum::<f64>() / fills.len() as f64;
    let fill_min = fills.iter().copied().fold(1.0, f64::min);
    let words: Vec<usize> = c
        .natural
        .iter()
        .map(|s| s.split_whitespace().count())
        .collect();
    println!("prompt signature pair rates (seeded corpus, default key)");
    println!(
            "  {} templates ({} typical, {} hard) x {PER_TEMPLATE} instances; fill = {:.1}% of bytes on average, {:.1}% at least",
            names.len(),
            names.iter().filter(|n| !n.starts_with("HARD")).count(),
            names.iter().filter(|n| n.starts_with("HARD")).count(),
            100.0 * fill_mean,
            100.0 * fill_min
        );
    println!(
            "  {} natural prompts, {}-{} words; {} not informative (< {MIN_INFORMATIVE_TOKENS} tokens); template instances not informative: {}",
            c.natural.len(),
            words.iter().min().unwrap_or(&0),
            words.iter().max().unwrap_or(&0),
            r.natural_not_informative,
            r.instances_not_informative
        );
    println!("{}", r.typical.line("same template, 24 typical templates"));
    println!("{}", r.hard.line("same template, 5 hard templates"));
    println!("{}", r.same.line("same template, all 29"));
    println!("{}", r.diff.line("different templates"));
    println!("{}", r.cross.line("template vs natural (all)"));
    println!("{}", r.cross_inf.line("template vs natural (informative)"));
    println!("{}", r.nat_all.line("natural vs natural (all)"));
    println!(
        "{}",
        r.nat_inf.line("natural vs natural (both informative)")
    );
    println!("  per template (same-template pairs):");
    for (name, rate) in names.iter().zip(&r.per_template) {
        println!("    {}", rate.line(name));
    }

    assert!(
        r.typical.near_frac() >= 0.95,
        "typical same-template is_near {:.4}",
        r.typical.near_frac()
    );
    assert!(
        r.typical.key_frac() >= 0.95,
        "typical same-template keys {:.4}",
        r.typical.key_frac()
    );
    assert!(
        r.same.near_frac() >= 0.90,
        "all same-template is_near {:.4}",
        r.same.near_frac()
    );
    assert!(
        r.same.key_frac() >= 0.90,
        "all same-template keys {:.4}",
        r.same.key_frac()
    );
    for rate in [&r.nat_all, &r.nat_inf, &r.cross, &r.diff] {
        assert!(
            rate.near_frac() <= 0.01,
            "unrelated is_near {:.4}",
            rate.near_frac()
        );
        assert!(
            rate.key_frac() <= 0.01,
            "unrelated keys {:.4}",
            rate.key_frac()
        );
    }
    assert_eq!(r.instances_not_informative, 0);
}

/// The same measurement under several signing keys, i.e. several draws
/// of the hash functions: shows how much the rates owe to one draw.
/// `cargo test --release pair_rates_across_keys -- --ignored --nocapture`
#[test]
#[ignore = "slow in debug builds; a report, not a check"]
fn pair_rates_across_keys() {
    let c = corpus(PER_TEMPLATE, NATURALS);
    println!("key               typical near/key      hard near/key        all near/key         natural(inf) near/key   cross key");
    for key in [DEFAULT_KEY, 1, 2, 3, 4, 5, 6, 7] {
        let r = measure(&c, key);
        println!(
                "{key:016x}  {:6.2}% {:6.2}%    {:6.2}% {:6.2}%    {:6.2}% {:6.2}%    {:6.3}% {:6.3}%       {:6.4}%",
                100.0 * r.typical.near_frac(),
                100.0 * r.typical.key_frac(),
                100.0 * r.hard.near_frac(),
                100.0 * r.hard.key_frac(),
                100.0 * r.same.near_frac(),
                100.0 * r.same.key_frac(),
                100.0 * r.nat_inf.near_frac(),
                100.0 * r.nat_inf.key_frac(),
                100.0 * r.cross.key_frac(),
            );
    }
}

/// Texts that reach every branch of the tokeniser: words of 1 to 30 letters in
/// any case, inner and trailing punctuation, labels, quotes, code, numbers,
/// URLs, non-ASCII words and separators, words cut by the end of the text.
fn mixed_text(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        " ",
        " ",
        " ",
        "  ",
        "\n",
        "\t",
        ": ",
        ". ",
        ", ",
        "; ",
        "? ",
        "\"",
        "`",
        "```",
        "'",
        "-",
        "_",
        "(",
        ")",
        "\u{201C}",
        "\u{201D}",
        "\u{2019}",
        "\u{00A0}",
        "\u{2026}",
        "https://x.y/z",
        "www.",
        "3.14",
        "1,000",
        "10k",
        "gpt4",
        "snake_case",
        "camelCase",
        "don't",
        "step-by-step",
        "Paris",
        "\u{00E9}t\u{00E9}",
        "\u{4E2D}\u{6587}",
    ];
    let mut out = String::new();
    for _ in 0..rng.gen_range(0..300) {
        if rng.gen_bool(0.6) {
            let len = rng.gen_range(1..=30);
            let upper = rng.gen_ratio(1, 8);
            for _ in 0..len {
                let c = char::from(b'a' + rng.gen_range(0..26u8));
                out.push(if upper && rng.gen_bool(0.5) {
                    c.to_ascii_uppercase()
                } else {
                    c
                });
            }
        } else {
            out.push_str(PIECES[rng.gen_range(0..PIECES.len())]);
        }
    }
    out
}

/// Signatures of a fixed corpus, hashed: a change of the tokeniser or the
/// sketches that alters any signature (index keys, links, recorded traffic)
/// changes this value. Update it only for an intended change of §1–§5.
#[test]
fn signatures_of_a_fixed_corpus_are_unchanged() {
    let stock = StockShingles::new([STOCK, "imagine and articulate the internal reasoning"]);
    let mut rng = StdRng::seed_from_u64(18);
    let templates = templates();
    let mut digest = crate::engine::hash::FNV_OFFSET;
    let mut texts = 0;
    for i in 0..600 {
        let text = match i % 3 {
            0 => natural(&mut rng),
            1 => instance(&mut rng, &templates[i % templates.len()]).0,
            _ => mixed_text(&mut rng),
        };
        for sig in [signature(&text), signature_with(&text, &stock)] {
            digest = crate::engine::hash::fnv1a_from(digest, sig.to_hex().as_bytes());
        }
        texts += 1;
    }
    assert_eq!(texts, 600);
    assert_eq!(digest, 0x7ad8_e18b_0a33_4aae, "{digest:#x}");
}

// -----------------------------------------------------------------------
// Continued walks (§11)

/// Pieces that reach every lookahead of the tokeniser: quotes closed and
/// open, inline code, fences closed and open, curly and CJK quotation
/// marks, CJK text, names, numbers, identifiers, labels, stock phrases.
const PIECES: &[&str] = &[
    "explain the derivation",
    "step by step",
    "write out your reasoning step by step",
    "Question:",
    "the answer is",
    "\"a quoted span\"",
    "\"an open quote",
    "`code`",
    "`open code",
    "```\nfn main() {}\n```",
    "```rust",
    "\u{201C}curly\u{201D}",
    "\u{201C}open curly",
    "\u{300C}\u{4F60}\u{597D}\u{300D}",
    "\u{4F60}\u{597D}\u{4E16}\u{754C}",
    "Alice in Paris.",
    "42",
    "snake_case_name",
    "https://example.com/x",
    "caf\u{E9} na\u{EF}ve",
    "",
    "\n",
    "  ",
];

fn piece_text(rng: &mut StdRng, words: usize) -> String {
    let mut s = String::new();
    for _ in 0..words {
        let p = PIECES[rng.gen_range(0..PIECES.len())];
        if !s.is_empty() && rng.gen_bool(0.8) {
            s.push(' ');
        }
        s.push_str(p);
    }
    s
}

/// A walk stopped at the end of a text and continued on that text, a line
/// break and more gives what a walk of the whole gives: the signature, and
/// whether (and how) it can be continued again. Over three turns of
/// generated conversations, with and without stock phrases.
#[test]
fn a_continued_walk_gives_the_whole_walks_signature() {
    let mut rng = StdRng::seed_from_u64(11);
    let stocks = [StockShingles::none(7), StockShingles::keyed([STOCK], 7)];
    let (mut continued, mut open) = (0, 0);
    for round in 0..3000 {
        let stock = &stocks[round % 2];
        let mut text = {
            let n = rng.gen_range(0..30);
            piece_text(&mut rng, n)
        };
        let (sig, mut partial) = signature_partial(&text, stock);
        assert_eq!(sig, signature_with(&text, stock), "{text:?}");
        for _ in 0..3 {
            text.push('\n');
            text.push_str(&{
                let n = rng.gen_range(0..30);
                piece_text(&mut rng, n)
            });
            let whole = signature_partial(&text, stock);
            let Some(p) = partial else {
                open += 1;
                partial = whole.1;
                continue;
            };
            let (sig, next) = signature_continued(&text, &p, stock);
            assert_eq!(sig, whole.0, "{text:?}");
            assert_eq!(next.is_some(), whole.1.is_some(), "{text:?}");
            if let (Some(a), Some(b)) = (next, whole.1) {
                // The same state: continuing either gives the same again.
                let more = format!("{text}\nand then the next question");
                assert_eq!(
                    signature_continued(&more, &a, stock).0,
                    signature_continued(&more, &b, stock).0
                );
            }
            continued += 1;
            partial = next;
        }
    }
    assert!(
        continued > 2000 && open > 300,
        "{continued} continued, {open} open"
    );
}

/// A walk is not continued on a text it does not fit (no line break where
/// it stopped, too short, another key): the text is walked whole.
#[test]
fn a_walk_that_does_not_fit_is_not_continued() {
    let stock = StockShingles::none(7);
    let (_, p) = signature_partial("explain the derivation step by step", &stock);
    let p = p.unwrap();
    for text in [
        "explain the derivation step by step please",
        "explain the derivation step by",
        "explain the derivation step by step",
        "explain the derivation step by step\u{A0}and more",
    ] {
        assert_eq!(
            signature_continued(text, &p, &stock).0,
            signature_with(text, &stock)
        );
    }
    let other = StockShingles::none(8);
    let text = "explain the derivation step by step\nand more words here";
    assert_eq!(
        signature_continued(text, &p, &other).0,
        signature_with(text, &other)
    );
    // An open quotation mark at the end: what follows could close it.
    assert!(signature_partial("he said \"explain", &stock).1.is_none());
    assert!(signature_partial("```\nlet x = 1;", &stock).1.is_none());
    assert!(signature_partial("he said \"explain\" it", &stock)
        .1
        .is_some());
}
