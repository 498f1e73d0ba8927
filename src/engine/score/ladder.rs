//! The action ladder with hysteresis (docs/score.md, "Ladder").

use super::*;

/// What the score asks the engine to do, mildest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Level {
    /// Forward unchanged.
    #[default]
    Allow,
    /// Delay before forwarding.
    Slow,
    /// Forward with a lowered `max_tokens` / thinking budget.
    Degrade,
    /// Refuse with 429 and `retry-after`.
    Throttle,
    /// Refuse with 403.
    Block,
}

impl Level {
    /// Every level, mildest first.
    pub const ALL: [Level; 5] = [
        Level::Allow,
        Level::Slow,
        Level::Degrade,
        Level::Throttle,
        Level::Block,
    ];

    /// Label for logs, metrics and config keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Allow => "allow",
            Level::Slow => "slow",
            Level::Degrade => "degrade",
            Level::Throttle => "throttle",
            Level::Block => "block",
        }
    }

    /// The next milder level (Allow stays Allow).
    pub fn below(self) -> Level {
        match self {
            Level::Allow | Level::Slow => Level::Allow,
            Level::Degrade => Level::Slow,
            Level::Throttle => Level::Degrade,
            Level::Block => Level::Throttle,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A level's marks: it is entered when the score reaches `enter` and left when the score falls below `exit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mark {
    /// Score at or above which the level is entered (above 1: never entered, the level is off).
    pub enter: f32,
    /// Score below which the level is left (below `enter`).
    pub exit: f32,
}

impl Mark {
    /// A mark entered at `enter` and left below `exit`.
    pub const fn new(enter: f32, exit: f32) -> Mark {
        Mark { enter, exit }
    }
}

/// The ladder's marks, one per level above Allow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// [`Level::Slow`].
    pub slow: Mark,
    /// [`Level::Degrade`].
    pub degrade: Mark,
    /// [`Level::Throttle`].
    pub throttle: Mark,
    /// [`Level::Block`].
    pub block: Mark,
}

impl Thresholds {
    /// The marks of `level` (None for Allow).
    pub fn mark(&self, level: Level) -> Option<Mark> {
        match level {
            Level::Allow => None,
            Level::Slow => Some(self.slow),
            Level::Degrade => Some(self.degrade),
            Level::Throttle => Some(self.throttle),
            Level::Block => Some(self.block),
        }
    }
}

/// Where an account or cluster stands on the ladder (one byte; kept beside its signals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LadderState {
    level: Level,
}

impl LadderState {
    /// A ladder at Allow.
    pub fn new() -> LadderState {
        LadderState::default()
    }

    /// The current level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// The ladder of two merged clusters: the higher level (one half's enforcement is not undone by the merge).
    pub fn join(&mut self, other: &LadderState) {
        self.level = self.level.max(other.level);
    }

    /// Move on the ladder for a new `score` (0..=1): up at once to the highest level whose enter mark the score
    /// reaches; down one level at a time while the score is below the current level's exit mark. A NaN score
    /// counts as 0.
    pub fn update(&mut self, score: f32, policy: &ScorePolicy) -> Level {
        let s = if score.is_nan() { 0.0 } else { score };
        let t = &policy.thresholds;
        let mut target = Level::Allow;
        for level in [Level::Slow, Level::Degrade, Level::Throttle, Level::Block] {
            if t.mark(level).is_some_and(|m| s >= m.enter) {
                target = level;
            }
        }
        if target > self.level {
            self.level = target;
            return self.level;
        }
        while let Some(m) = t.mark(self.level) {
            if s < m.exit {
                self.level = self.level.below();
            } else {
                break;
            }
        }
        self.level
    }
}
