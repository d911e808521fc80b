//! Stop strings found across token boundaries, never emitted.
//!
//! Text is pushed piece by piece. The matcher emits what can no longer be the start of a stop
//! string and holds back the longest tail that still could be (a proper prefix of some stop
//! string); once a stop string appears, everything from its start on is dropped. Since a held
//! tail always begins at the earliest possible match start, no match can straddle text that was
//! already emitted.

#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// What a push produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matched {
    /// Text that is now safe to emit (may be empty).
    Emit(String),
    /// A stop string (index into the list) was found; the text before it is emitted.
    Stop { index: usize, emit: String },
}

impl StopMatcher {
    /// Empty strings are ignored (they would match everywhere).
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    pub fn push(&mut self, piece: &str) -> Matched {
        if self.stops.is_empty() {
            return Matched::Emit(piece.to_string());
        }
        self.pending.push_str(piece);
        // The earliest stop string in the pending text (the longest on equal starts).
        let found = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.pending.find(s.as_str()).map(|at| (at, i, s.len())))
            .min_by(|a, b| a.0.cmp(&b.0).then(b.2.cmp(&a.2)));
        if let Some((at, index, _)) = found {
            let emit = self.pending[..at].to_string();
            self.pending.clear();
            return Matched::Stop { index, emit };
        }
        // Hold back the longest tail that is a proper prefix of a stop string.
        let hold = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.pending.len());
        let emit = self.pending[..hold].to_string();
        self.pending.drain(..hold);
        Matched::Emit(emit)
    }

    /// The held-back text, at the end of generation (no stop string came).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<usize>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                Matched::Emit(e) => out.push_str(&e),
                Matched::Stop { index, emit } => {
                    out.push_str(&emit);
                    return (out, Some(index));
                }
            }
        }
        out.push_str(&m.flush());
        (out, None)
    }

    #[test]
    fn across_boundaries_and_not_emitted() {
        assert_eq!(
            run(&["\n\n"], &["Hello", "\n", "\nWorld"]),
            ("Hello".into(), Some(0))
        );
        assert_eq!(
            run(&["The End"], &["It was", " the", " Th", "e E", "nd."]),
            ("It was the ".into(), Some(0))
        );
        // A false start is emitted once it can no longer match.
        assert_eq!(run(&["abc"], &["xa", "bd", "e"]), ("xabde".into(), None));
        // The earliest of several.
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".into(), Some(1)));
        // Nothing held back is lost at the end.
        assert_eq!(run(&["abc"], &["x", "ab"]), ("xab".into(), None));
        // Multi-byte characters.
        assert_eq!(run(&["。"], &["你好", "。再见"]), ("你好".into(), Some(0)));
        assert_eq!(run(&[""], &["a"]), ("a".into(), None));
    }
}
