use super::*;
use crate::engine::score::tests::WORDS;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn matcher() -> PhraseMatcher {
    PhraseMatcher::with_defaults().unwrap()
}

// -- phrase matcher ---------------------------------------------------------------------------------------

#[test]
fn matcher_finds_phrases_across_case_and_punctuation() {
    let m = matcher();
    assert_eq!(m.list_names(), ["elicitation", "rubric", "trajectory"]);
    let hit = |t: &str| m.scan(t);
    // Case, hyphens, line breaks, runs of spaces and punctuation.
    assert!(hit("Please IMAGINE and ARTICULATE the Internal-Reasoning behind it").contains(0));
    assert!(hit("...the internal\n\n  reasoning,behind a completed response").contains(0));
    assert!(hit("Write it out: step-by-step!").contains(0));
    assert!(hit("write_it_out_step_by_step").contains(0));
    // Typographic dashes, quotes and apostrophes.
    assert!(hit("show your full chain\u{2014}of\u{2013}thought").contains(0));
    assert!(hit("Evaluate the assistant\u{2019}s response below").contains(1));
    assert!(hit("Evaluate the assistant`s response").contains(1));
    assert!(hit("rate it \u{201c}on a scale of 1 to 10\u{201d}").contains(1));
    assert!(hit("Reconstruct\u{00a0}the tool calls").contains(2));
    // Several lists at once.
    let h =
        hit("Grade the response. Then reconstruct the trajectory. Full chain of thought please.");
    assert_eq!(h.count(), 3);
    assert_eq!(
        m.hit_names(h).collect::<Vec<_>>(),
        ["elicitation", "rubric", "trajectory"]
    );
    // Whole words only.
    assert!(!hit("a reasoning traces collection").any());
    assert!(!hit("xinternal monologue").any());
    assert!(hit("internal monologue.").contains(0));
    // Ordinary prompts.
    assert!(!hit("Can you help me write an email to my landlord about the broken heater?").any());
    assert!(!hit("Explain step by step how to bake bread.").any());
    assert!(!hit("").any());
}

#[test]
fn matcher_custom_lists_and_wildcards() {
    let m = PhraseMatcher::new(&[
        ("a", vec!["reason*".into(), "*ography".into()]),
        ("b", vec!["Same Phrase".into()]),
        ("c", vec!["same-phrase".into()]),
    ])
    .unwrap();
    assert!(m.scan("Reasoning!").contains(0));
    assert!(m.scan("geography").contains(0));
    assert!(!m.scan("unreasonable").contains(0));
    // Duplicate phrases in two lists hit both.
    assert_eq!(m.scan("the SAME phrase").0, 0b110);
    assert_eq!(m.phrases(), 4);
    assert!(matches!(
        PhraseMatcher::new(&[("x", vec!["ok".into(), " -- ".into()])]),
        Err(PhraseError::EmptyPhrase { index: 1, .. })
    ));
    let many: Vec<(&str, Vec<String>)> = (0..33).map(|_| ("l", vec!["x".into()])).collect();
    assert!(matches!(
        PhraseMatcher::new(&many),
        Err(PhraseError::TooManyLists { lists: 33 })
    ));
    let empty = PhraseMatcher::new(&[]).unwrap();
    assert!(!empty.scan("anything at all").any());
    // Non-ASCII text passes through; invalid sequences never panic.
    let u = PhraseMatcher::new(&[("u", vec!["raisonnement détaillé".into()])]).unwrap();
    assert!(u.scan("Donne ton raisonnement détaillé.").contains(0));
    let bytes = [0xE2u8, 0x80];
    assert!(!u.scan(std::str::from_utf8(&bytes[..0]).unwrap()).any());
}

/// The lists `text` matches, the slow way: normalise and collapse the whole text, then look for each phrase.
fn reference_scan(lists: &[&[&str]], text: &str) -> u32 {
    let mut mapped = vec![0u8; text.len()];
    map_chunk(text.as_bytes(), &mut mapped);
    let mut framed = vec![SEP];
    framed.extend_from_slice(&mapped);
    framed.push(SEP);
    // Byte for byte, typographic separators whole: still UTF-8. (`str::contains` is fast in debug builds too.)
    let hay = String::from_utf8(collapse(&framed)).unwrap();
    let mut hits = 0;
    for (i, list) in lists.iter().enumerate() {
        for p in list.iter() {
            let p = String::from_utf8(normalise_phrase(p).unwrap()).unwrap();
            if hay.contains(p.as_str()) {
                hits |= 1 << i;
            }
        }
    }
    hits
}

#[test]
fn scan_agrees_with_a_reference_across_chunks_and_lanes() {
    let m = matcher();
    assert!(m.table.as_ref().is_some_and(Table::is_fixed));
    agrees_with_reference(
        &m,
        &[DEFAULT_ELICITATION, DEFAULT_RUBRIC, DEFAULT_TRAJECTORY],
        600,
    );
}

/// Lists too long for the fixed-size table are walked through the checked one, with the same hits.
#[test]
fn a_table_larger_than_the_fixed_size_scans_alike() {
    let mut rng = StdRng::seed_from_u64(7);
    let filler: Vec<String> = (0..4000)
        .map(|_| {
            let n = rng.gen_range(2..5);
            let words: Vec<String> = (0..n)
                .map(|_| {
                    let len = rng.gen_range(3..9);
                    (0..len)
                        .map(|_| char::from(rng.gen_range(b'a'..=b'z')))
                        .collect()
                })
                .collect();
            words.join(" ")
        })
        .collect();
    let owned = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    let m = PhraseMatcher::new(&[
        ("elicitation", owned(DEFAULT_ELICITATION)),
        ("rubric", owned(DEFAULT_RUBRIC)),
        ("trajectory", owned(DEFAULT_TRAJECTORY)),
        ("filler", filler.clone()),
    ])
    .unwrap();
    assert!(m.table.as_ref().is_some_and(|t| !t.is_fixed()));
    let filler: Vec<&str> = filler.iter().map(String::as_str).collect();
    agrees_with_reference(
        &m,
        &[
            DEFAULT_ELICITATION,
            DEFAULT_RUBRIC,
            DEFAULT_TRAJECTORY,
            &filler,
        ],
        140,
    );
}

/// `rounds` random texts (ASCII and not, 0 to 20 000 bytes, phrases of the first three lists strewn in with random case and
/// separators) scan to the reference's hits; then a phrase split across the first chunk boundary.
fn agrees_with_reference(m: &PhraseMatcher, lists: &[&[&str]], rounds: usize) {
    let seps = [
        " ",
        "  ",
        "-",
        ", ",
        "\n\n",
        "\u{2014}",
        "_",
        " \u{00a0} ",
        "...",
        "\t",
    ];
    // ASCII text is walked in place, other text through the normalising buffer: half the rounds are ASCII only.
    let ascii_seps: Vec<&str> = seps.iter().copied().filter(|s| s.is_ascii()).collect();
    let mut rng = StdRng::seed_from_u64(99);
    let mut hit_texts = 0;
    let mut ascii_texts = 0;
    for round in 0..rounds {
        let seps = if round % 2 == 0 {
            &seps[..]
        } else {
            &ascii_seps[..]
        };
        let target = [0, 40, 600, 3000, 4090, 9000, 20_000][round % 7];
        let mut text = String::new();
        while text.len() < target {
            if rng.gen_ratio(1, 200) {
                // A phrase with random case and separators, sometimes with a long run of separators inside.
                let list = lists[rng.gen_range(0..3)];
                let phrase = list[rng.gen_range(0..list.len())];
                for (i, w) in phrase.split(' ').enumerate() {
                    if i > 0 {
                        if rng.gen_ratio(1, 10) {
                            text.push_str(&" ".repeat(rng.gen_range(100..600)));
                        } else {
                            text.push_str(seps[rng.gen_range(0..seps.len())]);
                        }
                    }
                    if rng.gen_bool(0.5) {
                        text.push_str(&w.to_uppercase());
                    } else {
                        text.push_str(w);
                    }
                }
            } else {
                text.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
            }
            text.push_str(seps[rng.gen_range(0..seps.len())]);
        }
        let want = reference_scan(lists, &text);
        hit_texts += usize::from(want != 0);
        ascii_texts += usize::from(text.is_ascii());
        assert_eq!(m.scan(&text).0, want, "round {round}, {} bytes", text.len());
    }
    assert!(hit_texts > rounds / 6, "{hit_texts}");
    assert!(ascii_texts > rounds / 2, "{ascii_texts}");
    // A phrase split by a long run of spaces exactly across the first chunk boundary, in ASCII text and not.
    for pad in 4000..4100 {
        for lead in ["x", "\u{e9}"] {
            let text = format!("{} internal{}monologue", lead.repeat(pad), " ".repeat(700));
            assert!(m.scan(&text).contains(0), "{pad}");
            let text = format!(
                "{} internal{}monologue{}",
                lead.repeat(pad),
                " ".repeat(700),
                "x".repeat(pad)
            );
            assert!(!m.scan(&text).contains(0), "{pad}");
        }
    }
}

#[test]
fn default_lists_have_15_to_60_phrases_and_build() {
    for l in [DEFAULT_ELICITATION, DEFAULT_RUBRIC, DEFAULT_TRAJECTORY] {
        assert!((15..=60).contains(&l.len()), "{}", l.len());
        for p in l {
            assert!(normalise_phrase(p).is_some(), "{p}");
        }
    }
    assert_eq!(
        matcher().phrases(),
        DEFAULT_ELICITATION.len() + DEFAULT_RUBRIC.len() + DEFAULT_TRAJECTORY.len()
    );
}

// -- continued scans and the prompt cache ------------------------------------------------------------------

/// Conversation-like text: words, phrases of every list split at random (so some straddle a piece boundary),
/// runs of spaces, line breaks, and now and then a non-ASCII word.
fn turn(rng: &mut StdRng, words: usize) -> String {
    let lists = [DEFAULT_ELICITATION, DEFAULT_RUBRIC, DEFAULT_TRAJECTORY];
    let mut s = String::new();
    for _ in 0..words {
        let w: String = match rng.gen_range(0..20) {
            0 => {
                let l = lists[rng.gen_range(0..3)];
                l[rng.gen_range(0..l.len())].replace('*', "")
            }
            1 => " ".repeat(rng.gen_range(2..40)),
            2 => "\n".into(),
            3 if rng.gen_bool(0.2) => "na\u{EF}ve".into(),
            _ => WORDS[rng.gen_range(0..WORDS.len())].into(),
        };
        s.push(' ');
        s.push_str(&w);
    }
    s
}

/// A scan continued past the text an earlier scan covered finds what a scan of the whole finds, phrases across
/// the line break included; text that is not ASCII, or does not fit, is scanned whole.
#[test]
fn a_continued_scan_finds_what_a_whole_scan_finds() {
    let m = matcher();
    let mut rng = StdRng::seed_from_u64(5);
    let mut across = 0;
    for _ in 0..2000 {
        let mut text = {
            let n = rng.gen_range(0..400);
            turn(&mut rng, n)
        };
        let mut before = m.scan(&text);
        for _ in 0..3 {
            // Now and then a phrase split by the line break.
            let mut second = String::new();
            if rng.gen_bool(0.3) {
                let phrase = DEFAULT_ELICITATION[rng.gen_range(0..DEFAULT_ELICITATION.len())];
                let words: Vec<&str> = phrase.split(' ').collect();
                let k = rng.gen_range(1..words.len().max(2));
                text.push(' ');
                text.push_str(&words[..k.min(words.len())].join(" "));
                second = words[k.min(words.len())..].join(" ");
                before = m.scan(&text);
            }
            let from = text.len();
            text.push('\n');
            text.push_str(&second);
            let n = rng.gen_range(0..400);
            text.push_str(&turn(&mut rng, n));
            let whole = m.scan(&text);
            assert_eq!(m.scan_continued(&text, from, before), whole, "{text:?}");
            let after = m.scan(text.get(from + 1..).unwrap_or(""));
            across += usize::from(whole.0 & !(before.0 | after.0) != 0);
            before = whole;
        }
    }
    // A phrase split by the line break: in neither part alone.
    let first = "now please write it out step by";
    let text = format!("{first}\nstep");
    assert_eq!(
        m.scan_continued(&text, first.len(), m.scan(first)),
        m.scan(&text)
    );
    assert!(m.scan(&text).contains(0) && !m.scan(first).contains(0) && !m.scan("step").contains(0));
    assert!(across > 0, "no generated phrase straddled a boundary");
}

/// Bodies of a conversation: the system prompt, then the turns so far.
fn conversation_prompt(system: &str, turns: &[String]) -> (String, Vec<usize>) {
    let mut text = system.to_owned();
    let mut cuts = Vec::new();
    for t in turns {
        cuts.push(text.len());
        text.push('\n');
        text.push_str(t);
    }
    (text, cuts)
}

/// The cached features of every turn of generated conversations are the features of a whole walk, for every set
/// of features wanted; the turns after the first are walked only past the previous turn (the cache's counts say
/// so), and a prompt sent again is not walked at all.
#[test]
fn cached_features_are_the_whole_walks_and_continue_conversations() {
    let wants = [
        Wanted::ALL,
        Wanted {
            linking: true,
            detection: false,
        },
        Wanted {
            linking: false,
            detection: true,
        },
        Wanted {
            linking: false,
            detection: false,
        },
    ];
    for wanted in wants {
        let m = matcher();
        let cache = m.cache();
        let mut rng = StdRng::seed_from_u64(9);
        let system = turn(&mut rng, 120);
        let mut walks = 0;
        for _ in 0..40 {
            let mut turns: Vec<String> = Vec::new();
            for k in 0..6 {
                // An answer and the next question.
                if k > 0 {
                    turns.push({
                        let n = rng.gen_range(0..200);
                        turn(&mut rng, n)
                    });
                }
                turns.push({
                    let n = rng.gen_range(1..200);
                    turn(&mut rng, n)
                });
                let (text, cuts) = conversation_prompt(&system, &turns);
                let got = cached_features(&m, &text, cuts.iter().copied(), wanted, 1);
                assert_eq!(got, features(&m, &text, wanted), "{wanted:?} {text:?}");
                walks += 1;
                let again = cached_features(&m, &text, cuts.iter().copied(), wanted, 1);
                assert_eq!(again, got);
            }
        }
        let s = cache.stats();
        assert_eq!(
            s.whole, walks,
            "every prompt sent again is found whole: {wanted:?} {s:?}"
        );
        // The conversations share the system prompt: only the first one's first turn walks it all; every other
        // turn continues the system prompt or the turn before.
        assert_eq!(s.walked, 1, "{wanted:?} {s:?}");
        assert!(s.continued >= walks * 2 / 3, "{wanted:?} {s:?}");
        assert!(s.continued + s.walked == walks, "{wanted:?} {s:?}");
        // Another set of wants does not find these walks: it walks its own.
        let other = wants.iter().find(|w| **w != wanted).copied().unwrap();
        let (text, cuts) = conversation_prompt(&system, &[turn(&mut rng, 50)]);
        cached_features(&m, &text, cuts.iter().copied(), wanted, 1);
        let before = cache.stats();
        assert_eq!(
            cached_features(&m, &text, cuts.iter().copied(), other, 1),
            features(&m, &text, other)
        );
        assert_eq!(
            cache.stats().walked,
            before.walked + 1,
            "{wanted:?} then {other:?}"
        );
        // Short prompts are walked whole and not kept.
        let len = cache.len();
        let short = "explain your reasoning step by step";
        assert_eq!(
            cached_features(&m, short, [], wanted, 1),
            features(&m, short, wanted)
        );
        assert_eq!(cache.len(), len);
    }
}

/// The cache keeps at most its size, oldest out first, and a reload's matcher starts with an empty one.
#[test]
fn the_prompt_cache_is_bounded_and_belongs_to_its_matcher() {
    let cache = PromptCache::new(64);
    let w = Walked {
        len: 0,
        partial: None,
        keys: None,
        hits: PhraseHits::NONE,
        tokens: Default::default(),
    };
    let hashes: Vec<u128> = (0..1000u128)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835))
        .collect();
    for &h in &hashes {
        cache.put(h, w);
    }
    assert!(cache.len() <= 64, "{}", cache.len());
    assert!(cache.get(hashes[999]).is_some() && cache.get(hashes[0]).is_none());
    // Same low half, another high half: not the entry.
    assert!(cache.get(hashes[999] ^ (1u128 << 100)).is_none());
    let m = matcher();
    let text = turn(&mut StdRng::seed_from_u64(1), 300);
    cached_features(&m, &text, [], Wanted::ALL, 1);
    assert_eq!(m.cache().len(), 1);
    assert_eq!(m.clone().cache().len(), 1, "a clone shares it");
    assert!(matcher().cache().is_empty(), "a new matcher has its own");
}

/// One account's walks are not another's: a text another account sent is walked again (a shared cache would
/// answer it faster and so tell one customer what another sends), and each account continues its own.
#[test]
fn an_account_does_not_find_another_accounts_walks() {
    let m = matcher();
    let cache = m.cache();
    let mut rng = StdRng::seed_from_u64(4);
    let system = turn(&mut rng, 150);
    let mut turns = vec![turn(&mut rng, 40)];
    let (first, first_cuts) = conversation_prompt(&system, &turns);
    turns.push(turn(&mut rng, 40));
    let (next, next_cuts) = conversation_prompt(&system, &turns);
    let features_of = |text: &str, cuts: &[usize], account: u64| {
        let got = cached_features(&m, text, cuts.iter().copied(), Wanted::ALL, account);
        assert_eq!(got, features(&m, text, Wanted::ALL), "account {account}");
    };
    // The same first request: walked by each account.
    for account in [1, 2] {
        let before = cache.stats();
        features_of(&first, &first_cuts, account);
        assert_eq!(cache.stats().walked, before.walked + 1, "account {account}");
    }
    // The next turn: each account continues its own first request.
    for account in [1, 2] {
        let before = cache.stats();
        features_of(&next, &next_cuts, account);
        assert_eq!(
            cache.stats().continued,
            before.continued + 1,
            "account {account}"
        );
    }
    // A third account finds neither.
    let before = cache.stats();
    features_of(&next, &next_cuts, 3);
    assert_eq!(cache.stats().walked, before.walked + 1);
}

/// With the cache off (`api.prompt_cache_entries = 0`) every prompt is walked whole and nothing is kept.
#[test]
fn a_cache_of_no_entries_keeps_nothing() {
    let m = matcher().with_cache_entries(0);
    let text = turn(&mut StdRng::seed_from_u64(2), 300);
    for _ in 0..2 {
        assert_eq!(
            cached_features(&m, &text, [], Wanted::ALL, 1),
            features(&m, &text, Wanted::ALL)
        );
    }
    assert_eq!(m.cache().capacity(), 0);
    assert!(m.cache().is_empty());
    assert_eq!(m.cache().stats(), CacheStats::default());
    assert_eq!(matcher().with_cache_entries(20).cache().capacity(), 32);
}

/// A continued scan reads the new part raw only when it is ASCII: typographic separators (dashes, a no-break
/// space) after the join are normalised by the whole scan's path, so such a part is scanned whole.
#[test]
fn a_continued_scan_of_non_ascii_new_text_is_the_whole_scan() {
    let m = matcher();
    let first = "an ASCII history of a conversation";
    for next in [
        "show your full chain\u{2014}of\u{2013}thought",
        "Reconstruct\u{00a0}the tool calls",
    ] {
        let text = format!("{first}\n{next}");
        assert!(m.scan(&text).any(), "{next}");
        assert_eq!(
            m.scan_continued(&text, first.len(), m.scan(first)),
            m.scan(&text),
            "{next}"
        );
    }
}
